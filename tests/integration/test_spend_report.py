"""The spend report of a running gateway: the JSON the CLI reads, the same numbers in
``filterproxy spend``, the page rendered in a real browser (Debian's chromium,
headless), and all of it adding up to the gateway's own cost metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from filterproxy.extensions.keys.config import hash_key
from filterproxy.extensions.spend.report import format_usd

from .conftest import Gateway, mock_upstream, start_gateway, wait_until

TOKEN = "admin-token-for-the-spend-report-test"
KEYS = {"alice": "fpk-spend-alice-0123456789", "bob": "fpk-spend-bob-0123456789", "carol": "fpk-spend-carol-0123456789"}  # fmt: skip
#: Where `make docs-screenshots` wants the page's picture (the docs show it).
SCREENSHOT_ENV = "FILTERPROXY_SPEND_SCREENSHOT"


def config(mock_port: int) -> str:
    return f"""
clusters:
  mock: {{url: "http://127.0.0.1:{mock_port}", apis: [chat]}}
admin: {{token: "{TOKEN}"}}
spend:
  prices:
    demo-large: {{input: 2.5, output: 10}}
    demo-small: {{input: 0.15, output: 0.6}}
teams:
  - name: research
  - name: platform
keys:
  - {{name: alice, hash: "sha256:{hash_key(KEYS["alice"])}", team: research}}
  - {{name: bob, hash: "sha256:{hash_key(KEYS["bob"])}", team: research}}
  - {{name: carol, hash: "sha256:{hash_key(KEYS["carol"])}", team: platform}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with mock_upstream(0) as port:
        gateway = start_gateway(config(port), tmp_path_factory.mktemp("spend"))
        try:
            yield gateway
        finally:
            gateway.process.stop()


def spend_some(gateway: Gateway) -> None:
    plan = [("alice", "demo-large", 3, True), ("bob", "demo-small", 5, False), ("carol", "demo-large", 2, False)]  # fmt: skip
    for name, model, times, stream in plan:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEYS[name], max_retries=0)
        for n in range(times):
            messages = [{"role": "user", "content": f"request {n} of {name}: " + "word " * (n + 1)}]
            if stream:
                chunks = client.chat.completions.create(model=model, messages=messages, stream=True)  # type: ignore[arg-type]
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]


