"""The container image, built from the repository's Containerfile and run with podman
(`make image` builds it; `make test` builds it and runs these)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("FILTERPROXY_IMAGE", "localhost/filterproxy:latest")


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    """One podman command; its standard output."""
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="session")
def image() -> str:
    """The image under test: built by `make image` when it is not there yet."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: `make test` installs it (apt-get install podman)")
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
        subprocess.run(["make", "-s", "image"], cwd=ROOT, check=True, timeout=1800)
    return IMAGE


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(span: int = 1) -> int:
    """A port free on 127.0.0.1, and the ``span - 1`` after it too: with workers, worker
    N's admin listener takes the admin port + N, so all of them must be free."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + span <= 65536 and all(_bindable(port + i) for i in range(1, span)):
            return port
    raise AssertionError(f"no {span} free ports in a row on 127.0.0.1")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Container:
    """A container of the image on the host's network, its ports chosen free."""

    def __init__(self, image: str, env: dict[str, str], *options: str) -> None:
        self.name = f"filterproxy-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        workers = env.get("FILTERPROXY_WORKERS", "1")
        self.admin_port = free_port(span=int(workers) if workers.isdigit() else os.cpu_count() or 1)
        environment = {
            "FILTERPROXY_LISTEN": f"tcp:{self.port}:interface=127.0.0.1",
            "FILTERPROXY_ADMIN": f"tcp:{self.admin_port}:interface=127.0.0.1",
            "DEMO_MOCK_PORT": str(free_port()),
            **env,
        }
        flags = [flag for k, v in environment.items() for flag in ("-e", f"{k}={v}")]
        podman("run", "-d", "--name", self.name, "--network", "host", *flags, *options, image)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"

    def logs(self) -> str:
        return podman("logs", self.name, check=False)

    def wait_ready(self) -> None:
        try:
            wait_until(lambda: answers(f"{self.admin_url}/ready"), 60)
        except AssertionError:
            raise AssertionError(f"not ready; its log:\n{self.logs()}") from None

    def exit_code(self) -> int:
        podman("wait", self.name, timeout=60)
        return int(json.loads(podman("inspect", self.name))[0]["State"]["ExitCode"])

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture
def run(image: str) -> Iterator[Callable[..., Container]]:
    """Start containers of the image; each is removed after the test."""
    started: list[Container] = []

    def start(env: dict[str, str] | None = None, *options: str) -> Container:
        container = Container(image, env or {}, *options)
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove()
