"""The keys extension's config: gateway keys (``keys``, ``keys_file``) and their limits.

Where limits are counted across workers (``redis``) is the core's: the responses
extension shares the server.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml

from filterproxy.config import ChainFacts, ConfigError, DefaultEntry, ExtensionSchema, Node, Section

__all__ = [
    "SCHEMA",
    "GatewayKey",
    "GatewayKeys",
    "KeyLimits",
    "Team",
    "hash_key",
    "nano_usd",
    "new_key",
    "parse_key",
    "parse_keys",
    "parse_keys_file",
    "parse_limits",
    "parse_team",
    "parse_teams",
]


@dataclass(frozen=True)
class KeyLimits:
    """What one gateway key (or one team, all its keys together) may use; 0 means no
    limit. Dollar amounts are kept in nanodollars (10^-9 USD): the config writes them
    in dollars (``usd_per_day: 5``)."""

    requests_per_minute: int = 0
    #: Input + output tokens per minute, from the provider's usage.
    tokens_per_minute: int = 0
    #: Requests of the key in progress at once.
    concurrent_requests: int = 0
    #: Token budgets: once spent, requests get 429 ``insufficient_quota`` until the
    #: day (UTC) or month ends.
    tokens_per_day: int = 0
    tokens_per_month: int = 0
    #: Budgets in dollars (nanodollars here), per UTC day and month: once spent,
    #: requests get 429 ``insufficient_quota`` until the window ends.
    usd_per_day: int = 0
    usd_per_month: int = 0
    #: Soft budgets in dollars (nanodollars here): crossing one only alerts (a metric
    #: and a log line), once per window.
    soft_usd_per_day: int = 0
    soft_usd_per_month: int = 0

    def __post_init__(self) -> None:
        # Asked at every request: worked out once.
        object.__setattr__(self, "_any", any(getattr(self, f.name) for f in fields(self)))
        dollars = self.usd_per_day or self.usd_per_month
        soft = self.soft_usd_per_day or self.soft_usd_per_month
        object.__setattr__(self, "_in_dollars", bool(dollars or soft))

    def __bool__(self) -> bool:
        return self._any  # type: ignore[attr-defined,no-any-return]

    @property
    def in_dollars(self) -> bool:
        """Whether a budget of these limits is counted in dollars (hard or soft)."""
        return self._in_dollars  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True)
class Team:
    """A team: its keys share its limits and budgets (on top of their own)."""

    name: str
    limits: KeyLimits = KeyLimits()


@dataclass(frozen=True)
class GatewayKey:
    """A key clients present to the gateway; only its SHA-256 digest is kept."""

    name: str
    #: The SHA-256 hex digest of the key.
    digest: str
    #: Model names or glob patterns the key may ask for (empty: any).
    models: tuple[str, ...] = ()
    limits: KeyLimits = KeyLimits()
    #: The team the key belongs to (at most one), by name.
    team: str | None = None


@dataclass(frozen=True)
class GatewayKeys:
    """The top-level ``keys`` and ``keys_file`` (`Config.section(GatewayKeys)`); the
    field names are what the effective config shows."""

    #: The keys clients must present (none: the gateway is open to anyone who reaches it).
    gateway_keys: tuple[GatewayKey, ...] = ()
    #: The file more keys come from (re-read by a reload), if any.
    keys_file: str | None = None
    #: The teams keys may belong to (``teams``, and the keys file's).
    teams: tuple[Team, ...] = ()
    #: Whether the config asks for keys at all (``keys``, ``teams`` or ``keys_file``
    #: written, even empty): the keys filter then checks every request, and with no
    #: keys yet refuses them all until keys are created at run time (the admin API).
    keys_checked: bool = False
    #: The names of the keys and of the teams that came from the keys file.
    filed_keys: frozenset[str] = frozenset()
    filed_teams: frozenset[str] = frozenset()


_KEY_FIELDS = {"name", "hash", "models", "limits", "team"}
_TEAM_FIELDS = {"name", "limits"}
_COUNT_FIELDS = {
    "requests_per_minute",
    "tokens_per_minute",
    "concurrent_requests",
    "tokens_per_day",
    "tokens_per_month",
}
_USD_FIELDS = {"usd_per_day", "usd_per_month", "soft_usd_per_day", "soft_usd_per_month"}
_LIMIT_FIELDS = _COUNT_FIELDS | _USD_FIELDS
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a key is stored and looked up by."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new random gateway key (192 bits)."""
    return "fpk-" + secrets.token_urlsafe(24)


def nano_usd(node: Node) -> int:
    """A dollar amount (``0.01``, ``5``, ``"2.50"``) in nanodollars, exactly."""
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise node.error(f"expected an amount in dollars (such as 5 or 0.25), got {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise node.error(
            f"expected an amount in dollars (such as 5 or 0.25), got {value!r}"
        ) from None
    if not amount.is_finite() or amount < 0:
        raise node.error(f"expected an amount in dollars of 0 or more, got {value!r}")
    return int((amount * 1_000_000_000).to_integral_value())


def parse_limits(node: Node) -> KeyLimits:
    """A ``limits`` mapping: counts as integers, budgets in dollars."""
    values: dict[str, int] = {}
    for name, value in node.mapping(_LIMIT_FIELDS).items():
        values[name] = nano_usd(value) if name in _USD_FIELDS else value.integer(minimum=0)
    return KeyLimits(**values)


