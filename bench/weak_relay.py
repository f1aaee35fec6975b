"""The relay in front of the weak-link benchmark's client: the latency, jitter, stalls
and drops of a mobile network, which this kernel's traffic control cannot add (it has
no ``netem``). It runs in the client's network namespace, in the client's process
(asyncio), between the client (loopback) and the tbf-shaped veth to the gateway.

Each connection the client opens becomes a `Pair`: the client's side and a connection
of the relay's to the target over the link. Bytes go through a `Direction` each way,
held for the profile's latency (plus jitter, in order: a TCP stream is not reordered)
before they are written on. The relay must not hide the link from the gateway: a
direction holds at most ``Profile.relay_buffer`` bytes, then stops reading its source,
and the relay's socket on the link has a small fixed receive buffer (no autotuning), so
the window it advertises closes soon after and the gateway's writes back up. During a
stall nothing is read or written either way. A drop aborts both sides of every
connection (RST): the client sees its connection reset and the gateway sees it gone.

A new connection costs a round trip of the emulated latency, as its handshake would;
what the client sends meanwhile leaves after it, with its own latency. (TCP on the
link does not see the added latency: the relay acknowledges what it reads at once.
The gateway's congestion control sees the veth and the carrier's queue; the client
sees the whole delay.)
"""

from __future__ import annotations

import asyncio
import enum
import random
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bench.weak_link import Profile

#: The relay's receive buffer on the link (the kernel doubles it), fixed: no autotuning.
#: A carrier's queue holds a few hundred milliseconds of the link's rate (18 KB at 3G's
#: 750 kbit/s in 200 ms); a window of that order lets the link run at its rate, and
#: during a stall it closes after about that much, so what the gateway writes meanwhile
#: waits in its own socket. (16 KiB let a 2 s stall of two streams at 3G's pace be
#: absorbed here; the gateway's send queue rose to 10 KB. With 8 KiB, 35 KB.)
LINK_RCVBUF = 8 * 1024


@dataclass
class RelayStats:
    """What went through the relay: payload bytes each way, and what it did."""

    bytes_down: int = 0
    bytes_up: int = 0
    connections: int = 0
    stalls: int = 0
    drops: int = 0
    connections_dropped: int = 0

    def count_down(self, size: int) -> None:
        self.bytes_down += size

    def count_up(self, size: int) -> None:
        self.bytes_up += size


class Direction:
    """One way through a pair: read from *source*, held, written to *sink*.

    Args:
        relay: the relay (its stall state and clock).
        count: adds a number of bytes to this direction's count in the stats.
    """

    def __init__(self, relay: Relay, count: Callable[[int], None]) -> None:
        self.relay = relay
        self.count = count
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        #: (when it may go on, the bytes), in order.
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0
        #: The release time of the last bytes queued: no later bytes go before it.
        self.last_release = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.reading = True
        #: The source ended: close the sink once the queue is delivered.
        self.ended = False

    def push(self, data: bytes) -> None:
        relay = self.relay
        self.count(len(data))
        release = max(self.last_release, relay.loop.time() + relay.latency())
        self.last_release = release
        self.queue.append((release, data))
        self.held += len(data)
        self.regulate()
        self.schedule()

    def restart_clock(self) -> None:
        """What waited for the link's connection leaves now, each piece with its latency
        counted from now: it could not be sent before the handshake was over."""
        waiting = [data for _, data in self.queue]
        self.queue.clear()
        self.last_release = 0.0
        relay = self.relay
        for data in waiting:
            self.last_release = max(self.last_release, relay.loop.time() + relay.latency())
            self.queue.append((self.last_release, data))

    def end(self) -> None:
        self.ended = True
        self.schedule()

    def backlog(self) -> int:
        sink = self.sink
        return self.held + (sink.get_write_buffer_size() if sink is not None else 0)

    def regulate(self) -> None:
        """Stop reading the source when too much is held (or during a stall); read it
        again once half of that has gone on."""
        source = self.source
        if source is None or source.is_closing():
            return
        backlog = self.backlog()
        limit = self.relay.profile.relay_buffer
        if self.reading and (self.relay.stalled or backlog >= limit):
            self.reading = False
            source.pause_reading()
        elif not self.reading and not self.relay.stalled and backlog < limit // 2:
            self.reading = True
            source.resume_reading()

    def schedule(self) -> None:
        if self.timer is not None or self.relay.stalled or self.sink is None:
            return
        if self.queue:
            self.timer = self.relay.loop.call_at(self.queue[0][0], self.deliver)
        elif self.ended and not self.sink.is_closing():
            self.sink.close()

    def deliver(self) -> None:
        self.timer = None
        sink = self.sink
        if self.relay.stalled or sink is None or sink.is_closing():
            return
        now = self.relay.loop.time()
        queue = self.queue
        while queue and queue[0][0] <= now:
            _, data = queue.popleft()
            self.held -= len(data)
            sink.write(data)
        self.regulate()
        self.schedule()

    def halt(self) -> None:
        """A stall began: nothing goes on until `go_on`."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.regulate()

    def go_on(self) -> None:
        self.regulate()
        self.schedule()

    def clear(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.held = 0


class PairState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Pair:
    """A client's connection and the relay's connection for it over the link.

    States: CONNECTING (the client is there, the link side not yet: what the client
    sends waits), OPEN, CLOSING (one side ended: what is held for the other is
    delivered, then that is closed too), CLOSED (both gone, or a drop aborted both).
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.state = PairState.CONNECTING
        self.up = Direction(relay, relay.stats.count_up)
        self.down = Direction(relay, relay.stats.count_down)
        self.client: asyncio.Transport | None = None
        self.link: asyncio.Transport | None = None
        #: Opening the link side (kept: the loop holds only a weak reference to it).
        self.connecting: asyncio.Task[None] | None = None

    def client_arrived(self, transport: asyncio.Transport) -> None:
        self.client = transport
        self.up.source = transport
        self.down.sink = transport
        self.up.regulate()
        self.connecting = asyncio.ensure_future(self.connect())

    async def connect(self) -> None:
        relay = self.relay
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LINK_RCVBUF)
        try:
            # The handshake over the link takes a round trip of the emulated latency
            # (the kernel's, on the veth, takes none): what the client sends meanwhile
            # waits, as it would for the SYN's answer.
            await asyncio.sleep(relay.latency() + relay.latency())
            await relay.loop.sock_connect(sock, relay.target)
            transport, _ = await relay.loop.create_connection(lambda: LinkSide(self), sock=sock)
        except OSError:
            sock.close()
            self.abort()
            return
        if self.state is not PairState.CONNECTING:
            transport.abort()
            return
        self.state = PairState.OPEN
        self.link = transport
        self.up.sink = transport
        self.down.source = transport
        self.down.regulate()
        self.up.restart_clock()
        self.up.schedule()

    def side_ended(self, direction: Direction) -> None:
        """One side's connection ended (EOF or closed): deliver what it sent, then
        close the other side."""
        if self.state is PairState.CLOSED:
            return
        if self.state is PairState.CONNECTING:
            self.abort()
            return
        self.state = PairState.CLOSING
        direction.end()
        if (
            self.client is not None
            and self.client.is_closing()
            and (self.link is None or self.link.is_closing())
        ):
            self.finished()

    def finished(self) -> None:
        self.state = PairState.CLOSED
        self.up.clear()
        self.down.clear()
        self.relay.pairs.discard(self)

    def abort(self) -> None:
        """Cut both sides with a reset, as a network that dropped the connection."""
        for transport in (self.client, self.link):
            if transport is not None and not transport.is_closing():
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
        self.finished()