def cost_metrics(gateway: Gateway) -> dict[tuple[str, str, str], float]:
    """``filterproxy_cost_usd_total`` by (key, team, model)."""
    found: dict[tuple[str, str, str], float] = {}
    for line in gateway.metrics().splitlines():
        if not line.startswith("filterproxy_cost_usd_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
        found[labels["key"], labels["team"], labels["model"]] = float(line.rsplit(" ", 1)[1])
    return found


def admin_get(gateway: Gateway, path: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{gateway.admin_url}{path}", headers=headers)


def test_the_report_adds_up_to_the_metrics_by_every_grouping(gateway: Gateway) -> None:
    spend_some(gateway)
    metrics = cost_metrics(gateway)
    assert set(metrics) == {("alice", "research", "demo-large"), ("bob", "research", "demo-small"), ("carol", "platform", "demo-large")}  # fmt: skip
    assert all(v > 0 for v in metrics.values())
    wait_until(lambda: admin_get(gateway, "/spend").json()["total"]["requests"] == 10, timeout=5)
    by_key = admin_get(gateway, "/spend?by=key").json()
    assert {g["name"]: g["usd"] for g in by_key["groups"]} == pytest.approx(
        {key: usd for (key, _, _), usd in metrics.items()}, abs=1e-9
    )
    assert by_key["total"]["usd"] == pytest.approx(sum(metrics.values()), abs=1e-9)
    by_team = admin_get(gateway, "/spend?by=team").json()
    assert {g["name"]: g["usd"] for g in by_team["groups"]} == pytest.approx(
        {
            "research": metrics["alice", "research", "demo-large"]
            + metrics["bob", "research", "demo-small"],
            "platform": metrics["carol", "platform", "demo-large"],
        },
        abs=1e-9,
    )
    by_model = admin_get(gateway, "/spend?by=model").json()
    assert by_model["groups"][0]["name"] == "demo-large"  # the most spent first
    assert sum(d["nano_usd"] for d in by_model["days"]) == by_model["total"]["nano_usd"]
    assert by_model["total"]["requests"] == 10 and by_model["total"]["output"] > 0


def test_the_report_needs_the_admin_token_and_names_bad_parameters(gateway: Gateway) -> None:
    assert admin_get(gateway, "/spend", token=None).status_code == 401
    assert admin_get(gateway, "/spend/report", token="wrong").status_code == 401
    bad = admin_get(gateway, "/spend?by=colour")
    assert bad.status_code == 400 and "'by'" in bad.json()["error"]
    bad = admin_get(gateway, "/spend?from=2026-12-31&to=2026-12-01")
    assert bad.status_code == 400 and "before it starts" in bad.json()["error"]


def test_the_cli_prints_the_same_report(gateway: Gateway) -> None:
    env = {**os.environ, "FILTERPROXY_ADMIN_TOKEN": TOKEN}
    run = [sys.executable, "-m", "filterproxy.server.cli", "spend", "--admin", gateway.admin_url]
    document = json.loads(subprocess.run([*run, "--by", "team", "--json"], env=env, capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert document == admin_get(gateway, "/spend?by=team").json()
    table = subprocess.run([*run, "--by", "team"], env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert table.splitlines()[2].split()[:2] == ["team", "cost"]
    assert table.splitlines()[-1].split()[0] == "total"
    alice = json.loads(subprocess.run([*run, "--key", "alice", "--by", "model", "--json"], env=env, capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert alice["where"] == {"key": "alice"}
    assert [g["name"] for g in alice["groups"]] == ["demo-large"]
    assert (
        alice["total"]["requests"]
        == admin_get(gateway, "/spend?key=alice").json()["total"]["requests"]
        > 0
    )
    refused = subprocess.run(run, env={**env, "FILTERPROXY_ADMIN_TOKEN": "wrong"}, capture_output=True, text=True)  # fmt: skip
    assert refused.returncode != 0 and "token" in refused.stderr


def png_colours(png: bytes) -> int:
    """How many distinct pixel colours an 8-bit RGB(A) PNG has (a blank page: 1)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, kind = 8, b"", 0, 0, 0
    while pos < len(png):
        length, name = struct.unpack(">I4s", png[pos : pos + 8])
        data = png[pos + 8 : pos + 8 + length]
        if name == b"IHDR":
            width, height, depth, kind = struct.unpack(">IIBB", data[:10])
            assert depth == 8 and kind in (2, 6)
        elif name == b"IDAT":
            idat += data
        pos += 12 + length
    raw = zlib.decompress(idat)
    size = 3 if kind == 2 else 4
    stride = width * size
    colours: set[bytes] = set()
    previous = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        method, row = line[0], bytearray(line[1:])
        for x in range(stride):
            a = row[x - size] if x >= size else 0
            b = previous[x]
            c = previous[x - size] if x >= size else 0
            if method == 1:
                row[x] = (row[x] + a) & 255
            elif method == 2:
                row[x] = (row[x] + b) & 255
            elif method == 3:
                row[x] = (row[x] + (a + b) // 2) & 255
            elif method == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(row[i : i + 3]) for i in range(0, stride, size * 7))
        previous = row
    return len(colours)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_the_page_renders_in_a_browser(gateway: Gateway, tmp_path: Path) -> None:
    if admin_get(gateway, "/spend").json()["total"]["requests"] < 10:
        spend_some(gateway)
    expected: dict[str, Any] = admin_get(gateway, "/spend?by=team").json()
    # The browser is challenged (401, Basic) and answers with the token as the password.
    url = f"http://admin:{TOKEN}@127.0.0.1:{gateway.admin_port}/spend/report?by=team"
    dom = chromium("--dump-dom", url).stdout
    assert "<svg" in dom and "<rect" in dom, dom[:2000]
    total = re.search(r'id="total">([^<]+)<', dom)
    assert total is not None and total.group(1) == format_usd(expected["total"]["usd"])
    for group in expected["groups"]:
        assert f"<td>{group['name']}</td>" in dom
    picture = tmp_path / "spend.png"
    shot = chromium("--window-size=1000,760", f"--screenshot={picture}", url)
    assert picture.exists(), shot.stderr[-2000:]
    assert png_colours(picture.read_bytes()) > 5  # bars in several colours, text, axes
    wanted = os.environ.get(SCREENSHOT_ENV)
    if wanted:
        shutil.copyfile(picture, wanted)
