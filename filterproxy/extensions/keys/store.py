"""The keys and teams in force in this process, and where run-time changes are kept.

One `KeyRegistry` per process (in its `Resources`) holds the keys and teams of three
sources, merged: the config's ``keys``/``teams`` (read-only at run time), the keys
file's (``keys_file``), and those created through the admin API and kept in Redis.
The keys filter looks keys up in it (`KeyRegistry.keys`, a live view), so a change
applies to the next request without a reload.

Where a change is kept (`KeyRegistry.writable`):

- **Redis**, when the config names one: a hash of keys by digest (each entry the JSON
  of its config entry — name, ``sha256:`` digest, models, limits in dollars, team —
  never the key), a hash of teams by name, and a version counter that every change
  bumps, all changed by one script (names checked unique, a team's keys counted,
  atomically). Each process reads the version every `POLL_INTERVAL` (one ``GET``) and
  reloads both hashes when it moved: every replica sees a change within a second. A
  poll rather than pub/sub: the gateway's Redis client is one pipelined connection of
  request and reply, and a subscription would need a second connection in another
  mode; a poll also heals by itself after Redis comes back.
- **The keys file**, without Redis: rewritten atomically (a temporary file renamed
  over it), keeping its other entries; this process uses the change at once, other
  processes when they read the file again (``config_watch``, or a reload).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from filterproxy.config import ConfigError, Node, RedisConfig
from filterproxy.extensions.keys.config import (
    GatewayKey,
    GatewayKeys,
    KeyLimits,
    Team,
    parse_key,
    parse_keys_file,
    parse_team,
)

if TYPE_CHECKING:
    from filterproxy.clients.redis import RedisClient
    from filterproxy.filters.resources import Resources

__all__ = [
    "POLL_INTERVAL",
    "REGISTRY_KEYS",
    "KeyRegistry",
    "Refused",
    "key_document",
    "limits_document",
    "team_document",
]

log = Logger(namespace="filterproxy.keys")

#: How often each process asks Redis whether the keys or teams changed.
POLL_INTERVAL = 0.5
#: The registry's Redis keys: one hash tag, so that one script may change them all
#: (a Redis Cluster keeps them on one node).
REGISTRY_KEYS = ("fp:{registry}:keys", "fp:{registry}:teams", "fp:{registry}:version")

#: The sources a key or team comes from.
CONFIG, FILE, REDIS = "config", "file", "redis"

_USD_FIELDS = frozenset({"usd_per_day", "usd_per_month", "soft_usd_per_day", "soft_usd_per_month"})
_NANO_PER_USD = Decimal(1_000_000_000)


class Refused(Exception):
    """A change the registry's state does not allow: *status* 404 (no such name) or
    409 (a name in use, a read-only key, a team with keys, nowhere to keep it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- documents: what the API and the stores read and write --------------------------------


def _dollars(nano: int) -> int | float:
    amount = Decimal(nano) / _NANO_PER_USD
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def limits_document(limits: KeyLimits) -> dict[str, int | float]:
    """*limits* as written in the config: the limits set, dollar amounts in dollars."""
    document: dict[str, int | float] = {}
    for f in fields(limits):
        value = getattr(limits, f.name)
        if value:
            document[f.name] = _dollars(value) if f.name in _USD_FIELDS else value
    return document


def key_document(key: GatewayKey, *, digest: bool = False) -> dict[str, Any]:
    """A key's entry as written in the config (``hash`` only when *digest*: the store
    keeps it, the API does not show it)."""
    document: dict[str, Any] = {"name": key.name}
    if digest:
        document["hash"] = f"sha256:{key.digest}"
    if key.models:
        document["models"] = list(key.models)
    if key.limits:
        document["limits"] = limits_document(key.limits)
    if key.team is not None:
        document["team"] = key.team
    return document


def team_document(team: Team) -> dict[str, Any]:
    """A team's entry as written in the config."""
    document: dict[str, Any] = {"name": team.name}
    if team.limits:
        document["limits"] = limits_document(team.limits)
    return document


def _parsed_key(document: Any, where: str) -> GatewayKey:
    return parse_key(Node(document, where, {}))


def _parsed_team(document: Any, where: str) -> Team:
    return parse_team(Node(document, where, {}))


# -- Redis --------------------------------------------------------------------------------

#: Changes one key or team, checking what must hold across all of them. KEYS: the keys
#: hash (by digest), the teams hash (by name), the version. ARGV: the operation, the
#: name, the entry's JSON (create/update), the key's digest (key_create). Answers
#: {status, version}: status ``ok``, ``exists``, ``missing``, ``no_team`` or ``in_use``.
REGISTRY_SCRIPT = """
local op, name, entry, digest = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function find_key()
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local ok, doc = pcall(cjson.decode, all[i + 1])
    if ok and doc['name'] == name then return all[i], doc end
  end
  return nil, nil
end
local function team_known(doc)
  local team = doc['team']
  return team == nil or team == cjson.null or redis.call('HEXISTS', KEYS[2], team) == 1
end
if op == 'key_create' then
  if find_key() then return {'exists', 0} end
  if redis.call('HEXISTS', KEYS[1], digest) == 1 then return {'exists', 0} end
  if not team_known(cjson.decode(entry)) then return {'no_team', 0} end
  redis.call('HSET', KEYS[1], digest, entry)
elseif op == 'key_update' then
  local found = find_key()
  if not found then return {'missing', 0} end
  if not team_known(cjson.decode(entry)) then return {'no_team', 0} end
  redis.call('HSET', KEYS[1], found, entry)
elseif op == 'key_delete' then
  local found = find_key()
  if not found then return {'missing', 0} end
  redis.call('HDEL', KEYS[1], found)
elseif op == 'team_create' then
  if redis.call('HEXISTS', KEYS[2], name) == 1 then return {'exists', 0} end
  redis.call('HSET', KEYS[2], name, entry)
elseif op == 'team_update' then
  if redis.call('HEXISTS', KEYS[2], name) == 0 then return {'missing', 0} end
  redis.call('HSET', KEYS[2], name, entry)
elseif op == 'team_delete' then
  if redis.call('HEXISTS', KEYS[2], name) == 0 then return {'missing', 0} end
  local all = redis.call('HVALS', KEYS[1])
  for i = 1, #all do
    local ok, doc = pcall(cjson.decode, all[i])
    if ok and doc['team'] == name then return {'in_use', 0} end
  end
  redis.call('HDEL', KEYS[2], name)
else
  return redis.error_reply('unknown operation ' .. op)
end
return {'ok', redis.call('INCR', KEYS[3])}
"""

#: The version and both hashes, read at one instant.
SNAPSHOT_SCRIPT = """
return {redis.call('GET', KEYS[3]) or '0', redis.call('HVALS', KEYS[1]),
        redis.call('HVALS', KEYS[2])}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def snapshot_from_reply(reply: Any) -> tuple[str, tuple[GatewayKey, ...], tuple[Team, ...]]:
    """The version, keys and teams of `SNAPSHOT_SCRIPT`'s reply; an entry that does not
    parse is left out with a warning (the others still apply)."""
    version, raw_keys, raw_teams = reply
    keys: list[GatewayKey] = []
    teams: list[Team] = []
    for raw in raw_keys:
        try:
            keys.append(_parsed_key(json.loads(_text(raw)), "redis key entry"))
        except (ValueError, ConfigError) as e:
            log.warn("a key entry in Redis is unreadable and ignored: {error}", error=str(e))
    for raw in raw_teams:
        try:
            teams.append(_parsed_team(json.loads(_text(raw)), "redis team entry"))
        except (ValueError, ConfigError) as e:
            log.warn("a team entry in Redis is unreadable and ignored: {error}", error=str(e))
    return _text(version), tuple(keys), tuple(teams)


# -- the keys file ------------------------------------------------------------------------


def rewrite_keys_file(path: str, keys: list[dict[str, Any]], teams: list[dict[str, Any]]) -> None:
    """Write *keys* and *teams* to the keys file at *path*, atomically (a temporary
    file in its directory, renamed over it), keeping its mode and its other top-level
    entries (comments are not kept: the file is YAML written anew)."""
    target = Path(path)
    try:
        document = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        document, mode = {}, 0o600
    if not isinstance(document, dict):
        document = {}
    document["keys"] = keys
    document["teams"] = teams
    text = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# -- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A key or team in force, and where it comes from (`CONFIG`, `FILE`, `REDIS`)."""

    source: str
    key: GatewayKey | None = None
    team: Team | None = None


class LiveTable(Mapping[str, Any]):
    """What the keys filter's config looks keys (by digest) or teams (by name) up in:
    while its config is the one in force (`KeyRegistry.configure`), the registry's
    current table — run-time changes apply to the next request, without a reload;
    otherwise (a config not yet in force, or a filter configured outside a gateway,
    as a test harness does) the config's own keys and teams."""

    def __init__(self, registry: KeyRegistry, section: GatewayKeys, table: str) -> None:
        self._registry = registry
        self._section = section
        self._table = table
        self._own: dict[str, Any] | None = None

    def _current(self) -> Mapping[str, Any]:
        registry = self._registry
        if registry.origin is self._section:
            found: Mapping[str, Any] = getattr(registry, self._table)
            return found
        if self._own is None:
            if self._table == "by_digest":
                self._own = {k.digest: k for k in self._section.gateway_keys}
            else:
                self._own = {t.name: t for t in self._section.teams}
        return self._own

    def __getitem__(self, name: str) -> Any:
        return self._current()[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._current().get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


class KeyRegistry:
    """The process's keys and teams, of every source (see the module's description)."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        #: What the config in force gives (its ``keys``/``teams``, its keys file's).
        self.section = GatewayKeys()
        #: The config file in force (named when a change to its keys is refused).
        self.config_source = "(the config)"
        self.redis: RedisConfig | None = None
        #: What Redis holds (the last snapshot) and its version.
        self.stored_keys: tuple[GatewayKey, ...] = ()
        self.stored_teams: tuple[Team, ...] = ()
        self.version: str | None = None
        #: The merged tables the filter reads: keys by digest, teams by name.
        self.by_digest: dict[str, GatewayKey] = {}
        self.teams_by_name: dict[str, Team] = {}
        #: Every key and team by name, with its source.
        self.key_names: dict[str, Known] = {}
        self.team_names: dict[str, Known] = {}
        #: The section given to `configure` (the config in force): the `LiveTable`
        #: of its filter read this registry.
        self.origin: GatewayKeys | None = None
        self._poll: task.LoopingCall | None = None
        self._polling = False
        self._poll_redis: tuple[str, float] | None = None

    # -- what the config in force says ----------------------------------------------------

    def configure(
        self, section: GatewayKeys, redis: RedisConfig | None, source: str = "(the config)"
    ) -> None:
        """A config went in force: its keys and teams, and where changes are kept."""
        self.section = self.origin = section
        self.config_source = source
        if redis != self.redis:
            self.redis = redis
            self.stored_keys, self.stored_teams, self.version = (), (), None
        self._merge()
        wanted = (redis.url, redis.timeout) if redis is not None else None
        if wanted != self._poll_redis:
            self._stop_polling()
            self._poll_redis = wanted
            if redis is not None:
                self._poll = task.LoopingCall(self.refresh_if_changed)
                self._poll.clock = self.resources.clock
                self._poll.start(POLL_INTERVAL, now=False).addErrback(
                    lambda f: log.failure("keys: polling Redis stopped", f)
                )
                # At once, but once the reactor runs (the Redis client is made then).
                self.resources.clock.callLater(0, self.refresh_if_changed)

    def _merge(self) -> None:
        section = self.section
        key_names: dict[str, Known] = {}
        team_names: dict[str, Known] = {}
        by_digest: dict[str, GatewayKey] = {}
        for key in section.gateway_keys:
            key_names[key.name] = Known(FILE if key.name in section.filed_keys else CONFIG, key)
            by_digest[key.digest] = key
        for team in section.teams:
            team_names[team.name] = Known(
                FILE if team.name in section.filed_teams else CONFIG, team=team
            )
        for team in self.stored_teams:
            if team.name in team_names:
                log.warn(
                    "team {team} in Redis is also in the config: the config's applies",
                    team=team.name,
                )
                continue
            team_names[team.name] = Known(REDIS, team=team)
        for key in self.stored_keys:
            if key.name in key_names or key.digest in by_digest:
                log.warn(
                    "key {key} in Redis is also in the config: the config's applies", key=key.name
                )
                continue
            key_names[key.name] = Known(REDIS, key)
            by_digest[key.digest] = key
        # Swapped whole: a request reads either the old tables or the new ones.
        self.key_names, self.team_names = key_names, team_names
        self.by_digest = by_digest
        self.teams_by_name = {name: known.team for name, known in team_names.items() if known.team}

    # -- Redis ----------------------------------------------------------------------------

    @property
    def client(self) -> RedisClient:
        redis = self.redis
        assert redis is not None
        return self.resources.redis(redis.url, redis.timeout)

    def refresh_if_changed(self) -> defer.Deferred[None] | None:
        """One poll: read the version, and the keys and teams when it moved."""
        if self._polling or self.redis is None:
            return None
        self._polling = True
        d = self.client.call("GET", REGISTRY_KEYS[2])

        def compare(version: Any) -> defer.Deferred[None] | None:
            if (_text(version) if version is not None else "0") == self.version:
                return None
            return self.refresh()

        def done(result: Any) -> None:
            self._polling = False

        def failed(failure: Failure) -> None:
            # Redis away: the keys in force stay; the next poll tries again.
            self._polling = False

        d.addCallback(compare)
        d.addCallbacks(done, failed)
        return d

    def refresh(self) -> defer.Deferred[None]:
        """Read the keys and teams from Redis now."""
        d = self.client.run_script(SNAPSHOT_SCRIPT, REGISTRY_KEYS, ())

        def apply(reply: Any) -> None:
            version, keys, teams = snapshot_from_reply(reply)
            self.version, self.stored_keys, self.stored_teams = version, keys, teams
            self._merge()

        return d.addCallback(apply)

    def keys_of(self, section: GatewayKeys) -> LiveTable:
        """The keys by digest of the filter configured with *section*."""
        return LiveTable(self, section, "by_digest")

    def teams_of(self, section: GatewayKeys) -> LiveTable:
        """The teams by name of the filter configured with *section*."""
        return LiveTable(self, section, "teams_by_name")

    def _stop_polling(self) -> None:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None

    def close(self) -> None:
        self._stop_polling()
        self._poll_redis = None

    # -- changes --------------------------------------------------------------------------

    @property
    def writable(self) -> str | None:
        """Where changes are kept: `REDIS`, `FILE`, or None (nowhere)."""
        if self.redis is not None:
            return REDIS
        if self.section.keys_file is not None:
            return FILE
        return None

    def _check_store(self) -> str:
        where = self.writable
        if where is None:
            raise Refused(
                409,
                "this gateway has nowhere to keep keys made at run time: name a Redis "
                "(redis: {url: ...}) or a keys file (keys_file: PATH) in its config",
            )
        return where

    def _check_changeable(self, known: Known, what: str, name: str) -> None:
        if known.source == CONFIG:
            raise Refused(
                409,
                f"{what} {name!r} is in the config file {self.config_source}: it is "
                "read-only here; change it there and reload",
            )
        if known.source != self.writable:
            raise Refused(
                409,
                f"{what} {name!r} is in the keys file {self.section.keys_file}: change it "
                "there (run-time changes go to Redis)",
            )

    def _check_team(self, team: str | None) -> None:
        if team is not None and team not in self.team_names:
            raise Refused(409, f"there is no team named {team!r}; create it first (POST /teams)")

    def create_key(self, key: GatewayKey) -> defer.Deferred[None]:
        """Keep a new key (its name and digest unused so far)."""
        where = self._check_store()
        if key.name in self.key_names:
            raise Refused(409, f"a key named {key.name!r} exists; names are unique")
        self._check_team(key.team)
        return self._change(
            where, "key_create", key.name, key_document(key, digest=True), key.digest, key=key
        )

    def update_key(self, key: GatewayKey) -> defer.Deferred[None]:
        """Replace the entry of the key named *key.name* (same digest)."""
        known = self.key_names.get(key.name)
        if known is None:
            raise Refused(404, f"no key named {key.name!r}")
        self._check_changeable(known, "the key", key.name)
        self._check_team(key.team)
        return self._change(
            self._check_store(), "key_update", key.name, key_document(key, digest=True), key=key
        )

    def delete_key(self, name: str) -> defer.Deferred[None]:
        known = self.key_names.get(name)
        if known is None:
            raise Refused(404, f"no key named {name!r}")
        self._check_changeable(known, "the key", name)
        return self._change(self._check_store(), "key_delete", name, None)

    def create_team(self, team: Team) -> defer.Deferred[None]:
        where = self._check_store()
        if team.name in self.team_names:
            raise Refused(409, f"a team named {team.name!r} exists; names are unique")
        return self._change(where, "team_create", team.name, team_document(team), team=team)

    def update_team(self, team: Team) -> defer.Deferred[None]:
        known = self.team_names.get(team.name)
        if known is None:
            raise Refused(404, f"no team named {team.name!r}")
        self._check_changeable(known, "the team", team.name)
        return self._change(self._check_store(), "team_update", team.name, team_document(team))

    def delete_team(self, name: str) -> defer.Deferred[None]:
        known = self.team_names.get(name)
        if known is None:
            raise Refused(404, f"no team named {name!r}")
        self._check_changeable(known, "the team", name)
        members = sorted(k for k, v in self.key_names.items() if v.key and v.key.team == name)
        if members:
            raise Refused(
                409,
                f"team {name!r} still has keys ({', '.join(members)}); move or revoke them first",
            )
        return self._change(self._check_store(), "team_delete", name, None)

    def _change(
        self,
        where: str,
        op: str,
        name: str,
        document: dict[str, Any] | None,
        digest: str = "",
        *,
        key: GatewayKey | None = None,
        team: Team | None = None,
    ) -> defer.Deferred[None]:
        if where == FILE:
            return defer.execute(self._change_file, op, name, document)
        entry = json.dumps(document) if document is not None else ""
        d = self.client.run_script(REGISTRY_SCRIPT, REGISTRY_KEYS, (op, name, entry, digest))

        def answered(reply: Any) -> defer.Deferred[None]:
            status = _text(reply[0])
            if status == "exists":
                raise Refused(409, f"{name!r} exists; names are unique")
            if status == "missing":
                raise Refused(404, f"no {op.partition('_')[0]} named {name!r}")
            if status == "no_team":
                raise Refused(409, "the key's team does not exist; create it first")
            if status == "in_use":
                raise Refused(409, f"team {name!r} still has keys; move or revoke them first")
            return self.refresh()  # this process uses the change at once

        return d.addCallback(answered)

    def _change_file(self, op: str, name: str, document: dict[str, Any] | None) -> None:
        path = self.section.keys_file
        assert path is not None
        section = self.section
        filed_keys = [k for k in section.gateway_keys if k.name in section.filed_keys]
        filed_teams = [t for t in section.teams if t.name in section.filed_teams]
        key_entries = [key_document(k, digest=True) for k in filed_keys]
        team_entries = [team_document(t) for t in filed_teams]
        kind, _, action = op.partition("_")
        entries = key_entries if kind == "key" else team_entries
        index = next((i for i, e in enumerate(entries) if e["name"] == name), None)
        if action == "create":
            assert document is not None
            entries.append(document)
        elif index is None:
            raise Refused(404, f"no {kind} named {name!r}")
        elif action == "update":
            assert document is not None
            entries[index] = document
        else:
            del entries[index]
        rewrite_keys_file(path, key_entries, team_entries)
        # This process uses it at once; the file is read again by the next reload.
        _, keys, teams = parse_keys_file(Node(path, "keys_file", {}), {})
        own_keys = tuple(k for k in section.gateway_keys if k.name not in section.filed_keys)
        own_teams = tuple(t for t in section.teams if t.name not in section.filed_teams)
        self.section = replace(
            section,
            gateway_keys=own_keys + keys,
            teams=own_teams + teams,
            filed_keys=frozenset(k.name for k in keys),
            filed_teams=frozenset(t.name for t in teams),
        )
        self._merge()
