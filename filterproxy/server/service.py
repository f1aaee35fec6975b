"""The running gateway: listeners, one connection pool per cluster, and the lifecycle
(start, reload, graceful stop)."""

from __future__ import annotations

import gc
import ipaddress
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger

from filterproxy.chain.manager import FilterManager
from filterproxy.chain.registry import FilterChain, build_chain
from filterproxy.config import Config, ConfigError
from filterproxy.downstream.server import GatewayServerFactory
from filterproxy.extensions.builtin import declare_metrics, load_config
from filterproxy.extensions.keys.config import GatewayKeys
from filterproxy.filters.admin import AdminRoutes
from filterproxy.filters.resources import Resources
from filterproxy.observability import accesslog
from filterproxy.observability.metrics import Metrics
from filterproxy.runtime.deadlines import deadlines_for
from filterproxy.runtime.listeners import (
    ReloadableServerTLS,
    ReusePortTLSEndpoint,
    reuse_port_endpoint,
    with_default_backlog,
)
from filterproxy.server import sdnotify
from filterproxy.server.watch import ConfigWatch
from filterproxy.server.workers import CANNOT_START, WORKER_SECRET_ENV, exit_after_shutdown
from filterproxy.upstream.cluster import Cluster
from filterproxy.upstream.router import Router

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort

    from filterproxy.chain.interfaces import IDownstream
    from filterproxy.observability.otel import SpanRecorder

__all__ = ["Gateway", "GatewayService"]

log = Logger(namespace="filterproxy.service")


