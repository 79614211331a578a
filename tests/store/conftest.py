import httpx


def loaded(server) -> set[str]:
    """The models a server has loaded (its /api/ps)."""
    return {m["name"] for m in httpx.get(server.url + "/api/ps", timeout=30).json()["models"]}
