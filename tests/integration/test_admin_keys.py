"""Keys and teams managed at run time through the admin API, with real gateways: two
replicas on a real redis-server (a change on one applies on the other within a
second), the keys file without Redis, the admin token, the read-only config keys, and
the ``filterproxy keys``/``teams`` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from filterproxy.extensions.keys.config import hash_key

from .conftest import (
    Gateway,
    RedisServer,
    closed_port,
    mock_upstream,
    start_gateway,
    wait_until,
)

TOKEN = "admin-token-for-tests-0123456789"
CONFIG_KEY = "fpk-from-the-config-0123456789"


@pytest.fixture(scope="module")
def mock_port() -> Iterator[int]:
    """The gateway's own mock upstream (chat completions)."""
    with mock_upstream() as port:
        yield port


def config(
    mock_port: int, *, redis_url: str | None = None, extra: str = "", token: bool = True
) -> str:
    redis = f'redis: {{url: "{redis_url}", timeout: 2s}}\n' if redis_url else ""
    admin = f"admin: {{token: {TOKEN}}}\n" if token else ""
    return f"""
clusters:
  mock: {{url: "http://127.0.0.1:{mock_port}", apis: [chat]}}
{redis}{admin}keys:
  - {{name: fixed, hash: "sha256:{hash_key(CONFIG_KEY)}"}}
teams:
  - {{name: configured}}
{extra}
"""


