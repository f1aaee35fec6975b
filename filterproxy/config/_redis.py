"""The Redis server the extensions share (``redis``): core, as listeners and clusters are.

Both the keys extension (limits counted across workers) and the responses extension
(conversations stored across workers) use it, through one client per server
(`filterproxy.clients.redis`), and the responses store's default depends on whether it
is set; an extension owning it would make the other depend on it.
"""

from __future__ import annotations

import re

from filterproxy.config._reader import Node
from filterproxy.config._types import RedisConfig

__all__ = ["parse_redis"]


def parse_redis(node: Node) -> RedisConfig | None:
    """``redis``: a URL, or ``{url, timeout, on_error}``."""
    if node.value is None or node.value is False:
        return None
    if isinstance(node.value, str):
        keys = {"url": node}
    else:
        keys = dict(node.mapping({"url", "timeout", "on_error"}))
        if "url" not in keys:
            raise node.error("missing 'url', e.g. redis://127.0.0.1:6379/0")
    url = keys["url"].string()
    if not re.match(r"^(redis|unix)://", url):
        raise keys["url"].error(
            f"{url!r}: expected redis://[:password@]host[:port][/db] or unix:///path/to/socket"
        )
    config = RedisConfig(url)
    timeout = keys["timeout"].duration() if "timeout" in keys else config.timeout
    if timeout <= 0 or timeout > 10:
        raise keys["timeout"].error("between 1ms and 10s: requests wait this long for Redis")
    on_error = keys["on_error"].string() if "on_error" in keys else config.on_error
    if on_error not in ("open", "closed"):
        raise keys["on_error"].error(
            "open (count in this process meanwhile) or closed (answer 503 meanwhile)"
        )
    return RedisConfig(url, timeout, on_error)
