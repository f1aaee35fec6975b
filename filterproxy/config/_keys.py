"""Gateway keys (``keys``, ``keys_file``) and the Redis limits are counted in (``redis``)."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

import yaml

from filterproxy.config._reader import ConfigError, Node
from filterproxy.config._types import GatewayKey, KeyLimits, RedisConfig

__all__ = ["hash_key", "new_key", "parse_keys", "parse_keys_file", "parse_redis"]

_KEY_FIELDS = {"name", "hash", "models", "limits"}
_LIMIT_FIELDS = {
    "requests_per_minute",
    "tokens_per_minute",
    "concurrent_requests",
    "tokens_per_day",
    "tokens_per_month",
}
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a key is stored and looked up by."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new random gateway key (192 bits)."""
    return "fpk-" + secrets.token_urlsafe(24)


def _parse_key(node: Node) -> GatewayKey:
    keys = node.mapping(_KEY_FIELDS)
    for required in ("name", "hash"):
        if required not in keys:
            raise node.error(
                f"missing '{required}'; `filterproxy keys new NAME` prints a key and its entry"
            )
    name = keys["name"].string()
    if not _NAME.match(name):
        raise keys["name"].error(
            f"{name!r}: a key's name is 1 to 64 letters, digits, '_', '.', '@' or '-' "
            "(it is a metrics label)"
        )
    match = _DIGEST.match(keys["hash"].string())
    if not match:
        raise keys["hash"].error(
            "expected sha256:<64 hex digits> (the key's SHA-256; never the key itself)"
        )
    limits = KeyLimits()
    if "limits" in keys:
        values = {k: v.integer(minimum=0) for k, v in keys["limits"].mapping(_LIMIT_FIELDS).items()}
        limits = KeyLimits(**values)
    return GatewayKey(
        name=name,
        digest=match.group(1),
        models=keys["models"].string_list() if "models" in keys else (),
        limits=limits,
    )


def parse_keys(node: Node) -> tuple[GatewayKey, ...]:
    """The ``keys`` list: each ``{name, hash, models, limits}``."""
    found = tuple(_parse_key(entry) for entry in node.sequence())
    names: set[str] = set()
    digests: set[str] = set()
    for key, entry in zip(found, node.sequence(), strict=True):
        if key.name in names:
            raise entry.error(f"a second key named {key.name!r}; names must be unique")
        if key.digest in digests:
            raise entry.error("the same key hash is listed twice")
        names.add(key.name)
        digests.add(key.digest)
    return found


def parse_keys_file(node: Node, environ: Mapping[str, str]) -> tuple[str, tuple[GatewayKey, ...]]:
    """``keys_file``: the path, and the keys of the YAML file there (``keys: [...]``)."""
    path = node.string()
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise node.error(f"cannot read the keys file {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise node.error(f"the keys file {path!r} is not valid YAML: {e}") from None
    top = Node(document, path, environ).mapping({"keys"})
    return path, parse_keys(top.get("keys") or Node([], f"{path}: keys", environ))


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


def merge(
    own: tuple[GatewayKey, ...], filed: tuple[GatewayKey, ...], path: str
) -> tuple[GatewayKey, ...]:
    """The config's keys and the keys file's, names and hashes unique across both."""
    names = {k.name for k in own}
    digests = {k.digest for k in own}
    for key in filed:
        if key.name in names or key.digest in digests:
            raise ConfigError("keys_file", f"{path}: key {key.name!r} is also in the config")
    return own + filed