class ClientSide(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.pair = Pair(relay)
        relay.pairs.add(self.pair)
        relay.stats.connections += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pair.client_arrived(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.pair.up.push(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.side_ended(self.pair.up)


class LinkSide(asyncio.Protocol):
    def __init__(self, pair: Pair) -> None:
        self.pair = pair

    def data_received(self, data: bytes) -> None:
        self.pair.down.push(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.side_ended(self.pair.down)


class Relay:
    """Listens on the namespace's loopback and relays to *target* over the link.

    Args:
        profile: the network to emulate.
        target: where the gateway (or the upstream, for 'direct') listens.
        seed: for the jitter and the drops' times, so that every row meets the same.
    """

    def __init__(self, profile: Profile, target: tuple[str, int], seed: int = 0) -> None:
        self.profile = profile
        self.target = target
        #: Two generators: the drops' times must not depend on how many reads drew a
        #: jitter before them, so that every row meets its drops at the same moments.
        self.jitter = random.Random(seed)
        self.clock = random.Random(seed + 1)
        self.loop = asyncio.get_running_loop()
        self.stats = RelayStats()
        self.pairs: set[Pair] = set()
        self.stalled = False
        self.server: asyncio.Server | None = None
        self.timers: list[asyncio.TimerHandle] = []

    def latency(self) -> float:
        profile = self.profile
        return (profile.delay_ms + self.jitter.uniform(0, profile.jitter_ms)) / 1000

    async def start(self) -> int:
        """Listen, start the stall and drop clocks; the port listened on."""
        self.server = await self.loop.create_server(lambda: ClientSide(self), "127.0.0.1", 0)
        profile = self.profile
        if profile.stall_every_s:
            self.timers.append(self.loop.call_later(profile.first_stall_s, self.stall))
        if profile.drop_every_s:
            self.timers.append(self.loop.call_later(self.next_drop(), self.drop))
        return int(self.server.sockets[0].getsockname()[1])

    def next_drop(self) -> float:
        every = self.profile.drop_every_s or 0.0
        return every * self.clock.uniform(0.8, 1.2)

    def stall(self) -> None:
        profile = self.profile
        self.stalled = True
        self.stats.stalls += 1
        for pair in list(self.pairs):
            pair.up.halt()
            pair.down.halt()
        self.timers.append(self.loop.call_later(profile.stall_s, self.stall_over))
        if profile.stall_every_s:
            self.timers.append(self.loop.call_later(profile.stall_every_s, self.stall))

    def stall_over(self) -> None:
        self.stalled = False
        for pair in list(self.pairs):
            pair.up.go_on()
            pair.down.go_on()

    def drop(self) -> None:
        self.stats.drops += 1
        for pair in list(self.pairs):
            self.stats.connections_dropped += 1
            pair.abort()
        self.timers.append(self.loop.call_later(self.next_drop(), self.drop))

    def stop(self) -> None:
        for timer in self.timers:
            timer.cancel()
        for pair in list(self.pairs):
            pair.abort()
        if self.server is not None:
            self.server.close()
