"""keys: only clients with a gateway key may use the gateway, within the key's limits
and its team's.

The key is read from ``Authorization: Bearer`` or ``x-api-key`` (what the OpenAI and
Anthropic SDKs send), looked up by its SHA-256 digest, and removed from the request: it
never reaches a provider. Missing or unknown: 401. A model the key may not use: 403.
Neither answer echoes the key.

A key with limits (`KeyLimits`), or whose team has some, is admitted against both
once the body has arrived: one round trip to Redis when the config names one (every
worker and replica counts together), or the counts of this process. The admission
reserves an estimate of the request's tokens
(`filterproxy.extensions.keys.limits.estimate_tokens`) and of its cost (the
`PriceQuote` the spend filter set, at that estimate); when the request ends — complete,
failed, or abandoned by its client — the reservation is settled with the provider's
usage as the usage filter read it (or with the input estimate when no usage came) and
with the `Cost` the spend filter set (none, or an upstream error: 0). Over a limit: 429
with ``retry-after``, ``retry-after-ms`` and OpenAI's ``x-ratelimit-*`` headers, which
every admitted response carries too. A spent budget: 429 ``insufficient_quota`` with
``x-should-retry: false``. A soft budget crossed: a log line and
``filterproxy_budget_alerts_total``.

When Redis cannot answer within its ``timeout``, ``on_error`` decides: ``open`` counts in
this process meanwhile, ``closed`` answers 503. The client reconnects by itself.
"""

from __future__ import annotations

import fnmatch
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from filterproxy.clients.redis import RedisClient
from filterproxy.config import Node, RedisConfig
from filterproxy.extensions.keys.admin import register_routes
from filterproxy.extensions.keys.config import GatewayKey, GatewayKeys, Team, hash_key
from filterproxy.extensions.keys.limits import (
    ADMIT_SCRIPT,
    KEY,
    SETTLE_SCRIPT,
    SLOT_TTL_MS,
    SPENT_SCRIPT,
    TEAM,
    Admission,
    Crossing,
    LocalCounts,
    Subject,
    admission_from_reply,
    crossings_from_reply,
    dollars,
    estimate_tokens,
    month_end_ms,
    rate_limit_headers,
    refusal,
    spent_from_reply,
    subject_prefix,
)
from filterproxy.extensions.keys.metrics import KeysMetrics
from filterproxy.extensions.keys.store import KeyRegistry
from filterproxy.filters.admin import AdminRoutes
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    HeadersResult,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.metrics import MetricFamilies
from filterproxy.filters.records import CacheResult, Cost, LimitRefusal, PriceQuote
from filterproxy.http.body import BadBody, parse_body

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = ["AdmissionStore", "KeysConfig", "KeysFilter", "LimitStore", "LimitStores"]

log = Logger(namespace="filterproxy.keys")
_CREDENTIALS: Final = frozenset({"authorization", "x-api-key"})


class AdmissionStore(Protocol):
    """Where the keys filter asks whether a request may go and charges what it used:
    `LimitStore` in the gateway; a test may give one that answers when it says."""

    def admit(
        self, subjects: Sequence[Subject], reserve: int, reserve_nano: int
    ) -> Admission | defer.Deferred[Admission]:
        """The admission of a request counted against *subjects* (its key, then its
        team), reserving *reserve* tokens and *reserve_nano* nanodollars, now or later."""

    def settle(
        self, subjects: Sequence[Subject], admission: Admission, used: int, cost_nano: int
    ) -> None:
        """The request is over: charge *used* tokens and *cost_nano* nanodollars, free
        its slot."""


