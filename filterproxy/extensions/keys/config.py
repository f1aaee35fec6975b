"""The keys extension's config: gateway keys (``keys``, ``keys_file``) and their limits.

Where limits are counted across workers (``redis``) is the core's: the responses
extension shares the server.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from filterproxy.config import ChainFacts, ConfigError, DefaultEntry, ExtensionSchema, Node, Section

__all__ = [
    "SCHEMA",
    "GatewayKey",
    "GatewayKeys",
    "KeyLimits",
    "hash_key",
    "new_key",
    "parse_keys",
    "parse_keys_file",
]


@dataclass(frozen=True)
class KeyLimits:
    """What one gateway key may use; 0 means no limit."""

    requests_per_minute: int = 0
    #: Input + output tokens per minute, from the provider's usage.
    tokens_per_minute: int = 0
    #: Requests of the key in progress at once.
    concurrent_requests: int = 0
    #: Token budgets: once spent, requests get 429 ``insufficient_quota`` until the
    #: day (UTC) or month ends.
    tokens_per_day: int = 0
    tokens_per_month: int = 0

    def __bool__(self) -> bool:
        return any(
            (
                self.requests_per_minute,
                self.tokens_per_minute,
                self.concurrent_requests,
                self.tokens_per_day,
                self.tokens_per_month,
            )
        )


@dataclass(frozen=True)
class GatewayKey:
    """A key clients present to the gateway; only its SHA-256 digest is kept."""

    name: str
    #: The SHA-256 hex digest of the key.
    digest: str
    #: Model names or glob patterns the key may ask for (empty: any).
    models: tuple[str, ...] = ()
    limits: KeyLimits = KeyLimits()


@dataclass(frozen=True)
class GatewayKeys:
    """The top-level ``keys`` and ``keys_file`` (`Config.section(GatewayKeys)`); the
    field names are what the effective config shows."""

    #: The keys clients must present (none: the gateway is open to anyone who reaches it).
    gateway_keys: tuple[GatewayKey, ...] = ()
    #: The file more keys come from (re-read by a reload), if any.
    keys_file: str | None = None


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


def parse_section(section: Section) -> GatewayKeys:
    """``keys`` and ``keys_file``: the keys of both, names and hashes unique across both."""
    gateway_keys = parse_keys(section.node("keys"))
    if "keys_file" not in section:
        return GatewayKeys(gateway_keys)
    keys_file, filed = parse_keys_file(section["keys_file"], section.environ)
    return GatewayKeys(merge(gateway_keys, filed, keys_file), keys_file)


def place(facts: ChainFacts) -> DefaultEntry | None:
    """First in the default chain when keys are configured (a request without a valid
    key goes no further), with the usage filter asking streams for usage: token limits
    charge the provider's usage."""
    keys = facts.section(GatewayKeys)
    if keys is None or not keys.gateway_keys:
        return None
    return DefaultEntry("keys", first=True, asks={"usage": {"include_usage": True}})


#: What the keys extension adds to the config.
SCHEMA = ExtensionSchema(
    name="keys", keys=frozenset({"keys", "keys_file"}), parse=parse_section, place=place
)
