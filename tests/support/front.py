"""The front's shipped config (deploy/kubernetes/front/envoy.yaml) made runnable on one
host, with no DNS name for the replicas: the replicas' tests (tests/replica_checks.py)
and the benchmark of the front (bench/front.py) run it. No pytest here, so the benchmark's
environment can import it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml


def front_config(
    shipped: str,
    replicas: Sequence[tuple[str, int, int]],
    ports: dict[str, int],
    address: str = "127.0.0.1",
) -> dict[str, Any]:
    """The front's config *shipped* (deploy/kubernetes/front/envoy.yaml's text) where
    there is no DNS name for the replicas: the replicas' cluster STATIC, one endpoint per
    ``(address, client port, admin port)`` of *replicas*, each health-checked on its own
    admin port; the listeners (``clients``, ``readiness``) and the admin on *address* and
    the *ports* named after them (``admin`` for the admin). Routes, hash policies,
    timeouts and health checks stay as shipped."""
    config: dict[str, Any] = yaml.safe_load(shipped)
    config["admin"]["address"]["socket_address"] = {
        "address": "127.0.0.1",
        "port_value": ports["admin"],
    }
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"] = {
            "address": address,
            "port_value": ports[listener["name"]],
        }
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    admin = clusters["envoy_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    admin["endpoint"]["address"]["socket_address"]["port_value"] = ports["admin"]
    cluster = clusters["filterproxy"]
    assert cluster["type"] == "STRICT_DNS"
    cluster["type"] = "STATIC"
    cluster.pop("dns_lookup_family", None)
    shipped_endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    endpoints = []
    for host, port, admin_port in replicas:
        endpoint = copy.deepcopy(shipped_endpoint)
        endpoint["endpoint"]["address"]["socket_address"] = {"address": host, "port_value": port}
        endpoint["endpoint"]["health_check_config"]["port_value"] = admin_port
        endpoints.append(endpoint)
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": endpoints}]
    return config
