"""The weak link: a network namespace for the client, joined to this host by a veth pair
whose two ends are shaped by the kernel's token bucket (``tbf``), and the profiles of
the networks the benchmark emulates on it.

::

    namespace (the client's side)                       host
    client ──loopback──> relay ═══ veth, tbf each way ═══> gateway / nginx / Envoy
                         (bench/weak_relay.py:                  └──loopback──> mock upstream
                          delay, jitter, stalls, drops)

The bandwidth and the carrier's queue are the kernel's: ``tbf`` with ``rate`` the
profile's, ``burst`` of two or three packets and ``latency 200ms`` (the most a packet
waits in the queue before it is dropped: a queue as deep as 200 ms of the link's rate,
like a mobile carrier's, so a sender that outruns the link fills it, then loses packets,
and TCP backs off as it would on the road). The same rate both ways: the uplink carries
only the requests and the acknowledgements. This kernel has no ``netem``: delay,
jitter, stalls and drops are the relay's.

Why the relay sits on the client's side of the link: the gateway's socket must be the
one on the link, so that its writes back up when the link is slow or stalled, as they
would with a phone at the other end. The relay reads from the link only what it can
hold for the latency (about twice what is in flight at the link's rate) and nothing
during a stall, with a small fixed receive buffer: what the link does not take waits
in the gateway's socket, not in the relay.

Everything here needs root; `check_tools` says what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    """A network, as the benchmark emulates it."""

    name: str
    #: The link's rate each way, kbit/s (``tbf rate``).
    rate_kbit: int
    #: Latency added each way by the relay, ms, and up to this much more at random.
    delay_ms: int
    jitter_ms: int
    #: A stall (nothing moves either way) of ``stall_s`` seconds every ``stall_every_s``,
    #: the first ``first_stall_s`` into a row.
    stall_every_s: float | None = None
    stall_s: float = 0.0
    first_stall_s: float = 4.0
    #: The client's connections cut about this often (seconds, ±20%), None: never.
    drop_every_s: float | None = None
    #: How long the carrier's queue may hold a packet (``tbf latency``), ms.
    queue_ms: int = 200

    def describe(self) -> str:
        parts = [
            f"{self.rate_kbit} kbit/s each way",
            f"+{self.delay_ms} ms each way"
            + (f" (+0 to {self.jitter_ms} jitter)" if self.jitter_ms else ""),
            f"queue {self.queue_ms} ms",
        ]
        if self.stall_every_s:
            parts.append(f"a {self.stall_s:g} s stall every {self.stall_every_s:g} s")
        if self.drop_every_s:
            parts.append(f"connections dropped every ~{self.drop_every_s:g} s")
        return ", ".join(parts)

    @property
    def relay_buffer(self) -> int:
        """What the relay holds per direction before it stops reading: twice what the
        added latency keeps in flight at the link's rate (so the delay line never slows
        the link), and at least 16 KiB. More would hide the link from the sender."""
        in_flight = self.rate_kbit * 1000 / 8 * (self.delay_ms + self.jitter_ms) / 1000
        return max(16 * 1024, int(2 * in_flight))


PROFILES = {
    p.name: p
    for p in (
        Profile("3g", rate_kbit=750, delay_ms=150, jitter_ms=40, stall_every_s=15, stall_s=2),
        Profile("edge", rate_kbit=200, delay_ms=300, jitter_ms=60),
        Profile(
            "3g-drops",
            rate_kbit=750,
            delay_ms=150,
            jitter_ms=40,
            stall_every_s=15,
            stall_s=2,
            drop_every_s=5,
        ),
    )
}


class LinkUnavailable(Exception):
    """The machine cannot make the link (not root, or a tool missing)."""


def check_tools() -> None:
    """Raise `LinkUnavailable` saying what to do when the link cannot be made here."""
    if os.geteuid() != 0:
        raise LinkUnavailable(
            "the weak-link benchmark makes a network namespace and shapes a veth pair with "
            "tc: run it as root (sudo make bench-weak)"
        )
    missing = [tool for tool in ("ip", "tc", "taskset") if shutil.which(tool) is None]
    if missing:
        raise LinkUnavailable(
            f"{', '.join(missing)} not found: apt-get install iproute2 util-linux "
            "(make bench-weak installs them when it runs as root)"
        )


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


@dataclass
class Link:
    """The namespace and the veth pair; a context manager that removes them on the way
    out, whatever happened (the namespace's end goes with the namespace, its peer with it).

    Args:
        namespace: the network namespace's name.
        host_address: this host's end, a /30 of its own (the client reaches the gateway
            there); the namespace's end is the next address.
    """

    namespace: str = "fp-weak"
    host_device: str = "fpweak0"
    client_device: str = "fpweak1"
    host_address: str = "10.213.77.1"
    client_address: str = "10.213.77.2"

    def __enter__(self) -> Link:
        self.remove()  # what a run killed with SIGKILL may have left
        run("ip", "netns", "add", self.namespace)
        try:
            run(
                "ip",
                "link",
                "add",
                self.host_device,
                "type",
                "veth",
                "peer",
                "name",
                self.client_device,
                "netns",
                self.namespace,
            )
            run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_device)
            run("ip", "link", "set", self.host_device, "up")
            ns = ("ip", "-n", self.namespace)
            run(*ns, "addr", "add", f"{self.client_address}/30", "dev", self.client_device)
            run(*ns, "link", "set", self.client_device, "up")
            run(*ns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        run("ip", "netns", "del", self.namespace, check=False)
        run("ip", "link", "del", self.host_device, check=False)

    def shape(self, profile: Profile) -> None:
        """Both ends' qdisc for *profile*: the host's end shapes what the client
        downloads, the namespace's end what it sends."""
        # The bucket must hold a whole packet (1514 bytes) and at least a tick's worth of
        # the rate; two or three packets let a few through back to back, as a radio does.
        burst = max(4096, self.rate_bytes(profile) // 100)
        tbf = (
            "root",
            "tbf",
            "rate",
            f"{profile.rate_kbit}kbit",
            "burst",
            str(burst),
            "latency",
            f"{profile.queue_ms}ms",
        )
        run("tc", "qdisc", "replace", "dev", self.host_device, *tbf)
        run("tc", "-n", self.namespace, "qdisc", "replace", "dev", self.client_device, *tbf)

    @staticmethod
    def rate_bytes(profile: Profile) -> int:
        return profile.rate_kbit * 1000 // 8

    def counters(self) -> tuple[int, int]:
        """Bytes the host's end has sent (the client's downlink) and received (its
        uplink), headers and retransmissions included: what went over the link."""
        stats = Path("/sys/class/net") / self.host_device / "statistics"
        return (
            int((stats / "tx_bytes").read_text()),
            int((stats / "rx_bytes").read_text()),
        )

    def queue_drops(self) -> int:
        """Packets the downlink's queue has dropped (it was full) since it was set up."""
        shown = run("tc", "-s", "qdisc", "show", "dev", self.host_device).stdout
        match = re.search(r"dropped (\d+)", shown)
        return int(match.group(1)) if match else 0

    def send_queue(self) -> int:
        """The bytes this host's sockets to the client hold (sent and not yet
        acknowledged, or not sent yet): what the gateway has written that the link has
        not taken. From ``/proc/net/tcp``, established connections only."""
        (number,) = struct.unpack("<I", socket.inet_aton(self.client_address))
        peer = f"{number:08X}"
        total = 0
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[2].startswith(peer + ":") and fields[3] == "01":
                    total += int(fields[4].split(":")[0], 16)
        return total

    def in_namespace(self, *command: str) -> list[str]:
        """*command* run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *command]
