"""What the compiled pass leaves to the pure one.

`make test` runs the suite twice: on the pure-Python package, then on the data path
compiled by mypyc (``FILTERPROXY_EXPECT_COMPILED=1``, setup.py's COMPILED modules). The
modules below test what is never compiled — the admin listener and its management API,
the command line, the spend report, process supervision, the deployment
manifests and the front — through gateways whose data path the other modules already
run compiled: in the compiled pass they would run the same Python a second time.
"""

from __future__ import annotations

import os

import pytest

#: Test modules whose subject is not compiled, and what it is.
PURE_ONLY = {
    "tests/integration/test_admin_keys.py": "the management API and the CLI",
    "tests/integration/test_bedrock_credentials.py": "AWS credentials (extensions/bedrock/auth.py)",
    "tests/integration/test_operations.py": "the admin listener, reloads, signals",
    "tests/integration/test_replicas.py": "replicas behind the front (deployment)",
    "tests/integration/test_rollout.py": "rolling updates (deployment)",
    "tests/integration/test_spend_report.py": "the spend report, its CLI and page",
    "tests/integration/test_workers.py": "the worker supervisor",
    "tests/unit/test_admin_auth.py": "the admin token",
    "tests/unit/test_admin_protocol.py": "the admin listener",
    "tests/unit/test_architecture_docs.py": "the docs",
    "tests/unit/test_bedrock_auth.py": "SigV4 signing (extensions/bedrock/auth.py)",
    "tests/unit/test_bench_h2_upstream.py": "the benchmark's HTTP/2 mock upstream",
    "tests/unit/test_cloud_providers_config.py": "the cloud providers' config",
    "tests/unit/test_credentials.py": "expiring credentials (filters/credentials.py)",
    "tests/unit/test_docs.py": "the docs",
    "tests/unit/test_eventstream_support.py": "the tests' Bedrock stand-in",
    "tests/unit/test_keys_registry.py": "the run-time keys registry",
    "tests/unit/test_kubernetes_manifests.py": "the Kubernetes manifests",
    "tests/unit/test_sigv4_mock.py": "the tests' SigV4 checker and Bedrock stand-in",
    "tests/unit/test_vertex_mock.py": "the tests' Vertex stand-in",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("FILTERPROXY_EXPECT_COMPILED") != "1":
        return
    root = config.rootpath
    for item in items:
        subject = PURE_ONLY.get(item.path.relative_to(root).as_posix())
        if subject is not None:
            item.add_marker(
                pytest.mark.skip(reason=f"{subject}: not compiled; run by the pure pass")
            )
