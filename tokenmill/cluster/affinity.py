"""The key that prefix affinity routes on: a hash of a prompt's first characters."""
import hashlib


def affinity_key(body, chars: int = 256):
    """From chat messages, a prompt or TGI inputs; None when the body has no prompt."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("messages"), list):
        text = "".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    else:
        text = str(body.get("prompt", body.get("inputs", "")) or "")
    return hashlib.blake2b(text[:chars].encode(), digest_size=8).hexdigest() if text else None
