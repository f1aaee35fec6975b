"""The weak-link benchmark's results: a row's figures out of what its client saw, the
markdown table, and the targets, met or not."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

#: Time to last token "no worse" than pass-through: within this factor of it (the
#: token pace alone moves a stream's end by a few percent between runs).
NO_WORSE = 1.05


def summarize(
    streams: list[dict[str, Any]],
    log: dict[str, dict[str, Any]],
    link_bytes: tuple[int, int],
    cpu_s: float | None,
) -> dict[str, Any]:
    """A row's figures: *streams* as the client reported them, *log* the upstream's
    (text generated and requests, by name), *link_bytes* (down, up) from the veth's
    counters, *cpu_s* the gateway's or peer's CPU time over the row."""
    count = len(streams)
    complete = [s for s in streams if s["done"] and s["usage"]]
    exact = [s for s in complete if log.get(s["name"], {}).get("text") == s["text"]]
    first = [s["first_token_s"] for s in streams if s["first_token_s"] is not None]
    last = [s["last_token_s"] for s in complete if s["last_token_s"] is not None]
    return {
        "streams": count,
        "complete": len(complete),
        "exact": len(exact),
        "first_token_p50_s": statistics.median(first) if first else None,
        "first_token_max_s": max(first) if first else None,
        "last_token_p50_s": statistics.median(last) if last else None,
        "last_token_max_s": max(last) if last else None,
        "kb_down_per_stream": link_bytes[0] / count / 1000,
        "kb_up_per_stream": link_bytes[1] / count / 1000,
        "stalls": sum(s["stalls"] for s in streams),
        "longest_gap_s": max((s["longest_gap_s"] for s in streams), default=0.0),
        "requests_per_stream": sum(s["requests"] for s in streams) / count,
        "upstream_requests_per_stream": sum(
            log.get(s["name"], {}).get("requests", 0) for s in streams
        )
        / count,
        "cpu_ms_per_stream": cpu_s * 1000 / count if cpu_s is not None else None,
        "encodings": sorted({s["content_encoding"] or "identity" for s in streams}),
        "errors": sorted({s["error"] for s in streams if s["error"]})[:3],
    }


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| link | row | first token p50 (max) s | last token p50 (max) s | link KB down / up per stream "
        "| sender's send queue max KB | stalls ≥ 1 s (longest gap s) | complete / exact "
        "| requests per stream: client / upstream | CPU ms per stream | encoding |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['profile']} | {r['row']} "
            f"| {_num(r['first_token_p50_s'])} ({_num(r['first_token_max_s'])}) "
            f"| {_num(r['last_token_p50_s'])} ({_num(r['last_token_max_s'])}) "
            f"| {r['kb_down_per_stream']:.1f} / {r['kb_up_per_stream']:.1f} "
            f"| {r['send_queue_max_kb']:.1f} "
            f"| {r['stalls']} ({r['longest_gap_s']:.1f}) "
            f"| {r['complete']}/{r['streams']} / {r['exact']}/{r['streams']} "
            f"| {r['requests_per_stream']:.2f} / {r['upstream_requests_per_stream']:.2f} "
            f"| {_num(r['cpu_ms_per_stream'], 1)} | {', '.join(r['encodings'])} |"
        )
    return "\n".join(lines)


def _find(rows: list[dict[str, Any]], profile: str, label: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["profile"] == profile and r["row"] == label), None)


def targets(rows: list[dict[str, Any]], plain: str, save_data: str, resume: str) -> list[str]:
    """The targets, each met or not (or not run), as markdown list items. *plain*,
    *save_data* and *resume* are the labels of the gateway's rows they compare."""
    out: list[str] = []

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    def pair(
        profile: str, why: str, check: Callable[[dict[str, Any], dict[str, Any]], str]
    ) -> None:
        base, saving = _find(rows, profile, plain), _find(rows, profile, save_data)
        if base is None or saving is None:
            out.append(f"- {why} ({profile}): not run")
        else:
            out.append(f"- {why} ({profile}): {check(base, saving)}")

    def fewer_bytes(base: dict[str, Any], saving: dict[str, Any]) -> str:
        saved = 1 - saving["kb_down_per_stream"] / base["kb_down_per_stream"]
        last, base_last = saving["last_token_p50_s"], base["last_token_p50_s"]
        in_time = last is not None and base_last is not None and last <= base_last * NO_WORSE
        ok = saved >= 0.80 and in_time and saving["exact"] == saving["streams"]
        return (
            f"{round(100 * saved) + 0}% fewer bytes down, last token {_num(last)} s against "
            f"{_num(base_last)} s, {saving['exact']}/{saving['streams']} exact: {verdict(ok)}"
        )

    def cpu(base: dict[str, Any], saving: dict[str, Any]) -> str:
        if not base["cpu_ms_per_stream"] or saving["cpu_ms_per_stream"] is None:
            return "no CPU figure"
        ratio = saving["cpu_ms_per_stream"] / base["cpu_ms_per_stream"]
        return f"{ratio:.2f}x pass-through: {verdict(ratio <= 1.5)}"

    pair(
        "3g",
        f"Save-Data on 3G: ≥ 80% fewer bytes than pass-through, last token no later "
        f"(within {NO_WORSE:.2f}x)",
        fewer_bytes,
    )
    pair("3g", "CPU per stream with coalescing and compression ≤ 1.5x pass-through", cpu)
    resumed = [r for r in rows if r["row"].startswith(resume)]
    if not resumed:
        out.append("- Resume under drops: every stream complete and exact: not run")
    for r in resumed:
        ok = r["exact"] == r["streams"]
        out.append(
            f"- {r['row']} under drops ({r['profile']}): every stream complete and exact: "
            f"{r['complete']}/{r['streams']} complete, {r['exact']}/{r['streams']} exact: "
            f"{verdict(ok)}; upstream requests per stream {r['upstream_requests_per_stream']:.2f} "
            f"(one each: {'yes' if r['upstream_requests_per_stream'] == 1 else 'no'})"
        )
    return out
