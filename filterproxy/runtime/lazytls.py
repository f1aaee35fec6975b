"""Loading pyOpenSSL only when the gateway uses TLS.

pyOpenSSL and cryptography are about 12 MB of a gateway's memory at rest (57 MB in all, measured).
Twisted imports them whenever they are installed: ``twisted.internet.tcp``,
``posixbase`` and ``endpoints`` each try at import, to offer ``startTLS``,
``listenSSL``/``connectSSL`` and the TLS endpoints — whether or not TLS is configured.
The gateway uses none of those three: its ``ssl:`` listeners and https clusters put
`twisted.protocols.tls` over plain TCP themselves, importing it on first use.

So when the config at start-up has no TLS anywhere (`uses_tls`), ``twistd filterproxy``
imports Twisted's networking with pyOpenSSL hidden (`openssl_hidden`) — what Twisted does
on a machine without pyOpenSSL, a configuration it supports — and pyOpenSSL loads when
the gateway first needs it: a reload that adds an https cluster works as usual.

What such a process cannot do is TLS through Twisted's own entry points: a filter of
yours that makes https requests with ``Agent``/treq, imported after start-up, would be
told that OpenSSL is not available. ``preload_tls: true`` in the config loads it at
start-up whatever the config says. Listeners (``ssl:``), the admin listener and the mock
upstream need a restart to change, so TLS there is always known at start-up.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filterproxy.config import Config

__all__ = ["openssl_hidden", "should_defer", "uses_tls"]

#: The package hidden while Twisted's networking is imported.
_HIDDEN = "OpenSSL"


def uses_tls(config: Config, listeners: Sequence[str], admin_listener: str | None) -> bool:
    """Whether the gateway started on *config*, listening on *listeners* with
    *admin_listener*, needs TLS at start-up or may need Twisted's TLS entry points:
    an ``ssl:`` listener (the gateway's, the admin's, the mock upstream's), an https
    cluster endpoint, or ``preload_tls``."""
    if config.preload_tls:
        return True
    endpoints = [*listeners, admin_listener or "", config.mock_upstream or ""]
    if any(e.strip().lower().startswith(("ssl:", "tls:")) for e in endpoints):
        return True
    return any(
        endpoint.scheme == "https"
        for cluster in config.clusters.values()
        for endpoint in cluster.endpoints
    )


def should_defer(config: Config, listeners: Sequence[str], admin_listener: str | None) -> bool:
    """Whether to import Twisted's networking with pyOpenSSL hidden: the config uses no
    TLS, and neither pyOpenSSL nor Twisted's TCP support has been imported yet (a
    filter module of the config's may have; then there is nothing to save)."""
    return (
        not uses_tls(config, listeners, admin_listener)
        and _HIDDEN not in sys.modules
        and "twisted.internet.tcp" not in sys.modules
    )


class _Hide(importlib.abc.MetaPathFinder):
    """Makes importing *package* fail as if it were not installed."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: object = None
    ) -> ModuleSpec | None:
        if fullname == self.package or fullname.startswith(self.package + "."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@contextmanager
def openssl_hidden() -> Iterator[None]:
    """Within the block, ``import OpenSSL`` fails as on a machine without it (unless it
    was imported before); after it, pyOpenSSL imports as usual."""
    finder = _Hide(_HIDDEN)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
