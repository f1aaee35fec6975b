"""Credentials that expire (AWS, Google): fetched off the reactor, kept until shortly
before they expire, refreshed ahead of time.

A `RefreshingCredential` holds one credential for the clusters that use it. Its *fetch*
(a blocking call: a credentials file, STS, a metadata server, a token endpoint) runs in
the reactor's thread pool, one at a time: every request that needs the credential while
a fetch is under way waits for that one fetch (`ready`). Once fetched, a credential is
used until a margin before it expires (a tenth of its lifetime, at most a minute), and a
new one is fetched in the background from a quarter of its lifetime before that (at most
15 minutes, the window in which AWS's SDK refreshes itself): requests never wait for a
refresh that starts in time. A background refresh that fails is logged and tried again;
the old credential serves while it is usable. A fetch that fails while nothing usable is
held fails the requests that wait for it (`AuthorizationFailed`, naming the source).

Nothing here logs a credential: only where it came from and when it expires.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from filterproxy.filters.metrics import CounterFamily, MetricFamilies
from filterproxy.filters.records import AuthorizationFailed

__all__ = ["Authorizers", "Fetched", "RefreshingCredential", "counting", "fetch_counter"]

log = Logger(namespace="filterproxy.credentials")
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class _Held(Protocol):
    def prefetch(self) -> None: ...

    def close(self) -> None: ...


A = TypeVar("A", bound=_Held)

#: How long a credential without an expiry is kept before it is fetched again (its
#: source may have changed: a rotated file, new environment credentials).
NO_EXPIRY_REFETCH = 3600.0
#: The longest margin before expiry in which a credential is no longer used, and the
#: earliest a background refresh starts.
MAX_USE_MARGIN = 60.0
MAX_REFRESH_AHEAD = 900.0
#: A failed background refresh is tried again after this long (or sooner, before the
#: credential in hand runs out).
RETRY_AFTER_FAILURE = 30.0


def fetch_counter(families: MetricFamilies) -> CounterFamily:
    """``filterproxy_credential_fetches_total{cluster, result}``: each fetch of a
    cluster's credentials (at start-up, a refresh, after a refusal), ``ok`` or
    ``failed`` — a provider extension counts into it (`RefreshingCredential`'s
    *counted*)."""
    return families.counter(
        "filterproxy_credential_fetches",
        "Fetches of a cluster's expiring credentials (AWS, Google), by cluster and result "
        "(ok, failed). Failures while no usable credential is held answer 503.",
        ("cluster", "result"),
    )


def counting(fetches: CounterFamily | None, cluster: str) -> Callable[[bool], None] | None:
    """What counts *cluster*'s fetches into *fetches* (`fetch_counter`), if given."""
    if fetches is None:
        return None
    family = fetches
    return lambda ok: family.inc((cluster, "ok" if ok else "failed"))


@dataclass(frozen=True)
class Fetched(Generic[T]):
    """A credential and when it expires (seconds since the epoch; None: never)."""

    value: T
    expires_at: float | None


