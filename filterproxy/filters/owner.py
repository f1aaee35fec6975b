"""Whom something a request leaves behind belongs to (a stored conversation, a
resumable stream): a digest of the gateway key's name, or of the credential header the
client sent."""

from __future__ import annotations

import hashlib

from filterproxy.filters.api import RequestHead

__all__ = ["owner_of"]


def owner_of(head: RequestHead, key_name: str | None) -> str:
    """The owner of what this request makes: a digest of the gateway key's name (the
    keys filter), else of the ``Authorization`` or ``x-api-key`` header it carried (or of
    nothing, for a client with neither). Never the credential itself."""
    if key_name is not None:
        basis = "key:" + key_name
    else:
        credential = head.headers.get("authorization") or head.headers.get("x-api-key")
        basis = "credential:" + credential.strip() if credential else "anonymous"
    return hashlib.sha256(basis.encode()).hexdigest()
