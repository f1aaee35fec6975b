"""Whom something a request leaves behind belongs to (a stored conversation, a
resumable stream): a digest of the gateway key's name, or of the credential header the
client sent."""

from __future__ import annotations

import hashlib

from filterproxy.filters.api import RequestHead

__all__ = ["credential_of", "owner_digest", "owner_of"]


def credential_of(head: RequestHead) -> str | None:
    """The credential header a request carries (``Authorization``, else ``x-api-key``)."""
    return head.headers.get("authorization") or head.headers.get("x-api-key")


def owner_digest(key_name: str | None, credential: str | None) -> str:
    """A digest of the gateway key's name (the keys filter), else of the credential (or
    of nothing, for a client with none). Never the credential itself."""
    if key_name is not None:
        basis = "key:" + key_name
    else:
        basis = "credential:" + credential.strip() if credential else "anonymous"
    return hashlib.sha256(basis.encode()).hexdigest()


def owner_of(head: RequestHead, key_name: str | None) -> str:
    """The owner of what this request makes (`owner_digest` of its credential)."""
    return owner_digest(key_name, credential_of(head))