def _check_name(node: Node, what: str) -> str:
    name = node.string()
    if not _NAME.match(name):
        raise node.error(
            f"{name!r}: a {what}'s name is 1 to 64 letters, digits, '_', '.', '@' or '-' "
            "(it is a metrics label)"
        )
    return name


def parse_team(node: Node) -> Team:
    """One ``teams`` entry: ``{name, limits}``."""
    keys = node.mapping(_TEAM_FIELDS)
    if "name" not in keys:
        raise node.error("missing 'name'")
    name = _check_name(keys["name"], "team")
    limits = parse_limits(keys["limits"]) if "limits" in keys else KeyLimits()
    return Team(name, limits)


def parse_teams(node: Node) -> tuple[Team, ...]:
    """The ``teams`` list, names unique."""
    found = tuple(parse_team(entry) for entry in node.sequence())
    names: set[str] = set()
    for team, entry in zip(found, node.sequence(), strict=True):
        if team.name in names:
            raise entry.error(f"a second team named {team.name!r}; names must be unique")
        names.add(team.name)
    return found


def parse_key(node: Node) -> GatewayKey:
    """One ``keys`` entry: ``{name, hash, models, limits, team}``."""
    keys = node.mapping(_KEY_FIELDS)
    for required in ("name", "hash"):
        if required not in keys:
            raise node.error(
                f"missing '{required}'; `filterproxy keys new NAME` prints a key and its entry"
            )
    name = _check_name(keys["name"], "key")
    match = _DIGEST.match(keys["hash"].string())
    if not match:
        raise keys["hash"].error(
            "expected sha256:<64 hex digits> (the key's SHA-256; never the key itself)"
        )
    limits = parse_limits(keys["limits"]) if "limits" in keys else KeyLimits()
    return GatewayKey(
        name=name,
        digest=match.group(1),
        models=keys["models"].string_list() if "models" in keys else (),
        limits=limits,
        team=_check_name(keys["team"], "team") if "team" in keys else None,
    )


def parse_keys(node: Node) -> tuple[GatewayKey, ...]:
    """The ``keys`` list: each ``{name, hash, models, limits}``."""
    found = tuple(parse_key(entry) for entry in node.sequence())
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


def parse_keys_file(
    node: Node, environ: Mapping[str, str]
) -> tuple[str, tuple[GatewayKey, ...], tuple[Team, ...]]:
    """``keys_file``: the path, and the keys and teams of the YAML file there
    (``keys: [...]``, ``teams: [...]``)."""
    path = node.string()
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise node.error(f"cannot read the keys file {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise node.error(f"the keys file {path!r} is not valid YAML: {e}") from None
    top = Node(document, path, environ).mapping({"keys", "teams"})
    keys = parse_keys(top.get("keys") or Node([], f"{path}: keys", environ))
    teams = parse_teams(top.get("teams") or Node([], f"{path}: teams", environ))
    return path, keys, teams


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


def _check_teams(keys: tuple[GatewayKey, ...], teams: tuple[Team, ...], where: str) -> None:
    known = {t.name for t in teams}
    for key in keys:
        if key.team is not None and key.team not in known:
            raise ConfigError(
                where,
                f"key {key.name!r} names the team {key.team!r}, which is not defined; "
                "add it under 'teams'",
            )


def parse_section(section: Section) -> GatewayKeys:
    """``keys``, ``teams`` and ``keys_file``: the keys and teams of all, names and
    hashes unique across them, every key's team defined."""
    gateway_keys = parse_keys(section.node("keys"))
    teams = parse_teams(section.node("teams"))
    checked = any(key in section for key in ("keys", "teams", "keys_file"))
    if "keys_file" not in section:
        _check_teams(gateway_keys, teams, "keys")
        return GatewayKeys(gateway_keys, teams=teams, keys_checked=checked)
    keys_file, filed, filed_teams = parse_keys_file(section["keys_file"], section.environ)
    names = {t.name for t in teams}
    for team in filed_teams:
        if team.name in names:
            raise ConfigError("keys_file", f"{keys_file}: team {team.name!r} is also in the config")
    all_teams = teams + filed_teams
    all_keys = merge(gateway_keys, filed, keys_file)
    _check_teams(all_keys, all_teams, "keys_file")
    return GatewayKeys(
        all_keys,
        keys_file,
        all_teams,
        keys_checked=True,
        filed_keys=frozenset(k.name for k in filed),
        filed_teams=frozenset(t.name for t in filed_teams),
    )


def place(facts: ChainFacts) -> DefaultEntry | None:
    """First in the default chain when the config asks for keys (``keys``, ``teams`` or
    ``keys_file``, even empty: keys may be created at run time), so that a request
    without a valid key goes no further; with the usage filter asking streams for
    usage: token limits charge the provider's usage."""
    keys = facts.section(GatewayKeys)
    if keys is None or not (keys.gateway_keys or keys.keys_checked):
        return None
    return DefaultEntry("keys", first=True, asks={"usage": {"include_usage": True}})


#: What the keys extension adds to the config.
SCHEMA = ExtensionSchema(
    name="keys", keys=frozenset({"keys", "keys_file", "teams"}), parse=parse_section, place=place
)
