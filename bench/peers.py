"""The proxies measured side by side: how to configure, start and stop each one.

Every proxy listens on 127.0.0.1:8800, forwards to the benchmark upstream over
keep-alive connections, does not buffer responses, and runs on one pinned core.

Portkey's gateway has no configuration file that names an upstream: each request names
its provider and the upstream's address in ``x-portkey-*`` headers, so its `Peer` carries
the headers every client of the benchmark adds (`Peer.request_headers`).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LISTEN_PORT = 8800
#: Where `make bench-env` installs Portkey's gateway from npm: beside the bench's Python.
PORTKEY_DIR = BIN.parent / "portkey"
PORTKEY_PACKAGE = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway"
#: The request headers the mock upstreams read (bench/upstream.py): Portkey forwards only
#: the client headers it is told to.
BENCH_HEADERS = ("x-bench-chunks", "x-bench-interval-ms", "x-bench-pad", "x-bench-bulk")

NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
user root;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream llm {{ server 127.0.0.1:{upstream}; keepalive 1024; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 10m;
        location / {{
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer sk-bench";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""

ENVOY_CONF = """
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          stream_idle_timeout: 300s
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: llm, timeout: 0s}}
              request_headers_to_add:
              - header: {{key: authorization, value: "Bearer sk-bench"}}
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
          http_filters:
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 10485760
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: llm
    type: STATIC
    connect_timeout: 5s
    circuit_breakers:
      thresholds: [{{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}}]
    load_assignment:
      cluster_name: llm
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
{upstream_protocol}"""

#: ENVOY_CONF's cluster speaking HTTP/2 to the upstream, cleartext with prior knowledge
#: (h2c), as filterproxy's ``protocol: http2`` on an ``http://`` url.
ENVOY_HTTP2_UPSTREAM = """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
"""


def save_results(kind: str, header: str, text: str, data: dict[str, Any]) -> Path:
    """Write a run's table (*header* then *text*) and its *data* to
    bench/results/<date>-<machine>-<kind>.{md,json}; the .md's path."""
    stamp = datetime.date.today().isoformat()
    base = (
        Path(__file__).resolve().parent
        / "results"
        / f"{stamp}-{platform.node() or 'machine'}-{kind}"
    )
    base.with_suffix(".md").write_text(header + text + "\n")
    base.with_suffix(".json").write_text(json.dumps(data, indent=2))
    return base.with_suffix(".md")


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def micros(text: str) -> float:
    """wrk's duration (``412.5us``, ``1.2ms``, ``2s``) in microseconds."""
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def start_redis(core: int) -> tuple[subprocess.Popen[bytes], int]:
    """Debian's redis-server on a free port, pinned to *core*, without persistence; it
    and its port, once it listens."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(["taskset", "-c", str(core), *args], stdout=subprocess.DEVNULL)
    wait_for_port(port)
    return process, port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class PeerUnavailable(Exception):
    """A peer cannot run on this machine; the message says why and how to fix it."""


@dataclass
class Peer:
    """One proxy (or none, for 'direct') under test."""

    name: str
    command: list[str] | None
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    listen_port: int = LISTEN_PORT
    #: How long it may take to start listening.
    startup_timeout: float = 20.0
    #: Headers every client adds to its requests: where the peer takes its routing from
    #: the request (Portkey) rather than from its configuration.
    request_headers: dict[str, str] = field(default_factory=dict)
    #: The same proxy set up to forward to the HTTP/2 mock upstream (bench/h2_upstream.py)
    #: over h2c, for the scenarios that measure that side; None where the proxy cannot
    #: speak HTTP/2 to an upstream (nginx, Portkey) or none was asked for.
    h2_upstream: Peer | None = None

    @property
    def port(self) -> int:
        if self.command:
            return self.listen_port
        return int(os.environ.get("BENCH_UPSTREAM_PORT", "9101"))

    def start(self, cores: str) -> None:
        if self.command is None:
            return
        self.process = subprocess.Popen(
            ["taskset", "-c", cores, *self.command],
            env={**os.environ, **(self.env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.startup_timeout)
        time.sleep(0.5)

    def processes(self) -> list[psutil.Process]:
        if self.process is None:
            return []
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            times = p.cpu_times()
            total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        return sum(p.memory_info().rss for p in self.processes())

    def open_fds(self) -> int:
        return sum(p.num_fds() for p in self.processes())

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        time.sleep(0.3)


def portkey_headers(provider: str, upstream: str, forward: tuple[str, ...] = ()) -> dict[str, str]:
    """The headers that route a request through Portkey's gateway to *upstream* (a base
    URL such as ``http://127.0.0.1:9101/v1``) as *provider*'s API, forwarding the client
    headers named in *forward* (Portkey sends the upstream only those it is told to)."""
    headers = {"x-portkey-provider": provider, "x-portkey-custom-host": upstream}
    if forward:
        headers["x-portkey-forward-headers"] = ",".join(forward)
    return headers


def portkey_version() -> str:
    """The version of Portkey's gateway installed for the benchmark."""
    package = json.loads((PORTKEY_PACKAGE / "package.json").read_text())
    return str(package["version"])


