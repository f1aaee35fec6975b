"""Real processes on real loopback sockets: the test upstream and the gateway under
``twistd -n filterproxy``, exactly as users run it."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
UPSTREAM_SCRIPT = HERE.parent / "upstream_server.py"
FAULT_SCRIPT = HERE.parent / "fault_server.py"
H2C_SCRIPT = HERE.parent / "h2c_server.py"
TWISTD = Path(sys.executable).parent / "twistd"


class Process:
    """A child process whose output is collected by a thread, so it never blocks."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"process never printed {pattern!r}; output:\n{self.output()}")

    def output(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class LocalServer:
    """A server process of the tests, listening on 127.0.0.1."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


class Upstream(LocalServer):
    def stats(self) -> dict[str, object]:
        return httpx.get(f"{self.url}/control/stats").json()  # type: ignore[no-any-return]

    def sent(self, key: str) -> bytes:
        return httpx.get(f"{self.url}/control/sent/{key}").content

    def release(self, key: str) -> None:
        response = httpx.post(f"{self.url}/control/release/{key}")
        assert response.status_code == 200, response.text


class Gateway(LocalServer):
    #: The admin listener's port, when it was started.
    admin_port: int | None = None

    @property
    def admin_url(self) -> str:
        assert self.admin_port is not None, "started without the admin listener"
        return f"http://127.0.0.1:{self.admin_port}"

    def metrics(self) -> str:
        """The Prometheus text of the admin listener's /metrics."""
        response = httpx.get(f"{self.admin_url}/metrics")
        assert response.status_code == 200, response.text
        return response.text

    def access_record(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The access-log record of the request with *request_id*."""
        marker = f'"request_id":"{request_id}"'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.process.lines):
                if marker in line and "filterproxy.access" in line:
                    return json.loads(line[line.index("{") :])  # type: ignore[no-any-return]
            time.sleep(0.02)
        raise AssertionError(f"no access-log line for {request_id}:\n{self.process.output()}")

    def open_connections(self, *, remote_port: int | None = None) -> int:
        """Established TCP connections of the gateway: from clients (to its port), or to
        an upstream's *remote_port*."""
        count = 0
        for conn in psutil.Process(self.process.pid).net_connections(kind="tcp"):
            if conn.status != psutil.CONN_ESTABLISHED or not conn.raddr:
                continue
            if (remote_port is None and conn.laddr.port == self.port) or (
                remote_port is not None and conn.raddr.port == remote_port
            ):
                count += 1
        return count


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    process = Process([sys.executable, str(UPSTREAM_SCRIPT)])
    try:
        port = int(process.wait_for(r"PORT (\d+)").group(1))
        yield Upstream(process, port)
    finally:
        process.stop()


def script_server(script: str) -> Iterator[LocalServer]:
    """The test server *script* (a file of ``tests/``) as a process on a free port, for
    the time of a fixture; it prints ``PORT <n>`` when listening."""
    process = Process([sys.executable, str(HERE.parent / script)])
    try:
        yield LocalServer(process, int(process.wait_for(r"PORT (\d+)").group(1)))
    finally:
        process.stop()


@pytest.fixture(scope="module")
def chat_upstream() -> Iterator[LocalServer]:
    """tests/chat_server.py: a provider that speaks only Chat Completions."""
    yield from script_server("chat_server.py")


@pytest.fixture(scope="module")
def messages_upstream() -> Iterator[LocalServer]:
    """tests/messages_server.py: a provider that speaks only Anthropic's Messages."""
    yield from script_server("messages_server.py")


class FaultServer(LocalServer):
    """tests/fault_server.py: an upstream that misbehaves as each request's x-fault says."""

    def stats(self) -> dict[str, object]:
        return httpx.get(f"{self.url}/stats").json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    process = Process([sys.executable, str(FAULT_SCRIPT)])
    try:
        yield FaultServer(process, int(process.wait_for(r"PORT (\d+)").group(1)))
    finally:
        process.stop()


@pytest.fixture(scope="module")
def h2c_upstream() -> Iterator[LocalServer]:
    """tests/h2c_server.py: an HTTP/2 upstream with prior knowledge (Hypercorn)."""
    process = Process([sys.executable, str(H2C_SCRIPT)])
    try:
        port = int(process.wait_for(r"PORT (\d+)").group(1))
        wait_until(lambda: listening(port), timeout=10)
        yield LocalServer(process, port)
    finally:
        process.stop()


def listening(port: int) -> bool:
    """Whether something accepts connections on the local *port*."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def twistd_command(config: Path, *options: str) -> list[str]:
    """``twistd -n filterproxy -c CONFIG OPTIONS...``, logging to stdout."""
    return [str(TWISTD), "-n", "--pidfile=", "-l", "-", "filterproxy", "-c", str(config), *options]


def start_gateway(
    config_text: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    *,
    listen: bool = True,
    admin: bool = True,
) -> Gateway:
    """Run ``twistd -n filterproxy`` on *config_text*: with *listen*, on a free TCP port
    given by ``--listen``; otherwise on the config's listeners (the first one TCP). With
    *admin*, the admin listener is on a free port too (``--admin``)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(textwrap.dedent(config_text))
    args = twistd_command(config)
    if listen:
        args += ["--listen", "tcp:0:interface=127.0.0.1"]
    if admin:
        args += ["--admin", "tcp:0:interface=127.0.0.1"]
    process = Process(args, env=env)
    match = process.wait_for(r"filterproxy listening on .*port=(\d+)")
    gateway = Gateway(process, int(match.group(1)))
    if admin:
        gateway.admin_port = int(process.wait_for(r"admin listening on .*port=(\d+)").group(1))
    return gateway


def gateway_config(upstream_url: str, *, max_request_bytes: int = 1048576, extra: str = "") -> str:
    return f"""
        clusters:
          test:
            url: {upstream_url}
            timeouts: {{connect: 2s}}
            request_headers:
              set:
                authorization: Bearer sk-upstream-secret
          down:
            url: http://127.0.0.1:9
            timeouts: {{connect: 2s}}
        aliases:
          fast: test-model
        routes:
          - models: [test-model, "test-*"]
            cluster: test
          - models: [down-model]
            cluster: down
        filters:
          - type: body-accumulate
            max_request_bytes: {max_request_bytes}
          - type: route
          - type: header-rewrite
        {extra}
    """


@pytest.fixture(scope="module")
def gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(gateway_config(upstream.url), tmp_path_factory.mktemp("gateway"))
    try:
        yield gw
    finally:
        gw.process.stop()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send *data* on a fresh connection; everything received until the peer closes."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while piece := sock.recv(65536):
        data += piece
    return data


def curl_post(url: str, body: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    """POST a JSON *body* with curl, as a user would from a shell."""
    return subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "15",
            *options,
            url,
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        check=True,
    )


def post_chat(base_url: str, model: str, **fields: Any) -> httpx.Response:
    """A chat completion request for *model* (messages empty unless given)."""
    return httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": model, "messages": [], **fields},
        timeout=15,
    )


def still_serving(gateway: Gateway) -> None:
    """The gateway answers an ordinary request (after whatever the test did to it)."""
    assert post_chat(gateway.url, "test-model").status_code == 200


def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Poll *predicate* until it holds; the seconds it took. Fails after *timeout*."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


@contextlib.contextmanager
def mock_upstream(interval: float | None = None) -> Iterator[int]:
    """The gateway's own mock upstream (`filterproxy.demo.mock_upstream`: chat
    completions that report usage) on a free port, for the ``with`` block; *interval*:
    seconds between streamed words (its default when None)."""
    port = closed_port()
    args = [
        sys.executable,
        "-c",
        "import sys; from filterproxy.demo.mock_upstream import main; main(sys.argv[1:])",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
    ]
    if interval is not None:
        args += ["--interval", str(interval)]
    process = Process(args)
    try:
        wait_until(lambda: listening(port), timeout=10)
        yield port
    finally:
        process.stop()


def certificate_builder(subject: str | x509.Name, issuer: x509.Name | None, key: Any) -> Any:
    """A certificate builder for *subject* (a common name or a name), issued by *issuer*
    (None: self-issued), for *key*'s public key, valid from yesterday for 30 days."""
    name = subject if isinstance(subject, x509.Name) else _common_name(subject)
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )


