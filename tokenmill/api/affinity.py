"""Prefix affinity, one policy for the router's backends and the Ray Serve request router.

Requests that share a prompt prefix go to the replica that rendezvous hashing picks for that
prefix, so that its prefix cache already holds the prompt's KV blocks. The same key maps to
the same replica while the replica set stays the same, and only 1/N of keys move when it
changes. Affinity yields to load: when the preferred replica has `max_imbalance` or more
requests in flight beyond the least loaded one, the request goes by load alone.
"""
from __future__ import annotations

import hashlib

PREFIX_CHARS = 512  # how much of a prompt decides its replica


def affinity_key(body, chars: int = PREFIX_CHARS) -> str | None:
    """A hash of the prompt's first characters, from chat messages, a prompt or TGI inputs;
    None when the body has no prompt."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("messages"), list):
        text = "".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    else:
        text = str(body.get("prompt", body.get("inputs", "")) or "")
    return hashlib.blake2b(text[:chars].encode(), digest_size=8).hexdigest() if text else None


def _score(key: str, ident: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{ident}".encode(), digest_size=8).digest(), "big")


def affine_choice(candidates: list, key: str | None, ident, load, max_imbalance: int):
    """The candidate this key prefers, or None when there is no key or the preferred one is
    `max_imbalance` requests busier than the least loaded. ident(c) names a candidate stably
    (URL, replica id); load(c) is its requests in flight."""
    if not key or not candidates:
        return None
    affine = max(candidates, key=lambda c: _score(key, ident(c)))
    if load(affine) - min(load(c) for c in candidates) >= max_imbalance:
        return None
    return affine