class LimitStore:
    """Where keys' and teams' counts are kept: Redis when configured (with the local
    counts as the fallback of ``on_error: open``), else this process."""

    def __init__(
        self,
        redis: RedisConfig | None,
        client: RedisClient | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.redis = redis
        self._client = client
        #: Where the process's shared Redis client comes from (when none is given).
        self.resources = resources
        self.local = LocalCounts()
        #: Where soft budgets crossed are counted (the process's, with resources).
        self.metrics = (
            KeysMetrics.of(resources) if resources is not None else KeysMetrics(MetricFamilies())
        )

    def _now_ms(self) -> int:
        """The time the counts' windows are read on: the process's clock (the reactor's
        wall-clock time; a test's `Clock`), or the system's without resources."""
        resources = self.resources
        seconds = resources.clock.seconds() if resources is not None else time.time()
        return int(seconds * 1000)

    @property
    def client(self) -> RedisClient | None:
        """The Redis client, made at the first request (when the gateway's reactor runs:
        not while the config is read, before it is installed); None without Redis."""
        if self._client is None and self.redis is not None:
            if self.resources is None:
                raise RuntimeError("a LimitStore with Redis needs a client or the resources")
            self._client = self.resources.redis(self.redis.url, self.redis.timeout)
        return self._client

    def admit(
        self, subjects: Sequence[Subject], reserve: int, reserve_nano: int
    ) -> Admission | defer.Deferred[Admission]:
        """The admission of a request counted against *subjects* (its key, then its
        team) reserving *reserve* tokens and *reserve_nano* nanodollars: decided now
        (local counts), or when Redis answers (a `defer.Deferred`, which fails with
        `StoreUnavailable` under ``on_error: closed``)."""
        client = self.client
        if client is None:
            return self._admit_here(subjects, reserve, reserve_nano)
        now = self._now_ms()
        args: list[bytes | str | int] = [
            reserve,
            reserve_nano,
            secrets.token_hex(8),
            SLOT_TTL_MS,
            month_end_ms(now),
        ]
        for subject in subjects:
            limits = subject.limits
            args += (
                limits.requests_per_minute,
                limits.tokens_per_minute,
                limits.concurrent_requests,
                limits.tokens_per_day,
                limits.tokens_per_month,
                limits.usd_per_day,
                limits.usd_per_month,
                int(limits.in_dollars),
            )
        d = client.run_script(ADMIT_SCRIPT, tuple(s.prefix for s in subjects), tuple(args))
        d.addCallback(admission_from_reply, reserve, reserve_nano, subjects)
        return d.addErrback(self._unavailable, subjects, reserve, reserve_nano)

    def _admit_here(
        self, subjects: Sequence[Subject], reserve: int, reserve_nano: int
    ) -> Admission:
        return self.local.admit(subjects, reserve, reserve_nano, self._now_ms(), local=True)

    def _unavailable(
        self, failure: Failure, subjects: Sequence[Subject], reserve: int, reserve_nano: int
    ) -> Admission:
        log.warn("rate-limit store unavailable: {error}", error=failure.getErrorMessage())
        if self.redis is not None and self.redis.on_error == "closed":
            raise StoreUnavailable(failure.getErrorMessage())
        return self._admit_here(subjects, reserve, reserve_nano)

    def settle(
        self, subjects: Sequence[Subject], admission: Admission, used: int, cost_nano: int
    ) -> None:
        """The request is over: replace its reservations by *used* tokens and
        *cost_nano* nanodollars, free its slot, charge its budgets (in the store that
        admitted it; no one waits for this), and say which soft budgets it crossed."""
        client = self.client
        if client is None or admission.local:
            now = self._now_ms()
            self.alert(self.local.settle(subjects, admission, used, cost_nano, now))
            return
        args: list[bytes | str | int] = [
            admission.minute,
            admission.reserved,
            used,
            admission.slot,
            admission.day,
            admission.month,
            admission.reserved_nano,
            cost_nano,
        ]
        for subject in subjects:
            limits = subject.limits
            args += (
                int(bool(limits.tokens_per_day)),
                int(bool(limits.tokens_per_month)),
                int(bool(limits.concurrent_requests)),
                int(limits.in_dollars),
                limits.soft_usd_per_day,
                limits.soft_usd_per_month,
            )
        d = client.run_script(
            SETTLE_SCRIPT,
            tuple(s.prefix for s in subjects),
            tuple(args),
            soon=True,  # shares a write with the next admission, under load
        )
        d.addCallback(lambda reply: self.alert(crossings_from_reply(reply, subjects)))
        d.addErrback(
            lambda f: log.warn(
                "could not settle a request of key {key} in Redis: {error}",
                key=subjects[0].name if subjects else "",
                error=f.getErrorMessage(),
            )
        )

    def alert(self, crossings: Sequence[Crossing]) -> None:
        """Say that soft budgets were crossed: a log line and a metric each (once per
        window across every gateway: the store counted the crossing once)."""
        for crossing in crossings:
            log.warn(
                "soft budget crossed: the {kind} {name!r} has spent {spent} this {window}, "
                "past its soft budget of {soft} per {window}",
                kind=crossing.kind,
                name=crossing.name,
                window=crossing.window,
                spent=dollars(crossing.spent_nano),
                soft=dollars(crossing.threshold_nano),
            )
            self.metrics.budget_alerts.inc((crossing.kind, crossing.name, crossing.window))

    def spent(self, kind: str, name: str) -> defer.Deferred[dict[str, dict[str, Any]]]:
        """What the key (*kind* ``"key"``) or team (``"team"``) *name* has spent in the
        current UTC day and month, in one round trip (a read-only script), or from this
        process's counts without Redis. Fails with `StoreUnavailable` when Redis cannot
        answer (whatever ``on_error`` says: the counts of this process are not the
        spend)::

            {"day": {"window": "2026-12-07", "spent_nano": 1250000000,
                     "reserved_nano": 3000000, "tokens": 5120},
             "month": {"window": "2026-12", "spent_nano": ..., "reserved_nano": ...,
                       "tokens": ...}}

        ``spent_nano`` is the exact cost of the requests that ended (nanodollars,
        10^-9 USD), ``reserved_nano`` what requests in progress reserved (a hard budget
        is checked against the sum), ``tokens`` the tokens charged to the token
        budgets. Dollars are counted only for subjects with a dollar budget (hard or
        soft) and tokens only with a token budget of that window; otherwise 0.
        """
        if kind not in (KEY, TEAM):
            raise ValueError(f"kind is 'key' or 'team', not {kind!r}")
        client = self.client
        if client is None:
            return defer.succeed(self.local.spent(kind, name, self._now_ms()))
        d = client.run_script(SPENT_SCRIPT, (subject_prefix(kind, name),), ())
        d.addCallback(spent_from_reply)

        def unavailable(failure: Failure) -> dict[str, dict[str, Any]]:
            raise StoreUnavailable(failure.getErrorMessage())

        return d.addErrback(unavailable)


class StoreUnavailable(Exception):
    """Redis cannot answer and the policy is ``closed``."""


class LimitStores:
    """The process's stores (in its `Resources`), one per Redis setting: a reload
    keeps its connection and counts."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.stores: dict[tuple[str, float, str] | None, LimitStore] = {}

    def store_for(self, redis: RedisConfig | None) -> LimitStore:
        """The store for *redis* (None: the local counts)."""
        ident = (redis.url, redis.timeout, redis.on_error) if redis is not None else None
        store = self.stores.get(ident)
        if store is None:
            store = self.stores[ident] = LimitStore(redis, resources=self.resources)
        return store


def store_for(redis: RedisConfig | None, resources: Resources) -> LimitStore:
    """The process's store for *redis* (None: the local counts)."""
    return resources.get(LimitStores, LimitStores).store_for(redis)


@dataclass(frozen=True)
class KeysConfig:
    #: Keys by the SHA-256 digest of the key.
    keys: Mapping[str, GatewayKey]
    aliases: Mapping[str, str]
    store: AdmissionStore
    #: Where the filter counts (the process's; a config made without a process counts
    #: into families nobody scrapes).
    metrics: KeysMetrics = field(default_factory=lambda: KeysMetrics(MetricFamilies()))
    #: What the config says of keys, where run-time changes are kept, and the config's
    #: file (for `KeysFilter.activate`).
    section: GatewayKeys | None = None
    redis: RedisConfig | None = None
    source: str = ""
    #: Teams by name (the config's and those kept at run time).
    teams: Mapping[str, Team] = field(default_factory=dict)

    def team_of(self, key: GatewayKey) -> Team | None:
        """The team *key* belongs to, if any (the one place a key's team is looked up)."""
        return self.teams.get(key.team) if key.team is not None else None


def _presented(head: RequestHead) -> str | None:
    authorization = head.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = head.headers.get("x-api-key")
    return key.strip() if key else None


class KeysFilter(StreamFilter):
    """Gateway keys and their limits (see the module's description)."""

    provides = ("keys",)

    config: KeysConfig

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> KeysConfig:
        Node(dict(options), context.path, context.environ).mapping(set())
        config = context.config
        keys = config.section(GatewayKeys)
        if keys is None or not (keys.gateway_keys or keys.keys_checked):
            raise ValueError(
                "no keys to check: list them under 'keys' (or in a keys_file), or write "
                "'keys: []' to create them at run time; `filterproxy keys new NAME` makes one"
            )
        registry = context.resources.get(KeyRegistry, KeyRegistry)
        return KeysConfig(
            registry.keys_of(keys),
            config.aliases,
            store_for(config.redis, context.resources),
            KeysMetrics.of(context.resources),
            section=keys,
            redis=config.redis,
            source=config.source,
            teams=registry.teams_of(keys),
        )

    @classmethod
    def activate(cls, config: KeysConfig, resources: Resources) -> None:
        """The config goes in force: the process's keys and teams become its own (with
        those kept at run time), and the admin listener serves ``/keys`` and ``/teams``."""
        registry = resources.get(KeyRegistry, KeyRegistry)
        if config.section is not None:
            registry.configure(config.section, config.redis, config.source)
        counts = config.store if isinstance(config.store, LimitStore) else None
        register_routes(resources.get(AdminRoutes, AdminRoutes), registry, counts)

    def __init__(self, config: KeysConfig) -> None:
        super().__init__(config)
        self.key: GatewayKey | None = None
        self.team: Team | None = None
        #: What the request is counted against (its key, its team: those with limits).
        self.subjects: tuple[Subject, ...] = ()
        self.admission: Admission | None = None
        self.body_size = 0
        self.input_estimate = 0
        self.content_type: str | None = None
        self.done = False

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        presented = _presented(head)
        head.headers.remove_all(_CREDENTIALS)  # never forwarded, whatever follows
        if presented is None:
            self.callbacks.send_local_reply(
                401,
                "this gateway needs an API key: send it as 'Authorization: Bearer KEY' "
                "(or 'x-api-key: KEY')",
                code="missing_api_key",
                error_type="authentication_error",
            )
            return FilterStatus.STOP_ITERATION
        key = self.config.keys.get(hash_key(presented))
        if key is None:
            self.callbacks.send_local_reply(
                401,
                "the API key is not one of this gateway's keys; check it, or ask for one",
                code="invalid_api_key",
                error_type="authentication_error",
            )
            return FilterStatus.STOP_ITERATION
        self.key = key
        self.team = team = self.config.team_of(key)
        self.content_type = head.headers.get("content-type")
        info = self.callbacks.stream_info
        info.key_name = key.name
        info.team_name = team.name if team is not None else None
        if end_stream:
            return self._admit(None)
        return FilterStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        self.body_size += len(data)
        if not end_stream:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        key = self.key
        assert key is not None
        document = self.callbacks.request_json()
        if document is None:  # the body came in pieces: parsed here, once for the chain
            buffered = self.callbacks.buffered_request_body()
            try:
                document = parse_body(buffered + data, self.content_type)
            except BadBody:
                document = None  # the route filter answers it with a 400
            if document is not None:
                self.callbacks.set_request_json(document, changed=False)
        model = document.get("model") if document is not None else None
        if key.models and isinstance(model, str) and not self._may_use(key, model):
            self.callbacks.send_local_reply(
                403,
                f"the key {key.name!r} may not use the model {model!r}; it may use: "
                + ", ".join(key.models),
                code="model_not_allowed",
                error_type="permission_error",
            )
            return FilterStatus.STOP_ITERATION
        status = self._admit(document)
        if status is FilterStatus.STOP_ITERATION:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        return status  # CONTINUE, or the Redis answer to come: the body waits for it

    def _may_use(self, key: GatewayKey, model: str) -> bool:
        names = (model, self.config.aliases.get(model, model))
        return any(fnmatch.fnmatchcase(n, pattern) for n in names for pattern in key.models)

    def _admit(
        self, document: Mapping[str, Any] | None
    ) -> FilterStatus | defer.Deferred[FilterStatus]:
        key, team = self.key, self.team
        assert key is not None
        subjects = [Subject.of(KEY, key.name, key.limits)] if key.limits else []
        if team is not None and team.limits:
            subjects.append(Subject.of(TEAM, team.name, team.limits))
        if not subjects:
            return FilterStatus.CONTINUE
        self.subjects = tuple(subjects)
        prompt, output = estimate_tokens(self.body_size, document)
        self.input_estimate = prompt
        quote = self.callbacks.stream_info.state.get(PriceQuote)
        reserve_nano = quote.estimate_nano(prompt, output) if quote is not None else 0
        result = self.config.store.admit(self.subjects, prompt + output, reserve_nano)
        if not isinstance(result, Admission):
            # Redis answers later (or has failed at once, when not connected): the
            # chain holds the request until this Deferred says what to do.
            return result.addCallbacks(self._answered, self._store_failed)
        return FilterStatus.CONTINUE if self._decided(result) else FilterStatus.STOP_ITERATION

    def _decided(self, admission: Admission) -> bool:
        """Whether the request goes on (a refusal is answered here)."""
        key = self.key
        assert key is not None
        if admission.allowed:
            self.admission = admission
            return True
        team = self.team
        by_team = admission.subject == TEAM and team is not None
        if by_team and team is not None:
            message, code, headers = refusal(team.name, team.limits, admission, TEAM)
            self.config.metrics.team_refusals.inc((team.name, admission.refused))
        else:
            message, code, headers = refusal(key.name, key.limits, admission)
        self.callbacks.stream_info.state.set(LimitRefusal(key.name, admission.refused))
        self.config.metrics.refusals.inc((key.name, admission.refused))
        self.callbacks.send_local_reply(
            429,
            message,
            code=code,
            error_type="insufficient_quota" if code == "insufficient_quota" else "rate_limit_error",
            headers=headers,
        )
        return False

    def _answered(self, admission: Admission) -> FilterStatus:
        """Redis's answer: whether the request goes on."""
        if self.done:  # the client left while Redis answered: give the slot back at once
            if admission.allowed:
                self.config.store.settle(self.subjects, admission, 0, 0)
            return FilterStatus.STOP_ITERATION
        return FilterStatus.CONTINUE if self._decided(admission) else FilterStatus.STOP_ITERATION

    def _store_failed(self, failure: Failure) -> FilterStatus:
        if self.done:
            return FilterStatus.STOP_ITERATION
        if not failure.check(StoreUnavailable):
            log.failure("admission failed", failure)
        self.callbacks.send_local_reply(
            503,
            "the gateway cannot reach its rate-limit store; try again shortly",
            code="limits_unavailable",
            headers=[("retry-after", "1")],
        )
        return FilterStatus.STOP_ITERATION

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        admission = self.admission
        if admission is not None and self.key is not None:
            for name, value in rate_limit_headers(self.key.limits, admission):
                head.headers.set(name, value)
        return FilterStatus.CONTINUE

    def on_destroy(self) -> None:
        self.done = True
        admission = self.admission
        if admission is None:
            return
        self.admission = None
        info = self.callbacks.stream_info
        cached = info.state.get(CacheResult)
        if cached is not None and cached.served:
            # Answered from the cache, or with an identical request's answer: nothing
            # was generated for it, nothing is charged (its slot is freed).
            self.config.store.settle(self.subjects, admission, 0, 0)
            return
        if info.prompt_tokens is not None or info.completion_tokens is not None:
            used = (info.prompt_tokens or 0) + (info.completion_tokens or 0)
        else:
            used = self.input_estimate if info.status is not None and info.status < 400 else 0
        # The spend filter's on_destroy (before this one) priced the request; an
        # upstream error costs nothing.
        cost = info.state.get(Cost)
        failed = info.status is not None and info.status >= 400
        cost_nano = cost.nano_usd if cost is not None and not failed else 0
        self.config.store.settle(self.subjects, admission, used, cost_nano)