class RefreshingCredential(Generic[T]):
    """One expiring credential (see the module's description).

    Args:
        fetch: Gets the credential; blocks (it runs in a thread). Raises with a
            message that says what went wrong (never the secret).
        source: Where the credential comes from, for messages (``AWS credentials from
            the web identity token file``).
        clock: The reactor (its ``seconds`` is wall-clock time) or a test's clock.
        run: How *fetch* is run; by default in the reactor's thread pool.
        counted: Told of each fetch's end: True when it brought a credential.
    """

    def __init__(
        self,
        fetch: Callable[[], Fetched[T]],
        source: str,
        clock: Any,
        run: Callable[[Callable[[], Fetched[T]]], defer.Deferred[Fetched[T]]] | None = None,
        counted: Callable[[bool], None] | None = None,
    ) -> None:
        self.fetch = fetch
        self.counted = counted
        self.source = source
        self.clock = clock
        self.run = run or (lambda f: threads.deferToThread(f))
        self.current: Fetched[T] | None = None
        #: When `current` stops being used, and when its background refresh starts.
        self.use_until = 0.0
        self.refresh_at = 0.0
        self.fetching: defer.Deferred[Fetched[T]] | None = None
        self.waiters: list[defer.Deferred[None]] = []
        self.timer: Any = None
        self.fetches = 0
        self.stopped = False
        #: The last failure's message, while nothing usable is held.
        self.error: str | None = None

    # -- what requests use ------------------------------------------------------------

    @property
    def value(self) -> T:
        """The credential in hand (call `ready` first)."""
        assert self.current is not None
        return self.current.value

    def usable(self) -> bool:
        """Whether the credential in hand may sign a request now."""
        return self.current is not None and self.clock.seconds() < self.use_until

    def ready(self) -> defer.Deferred[None] | None:
        """None when a usable credential is in hand; else a Deferred (of this caller's
        own) that fires when one is, or fails with `AuthorizationFailed`."""
        if self.usable():
            return None
        waiter: defer.Deferred[None] = defer.Deferred()
        self.waiters.append(waiter)
        self._fetch()
        return waiter

    def invalidate(self) -> None:
        """The upstream refused the credential in hand (a 401): the next request
        fetches a new one."""
        self.use_until = 0.0

    def prefetch(self) -> None:
        """Fetch now (at start-up), so that the first request does not wait."""
        if self.current is None:
            self._fetch()

    def close(self) -> None:
        """Stop refreshing (the gateway stops)."""
        self.stopped = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # -- fetching -----------------------------------------------------------------------

    def _fetch(self) -> None:
        if self.fetching is not None or self.stopped:
            return
        self.fetches += 1
        started = self.clock.seconds()
        fetching = self.fetching = self.run(self.fetch)
        fetching.addCallbacks(self._fetched, self._failed, callbackArgs=(started,))

    def _fetched(self, fetched: Fetched[T], started: float) -> None:
        self.fetching = None
        if self.counted is not None:
            self.counted(True)
        self.error = None
        self.current = fetched
        now = self.clock.seconds()
        expires = fetched.expires_at
        if expires is None:
            self.use_until = float("inf")
            self.refresh_at = now + NO_EXPIRY_REFETCH
        else:
            lifetime = max(expires - started, 0.0)
            self.use_until = expires - min(MAX_USE_MARGIN, lifetime * 0.1)
            self.refresh_at = max(
                expires - min(MAX_REFRESH_AHEAD, lifetime * 0.25), min(now + 1.0, expires)
            )
        self._schedule(self.refresh_at - now)
        log.info(
            "{source}: fetched; {expiry}",
            source=self.source,
            expiry="no expiry" if expires is None else f"expires in {expires - now:.0f} s",
        )
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if self.usable():
                waiter.callback(None)
            else:
                waiter.errback(
                    AuthorizationFailed(
                        f"{self.source}: the credential fetched expires too soon to be used"
                    )
                )

    def _failed(self, failure: Failure) -> None:
        self.fetching = None
        if self.counted is not None:
            self.counted(False)
        message = f"{self.source}: {_reason(failure)}"
        usable = self.usable()
        if usable:
            log.warn("{message}; the credential in hand serves meanwhile", message=message)
            self._schedule(min(RETRY_AFTER_FAILURE, (self.use_until - self.clock.seconds()) / 2))
        else:
            self.error = message
            log.error("{message}", message=message)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.errback(AuthorizationFailed(message))

    def _schedule(self, delay: float) -> None:
        if self.stopped:
            return
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = self.clock.callLater(max(delay, 0.0), self._refresh)

    def _refresh(self) -> None:
        self.timer = None
        self._fetch()


def _reason(failure: Failure) -> str:
    """What went wrong, in one line (the exception's type when it has no message)."""
    text = " ".join(failure.getErrorMessage().split())
    name = failure.type.__name__ if failure.type is not None else "error"
    return f"{name}: {text}" if text and name not in text else (text or name)


class Authorizers(Generic[K, A]):
    """A provider's authorizers in one process, one per cluster's settings *K* (a reload
    that keeps a cluster's settings keeps its credentials; one that changes them makes
    new ones). A provider extension subclasses it (its class is its key in
    `filterproxy.filters.resources.Resources`).

    Args:
        make: The authorizer for one cluster's settings.
    """

    def __init__(self, make: Callable[[K], A]) -> None:
        self.make = make
        self.by_settings: dict[K, A] = {}

    def get(self, settings: K) -> A:
        """The authorizer of the cluster *settings* describe (made at its first use)."""
        found = self.by_settings.get(settings)
        if found is None:
            found = self.by_settings[settings] = self.make(settings)
        return found

    def activate(self, clusters: Iterable[K]) -> None:
        """The clusters of the config going in force: their credentials are fetched now,
        so that the first request does not wait; those of clusters gone are dropped."""
        wanted = list(clusters)
        for settings, authorizer in list(self.by_settings.items()):
            if settings not in wanted:
                authorizer.close()
                del self.by_settings[settings]
        for settings in wanted:
            self.get(settings).prefetch()

    def close(self) -> None:
        """Stop every refresh (the gateway stops)."""
        for authorizer in self.by_settings.values():
            authorizer.close()
        self.by_settings.clear()
