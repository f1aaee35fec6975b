"""Twisted's reactor-builder tests swap the global reactor's class and state for each
test's own reactor, so the global reactor must be a `GatewayReactor` too (with the
compiled build, a different class layout cannot be swapped in). This directory runs in
its own pytest process, without pytest-twisted (``-p no:twisted``), which would install
Twisted's default reactor first."""

from __future__ import annotations

import os

from filterproxy.runtime.reactor import install_if_unset

installed = install_if_unset()
assert installed.__name__ == "GatewayReactor", f"the global reactor is a {installed.__name__}"
if os.environ.get("FILTERPROXY_EXPECT_COMPILED") == "1":
    import filterproxy.runtime._epoll

    assert str(filterproxy.runtime._epoll.__file__).endswith(".so"), (
        filterproxy.runtime._epoll.__file__
    )
