"""provider: bedrock and provider: vertex in the config: their own cluster keys, their
defaults, the errors that name the key path and the fix, and the chain they get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from filterproxy.config import ConfigError
from filterproxy.extensions.bedrock.config import AwsCredentials, BedrockCluster
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.vertex.config import VertexCluster
from filterproxy.http.apis import CHAT, MESSAGES

from .fresh_interpreter import run_python


def config(cluster: str, env: dict[str, str] | None = None) -> object:
    return parse_config(f"clusters:\n  c: {cluster}\nroutes: [{{cluster: c}}]\n", environ=env or {})


def test_a_bedrock_cluster_and_its_defaults() -> None:
    parsed = config("{provider: bedrock, region: eu-central-1}")
    cluster = parsed.clusters["c"]  # type: ignore[attr-defined]
    option = cluster.option(BedrockCluster)
    assert option == BedrockCluster("c", "eu-central-1", AwsCredentials(), None, "auto")
    assert cluster.endpoints[0].url == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert cluster.apis == frozenset({MESSAGES}) and cluster.provider == "bedrock"
    types = [f.type_name for f in parsed.filters]  # type: ignore[attr-defined]
    assert types[-1] == "bedrock" and "translate" in types


def test_the_region_comes_from_the_environment() -> None:
    option = (
        config("{provider: bedrock}", {"AWS_REGION": "ap-south-1"})
        .clusters["c"]
        .option(  # type: ignore[attr-defined]
            BedrockCluster
        )
    )
    assert option.region == "ap-south-1"


@pytest.mark.parametrize(
    ("cluster", "path", "said"),
    [
        ("{provider: bedrock}", "clusters.c.region", "needs its AWS region"),
        ("{provider: bedrock, region: 'us east'}", "clusters.c.region", "not an AWS region"),
        (
            "{provider: bedrock, region: us-east-1, bedrock_api: grpc}",
            "clusters.c.bedrock_api",
            "invoke",
        ),
        (
            "{provider: bedrock, region: us-east-1, api_key: k, credentials: {profile: p}}",
            "clusters.c.credentials",
            "not both",
        ),
        (
            "{provider: bedrock, region: us-east-1, credentials: {access_key_id: a}}",
            "clusters.c.credentials",
            "go together",
        ),
        (
            "{provider: bedrock, region: us-east-1, credentials: {external_id: x}}",
            "clusters.c.credentials.external_id",
            "needs role_arn",
        ),
        (
            "{provider: bedrock, region: us-east-1, credentials: {role_arn: r, duration: 1m}}",
            "clusters.c.credentials.duration",
            "15m to 12h",
        ),
        ("{provider: bedrock, region: us-east-1, project: p}", "clusters.c", "project"),
        ("{provider: openai, api_key: k, region: us-east-1}", "clusters.c", "region"),
        ("{provider: vertex}", "clusters.c.project", "GOOGLE_CLOUD_PROJECT"),
        (
            "{provider: vertex, project: p, credentials_file: /nonexistent}",
            "clusters.c.credentials_file",
            "no such file",
        ),
        ("{provider: nimbus}", "clusters.c.provider", "bedrock"),
    ],
)
def test_mistakes_are_named_with_their_key_path(cluster: str, path: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(cluster)
    assert path in str(caught.value) and said in str(caught.value)


def test_secrets_are_not_shown() -> None:
    option = (
        config(
            "{provider: bedrock, region: us-east-1, credentials: "
            "{access_key_id: AKID, secret_access_key: very-secret, session_token: tok}}"
        )
        .clusters["c"]
        .option(BedrockCluster)
    )  # type: ignore[attr-defined]
    assert "very-secret" not in repr(option) and "tok'" not in repr(option)
    assert "explicit keys" in option.describe()
    keyed = config("{provider: bedrock, region: us-east-1, api_key: abc123}").clusters["c"]  # type: ignore[attr-defined]
    assert "abc123" not in repr(keyed.option(BedrockCluster))


def test_a_vertex_cluster_its_project_from_the_key_file_and_its_apis_by_model(
    tmp_path: Path,
) -> None:
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "project_id": "from-file"}))
    cluster = config(f"{{provider: vertex, region: us-east5, credentials_file: {key}}}").clusters[
        "c"
    ]  # type: ignore[attr-defined]
    option = cluster.option(VertexCluster)
    assert option == VertexCluster("c", "from-file", "us-east5", str(key))
    assert cluster.endpoints[0].url == "https://us-east5-aiplatform.googleapis.com"
    assert cluster.apis_for("claude-opus-4-6") == frozenset({MESSAGES})
    assert cluster.apis_for("gemini-2.5-pro") == frozenset({CHAT})
    global_ = config("{provider: vertex, project: p}").clusters["c"]  # type: ignore[attr-defined]
    assert global_.endpoints[0].url == "https://aiplatform.googleapis.com"
    assert global_.option(VertexCluster).location_path == "/v1/projects/p/locations/global"
    described = global_.option(VertexCluster).describe_credentials({})
    assert "metadata server" in described


def test_reading_a_config_with_cloud_clusters_leaves_the_reactor_unchosen(
    tmp_path: Path,
) -> None:
    """twistd reads the config (and builds the chain) before it installs the gateway's
    reactor: nothing of Bedrock's or Vertex's may pick Twisted's default one first."""
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "project_id": "p"}))
    out = run_python(
        f"""
        import sys
        from filterproxy.chain.registry import build_chain
        from filterproxy.extensions.builtin import parse_config
        from filterproxy.filters.resources import Resources
        config = parse_config('''
        clusters:
          b: {{provider: bedrock, region: us-east-1}}
          v: {{provider: vertex, credentials_file: {key}}}
        routes: [{{cluster: b}}]
        ''')
        build_chain(config, Resources())
        print("twisted.internet.reactor" in sys.modules)
        """
    )
    assert out == "False"
