"""The configuration reference (docs/configuration.md) stays in step with the config parser:
every key the parser takes is documented, nothing else is, and the defaults the reference
states are the parser's."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from filterproxy.chain.registry import BUILTIN_FILTERS
from filterproxy.config import (
    ClusterConfig,
    Limits,
    Node,
    OutlierDetection,
    RetryPolicy,
    Timeouts,
)
from filterproxy.config._clusters import _CLUSTER_KEYS, _ENDPOINT_KEYS
from filterproxy.config._load import _TOP_KEYS as _CORE_TOP_KEYS
from filterproxy.config._routes import _ROUTE_KEYS as _CORE_ROUTE_KEYS
from filterproxy.extensions.builtin import BUILTIN_SCHEMAS
from filterproxy.extensions.delivery.config import DeliveryConfig
from filterproxy.extensions.responses.config import ResponsesConfig

#: Every key the parser takes: the core's and the built-in extensions'.
_TOP_KEYS = _CORE_TOP_KEYS.union(*(s.keys for s in BUILTIN_SCHEMAS))
_ROUTE_KEYS = _CORE_ROUTE_KEYS.union(*(s.route_keys for s in BUILTIN_SCHEMAS))

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def tables() -> dict[str, dict[str, str]]:
    """Each section's first table: the documented keys (a row may name several) and the
    default cell each gets (its own value when the cell gives one per key)."""
    found: dict[str, dict[str, str]] = {}
    section = ""
    in_table = done = False
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip().strip("`")
            in_table = done = False
            continue
        if not line.startswith("|"):
            done = done or in_table
            continue
        in_table = True
        if done or not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        keys = re.findall(r"`([^`]+)`", cells[0])
        defaults = re.findall(r"`[^`]*`", cells[-1])
        for i, key in enumerate(keys):
            own = defaults[i] if len(keys) > 1 and len(defaults) == len(keys) else cells[-1]
            found.setdefault(section, {})[key] = own
    return found


def first_parts(keys: dict[str, str]) -> set[str]:
    return {key.split(".")[0].split("[")[0] for key in keys}


def sub_keys(keys: dict[str, str], parent: str) -> set[str]:
    return {key.split(".", 1)[1] for key in keys if key.startswith(parent + ".")}


def test_the_top_level_keys_are_the_parsers() -> None:
    top = tables()["Top level"]
    assert first_parts(top) == _TOP_KEYS
    assert sub_keys(top, "admin") == {"listen", "token"}
    assert sub_keys(top, "responses") == {f.name for f in fields(ResponsesConfig)}
    assert sub_keys(top, "tracing") == {"otlp_endpoint", "service_name"}
    assert sub_keys(top, "delivery") == {f.name for f in fields(DeliveryConfig)}


def test_the_cluster_keys_are_the_parsers() -> None:
    cluster = tables()["clusters.NAME"]
    assert first_parts(cluster) == _CLUSTER_KEYS
    assert sub_keys(cluster, "timeouts") == {f.name for f in fields(Timeouts)}
    assert sub_keys(cluster, "retry") == {f.name for f in fields(RetryPolicy)}
    assert sub_keys(cluster, "outlier_detection") == {f.name for f in fields(OutlierDetection)}
    assert sub_keys(cluster, "tls") == {"verify", "ca_file", "client_cert", "client_key"}
    assert sub_keys(cluster, "endpoints[]") | {"url"} == _ENDPOINT_KEYS


def test_the_route_keys_are_the_parsers() -> None:
    assert set(tables()["routes[]"]) == _ROUTE_KEYS


def test_the_limits_are_the_parsers() -> None:
    assert set(tables()["limits"]) == {f.name for f in fields(Limits)}


def test_every_built_in_filter_is_documented() -> None:
    assert set(tables()["filters[]"]) == set(BUILTIN_FILTERS)


def _value(cell: str) -> Any:
    """The first value in a default cell, read as the config reader reads it (``30s``
    is 30.0; ``off``, ``none`` and ``—`` are None)."""
    match = re.search(r"`([^`]*)`", cell)
    text = match.group(1) if match else cell.split()[0]
    if text in ("off", "none", "—"):
        return None
    node = Node(text, "doc", {})
    for read in (node.integer, node.duration):
        try:
            return read()
        except Exception:
            continue
    return text


def _defaults_of(instance: Any, prefix: str = "") -> dict[str, Any]:
    return {prefix + f.name: getattr(instance, f.name) for f in fields(instance)}


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("limits", _defaults_of(Limits())),
        ("clusters.NAME", _defaults_of(Timeouts(), "timeouts.")),
        (
            "clusters.NAME",
            {
                k: v
                for k, v in _defaults_of(RetryPolicy(), "retry.").items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            },
        ),
        ("clusters.NAME", _defaults_of(OutlierDetection(), "outlier_detection.")),
        (
            "Top level",
            {
                k: v
                for k, v in _defaults_of(ResponsesConfig(), "responses.").items()
                if k != "responses.store"  # it depends on whether redis is configured
            },
        ),
        (
            "Top level",
            {
                k: v
                for k, v in _defaults_of(DeliveryConfig(), "delivery.").items()
                if k not in ("delivery.compress", "delivery.slow_reader")  # a list, a flag
            },
        ),
        (
            "clusters.NAME",
            {
                key: getattr(ClusterConfig.__dataclass_fields__[key], "default", None)
                for key in (
                    "max_connections",
                    "max_idle_connections",
                    "idle_connection_timeout",
                    "protocol",
                    "ping_interval",
                )
            },
        ),
    ],
)
def test_the_documented_defaults_are_the_parsers(section: str, expected: dict[str, Any]) -> None:
    documented = tables()[section]
    for key, default in expected.items():
        assert key in documented, f"{section}: {key} is not documented"
        assert _value(documented[key]) == default, f"{section}: {key}: {documented[key]}"