def _common_name(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        certificate_builder(name, None, key)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return save_pem(directory, name, cert, key)


def save_pem(directory: Path, name: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    """Write *cert* and *key* as NAME.crt and NAME.key (PEM); their paths."""
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="module")
def tls_upstream(certs: Path) -> Iterator[tuple[Upstream, Path]]:
    cert, key = make_certificate(certs, "upstream")
    process = Process([sys.executable, str(UPSTREAM_SCRIPT), str(cert), str(key)])
    try:
        port = int(process.wait_for(r"PORT (\d+)").group(1))
        yield Upstream(process, port), cert
    finally:
        process.stop()


def start_tls_gateway(
    upstream: Upstream, certs: Path, tmp_path: Path, name: str, extra: str = ""
) -> tuple[Gateway, Path]:
    """A gateway whose one listener is ssl: with a new certificate for localhost; the
    gateway and that certificate."""
    cert, key = make_certificate(certs, name)
    gateway = start_gateway(
        f"""
        listeners: ["ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}"]
        clusters: {{test: {{url: "{upstream.url}"}}}}
        {extra}
        """,
        tmp_path,
        listen=False,
    )
    return gateway, cert


class RedisServer:
    """A real redis-server on a free port, without persistence; it can be stopped and
    started again on the same port (an outage)."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"
        self.process: Process | None = None

    def start(self) -> None:
        self.process = Process(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
        )
        wait_until(lambda: listening(self.port), timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def command(self, *args: str) -> str:
        """One command through redis-cli; its reply as text."""
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        return subprocess.run(
            [cli, "-p", str(self.port), *args], capture_output=True, text=True, check=True
        ).stdout.strip()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        pytest.fail("redis-server is not installed: `make test` installs it (apt-get)")
    server = RedisServer(binary, closed_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