def portkey_peer(name: str, port: int, request_headers: dict[str, str]) -> Peer:
    """Portkey's gateway (Node) as `make bench-env` installs it: headless on *port*, one
    process (Node runs JavaScript on one thread), its web UI off and its logger at errors
    only (``NODE_ENV=production``). Its clients add *request_headers* (`portkey_headers`).

    Raises:
        PeerUnavailable: node or the gateway is not installed.
    """
    node = shutil.which("node")
    server = PORTKEY_PACKAGE / "build" / "start-server.js"
    if node is None:
        raise PeerUnavailable(f"{name}: skipped, no node (Debian's nodejs: make node)")
    if not server.exists():
        raise PeerUnavailable(
            f"{name}: skipped, Portkey's gateway is not installed in {PORTKEY_DIR} "
            "(make bench-env installs it from npm, which must be reachable)"
        )
    return Peer(
        name,
        [node, str(server), f"--port={port}", "--headless"],
        env={"NODE_ENV": "production"},
        listen_port=port,
        request_headers=request_headers,
    )


def filterproxy_peer(
    name: str,
    workdir: Path,
    upstream_port: int,
    port: int,
    *,
    config: str = "bench.yaml",
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Peer:
    """The gateway under twistd with conf/*config*, forwarding to 127.0.0.1:*upstream_port*
    (``FILTERPROXY_UPSTREAM``), listening on *port*; *options* are more of its command
    line's, *env* more of its environment's."""
    return Peer(
        name,
        [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "-l",
            str(workdir / f"{name}.log"),
            "filterproxy",
            "-c",
            str(ROOT / "conf" / config),
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            *options,
        ],
        env={"FILTERPROXY_UPSTREAM": f"http://127.0.0.1:{upstream_port}", **(env or {})},
        listen_port=port,
    )


#: The gateway's configuration for the HTTP/2-upstream scenarios: conf/bench.yaml's, its
#: cluster with ``protocol: http2``.
H2_UPSTREAM_CONFIG = "bench-h2-upstream.yaml"


def source_tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes the bench's Python import the gateway from *tree* (a
    source or build tree, its compiled modules beside the source) before the installed
    one."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{tree}{os.pathsep}{path}" if path else str(tree)}


#: Run with a tree first on PYTHONPATH: where the gateway's modules come from, once the
#: twistd plugin's module has imported them.
_WHERE_FROM = """
import json, sys
import filterproxy.server.tap
files = [getattr(m, "__file__", None) or "" for n, m in sorted(sys.modules.items())
         if n == "filterproxy" or n.startswith("filterproxy.")]
print(json.dumps({"package": sys.modules["filterproxy"].__file__, "files": files}))
"""