@pytest.fixture(scope="module")
def replicas(
    mock_port: int, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateway processes on one Redis, with an admin token."""
    text = config(mock_port, redis_url=redis_server.url)
    first = start_gateway(text, tmp_path_factory.mktemp("a"))
    second = start_gateway(text, tmp_path_factory.mktemp("b"))
    try:
        yield first, second
    finally:
        first.process.stop()
        second.process.stop()


def admin(
    gateway: Gateway, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.request(
        method, f"{gateway.admin_url}{path}", json=body, headers=headers, timeout=10
    )


def chat(gateway: Gateway, key: str, model: str = "demo") -> int:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )
    return response.status_code


def within_a_second(predicate: Any) -> None:
    """*predicate* comes true (polled; the bound is generous for a loaded machine,
    the gateways poll every 0.5 s)."""
    wait_until(predicate, timeout=5)


def test_a_key_made_on_one_replica_works_on_the_other_and_revoking_stops_both(
    replicas: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    a, b = replicas
    team = admin(a, "POST", "/teams", {"name": "research", "limits": {"usd_per_day": 2.5}})
    assert team.status_code == 201, team.text
    assert team.json()["limits"] == {"usd_per_day": 2.5}
    made = admin(a, "POST", "/keys", {"name": "alice", "team": "research", "models": ["demo*"]})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert key.startswith("fpk-") and made.headers["location"] == "/keys/alice"
    assert chat(a, key) == 200  # the replica that made it: at once
    within_a_second(lambda: chat(b, key) == 200)

    # Redis keeps the digest, never the key.
    stored = redis_server.command("HGETALL", "fp:{registry}:keys")
    assert hash_key(key) in stored and key not in stored
    shown = admin(b, "GET", "/keys/alice").json()
    assert shown == {
        "name": "alice",
        "team": "research",
        "models": ["demo*"],
        "limits": {},
        "source": "redis",
    }
    assert "hash" not in json.dumps(admin(b, "GET", "/keys").json())

    changed = admin(
        b, "PATCH", "/keys/alice", {"models": ["other-*"], "limits": {"usd_per_day": 1}}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["limits"] == {"usd_per_day": 1}
    within_a_second(lambda: chat(a, key) == 403)

    assert admin(a, "DELETE", "/teams/research").status_code == 409  # alice is in it
    assert admin(b, "DELETE", "/keys/alice").status_code == 200
    assert chat(b, key) == 401
    within_a_second(lambda: chat(a, key) == 401)
    assert admin(a, "GET", "/keys/alice").status_code == 404
    within_a_second(lambda: admin(a, "DELETE", "/teams/research").status_code == 200)


def test_the_management_api_needs_the_admin_token(
    replicas: tuple[Gateway, Gateway], mock_port: int, tmp_path: Path
) -> None:
    a, _ = replicas
    missing = admin(a, "GET", "/keys", token=None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert admin(a, "POST", "/keys", {"name": "x"}, token="wrong-token").status_code == 401
    assert admin(a, "GET", "/keys", token=TOKEN[:-1]).status_code == 401
    assert httpx.get(f"{a.admin_url}/healthz").status_code == 200  # the built-in ones stay open
    assert TOKEN not in httpx.get(f"{a.admin_url}/config").text

    (tmp_path / "k.yaml").write_text("keys: []\n")
    untokened = start_gateway(
        config(mock_port, token=False, extra="keys_file: " + str(tmp_path / "k.yaml")), tmp_path
    )
    try:
        refused = admin(untokened, "GET", "/keys")
        assert refused.status_code == 403 and "admin.token" in refused.json()["error"]
    finally:
        untokened.process.stop()
    assert TOKEN not in "".join(a.process.lines)


def test_config_keys_are_read_only_and_names_are_unique(replicas: tuple[Gateway, Gateway]) -> None:
    a, _ = replicas
    assert chat(a, CONFIG_KEY) == 200
    for method, path, body in (
        ("PATCH", "/keys/fixed", {"models": ["x"]}),
        ("DELETE", "/keys/fixed", None),
        ("PATCH", "/teams/configured", {"limits": {"requests_per_minute": 1}}),
        ("DELETE", "/teams/configured", None),
    ):
        refused = admin(a, method, path, body)
        assert refused.status_code == 409, (method, path, refused.text)
        assert "gateway.yaml" in refused.json()["error"]
    taken = admin(a, "POST", "/keys", {"name": "fixed"})
    assert taken.status_code == 409 and "fixed" in taken.json()["error"]
    assert admin(a, "POST", "/teams", {"name": "configured"}).status_code == 409
    no_team = admin(a, "POST", "/keys", {"name": "lost", "team": "nowhere"})
    assert no_team.status_code == 409 and "nowhere" in no_team.json()["error"]
    assert chat(a, CONFIG_KEY) == 200


def test_bad_bodies_get_400_naming_the_field(replicas: tuple[Gateway, Gateway]) -> None:
    a, _ = replicas
    cases = [
        ({"name": "x", "limits": {"requests_per_minute": "lots"}}, "limits.requests_per_minute"),
        ({"name": "x", "limits": {"usd_per_day": -1}}, "limits.usd_per_day"),
        ({"name": "bad name!"}, "name"),
        ({"name": "x", "hash": "sha256:" + "0" * 64}, "hash: unknown key"),
        ({"models": ["a"]}, "name"),
        ({"name": "x", "models": 5}, "models"),
    ]
    for body, field in cases:
        refused = admin(a, "POST", "/keys", body)
        assert refused.status_code == 400, (body, refused.text)
        assert refused.json()["error"].startswith(field), (body, refused.json())
    raw = httpx.post(
        f"{a.admin_url}/keys",
        content=b"{nope",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert raw.status_code == 400 and "JSON" in raw.json()["error"]
    assert admin(a, "GET", "/keys/nobody").status_code == 404
    assert admin(a, "PUT", "/keys/fixed", {}).status_code == 405


def test_without_redis_keys_go_to_the_keys_file(mock_port: int, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("keys: []\nteams: [{name: ops}]\n")
    gateway = start_gateway(config(mock_port, extra=f"keys_file: {keys_file}"), tmp_path)
    try:
        made = admin(gateway, "POST", "/keys", {"name": "bob", "team": "ops"})
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        assert chat(gateway, key) == 200  # the process that wrote it: at once
        written = yaml.safe_load(keys_file.read_text())
        assert written["keys"] == [
            {"name": "bob", "hash": f"sha256:{hash_key(key)}", "team": "ops"}
        ]
        assert written["teams"] == [{"name": "ops"}]
        assert key not in keys_file.read_text()
        assert admin(gateway, "GET", "/keys/bob").json()["source"] == "file"
        # A reload reads the file it wrote: the key stays.
        assert httpx.post(f"{gateway.admin_url}/reload").status_code == 200
        assert chat(gateway, key) == 200
        assert admin(gateway, "DELETE", "/keys/bob").status_code == 200
        assert chat(gateway, key) == 401
        assert yaml.safe_load(keys_file.read_text())["keys"] == []
    finally:
        gateway.process.stop()


def test_with_nowhere_to_keep_keys_the_api_says_where_they_could_go(
    mock_port: int, tmp_path: Path
) -> None:
    text = f"""
clusters:
  mock: {{url: "http://127.0.0.1:{mock_port}", apis: [chat]}}
admin: {{token: {TOKEN}}}
keys: []
"""
    gateway = start_gateway(text, tmp_path)
    try:
        refused = admin(gateway, "POST", "/keys", {"name": "carol"})
        assert refused.status_code == 409
        assert "redis" in refused.json()["error"] and "keys_file" in refused.json()["error"]
        assert chat(gateway, "fpk-anything") == 401  # an empty set of keys refuses everyone
        assert admin(gateway, "GET", "/keys").json() == {"keys": []}
    finally:
        gateway.process.stop()


def cli(
    gateway: Gateway, *args: str, token: str | None = TOKEN
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILTERPROXY_ADMIN")}
    if token is not None:
        env["FILTERPROXY_ADMIN_TOKEN"] = token
    env["FILTERPROXY_ADMIN_URL"] = gateway.admin_url
    return subprocess.run(
        [sys.executable, "-m", "filterproxy.server.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_cli_manages_keys_and_teams_of_a_running_gateway(
    replicas: tuple[Gateway, Gateway], tmp_path: Path
) -> None:
    a, b = replicas
    made = cli(a, "teams", "create", "cli-team", "--limit", "requests_per_minute=100")
    assert made.returncode == 0, made.stderr
    assert "cli-team" in made.stdout and "requests_per_minute=100" in made.stdout
    created = cli(a, "keys", "create", "cli-key", "--team", "cli-team", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    within_a_second(lambda: chat(b, key) == 200)
    listing = cli(b, "keys", "list")
    assert listing.returncode == 0 and "cli-key" in listing.stdout and key not in listing.stdout
    [row] = [line for line in listing.stdout.splitlines() if line.startswith("cli-key ")]
    assert row.split()[1] == "cli-team"
    updated = cli(b, "keys", "update", "cli-key", "--limit", "usd_per_day=0.5", "--team", "")
    assert updated.returncode == 0, updated.stderr
    # Replica a learns of b's change through Redis's channel: wait for it, then look at it.
    within_a_second(
        lambda: json.loads(cli(a, "keys", "show", "cli-key", "--json").stdout)["team"] is None
    )
    shown = json.loads(cli(a, "keys", "show", "cli-key", "--json").stdout)
    assert shown["team"] is None
    assert shown["limits"] == {"usd_per_day": 0.5}
    assert cli(a, "teams", "delete", "cli-team").returncode == 0
    revoked = cli(a, "keys", "revoke", "cli-key")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    within_a_second(lambda: chat(b, key) == 401)

    wrong = cli(a, "keys", "list", token="not-the-token")
    assert wrong.returncode == 1 and "401" in wrong.stderr and "wrong" in wrong.stderr
    missing = cli(a, "keys", "list", token=None)
    assert missing.returncode == 1 and "missing" in missing.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    from_file = cli(a, "teams", "list", "--token-file", str(token_file), token=None)
    assert from_file.returncode == 0 and "configured" in from_file.stdout
    refused = cli(a, "keys", "revoke", "fixed")
    assert refused.returncode == 1 and "409" in refused.stderr and "read-only" in refused.stderr
    port = closed_port()
    down = subprocess.run(
        [
            sys.executable,
            "-m",
            "filterproxy.server.cli",
            "keys",
            "list",
            "--admin",
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1 and f"http://127.0.0.1:{port}" in down.stderr
