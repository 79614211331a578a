"""Pages for people: the chat (/), the live dashboard (/dashboard) and the token explorer
(/explain), served by `tokenmill serve` and by `tokenmill router` alike.

Static files only: plain HTML, CSS and JavaScript from static/, with the third-party
libraries vendored in static/vendor (no CDN, no build step). Every page is sent with a
Content-Security-Policy that allows scripts, styles and connections from this origin only,
so that model output rendered in a page can never load or run anything.
"""
from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, Response

STATIC = files(__package__) / "static"
PAGES = {"/": "chat.html", "/dashboard": "dashboard.html", "/explain": "explain.html"}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html; charset=utf-8",
          ".png": "image/png", ".svg": "image/svg+xml"}


def is_public(method: str, path: str) -> bool:
    """Pages and their assets open without an API key (the key is entered in the page and
    sent by its scripts); everything they call still needs it."""
    return method in ("GET", "HEAD") and (path in PAGES or path.startswith("/static/"))


def mount_pages(app: FastAPI) -> None:
    root = STATIC

    def page(name: str):
        async def serve():
            return FileResponse(str(root / name), media_type=_TYPES[".html"], headers=_HEADERS)
        serve.__name__ = "page_" + name.split(".")[0]
        return serve

    for path, name in PAGES.items():
        app.api_route(path, methods=["GET", "HEAD"], include_in_schema=False)(page(name))

    @app.api_route("/static/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static(path: str):
        target = root.joinpath(*[p for p in path.split("/") if p not in ("", ".", "..")])
        suffix = "." + path.rsplit(".", 1)[-1] if "." in path else ""
        if suffix not in _TYPES or not target.is_file():
            raise HTTPException(404, f"no such file: /static/{path}")
        return Response(target.read_bytes(), media_type=_TYPES[suffix], headers=_HEADERS)
