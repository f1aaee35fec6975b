"""The Kubernetes manifests (deploy/kubernetes): each kustomization rendered by kustomize
itself, every document validated against Kubernetes' schemas, and the facts that make a
deployment work checked on what was rendered — the gateway's config loads with the
gateway's own loader, the probes reach the admin listener, the kubelet waits for the
drain, the budget, autoscaler and Services find the gateway's pods, nothing runs as root,
and provider keys come from Secrets only.

kustomize comes with kubectl (1.27 or later: kustomize v5) or on its own; Debian's
``kubernetes-client`` (kubectl 1.20, kustomize v2.0.3) cannot render these
kustomizations (directories as resources, ``patches``, per-generator options), so
without a newer one the module is skipped with that reason.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from filterproxy.config import Node
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.keys.config import hash_key, parse_keys_file
from filterproxy.runtime.listeners import (
    ReusePortEndpoint,
    ReusePortTLSEndpoint,
    reuse_port_endpoint,
)
from tests.support.kustomize import MISSING, kustomize_command, render

#: Every kustomization a user applies.
KUSTOMIZATIONS = ("base", "overlays/redis", "overlays/tls", "overlays/replicas")

#: The Kubernetes versions the manifests are validated against: the oldest one they are
#: written for (topologySpreadConstraints' matchLabelKeys and the PodDisruptionBudget's
#: unhealthyPodEvictionPolicy are on by default from 1.27; 1.30 is the oldest still
#: maintained by the big providers) and a recent one, which would reject an API that was
#: removed since.
KUBERNETES_VERSIONS = ("1.30", "1.35")

#: Environment variable names that hold secrets: never a literal value in a manifest.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)

#: A config value that takes its secret from the environment: ``${VAR}`` or
#: ``${VAR:-placeholder}`` (the Secret's variable, or a placeholder while it is unset).
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")

#: Headers that carry credentials upstream.
CREDENTIAL_HEADERS = {"authorization", "x-api-key", "api-key"}

POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


KUSTOMIZE = kustomize_command()

pytestmark = pytest.mark.skipif(
    KUSTOMIZE is None,
    reason=MISSING,
)


@functools.cache
def _rendered(kustomization: str) -> tuple[dict[str, Any], ...]:
    assert KUSTOMIZE is not None
    return tuple(render(KUSTOMIZE, kustomization))


def rendered(kustomization: str) -> list[dict[str, Any]]:
    """The documents kustomize renders from *kustomization* (a fresh copy each call)."""
    return json.loads(json.dumps(_rendered(kustomization)))  # type: ignore[no-any-return]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each workload and its pod template."""
    for doc in docs:
        if doc["kind"] in POD_OWNERS:
            yield doc, doc["spec"]["template"]


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` and ``matchExpressions``, or a Service's
    plain map) selects *labels*."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = (
            expression["key"],
            expression["operator"],
            expression.get("values", []),
        )
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def gateway(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The gateway Deployment and its container."""
    deployment = one(docs, "Deployment", "filterproxy")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    [container] = [c for c in containers if c["name"] == "gateway"]
    return deployment, container


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def mount_of(
    deployment: Mapping[str, Any], container: Mapping[str, Any], path: str
) -> tuple[str, dict[str, Any]]:
    """The directory mounted for the file *path*, and the volume mounted there (the
    deepest mount that holds the file, as in the container)."""
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, f"nothing is mounted where {path} is read"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    assert "subPath" not in mount, (
        f"{mount['mountPath']} is a subPath mount: the kubelet never updates it, so no reload"
    )
    [volume] = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    return mount["mountPath"].rstrip("/"), volume


def secret_data(secret: Mapping[str, Any], key: str) -> str:
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode()


def config_document(docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The gateway config in the ConfigMap the gateway reads: its text, and as YAML."""
    deployment, container = gateway(docs)
    path = env_of(container)["FILTERPROXY_CONFIG"]
    directory, volume = mount_of(deployment, container, path)
    assert "configMap" in volume, f"{directory} is not mounted from a ConfigMap"
    configmap = one(docs, "ConfigMap", volume["configMap"]["name"])
    text = configmap["data"][path[len(directory) + 1 :]]
    return text, yaml.safe_load(text)


def duration(document: Mapping[str, Any], key: str, default: float) -> float:
    """A duration of the config as the gateway reads it."""
    return Node(document[key], key, {}).duration() if key in document else default


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def admin_port(container: Mapping[str, Any]) -> int:
    """The admin listener's port, as the gateway parses FILTERPROXY_ADMIN."""
    return reuse_port_endpoint(None, env_of(container)["FILTERPROXY_ADMIN"]).port


def client_listener(
    deployment: Mapping[str, Any], container: Mapping[str, Any], scratch: Path
) -> ReusePortEndpoint | ReusePortTLSEndpoint:
    """The clients' listener as the gateway makes it from FILTERPROXY_LISTEN: an ssl:
    one reads its key and certificate, here made in *scratch* and read from there
    instead of the Secret's mount."""
    description = env_of(container)["FILTERPROXY_LISTEN"]
    if description.startswith("ssl:"):
        options = dict(p.split("=", 1) for p in description.split(":")[2:])
        for option in ("privateKey", "certKey"):
            directory, volume = mount_of(deployment, container, options[option])
            assert volume["secret"]["secretName"] == "filterproxy-tls"
            assert options[option][len(directory) + 1 :] in ("tls.key", "tls.crt")
            description = description.replace(directory + "/", f"{scratch}/")
        _self_signed(scratch)
    return reuse_port_endpoint(None, description)


def container_port(container: Mapping[str, Any], port: int | str) -> dict[str, Any]:
    """The container's port named or numbered *port*."""
    found = [p for p in container.get("ports", []) if port in (p.get("name"), p["containerPort"])]
    assert found, f"container {container['name']} has no port {port!r}"
    return found[0]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_is_valid_kubernetes(kustomization: str, version: str) -> None:
    docs = rendered(kustomization)
    assert docs
    for doc in docs:
        where = f"{kustomization}: {doc['kind']} {doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{where} is not valid Kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{where}: no schema in Kubernetes {version}: {e.message}")


def test_validation_rejects_a_field_kubernetes_does_not_know() -> None:
    """The validation above is strict: a misspelt field fails it, as the API server would
    refuse it."""
    deployment, _ = gateway(rendered("base"))
    spec = deployment["spec"]["template"]["spec"]
    spec["terminationGracePeriod"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_gateway_config_loads_without_any_secret(kustomization: str, tmp_path: Path) -> None:
    """The config in the ConfigMap loads with the gateway's own loader, with no provider
    key in the environment (the Secret is optional), and its keys file from the Secret
    mounted where it says."""
    docs = rendered(kustomization)
    deployment, container = gateway(docs)
    text, document = config_document(docs)
    if "keys_file" in document:
        directory, volume = mount_of(deployment, container, document["keys_file"])
        assert "secret" in volume, f"{directory} is not mounted from a Secret"
        secret = one(docs, "Secret", volume["secret"]["secretName"])
        keys = tmp_path / "keys.yaml"
        keys.write_text(secret_data(secret, document["keys_file"][len(directory) + 1 :]))
        text = text.replace(document["keys_file"], str(keys))
    config = parse_config(text, source=kustomization, environ={})
    assert not config.listeners, "listeners come from FILTERPROXY_LISTEN, not the config"
    assert config.admin_listener is not None


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes_ask_the_admin_listener(kustomization: str) -> None:
    _, container = gateway(rendered(kustomization))
    admin = admin_port(container)
    expected = {
        "readinessProbe": "/serving",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"])["containerPort"] == admin, probe
        assert get.get("scheme", "HTTP") == "HTTP", probe


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_clients_port_is_the_listener(kustomization: str, tmp_path: Path) -> None:
    deployment, container = gateway(rendered(kustomization))
    endpoint = client_listener(deployment, container, tmp_path)
    name = container_port(container, endpoint.port)["name"]
    assert name == ("https" if isinstance(endpoint, ReusePortTLSEndpoint) else "http")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_kubelet_waits_for_the_drain(kustomization: str) -> None:
    """SIGKILL must not come before the gateway's own deadline: shutdown_delay (still
    accepting while the endpoint's removal spreads) plus shutdown_grace (requests in
    flight finishing), and a margin for the process to exit."""
    docs = rendered(kustomization)
    deployment, _ = gateway(docs)
    _, document = config_document(docs)
    delay = duration(document, "shutdown_delay", 0.0)
    grace = duration(document, "shutdown_grace", 30.0)
    assert delay > 0, "without shutdown_delay, new connections meet a closed port"
    period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period >= delay + grace + 5


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rolling_updates_keep_every_replica_serving(kustomization: str) -> None:
    deployment, _ = gateway(rendered(kustomization))
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] == 1


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_budget_and_autoscaler_act_on_the_gateway(kustomization: str) -> None:
    docs = rendered(kustomization)
    deployment, _ = gateway(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    others = [t["metadata"]["labels"] for d, t in pod_templates(docs) if d is not deployment]
    budget = one(docs, "PodDisruptionBudget", "filterproxy")
    assert matches(budget["spec"]["selector"], labels)
    assert not any(matches(budget["spec"]["selector"], o) for o in others)
    autoscaler = one(docs, "HorizontalPodAutoscaler", "filterproxy")
    spec = autoscaler["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert [m["resource"]["name"] for m in spec["metrics"] if m["type"] == "Resource"] == ["cpu"]
    # The autoscaler starts from the Deployment's count, and a drain can always go on.
    assert spec["minReplicas"] == deployment["spec"]["replicas"] >= 2
    assert spec["maxReplicas"] > spec["minReplicas"]
    assert budget["spec"]["minAvailable"] < spec["minReplicas"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_services_select_their_pods(kustomization: str) -> None:
    docs = rendered(kustomization)
    for service in (d for d in docs if d["kind"] == "Service"):
        name = service["metadata"]["name"]
        selected = [
            (d, t)
            for d, t in pod_templates(docs)
            if matches(service["spec"]["selector"], t["metadata"]["labels"])
        ]
        assert selected, f"Service {name} selects no pods"
        if name in ("filterproxy", "filterproxy-replicas"):
            assert [d["metadata"]["name"] for d, _ in selected] == ["filterproxy"], name
        for _, template in selected:
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert any(
                    target in (p.get("name"), p["containerPort"])
                    for c in template["spec"]["containers"]
                    for p in c.get("ports", [])
                ), f"Service {name} port {port['name']}: no container port {target!r}"
    headless = one(docs, "Service", "filterproxy-replicas")
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)
    if any(
        d["kind"] == "Deployment" and d["metadata"]["name"] == "filterproxy-redis" for d in docs
    ):
        one(docs, "Service", "filterproxy-redis")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_container_runs_as_root(kustomization: str) -> None:
    for workload, template in pod_templates(rendered(kustomization)):
        pod = template["spec"].get("securityContext", {})
        for container in (
            template["spec"].get("initContainers", []) + template["spec"]["containers"]
        ):
            where = f"{workload['metadata']['name']}/{container['name']}"
            own = container.get("securityContext", {})
            context = {**pod, **own}
            assert context.get("runAsNonRoot") is True, where
            assert context.get("runAsUser", 1) != 0, where
            assert own.get("allowPrivilegeEscalation") is False, where
            assert own.get("readOnlyRootFilesystem") is True, where
            assert own.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not own.get("capabilities", {}).get("add"), where
            assert own.get("privileged", False) is False, where
            assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_provider_keys_come_from_secrets_only(kustomization: str) -> None:
    docs = rendered(kustomization)
    for workload, template in pod_templates(docs):
        for container in template["spec"]["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env, f"{where}: {env['name']} is written in the manifest"
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']}"
            for source in container.get("envFrom", []):
                assert "configMapRef" not in source or not SECRET_NAME.search(
                    source["configMapRef"]["name"]
                ), where
    _, container = gateway(docs)
    assert {"secretRef": {"name": "filterproxy-provider-keys", "optional": True}} in container[
        "envFrom"
    ]
    literal = set(env_of(container))
    _, document = config_document(docs)
    for name, cluster in document["clusters"].items():
        values = [cluster["api_key"]] if "api_key" in cluster else []
        for owner in (cluster, *(r for r in document.get("routes", []) if r["cluster"] == name)):
            rules = owner.get("request_headers", {})
            for action in ("set", "append"):
                values += [
                    v for h, v in rules.get(action, {}).items() if h.lower() in CREDENTIAL_HEADERS
                ]
        for value in values:
            found = ENV_REFERENCE.search(str(value))
            assert found, f"clusters.{name}: a credential written in the config: {value!r}"
            assert found.group(1) not in literal, f"{found.group(1)} is set in the manifest"
    for configmap in (d for d in docs if d["kind"] == "ConfigMap"):
        for text in configmap.get("data", {}).values():
            assert not re.search(r"\b(sk-[A-Za-z0-9_-]{16,}|fpk-[A-Za-z0-9_-]{16,})", text), (
                f"ConfigMap {configmap['metadata']['name']} holds what looks like a key"
            )


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_config_and_keys_reload_in_place(kustomization: str) -> None:
    """The config and the keys are updated where they are (a fixed name, no hash suffix,
    mounted as directories), so a change is reloaded by config_watch without a rollout."""
    docs = rendered(kustomization)
    deployment, container = gateway(docs)
    _, document = config_document(docs)
    assert duration(document, "config_watch", 0.0) > 0
    _, volume = mount_of(deployment, container, env_of(container)["FILTERPROXY_CONFIG"])
    assert volume["configMap"]["name"] == "filterproxy-config"
    if "keys_file" in document:
        _, keys = mount_of(deployment, container, document["keys_file"])
        assert keys["secret"]["secretName"] == "filterproxy-keys"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_workers_match_the_cpu_limit(kustomization: str) -> None:
    """One single-threaded worker per CPU of the limit: fewer leave the limit unused,
    more are throttled."""
    docs = rendered(kustomization)
    _, container = gateway(docs)
    workers = env_of(container)["FILTERPROXY_WORKERS"]
    assert workers.isdigit(), "a number: 'auto' counts the node's CPUs, not the pod's"
    assert int(workers) == math.ceil(cpu_cores(container["resources"]["limits"]["cpu"]))
    for _, template in pod_templates(docs):
        for c in template["spec"]["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{c['name']}: {kind}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_image_is_the_gateways(kustomization: str) -> None:
    _, container = gateway(rendered(kustomization))
    assert container["image"] == "filterproxy:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_the_example_keys_are_no_secret_and_use_only_the_mock(tmp_path: Path) -> None:
    """keys.yaml publishes the key of its example entry so the example can be tried: that
    entry may use the built-in mock's model and nothing a provider bills."""
    secret = one(rendered("overlays/redis"), "Secret", "filterproxy-keys")
    text = secret_data(secret, "keys.yaml")
    (tmp_path / "keys.yaml").write_text(text)
    _, keys, _ = parse_keys_file(Node(str(tmp_path / "keys.yaml"), "keys_file", {}), {})
    published = re.findall(r"\bfpk-[A-Za-z0-9_-]+", text)
    assert published
    for key in published:
        [entry] = [k for k in keys if k.digest == hash_key(key)]
        assert entry.models == ("demo",), entry.name


def _self_signed(directory: Path) -> None:
    """A key and certificate as a kubernetes.io/tls Secret holds them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "filterproxy")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_tls_listener_reads_the_tls_secret(tmp_path: Path) -> None:
    """The tls overlay's listener is an ssl: endpoint the gateway accepts, with the key
    and certificate of the kubernetes.io/tls Secret mounted where it reads them, and the
    Services send to it."""
    docs = rendered("overlays/tls")
    deployment, container = gateway(docs)
    endpoint = client_listener(deployment, container, tmp_path)
    assert isinstance(endpoint, ReusePortTLSEndpoint)
    assert container_port(container, "https")["containerPort"] == endpoint.port
    for name in ("filterproxy", "filterproxy-replicas"):
        targets = [p["targetPort"] for p in one(docs, "Service", name)["spec"]["ports"]]
        assert "https" in targets, name
        assert "http" not in targets, name


def test_replicas_send_resumes_to_their_replica() -> None:
    """The replicas overlay: resumable routes whose stream ids carry the key the front
    hashes on, more replicas, and room in memory for what resumable streams keep."""
    docs = rendered("overlays/replicas")
    deployment, container = gateway(docs)
    _, document = config_document(docs)
    assert document["resume_affinity_header"] == "x-request-id"
    assert all(route.get("resume") for route in document["routes"])
    assert deployment["spec"]["replicas"] == 3
    base_memory = gateway(rendered("base"))[1]["resources"]["limits"]["memory"]
    assert (
        _mebibytes(container["resources"]["limits"]["memory"])
        >= _mebibytes(base_memory) + document["resume_buffers"] / 2**20
    )


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]
