"""`tokenmill list | ps | rm | pull`: the model store from the command line, as Ollama's CLI.
list, rm and pull work on the store's directory; ps asks a running server (/api/ps)."""
from __future__ import annotations

import asyncio
import sys
import time


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _ago(t: float) -> str:
    s = max(0.0, time.time() - t)
    for unit, secs in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= secs:
            return f"{int(s // secs)} {unit} ago"
    return "just now"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("    ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _store(args):
    from ..server.app import build_store
    from ..server.serving import ServerSettings
    from ..config import EngineConfig
    from ..server.app import served_name
    config, settings = EngineConfig(), ServerSettings(models=args.models)
    return build_store(config, settings, served_name(config, settings))


def cmd_list(args) -> int:
    rows = [["NAME", "FAMILY", "PARAMETERS", "QUANTIZATION", "SIZE", "MODIFIED"]]
    for m in _store(args).list():
        d = m.details
        rows.append([m.name, d["family"], d["parameter_size"], d["quantization_level"], _size(m.size),
                     _ago(m.modified_at)])
    print(_table(rows))
    return 0


def cmd_rm(args) -> int:
    from .catalog import StoreError
    store = _store(args)
    for name in args.names:
        try:
            store.delete(name)
        except StoreError as e:
            print(f"tokenmill: error: {e}", file=sys.stderr)
            return 1
        print(f"deleted '{name}'")
    return 0


def cmd_pull(args) -> int:
    from .pull import PullError, Puller
    try:
        puller = Puller(_store(args), args.name)
    except PullError as e:
        print(f"tokenmill: error: {e}", file=sys.stderr)
        return 1

    async def run() -> int:
        async for event in puller.events():
            if "error" in event:
                print(f"\ntokenmill: error: {event['error']}", file=sys.stderr)
                return 1
            if "total" in event:
                pct = 100 * event["completed"] / max(event["total"], 1)
                print(f"\r{event['status']} {pct:5.1f}% of {_size(event['total'])}", end="", flush=True)
            else:
                print(("\n" if event["status"] == "verifying sha256 digest" else "") + event["status"])
        return 0
    return asyncio.run(run())


def cmd_ps(args) -> int:
    import httpx
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    r = httpx.get(args.url.rstrip("/") + "/api/ps", headers=headers, timeout=30)
    if r.status_code != 200:
        print(f"tokenmill: error: {r.status_code} {r.text}", file=sys.stderr)
        return 1
    rows = [["NAME", "SIZE", "CONTEXT", "UNTIL"]]
    for m in r.json()["models"]:
        rows.append([m["name"], _size(m["size"]), str(m.get("context_length", "")),
                     "forever" if m["expires_at"].startswith("2999") else m["expires_at"]])
    print(_table(rows))
    return 0


def add_parsers(sub) -> None:
    def store_flag(p):
        p.add_argument("--models", default=None, help="the store's directory (default: tokenmill/models "
                       "in the user's data directory)")
    p = sub.add_parser("list", help="models in the store")
    store_flag(p)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("rm", help="remove models from the store")
    p.add_argument("names", nargs="+")
    store_flag(p)
    p.set_defaults(func=cmd_rm)
    p = sub.add_parser("pull", help="download a GGUF from Hugging Face into the store "
                       "(hf.co/OWNER/REPO[:QUANT or FILE]; HF_ENDPOINT honoured)")
    p.add_argument("name")
    store_flag(p)
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser("ps", help="models a running server has loaded")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    p.set_defaults(func=cmd_ps)
