"""API keys: how they are given (flags, a file), how a client sends one, and one constant-time
check that names the tenant a key belongs to.

`--api-key NAME=KEY` splits on the first `=`, so a key may hold `=` (base64 padding) after
its name. A bare key with `=` in it is ambiguous (`abc==` reads as name `abc`, key `=`) and is
refused with a message that says how to give it. Empty keys are refused: an empty key would
let in every request that sends none."""
from __future__ import annotations

import hashlib
import hmac
import re

_NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,64}")


def given_api_key(headers) -> str:
    """The key a client sent: `Authorization: Bearer KEY` (OpenAI, Ollama, TGI clients) or
    `x-api-key` (Anthropic clients). headers: Starlette Headers or a dict of lower-case str."""
    auth = headers.get("authorization", "") or ""
    return auth[7:].strip() if auth.lower().startswith("bearer ") else (headers.get("x-api-key", "") or "")


def key_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def default_name(key: str) -> str:
    """A tenant name for a key given without one; never the key itself (it is logged)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_key_spec(spec: str) -> tuple[str, str]:
    """`NAME=KEY` or a bare `KEY` (without `=`) as (name, key)."""
    if "=" not in spec:
        name, key = default_name(spec), spec
    else:
        name, key = spec.split("=", 1)
        if not _NAME.fullmatch(name):
            raise ValueError(f"--api-key NAME=KEY: {name[:12]!r}... is not a name (letters, digits, _ . @ : -)")
        if key.strip("=") == "":
            raise ValueError("--api-key: a bare key that contains '=' (base64) is ambiguous; give it as "
                             "NAME=KEY or in --api-key-file")
    if not key.strip():
        raise ValueError("--api-key: empty keys are refused (they would let in requests with no key)")
    return name, key


def read_key_file(path: str) -> list[tuple[str, str]]:
    """One `name key` per line; blank lines and lines starting with # are skipped."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2 or not parts[1].strip():
                raise ValueError(f"{path}:{n}: expected `name key`")
            if not _NAME.fullmatch(parts[0]):
                raise ValueError(f"{path}:{n}: {parts[0][:12]!r} is not a name")
            out.append((parts[0], parts[1].strip()))
    return out


class KeyRing:
    """Keys and the tenants they name. tenant() compares the given key with every key in
    constant time (over their SHA-256 digests, so lengths do not leak either)."""

    def __init__(self, keys: dict[str, str] | None = None, admin_keys=()):
        # keys: key -> tenant name
        self._keys = [(hashlib.sha256(k.encode()).digest(), name) for k, name in (keys or {}).items()]
        self._keys += [(hashlib.sha256(k.encode()).digest(), "admin") for k in admin_keys]
        self._admin = [hashlib.sha256(k.encode()).digest() for k in admin_keys]
        # a prefix-cache salt per tenant that no other tenant can guess (made from its key), the
        # same in every router process
        self._salts = {name: hashlib.blake2b(d, key=b"tokenmill-cache-salt", digest_size=16).hexdigest()
                       for d, name in self._keys}
        if any(not k for k in (keys or {})) or any(not k for k in admin_keys):
            raise ValueError("empty API keys are refused")

    @property
    def open(self) -> bool:
        return not self._keys

    def tenant(self, given: str) -> str | None:
        """The tenant of a given key, None if it is no key of ours; "anonymous" when open."""
        if self.open:
            return "anonymous"
        digest = hashlib.sha256(given.encode()).digest()
        found = None
        for d, name in self._keys:  # no early exit: every key is compared
            if hmac.compare_digest(d, digest) and found is None:
                found = name
        return found if given else None

    def salt(self, tenant: str) -> str | None:
        """The prefix-cache salt of a tenant; None for an open router's single tenant."""
        return self._salts.get(tenant)

    def is_admin(self, given: str) -> bool:
        if self.open:
            return True
        digest = hashlib.sha256(given.encode()).digest()
        return any([hmac.compare_digest(d, digest) for d in self._admin])
