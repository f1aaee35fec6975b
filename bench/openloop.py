"""A constant-rate (open-loop) HTTP/1.1 load generator, in the manner of vegeta's attack.

    stats = asyncio.run(attack(port, request, rate=1000, seconds=30, timeout=1.0))

Request *n* is due at ``start + n / rate`` whatever happened to the ones before it: a
slow answer does not hold the next request back (a closed-loop tool such as wrk sends
the next request on a connection only when the last one is answered, and so measures
fewer slow answers than a steady stream of users meets). Each due request takes an idle
keep-alive connection, or opens a new one when none is idle, as vegeta does; a request
not answered within *timeout* counts as failed and its connection is closed.

Latency is taken as vegeta takes it: from the moment the generator starts a request
(on a new connection, before connecting) to its last byte. How far behind its due time
each request was started is kept apart (``late_ms``): it says whether the generator
held the rate. With a *warmup*, requests due in its first seconds are sent and counted
as answered or failed but their latency and lateness are left out: the ramp, while
every request in flight opens a connection of its own, is not what a sustained rate
meets. One process, one asyncio loop (epoll): the pacer wakes at the loop's
millisecond resolution and starts every request that has come due since, so requests
start up to about a millisecond late, in small bursts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

#: The error messages kept as samples, at most.
SAMPLES = 5


@dataclass
class AttackStats:
    """What one attack measured."""

    #: The rate asked for, per second, for how long requests were sent after the warm-up,
    #: and the warm-up.
    rate: float
    seconds: float
    warmup: float = 0.0
    #: Requests sent, answered with a 200, and failed (another status, a timeout, a
    #: connection lost or refused).
    sent: int = 0
    ok: int = 0
    failed: int = 0
    timeouts: int = 0
    #: Connections opened over the attack (one per request in flight at the peak).
    connections: int = 0
    #: When the last request was started, seconds after the first was due.
    send_span_s: float = 0.0
    #: Each successful request's latency, from its start to its last byte.
    latency_ms: list[float] = field(default_factory=list)
    #: How late each request was started after it was due.
    late_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.error_samples) < SAMPLES:
            self.error_samples.append(what)

    @property
    def success(self) -> float:
        """The share of requests sent that were answered with a 200."""
        return self.ok / self.sent if self.sent else 0.0

    @property
    def achieved_rate(self) -> float:
        """Requests written per second over the sending span."""
        return (self.sent - 1) / self.send_span_s if self.send_span_s > 0 else 0.0


class Exchange(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time.

    States: CONNECTING (``transport`` is None: a request given now is written once the
    connection is up), BUSY (a request given, its answer not complete), IDLE (in the
    attack's pool), CLOSED (lost, or given up on; never reused).
    """

    def __init__(self, attack: Attack) -> None:
        self.attack = attack
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        #: When the request in flight was started (loop time), and its timeout's handle.
        self.started = 0.0
        #: Whether its latency counts (it was due after the warm-up).
        self.measured = False
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False
        self.closed = False
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closed:  # its request timed out while it connected
            transport.abort()
        elif self.busy:
            self.write()

    def send(self, due: float) -> None:
        """Carry the attack's request, due at *due* (loop time); its latency and its
        timeout run from now, connected or not."""
        attack = self.attack
        self.busy = True
        self.started = attack.loop.time()
        self.measured = due >= attack.measure_from
        if self.measured:
            attack.stats.late_ms.append((self.started - due) * 1000)
        self.status = 0
        self.timer = attack.loop.call_at(self.started + attack.timeout, self.timed_out)
        if self.transport is not None:
            self.write()

    def write(self) -> None:
        assert self.transport is not None
        self.transport.write(self.attack.request)

    def timed_out(self) -> None:
        self.timer = None
        if not self.busy:
            return
        self.busy = False
        self.closed = True
        self.attack.stats.timeouts += 1
        self.attack.finish(self, f"no answer within {self.attack.timeout} s", reuse=False)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.give_up(f"bad HTTP: {e}")
            if self.transport is not None:
                self.transport.abort()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        if not self.busy:
            return
        self.busy = False
        self.cancel_timer()
        error = None if self.status == 200 else f"status {self.status}"
        self.attack.finish(self, error, reuse=self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.give_up(f"connection lost: {exc}")
        self.closed = True

    def give_up(self, why: str) -> None:
        """Fail the request in flight, if any, for *why*."""
        if self.busy:
            self.busy = False
            self.cancel_timer()
            self.closed = True
            self.attack.finish(self, why, reuse=False)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Attack:
    """The requests of one attack, its pool of idle connections and its tally."""

    def __init__(
        self,
        port: int,
        request: bytes,
        rate: float,
        seconds: float,
        timeout: float,
        warmup: float = 0.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.port = port
        self.request = request
        self.rate = rate
        self.total = int(rate * (warmup + seconds))
        self.timeout = timeout
        self.warmup = warmup
        #: Requests due from then on are measured (loop time; set when the attack starts).
        self.measure_from = float("inf")
        self.stats = AttackStats(rate=rate, seconds=seconds, warmup=warmup)
        self.idle: list[Exchange] = []
        self.in_flight = 0
        self.all_done = self.loop.create_future()
        self.sending = True

    def fire(self, due: float) -> None:
        """Send one request due at *due* on an idle connection, or a new one."""
        self.stats.sent += 1
        self.in_flight += 1
        while self.idle:
            exchange = self.idle.pop()
            if not exchange.closed:
                exchange.send(due)
                return
        exchange = Exchange(self)
        exchange.send(due)  # written once it connects
        self.stats.connections += 1
        self.loop.create_task(self.connect(exchange))

    async def connect(self, exchange: Exchange) -> None:
        try:
            await self.loop.create_connection(lambda: exchange, "127.0.0.1", self.port)
        except OSError as e:
            exchange.give_up(f"connect: {e}")
            exchange.closed = True

    def finish(self, exchange: Exchange, error: str | None, *, reuse: bool) -> None:
        """Tally the request *exchange* carried (*error*: why it failed) and pool it."""
        if error is None:
            self.stats.ok += 1
            if exchange.measured:
                self.stats.latency_ms.append((self.loop.time() - exchange.started) * 1000)
        else:
            self.stats.fail(error)
        if reuse and not exchange.closed:
            self.idle.append(exchange)
        elif exchange.transport is not None and not exchange.closed:
            exchange.transport.close()
        self.in_flight -= 1
        if not self.sending and self.in_flight == 0 and not self.all_done.done():
            self.all_done.set_result(None)

    async def run(self) -> AttackStats:
        start = self.loop.time() + 0.01
        self.measure_from = start + self.warmup
        sent = 0
        while sent < self.total:
            now = self.loop.time()
            due = min(self.total, int((now - start) * self.rate) + 1)
            while sent < due:
                self.fire(start + sent / self.rate)
                sent += 1
            await asyncio.sleep(max(0.0, start + sent / self.rate - self.loop.time()))
        self.stats.send_span_s = self.loop.time() - start
        self.sending = False
        if self.in_flight:
            await asyncio.wait_for(self.all_done, self.timeout + 5)
        for exchange in self.idle:
            if exchange.transport is not None:
                exchange.transport.close()
        await asyncio.sleep(0.05)  # let the closes go out
        return self.stats


async def attack(
    port: int,
    request: bytes,
    rate: float,
    seconds: float,
    timeout: float,
    every_second: Callable[[], None] | None = None,
    warmup: float = 0.0,
) -> AttackStats:
    """*request* sent to 127.0.0.1:*port* at *rate* per second for *warmup* + *seconds*;
    each given *timeout* seconds. *every_second*, if given, is called once a second
    meanwhile (to sample the proxy's memory, say)."""
    sampler: asyncio.Task[None] | None = None
    if every_second is not None:
        sampler = asyncio.get_running_loop().create_task(_every_second(every_second))
    try:
        return await Attack(port, request, rate, seconds, timeout, warmup).run()
    finally:
        if sampler is not None:
            sampler.cancel()


async def _every_second(call: Callable[[], None]) -> None:
    while True:
        call()
        await asyncio.sleep(1.0)


def post(path: str, body: bytes) -> bytes:
    """A keep-alive JSON POST of *body* to *path*, as the attack sends it."""
    return (
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer sk-client\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(body), body)
    )