def check_source_tree(tree: Path) -> str:
    """A line saying where the gateway is imported from with *tree* first on the path:
    its package's file and how many of its modules are compiled.

    Raises:
        PeerUnavailable: *tree* has no gateway, or some of its modules would come from
            elsewhere (the installed wheel).
    """
    if not (tree / "filterproxy" / "__init__.py").exists():
        raise PeerUnavailable(
            f"filterproxy-before: {tree} has no filterproxy/ package: give --before the "
            "root of a source or build tree"
        )
    out = subprocess.run(
        [sys.executable, "-c", _WHERE_FROM],
        env={**os.environ, **source_tree_env(tree)},
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise PeerUnavailable(
            f"filterproxy-before: the gateway in {tree} does not import: {out.stderr.strip()}"
        )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    root = tree.resolve()
    elsewhere = [f for f in found["files"] if f and not Path(f).resolve().is_relative_to(root)]
    if elsewhere:
        raise PeerUnavailable(
            f"filterproxy-before: {len(elsewhere)} of the gateway's modules come from "
            f"outside {tree}, e.g. {elsewhere[0]}"
        )
    compiled = sum(1 for f in found["files"] if f.endswith(".so"))
    return (
        f"filterproxy-before: the gateway from {found['package']} "
        f"({compiled} of {len(found['files'])} modules compiled)"
    )


def compiled_gateway_files(peer: Peer) -> list[str]:
    """The gateway's compiled modules (mypyc's shared objects) the running *peer* has
    loaded: where its data path really comes from."""
    paths: set[str] = set()
    for process in peer.processes():
        for mapped in process.memory_maps(grouped=True):
            path = mapped.path
            name = Path(path).name
            if path.endswith(".so") and ("/filterproxy/" in path or "__mypyc" in name):
                paths.add(path)
    return sorted(paths)


def peers(
    workdir: Path,
    upstream_port: int,
    only: set[str] | None = None,
    ports: dict[str, int] | None = None,
    *,
    h2_upstream_port: int | None = None,
    before: Path | None = None,
) -> list[Peer]:
    """The peers available on this machine (nginx, Envoy and Portkey only when installed:
    a missing Portkey that was asked for is reported), each listening on its port in
    *ports* (default: all on `LISTEN_PORT`, to run one at a time).

    With *h2_upstream_port* (the HTTP/2 mock's), Envoy and each filterproxy carry their
    `Peer.h2_upstream`. With *before* (the root of another source or build tree of the
    gateway), a peer ``filterproxy-before`` runs the gateway from that tree: the same
    Python, config and command line as ``filterproxy``, the tree first on PYTHONPATH."""
    port_of = (ports or {}).get
    found = [Peer("direct", None)]
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx:
        conf = workdir / "nginx.conf"
        port = port_of("nginx", LISTEN_PORT)
        conf.write_text(NGINX_CONF.format(dir=workdir, upstream=upstream_port, port=port))
        found.append(Peer("nginx", [nginx, "-c", str(conf), "-p", str(workdir)], listen_port=port))
    envoy = BIN / "envoy"
    if envoy.exists():
        port = port_of("envoy", LISTEN_PORT)
        found.append(envoy_peer("envoy", envoy, workdir / "envoy.yaml", upstream_port, port))
        if h2_upstream_port is not None:
            found[-1].h2_upstream = envoy_peer(
                "envoy",
                envoy,
                workdir / "envoy-h2-upstream.yaml",
                h2_upstream_port,
                port,
                ENVOY_HTTP2_UPSTREAM,
            )
    if only is None or "portkey" in only:
        headers = portkey_headers(
            "openai", f"http://127.0.0.1:{upstream_port}/v1", forward=BENCH_HEADERS
        )
        try:
            found.append(portkey_peer("portkey", port_of("portkey", LISTEN_PORT), headers))
        except PeerUnavailable as reason:
            print(reason, file=sys.stderr, flush=True)
    found.append(
        filterproxy_peer(
            "filterproxy-2-workers",
            workdir,
            upstream_port,
            LISTEN_PORT,
            options=("--workers", "2"),
        )
    )
    gateways: list[tuple[str, dict[str, str]]] = [("filterproxy", {})]
    if before is not None:
        gateways.append(("filterproxy-before", source_tree_env(before)))
    for name, env in gateways:
        port = port_of(name, LISTEN_PORT)
        peer = filterproxy_peer(name, workdir, upstream_port, port, env=env)
        if h2_upstream_port is not None:
            peer.h2_upstream = filterproxy_peer(
                name, workdir, h2_upstream_port, port, config=H2_UPSTREAM_CONFIG, env=env
            )
        found.append(peer)
    return [p for p in found if only is None or p.name in only]


def envoy_peer(
    name: str, envoy: Path, conf: Path, upstream_port: int, port: int, upstream_protocol: str = ""
) -> Peer:
    """Envoy with ENVOY_CONF (written to *conf*), one worker thread, forwarding to
    127.0.0.1:*upstream_port*; *upstream_protocol* is more of its cluster's configuration
    (`ENVOY_HTTP2_UPSTREAM`)."""
    conf.write_text(
        ENVOY_CONF.format(upstream=upstream_port, port=port, upstream_protocol=upstream_protocol)
    )
    return Peer(
        name,
        [
            str(envoy),
            "-c",
            str(conf),
            "--concurrency",
            "1",
            "--log-level",
            "error",
            "--base-id",
            "7",
            "--disable-hot-restart",
        ],
        listen_port=port,
    )