class Gateway:
    """One config in force: its filter chain and clusters (with their connection pools).

    It observes every request it starts (`filterproxy.chain.manager.RequestObserver`):
    metrics, the access log, tracing. After a reload it is *retired*: requests in flight
    finish on it, and its pools close when the last one ends.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        metrics: Metrics | None = None,
        spans: SpanRecorder | None = None,
        access_file: accesslog.AccessLogFile | None = None,
        chain: FilterChain | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.config = config
        #: The filters every request goes through (built from the config's entries).
        if chain is None:
            resources = resources if resources is not None else Resources(reactor)
            chain = build_chain(config, resources)
            chain.activate(resources)
        self.chain = chain
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        self.spans = spans
        #: Where access-log lines go when the config names a file (else twisted.logger).
        self.access_file = access_file
        self.clusters = {
            name: Cluster(cluster, reactor) for name, cluster in config.clusters.items()
        }
        #: The reactor's coarse deadlines (request timeouts), looked up once.
        self.deadlines = deadlines_for(reactor)
        #: What logs call each filter of the chain: its type and key path.
        self.labels = self.chain.labels
        #: Each filter's constructor (a fallback cluster gets the filters after the
        #: route filter anew).
        self.factories = tuple(spec.create for spec in self.chain.specs)
        #: Requests started on this gateway and not finished.
        self.in_flight = 0
        self.retired = False
        self.closed = False

    def new_request(self, downstream: IDownstream) -> FilterManager:
        """A filter manager for one request arriving on *downstream*."""
        chain = self.chain
        return FilterManager(
            downstream,
            [spec.create() for spec in chain.specs],
            self._router,
            chain.buffer_limit,
            chain.shape,  # worked out once per chain
            self,
            self.labels,
            self.factories,
            clock=self.reactor,
        )

    def _router(self, manager: FilterManager) -> Router:
        return Router(manager, self)

    # -- RequestObserver ------------------------------------------------------------------

    def request_started(self, manager: FilterManager) -> None:
        self.in_flight += 1
        self.metrics.in_flight += 1
        if self.spans is not None:
            self.spans.start(manager)

    def stream_started(self, manager: FilterManager) -> None:
        self.metrics.open_streams += 1

    def request_finished(self, manager: FilterManager) -> None:
        info = manager.stream_info
        duration = time.monotonic() - info.started
        metrics = self.metrics
        streamed = manager.event_stream and manager.response_started
        if streamed:
            metrics.open_streams -= 1
        router = manager.router
        overhead = router.overhead if isinstance(router, Router) else None
        metrics.record_request(info, duration, overhead, streamed)
        if self.access_file is not None:
            self.access_file.write(manager.head, info, duration)
        elif self.config.access_log:
            accesslog.emit(manager.head, info, duration)
        if self.spans is not None:
            self.spans.finish(manager, duration)
        if manager.head is not None:  # request_started was called
            self.in_flight -= 1
            metrics.in_flight -= 1
            if self.retired and not self.in_flight:
                self.close()

    # -- lifecycle ------------------------------------------------------------------------

    def retire(self) -> None:
        """A newer config took over: close the pools once the last request is done."""
        self.retired = True
        if not self.in_flight:
            self.close()

    def close(self) -> None:
        """Close idle upstream connections; busy ones close as their response ends."""
        if self.closed:
            return
        self.closed = True
        for cluster in self.clusters.values():
            cluster.close()


def _open_access_log(config: Config, reactor: Any) -> accesslog.AccessLogFile | None:
    """The access-log file the config names, opened (a ConfigError when it cannot be)."""
    if config.access_log_path is None:
        return None
    try:
        return accesslog.AccessLogFile(config.access_log_path, reactor)
    except OSError as e:
        raise ConfigError("access_log", accesslog.cannot_open(config.access_log_path, e)) from None


def _loopback(host: str) -> bool:
    """Whether *host* (a listening address) is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class GatewayService(Service):
    """Listens on the config's endpoints (or those given with --listen), serves the admin
    listener, reloads on SIGHUP, and tells systemd how it is doing."""

    def __init__(
        self,
        config: Config,
        listeners: tuple[str, ...] | None = None,
        reactor: Any = None,
        *,
        reuse_port: bool = False,
        admin_listener: str | None = None,
        worker_index: int | None = None,
        chain: FilterChain | None = None,
        resources: Resources | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        #: What the process's configs share (Redis clients, the resumable streams...),
        #: kept across reloads and closed at stop. Given with the *chain* built on it.
        self.resources = resources if resources is not None else Resources(reactor)
        if worker_index is not None:
            # What the workers sign the addresses in their stream ids with: a resume
            # may reach another worker than the one holding the stream.
            self.resources.worker_secret = os.environ.get(WORKER_SECRET_ENV) or None
        self.cli_listeners = listeners
        self.listener_descriptions = listeners or config.listeners
        if not self.listener_descriptions:
            raise ConfigError(
                "listeners",
                "no listeners; add one, e.g. listeners: ['tcp:8080:interface=127.0.0.1'], "
                "or pass --listen",
            )
        self.admin_description = admin_listener or config.admin_listener
        if self.admin_description is not None and worker_index:
            self.admin_description = _shift_port(self.admin_description, worker_index)
        # The extensions' metrics are theirs, kept in the resources: each scrape shows
        # the built-in ones whatever the config (as zero until counted).
        declare_metrics(self.resources)
        self.metrics = Metrics(self.resources.metrics)
        self.spans: SpanRecorder | None = None
        if config.tracing is not None:
            from filterproxy.observability.otel import SpanRecorder

            self.spans = SpanRecorder(config.tracing)
        self.access_file = _open_access_log(config, reactor)
        if chain is None:
            chain = build_chain(config, self.resources)
        chain.activate(self.resources)
        self.gateway = Gateway(
            config, reactor, self.metrics, self.spans, self.access_file, chain=chain
        )
        self.factory = GatewayServerFactory(self.gateway)
        self.ports: list[IListeningPort] = []
        self.admin_port: IListeningPort | None = None
        #: The TLS options of the ssl: listeners (their certificates reload with the config).
        self.tls_listeners: list[ReloadableServerTLS] = []
        #: Bind TCP listeners with SO_REUSEPORT (a worker of several).
        self.reuse_port = reuse_port
        #: Workers do not talk to systemd; their supervisor does.
        self.notify_systemd = worker_index is None
        self.worker_index = worker_index
        self.listen_failed = False
        #: SIGTERM arrived: ``/ready`` answers 503 from then on.
        self.stopping = False
        #: Reloads when the config's files change (``config_watch``).
        self.watch: ConfigWatch | None = None

    def startService(self) -> None:
        super().startService()
        if self.access_file is not None:
            self.access_file.start()
        # Everything loaded so far lives as long as the process: keep it out of the
        # garbage collector's passes. And collect less often than CPython's default
        # (every 700 allocations): each request allocates a few hundred objects, and
        # frequent passes over thousands of live streams showed as 30 ms stalls in
        # time-to-first-byte p99 (bench: 36.5 -> 5.9 ms at 200 streams).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        listening = []
        for description in self.listener_descriptions:
            try:
                if self.reuse_port or description.startswith("ssl:"):
                    # ssl: listeners are ours, so that a reload can renew the certificate.
                    endpoint: Any = reuse_port_endpoint(
                        self.reactor, description, reuse=self.reuse_port
                    )
                    if isinstance(endpoint, ReusePortTLSEndpoint):
                        self.tls_listeners.append(endpoint.options)
                else:
                    endpoint = serverFromString(self.reactor, with_default_backlog(description))
            except (IndexError, KeyError, ValueError, OSError) as e:
                self._cannot_listen(description, e)
                return
            listening.append(
                endpoint.listen(self.factory).addCallbacks(
                    self._listening,
                    self._listen_failed,
                    errbackArgs=(description,),
                    callbackArgs=(description,),
                )
            )
        if self.admin_description is not None:
            from filterproxy.server.admin import admin_factory

            site = admin_factory(
                lambda: self.gateway,
                self.metrics.registry(),
                self.reload,
                self.reactor,
                self.held,
                stopping=lambda: self.stopping,
                routes=self.resources.get(AdminRoutes, AdminRoutes),
            )
            try:
                admin_endpoint = serverFromString(
                    self.reactor, with_default_backlog(self.admin_description)
                )
            except (IndexError, KeyError, ValueError, OSError) as e:
                self._cannot_listen(self.admin_description, e)
                return
            listening.append(
                admin_endpoint.listen(site).addCallbacks(
                    self._admin_listening,
                    self._listen_failed,
                    errbackArgs=(self.admin_description,),
                )
            )
        defer.gatherResults(listening).addCallback(self._ready)
        self._watch(self.config.config_watch)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._sighup)

    def _listening(self, port: IListeningPort, description: str) -> None:
        self.ports.append(port)
        address = port.getHost()
        log.info(
            "filterproxy listening on {address} ({description})",
            address=address,
            description=description,
        )
        host = getattr(address, "host", None)
        keys = self.config.section(GatewayKeys)
        open_to_all = keys is None or not (keys.gateway_keys or keys.keys_checked)
        if host is not None and open_to_all and not _loopback(host):
            log.warn(
                "no gateway keys are configured and the gateway listens on {host}: anyone "
                "who reaches it spends the provider keys it holds. Add keys (filterproxy "
                "keys new NAME) or listen on 127.0.0.1 only",
                host=host,
            )

    def _admin_listening(self, port: IListeningPort) -> None:
        self.admin_port = port
        log.info(
            "admin listening on {address}: /metrics /healthz /ready /config, POST /reload"
            "{management}",
            address=port.getHost(),
            management=" and the management API (admin.token)" if self.config.admin_token else "",
        )

    def _cannot_listen(self, description: str, error: Exception) -> None:
        if description.startswith("systemd:"):
            problem = (
                "systemd passed no socket at that index (LISTEN_FDS / LISTEN_PID); start "
                "the gateway through its .socket unit, or listen on a tcp: endpoint"
            )
        else:
            problem = f"{type(error).__name__}: {error}"
        log.error(
            "cannot listen on {description}: {problem}", description=description, problem=problem
        )
        self._start_failed()

    def _listen_failed(self, failure: Any, description: str) -> None:
        log.error(
            "cannot listen on {description}: {problem}",
            description=description,
            problem=failure.getErrorMessage(),
        )
        self._start_failed()

    def _start_failed(self) -> None:
        """A listener could not be bound: stop, with `CANNOT_START` as the exit status
        (under --workers, the supervisor then stops rather than restart the worker)."""
        if self.listen_failed:
            return
        self.listen_failed = True
        exit_after_shutdown(CANNOT_START)
        self.reactor.callLater(0, self.reactor.stop)

    def _ready(self, _: object) -> None:
        if self.notify_systemd and not self.listen_failed:
            sdnotify.notify("READY=1\nSTATUS=serving")

    def watched_files(self) -> tuple[str, ...]:
        """What ``config_watch`` looks at: the config file, its ``keys_file``, the
        ``ssl:`` listeners' key and certificate files."""
        files = [self.config.source]
        keys = self.config.section(GatewayKeys)
        if keys is not None and keys.keys_file:
            files.append(keys.keys_file)
        for listener in self.tls_listeners:
            files.extend(v for k, v in sorted(listener.files.items()) if k in _TLS_FILE_OPTIONS)
        return tuple(files)

    def _watch(self, interval: float) -> None:
        """Watch the config's files every *interval* seconds (none when 0)."""
        if self.watch is not None:
            if self.watch.interval == interval:
                return
            self.watch.stop()
            self.watch = None
        if interval > 0 and self.running and not self.stopping:
            self.watch = ConfigWatch(self.reactor, interval, self.watched_files, self.reload)
            self.watch.start()

    def held(self) -> dict[str, Any]:
        """The structures the gateway keeps, for the admin's ``GET /memory``: each should
        follow what is open now (connections, requests, pooled upstream connections)."""
        reactor = self.reactor
        pools: dict[str, dict[str, int]] = {}
        for name, cluster in self.gateway.clusters.items():
            for endpoint in cluster.endpoints:
                pool = endpoint.pool
                pools[f"{name} {endpoint.config.url}"] = {
                    "open": pool.open_count,
                    "idle_http1": len(pool.idle),
                    "http2": len(pool.h2_connections),
                    "waiting_requests": len(pool.waiters),
                }
        return {
            "client_connections": len(self.factory.connections),
            "requests_in_flight": self.metrics.in_flight,
            "upstream_pools": pools,
            "timeouts": len(deadlines_for(reactor).entries),
            "timed_calls": len(reactor.getDelayedCalls()),
            "sockets_watched": len(set(reactor.getReaders()) | set(reactor.getWriters())),
        }

    # -- reload -------------------------------------------------------------------------

    def _sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> str | None:
        """Re-read the config file. A valid config applies to new requests at once; the
        requests in flight finish on the old one. An invalid one is logged and ignored.
        Returns None, or the error message."""
        if self.notify_systemd:
            sdnotify.notify(sdnotify.reloading_message())
        try:
            error = self._reload()
        finally:
            if self.notify_systemd:
                sdnotify.notify("READY=1\nSTATUS=serving")
        return error

    def _reload(self) -> str | None:
        source = self.config.source
        try:
            config = load_config(source)
            chain = build_chain(config, self.resources)
        except ConfigError as e:
            log.error(
                "config reload rejected, the running config stays in force: {source}: {error}",
                source=source,
                error=str(e),
            )
            return f"{source}: {e}"
        try:
            certificates = [listener.load() for listener in self.tls_listeners]
        except ValueError as e:
            log.error(
                "config reload rejected, a listener's certificate cannot be used: {error}",
                error=str(e),
            )
            return str(e)
        try:
            access_file = self._reopen_access_log(config)
        except ConfigError as e:
            log.error("config reload rejected: {error}", error=str(e))
            return str(e)
        for listener, certificate in zip(self.tls_listeners, certificates, strict=True):
            listener.current = certificate
        if config.listeners != self.config.listeners and not self.cli_listeners:
            log.warn("listeners changed in {source}; restart the gateway to apply", source=source)
        if config.admin_listener != self.config.admin_listener:
            log.warn("admin.listen changed in {source}; restart to apply", source=source)
        if config.tracing != self.config.tracing:
            log.warn("tracing changed in {source}; restart to apply", source=source)
        old = self.gateway
        self.config = config
        chain.activate(self.resources)
        self.gateway = Gateway(
            config, self.reactor, self.metrics, self.spans, access_file, chain=chain
        )
        self.factory.gateway = self.gateway
        old.access_file = access_file  # its last requests log where the new ones do
        old.retire()
        self._watch(config.config_watch)
        log.info(
            "config reloaded from {source}; {n} requests in flight finish on the old one",
            source=source,
            n=old.in_flight,
        )
        return None

    def _reopen_access_log(self, config: Config) -> accesslog.AccessLogFile | None:
        """The access-log file for a reloaded *config*: the same file opened anew (after
        logrotate moved it), another one, or none."""
        current = self.access_file
        if current is not None and current.path == config.access_log_path:
            try:
                current.reopen()
            except OSError as e:
                raise ConfigError("access_log", accesslog.cannot_open(current.path, e)) from None
            return current
        new = _open_access_log(config, self.reactor)
        if new is not None and self.running:
            new.start()
        if current is not None:
            current.close()  # requests finishing on the old config write to the new file
        self.access_file = new
        return new

    # -- stop ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """``/ready`` answers 503; after ``shutdown_delay``, stop accepting; let requests
        in flight finish (up to ``shutdown_grace``); close. The admin listener stays until
        the end, so health checks and scrapes see the drain."""
        super().stopService()
        self.stopping = True
        if self.watch is not None:
            self.watch.stop()
        if self.notify_systemd:
            sdnotify.notify("STOPPING=1")
        delay = self.config.shutdown_delay
        if delay > 0 and self.ports:
            log.info(
                "shutting down: /ready answers 503; accepting requests for {delay:g}s more",
                delay=delay,
            )
            yield deferLater(self.reactor, delay, lambda: None)
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])
        self.factory.drain()
        deadline = self.reactor.seconds() + self.config.shutdown_grace
        if self.factory.active_streams:
            log.info(
                "shutting down: waiting up to {grace:g}s for {n} requests in progress",
                grace=self.config.shutdown_grace,
                n=self.factory.active_streams,
            )
        while self.factory.active_streams and self.reactor.seconds() < deadline:
            yield deferLater(self.reactor, 0.1, lambda: None)
        for connection in list(self.factory.connections):
            connection.abort()
        if self.admin_port is not None:
            yield defer.maybeDeferred(self.admin_port.stopListening)
        self.gateway.close()
        if self.spans is not None:
            yield self.spans.shutdown()
        if self.access_file is not None:
            self.access_file.close()
        yield self.resources.close()


#: The options of an ``ssl:`` endpoint that name files (`ReloadableServerTLS.files`).
_TLS_FILE_OPTIONS = frozenset({"privateKey", "certKey", "extraCertChain", "dhParameters"})


def _shift_port(description: str, offset: int) -> str:
    """*description* (``tcp:PORT...``) with PORT + *offset*: worker N's admin listener.
    Port 0 (any free port) stays 0."""
    kind, sep, rest = description.partition(":")
    port, colon, options = rest.partition(":")
    if kind not in ("tcp", "tcp6") or not port.isdigit() or port == "0":
        return description
    return f"{kind}{sep}{int(port) + offset}{colon}{options}"
