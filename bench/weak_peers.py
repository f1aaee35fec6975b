"""The senders of the weak-link benchmark's rows, on this host's side of the link: the
mock upstream, and nginx, Envoy and the gateway as the other benchmarks configure them,
listening on the link's address as well as on loopback."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from bench.peers import BIN, Peer, free_port, peers
from bench.resume import GATEWAY_CONF
from bench.run import LOAD_CORE
from bench.weak_link import Link

ROOT = Path(__file__).resolve().parents[1]
#: The gateway's name among the peers.
GATEWAY = "filterproxy"


class MockUpstream:
    """bench/weak_upstream.py on the load core, on loopback (for the proxies) and on
    the link's host address (for the 'direct' rows)."""

    def __init__(self, link: Link, tokens: int) -> None:
        self.process = subprocess.Popen(
            [
                "taskset",
                "-c",
                str(LOAD_CORE),
                sys.executable,
                "-m",
                "bench.weak_upstream",
                "--listen",
                "127.0.0.1",
                "--listen",
                link.host_address,
                "--tokens",
                str(tokens),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline().split()[1])

    def log(self) -> dict[str, dict[str, Any]]:
        return httpx.get(f"http://127.0.0.1:{self.port}/log").json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def also_on_link(peer: Peer, address: str) -> None:
    """Make *peer* (nginx or Envoy, configured by bench/peers.py on loopback) listen on
    the link's *address* too, on the same port."""
    assert peer.command is not None
    conf = Path(peer.command[peer.command.index("-c") + 1])
    text = conf.read_text()
    port = peer.listen_port
    if peer.name == "nginx":
        old = f"listen 127.0.0.1:{port} backlog=4096;"
        new = f"{old}\n        listen {address}:{port};"
    else:
        old = f"- address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}"
        new = (
            f"{old}\n    additional_addresses: [{{address: {{socket_address: "
            f"{{address: {address}, port_value: {port}}}}}}}]"
        )
    if old not in text:
        raise RuntimeError(f"{conf}: no listener on 127.0.0.1:{port} to add {address} to")
    conf.write_text(text.replace(old, new))


def link_peers(workdir: Path, upstream: int, address: str) -> dict[str, Peer]:
    """nginx and Envoy as bench/peers.py configures them (when installed), and a
    gateway with a plain and a resumable route (bench/resume.py's), all listening on
    loopback and on the link, one port for all (they run one at a time)."""
    port = free_port()
    found = {
        p.name: p
        for p in peers(workdir, upstream, {"nginx", "envoy"}, {"nginx": port, "envoy": port})
    }
    for peer in found.values():
        also_on_link(peer, address)
    conf = workdir / "weak.yaml"
    conf.write_text(GATEWAY_CONF.format(upstream=upstream, admin=free_port()))
    found[GATEWAY] = Peer(
        GATEWAY,
        [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "-l",
            str(workdir / "gateway.log"),
            "filterproxy",
            "-c",
            str(conf),
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--listen",
            f"tcp:{port}:interface={address}",
        ],
        listen_port=port,
    )
    return found


def cpu_seconds(peer: Peer) -> float:
    """The CPU time of every thread of *peer*'s processes (its workers and children
    too), user and system: the run time the scheduler counts in nanoseconds
    (``/proc/<pid>/task/<tid>/schedstat``). ``/proc/<pid>/stat``'s utime and stime
    count 10 ms ticks, too coarse for a row of a few streams."""
    total = 0
    for process in peer.processes():
        try:
            tasks = list(Path(f"/proc/{process.pid}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total / 1e9


def warm_up(port: int, model: str) -> None:
    """One short stream on loopback, so that what a first request costs the gateway
    (imports, its first upstream connection) is not counted in the row."""
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={
            "model": model,
            "stream": True,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": f"warm-up {secrets.token_hex(4)}#0"}],
        },
        headers={"authorization": "Bearer sk-client"},
        timeout=30,
    )
    if response.status_code != 200 or b"[DONE]" not in response.content:
        raise RuntimeError(f"warm-up on port {port}: {response.status_code} {response.text[:300]}")
