"""The keys extension's management API on the admin listener: ``/keys`` and ``/teams``.

Bodies are checked by the config's own parse functions (`parse_key`, `parse_team`,
`parse_limits`), so a wrong field gets the config's message with its path
(``limits.usd_per_day: expected an amount in dollars ...``). Amounts go in and out in
dollars. A new key is answered once, in the reply to its creation: only its SHA-256
digest is kept. Nothing about a key but its name is logged.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from filterproxy.config import Node
from filterproxy.extensions.keys.config import (
    GatewayKey,
    KeyLimits,
    Team,
    hash_key,
    new_key,
    parse_key,
    parse_team,
)
from filterproxy.extensions.keys.limits import KEY, TEAM
from filterproxy.extensions.keys.store import (
    KeyRegistry,
    Known,
    Refused,
    key_document,
    limits_document,
    team_document,
)
from filterproxy.filters.admin import AdminError, AdminReply, AdminRequest, AdminRoutes

__all__ = ["register_routes"]

log = Logger(namespace="filterproxy.keys")

_KEY_CREATE = {"name", "models", "limits", "team"}
_KEY_CHANGE = {"models", "limits", "team"}
_TEAM_CREATE = {"name", "limits"}
_TEAM_CHANGE = {"limits"}


def _fields(document: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    """*document* with no field outside *allowed* (a typo is a 400, not ignored)."""
    Node(document, "", {}).mapping(allowed)
    return document


def _changed_limits(current: dict[str, Any], change: Any) -> Any:
    """``limits`` after a change: each field given is set, ``null`` clears it (a value
    that is not a mapping is left for the parser to refuse)."""
    if not isinstance(change, dict):
        return change
    merged = dict(current)
    for name, value in change.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def _changed(current: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    document = dict(current)
    for name, value in change.items():
        if value is None:
            document.pop(name, None)
        elif name == "limits":
            document["limits"] = _changed_limits(document.get("limits", {}), value)
        else:
            document[name] = value
    return document


def key_view(known: Known) -> dict[str, Any]:
    """What the API shows of a key: never the key, nor its digest."""
    key = known.key
    assert key is not None
    return {
        "name": key.name,
        "team": key.team,
        "models": list(key.models),
        "limits": limits_document(key.limits),
        "source": known.source,
    }


def team_view(known: Known, registry: KeyRegistry) -> dict[str, Any]:
    team = known.team
    assert team is not None
    members = sorted(
        name for name, k in registry.key_names.items() if k.key and k.key.team == team.name
    )
    return {
        "name": team.name,
        "limits": limits_document(team.limits),
        "keys": members,
        "source": known.source,
    }


def _refused(failure: Failure) -> Failure:
    if failure.check(Refused):
        refusal = failure.value
        assert isinstance(refusal, Refused)
        raise AdminError(refusal.status, refusal.message)
    return failure


def _then(d: defer.Deferred[None], reply: Any) -> defer.Deferred[AdminReply]:
    """*reply()* once the change *d* is kept; a refusal answered with its status."""
    return d.addCallbacks(lambda _: reply(), _refused)


def _guarded(change: Any, *args: Any) -> defer.Deferred[None]:
    try:
        d: defer.Deferred[None] = change(*args)
    except Refused as e:
        raise AdminError(e.status, e.message) from None
    return d


class SpendCounts(Protocol):
    """Where a key's or team's counts are read (`filterproxy.extensions.keys.filter.LimitStore`)."""

    def spent(self, kind: str, name: str) -> defer.Deferred[dict[str, dict[str, Any]]]: ...


def _usd(nano: int) -> float:
    return round(nano / 1_000_000_000, 9)


def spend_view(
    kind: str, name: str, limits: KeyLimits, counts: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """What a key (or team) has spent this UTC day and month, against its budgets.
    Dollars are counted only where a dollar budget (hard or soft) is set, tokens where
    a token budget is: elsewhere they are null (its report has what it spent)."""
    view: dict[str, Any] = {"kind": kind, "name": name}
    for window in ("day", "month"):
        found = counts[window]
        budget = getattr(limits, f"usd_per_{window}")
        soft = getattr(limits, f"soft_usd_per_{window}")
        tokens_budget = getattr(limits, f"tokens_per_{window}")
        counted = bool(budget or soft)
        spent = found["spent_nano"]
        view[window] = {
            "window": found["window"],
            "spent_usd": _usd(spent) if counted else None,
            "reserved_usd": _usd(found["reserved_nano"]) if counted else None,
            "budget_usd": _usd(budget) if budget else None,
            "soft_budget_usd": _usd(soft) if soft else None,
            "remaining_usd": _usd(max(budget - spent - found["reserved_nano"], 0))
            if budget
            else None,
            "tokens": found["tokens"] if tokens_budget else None,
            "token_budget": tokens_budget or None,
        }
    view["report"] = f"/spend?{kind}={name}"
    return view


class KeysAdmin:
    """The handlers, over the process's registry."""

    def __init__(self, registry: KeyRegistry, counts: SpendCounts | None = None) -> None:
        self.registry = registry
        self.counts = counts

    def _spent(self, kind: str, name: str, limits: KeyLimits) -> defer.Deferred[AdminReply]:
        if self.counts is None:
            raise AdminError(409, "this gateway counts no limits")
        d = self.counts.spent(kind, name)

        def unavailable(failure: Failure) -> AdminReply:
            return AdminReply.error(503, f"cannot read the counts: {failure.getErrorMessage()}")

        return d.addCallbacks(
            lambda counts: AdminReply.json(spend_view(kind, name, limits, counts)), unavailable
        )

    def key_spend(self, request: AdminRequest) -> defer.Deferred[AdminReply]:
        known = self._key(request.params["name"])
        assert known.key is not None
        return self._spent(KEY, known.key.name, known.key.limits)

    def team_spend(self, request: AdminRequest) -> defer.Deferred[AdminReply]:
        known = self._team(request.params["name"])
        assert known.team is not None
        return self._spent(TEAM, known.team.name, known.team.limits)

    def _key(self, name: str) -> Known:
        known = self.registry.key_names.get(name)
        if known is None or known.key is None:
            raise AdminError(404, f"no key named {name!r}")
        return known

    def _team(self, name: str) -> Known:
        known = self.registry.team_names.get(name)
        if known is None or known.team is None:
            raise AdminError(404, f"no team named {name!r}")
        return known

    # -- keys -----------------------------------------------------------------------------

    def list_keys(self, request: AdminRequest) -> AdminReply:
        names = self.registry.key_names
        return AdminReply.json({"keys": [key_view(names[n]) for n in sorted(names)]})

    def show_key(self, request: AdminRequest) -> AdminReply:
        return AdminReply.json(key_view(self._key(request.params["name"])))

    def create_key(self, request: AdminRequest) -> defer.Deferred[AdminReply]:
        body = _fields(request.json_object(), _KEY_CREATE)
        secret = new_key()
        entry = {k: v for k, v in body.items() if v is not None}
        entry["hash"] = f"sha256:{hash_key(secret)}"
        if "name" not in entry:
            raise AdminError(400, "name: missing; a key needs a name (logs, metrics)")
        key = parse_key(Node(entry, "", {}))

        def created() -> AdminReply:
            log.info("admin API: key {key} created", key=key.name)
            view = key_view(self.registry.key_names.get(key.name) or Known("", key))
            return AdminReply.json(
                {"key": secret, **view},
                201,
                (("location", f"/keys/{key.name}"),),
            )

        return _then(_guarded(self.registry.create_key, key), created)

    def change_key(self, request: AdminRequest) -> defer.Deferred[AdminReply]:
        known = self._key(request.params["name"])
        current = known.key
        assert current is not None
        change = _fields(request.json_object(), _KEY_CHANGE)
        key: GatewayKey = parse_key(
            Node(_changed(key_document(current, digest=True), change), "", {})
        )

        def changed() -> AdminReply:
            log.info("admin API: key {key} changed", key=key.name)
            return AdminReply.json(key_view(self._key(key.name)))

        return _then(_guarded(self.registry.update_key, key), changed)

    def revoke_key(self, request: AdminRequest) -> defer.Deferred[AdminReply]:
        name = self._key(request.params["name"]).key.name  # type: ignore[union-attr]

        def revoked() -> AdminReply:
            log.info("admin API: key {key} revoked", key=name)
            return AdminReply.json({"name": name, "revoked": True})

        return _then(_guarded(self.registry.delete_key, name), revoked)

    # -- teams ----------------------------------------------------------------------------

    def list_teams(self, request: AdminRequest) -> AdminReply:
        names = self.registry.team_names
        return AdminReply.json(
            {"teams": [team_view(names[n], self.registry) for n in sorted(names)]}
        )

    def show_team(self, request: AdminRequest) -> AdminReply:
        return AdminReply.json(team_view(self._team(request.params["name"]), self.registry))

    def create_team(self, request: AdminRequest) -> defer.Deferred[AdminReply]:
        body = _fields(request.json_object(), _TEAM_CREATE)
        team: Team = parse_team(Node({k: v for k, v in body.items() if v is not None}, "", {}))

        def created() -> AdminReply:
            log.info("admin API: team {team} created", team=team.name)
            return AdminReply.json(
                team_view(self._team(team.name), self.registry),
                201,
                (("location", f"/teams/{team.name}"),),
            )

        return _then(_guarded(self.registry.create_team, team), created)

    def change_team(self, request: AdminRequest) -> defer.Deferred[AdminReply]:
        known = self._team(request.params["name"])
        assert known.team is not None
        change = _fields(request.json_object(), _TEAM_CHANGE)
        team = parse_team(Node(_changed(team_document(known.team), change), "", {}))

        def changed() -> AdminReply:
            log.info("admin API: team {team} changed", team=team.name)
            return AdminReply.json(team_view(self._team(team.name), self.registry))

        return _then(_guarded(self.registry.update_team, team), changed)

    def delete_team(self, request: AdminRequest) -> defer.Deferred[AdminReply]:
        name = request.params["name"]
        self._team(name)

        def deleted() -> AdminReply:
            log.info("admin API: team {team} deleted", team=name)
            return AdminReply.json({"name": name, "deleted": True})

        return _then(_guarded(self.registry.delete_team, name), deleted)


def register_routes(
    routes: AdminRoutes, registry: KeyRegistry, counts: SpendCounts | None = None
) -> None:
    """Serve the keys and teams API on the admin listener (what they spent so far from
    *counts*)."""
    api = KeysAdmin(registry, counts)
    for method, pattern, handler in (
        ("GET", "/keys", api.list_keys),
        ("POST", "/keys", api.create_key),
        ("GET", "/keys/{name}", api.show_key),
        ("PATCH", "/keys/{name}", api.change_key),
        ("DELETE", "/keys/{name}", api.revoke_key),
        ("GET", "/keys/{name}/spend", api.key_spend),
        ("GET", "/teams", api.list_teams),
        ("POST", "/teams", api.create_team),
        ("GET", "/teams/{name}", api.show_team),
        ("PATCH", "/teams/{name}", api.change_team),
        ("DELETE", "/teams/{name}", api.delete_team),
        ("GET", "/teams/{name}/spend", api.team_spend),
    ):
        routes.add(method, pattern, handler, owner="keys")
