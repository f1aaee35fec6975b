"""Render conf/grafana/filterproxy.json against a live run: docs/dashboard.png.

    make dashboard          # or: .venv-bench/bin/python -m bench.dashboard [--seconds 180]

Starts the gateway on bench/dashboard.yaml (with the built-in mock upstream), a real
Prometheus (Debian's package) scraping its admin listener every second, and a load that
changes every 30 s: streams, non-streaming requests, a cluster with a dead endpoint
(retries, an ejection), clients that hang up, unknown models. Then every panel's PromQL
from the dashboard JSON is evaluated by that Prometheus (query_range) and drawn where the
dashboard puts it, with matplotlib: Grafana itself is not installable on this machine,
so this is the dashboard's queries and layout, not Grafana's pixels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "conf" / "grafana" / "filterproxy.json"
CONFIG = Path(__file__).resolve().parent / "dashboard.yaml"
OUTPUT = ROOT / "docs" / "dashboard.png"
GATEWAY = "http://127.0.0.1:8080"
ADMIN = "127.0.0.1:9901"
PROMETHEUS_PORT = 9095
STEP = 2


def start_gateway() -> subprocess.Popen[bytes]:
    twistd = Path(sys.executable).parent / "twistd"
    process = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "-l", "-", "filterproxy", "-c", str(CONFIG)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait(f"http://{ADMIN}/ready")
    return process


def start_prometheus(workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: filterproxy\n    static_configs: [{{targets: ['{ADMIN}']}}]\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready")
    return process


def wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered")


async def one_request(client: httpx.AsyncClient, model: str, stream: bool, hang_up: bool) -> None:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "x " * 8}]}
    try:
        if not stream:
            await client.post("/v1/chat/completions", json=body)
            return
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            seen = 0
            async for _ in response.aiter_bytes():
                seen += 1
                if hang_up and seen == 3:
                    return  # leaving the block closes the connection mid-stream
    except httpx.HTTPError:
        pass


async def user(phase: dict[str, Any], stop: float) -> None:
    async with httpx.AsyncClient(base_url=GATEWAY, timeout=30) as client:
        while time.monotonic() < stop:
            roll = random.random()
            model = "demo-flaky" if roll < phase["flaky"] else "demo"
            if random.random() < phase["unknown"]:
                model = "no-such-model"
            stream = random.random() >= phase["plain"]
            hang_up = stream and random.random() < phase["hang_up"]
            await one_request(client, model, stream, hang_up)


PHASES = [
    {"users": 10, "plain": 0.1, "flaky": 0.0, "unknown": 0.0, "hang_up": 0.0},
    {"users": 60, "plain": 0.2, "flaky": 0.0, "unknown": 0.02, "hang_up": 0.0},
    {"users": 40, "plain": 0.1, "flaky": 0.5, "unknown": 0.0, "hang_up": 0.0},
    {"users": 40, "plain": 0.1, "flaky": 0.0, "unknown": 0.0, "hang_up": 0.3},
    {"users": 120, "plain": 0.5, "flaky": 0.0, "unknown": 0.05, "hang_up": 0.0},
    {"users": 20, "plain": 0.1, "flaky": 0.0, "unknown": 0.0, "hang_up": 0.0},
]


async def drive(seconds: float) -> None:
    per_phase = seconds / len(PHASES)
    for phase in PHASES:
        stop = time.monotonic() + per_phase
        print(f"phase: {phase}", flush=True)
        await asyncio.gather(*(user(phase, stop) for _ in range(int(phase["users"]))))


def query_range(expr: str, start: float, end: float) -> list[dict[str, Any]]:
    expr = expr.replace("$__rate_interval", "10s").replace('route=~"$route"', 'route=~".*"')
    response = httpx.get(
        f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": STEP},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["data"]["result"]  # type: ignore[no-any-return]


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def render(start: float, end: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    plt.style.use("dark_background")
    figure = plt.figure(figsize=(24, rows * 0.62), facecolor="#111217")
    grid = figure.add_gridspec(rows, 24, hspace=3.2, wspace=2.2, top=0.95)
    scale = {"s": (1000, "ms"), "bytes": (1 / 1e6, "MB"), "percentunit": (100, "%")}
    for panel in panels:
        pos = panel["gridPos"]
        axes = figure.add_subplot(
            grid[pos["y"] : pos["y"] + pos["h"] - 1, pos["x"] : pos["x"] + pos["w"]]
        )
        axes.set_facecolor("#181b1f")
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        factor, suffix = scale.get(unit, (1, {"reqps": "req/s"}.get(unit, "")))
        for target in panel["targets"]:
            for series in query_range(target["expr"], start, end):
                points = [(float(t) - start, float(v)) for t, v in series["values"]]
                points = [(t, v * factor) for t, v in points if v == v]  # drop NaN
                if points:
                    xs, ys = zip(*points, strict=True)
                    axes.plot(
                        xs,
                        ys,
                        linewidth=1.2,
                        label=legend(target["legendFormat"], series["metric"]),
                    )
        axes.set_xlim(0, end - start)
        axes.set_title(panel["title"], loc="left", fontsize=11, color="#d8d9da")
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _, s=suffix: f"{v:g} {s}".strip()))
        axes.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{int(v) // 60}:{int(v) % 60:02d}")
        )
        axes.tick_params(labelsize=8, colors="#9fa7b3")
        axes.grid(color="#2c3235", linewidth=0.6)
        for side in axes.spines.values():
            side.set_color("#2c3235")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="upper left", frameon=False, ncol=2)
    figure.suptitle(
        "filterproxy — conf/grafana/filterproxy.json, queries evaluated by Prometheus "
        f"over a {int(end - start)} s run of bench/dashboard.py (x: minutes since start)",
        x=0.01,
        ha="left",
        fontsize=13,
        color="#d8d9da",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=70, bbox_inches="tight", facecolor=figure.get_facecolor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    random.seed(7)
    with tempfile.TemporaryDirectory() as workdir:
        gateway = start_gateway()
        prometheus = start_prometheus(Path(workdir))
        try:
            time.sleep(3)
            start = time.time()
            asyncio.run(drive(args.seconds))
            time.sleep(12)  # the last rate windows
            end = time.time()
            render(start, end, args.output)
        finally:
            for process in (prometheus, gateway):
                process.terminate()
                process.wait(15)
    print(
        f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}"
    )
    os._exit(0)


if __name__ == "__main__":
    main()
