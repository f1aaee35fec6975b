"""The vertex extension's config: ``provider: vertex`` clusters, and the filter's place.

```yaml
clusters:
  vertex:
    provider: vertex
    project: my-project      # default: the credentials file's project_id, then
                             # GOOGLE_CLOUD_PROJECT
    region: us-east5         # default: global
    credentials_file: /var/run/secrets/google/key.json   # absent: Application
                             # Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
                             # gcloud's file, the metadata server: GKE, Cloud Run, GCE)
```

Claude models (``claude-*``) are called through Vertex's Anthropic endpoints (Messages
bodies, ``:rawPredict`` / ``:streamRawPredict``); every other model (Gemini: ``gemini-*``,
or ``google/gemini-*``) through Vertex's OpenAI-compatible Chat Completions endpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from filterproxy.config import (
    ChainFacts,
    DefaultEntry,
    ExtensionSchema,
    ProviderSchema,
    ProviderSettings,
    Section,
)
from filterproxy.http.apis import CHAT, MESSAGES

__all__ = ["CLOUD_PLATFORM", "SCHEMA", "VertexCluster"]

#: The OAuth scope Vertex AI takes.
CLOUD_PLATFORM: Final = "https://www.googleapis.com/auth/cloud-platform"
#: Model names served through Vertex's Anthropic endpoints (the others: Chat Completions).
CLAUDE_PREFIX: Final = "claude"
_REGION_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class VertexCluster:
    """A ``provider: vertex`` cluster's settings (`ClusterConfig.option`)."""

    cluster: str
    project: str
    region: str = "global"
    #: A credentials file google-auth reads (a service account key, an external
    #: account's configuration for workload identity federation, …); None:
    #: Application Default Credentials.
    credentials_file: str | None = None

    @property
    def base_url(self) -> str:
        """Vertex's endpoint for the region (``global``: the global one)."""
        if self.region == "global":
            return "https://aiplatform.googleapis.com"
        return f"https://{self.region}-aiplatform.googleapis.com"

    @property
    def location_path(self) -> str:
        """``/v1/projects/{project}/locations/{region}``."""
        return f"/v1/projects/{self.project}/locations/{self.region}"

    def describe_credentials(self, environ: Mapping[str, str] | None = None) -> str:
        """What ``check-config`` says of the cluster's credentials."""
        env = os.environ if environ is None else environ
        if self.credentials_file:
            source = f"the credentials file {self.credentials_file}"
        elif env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            source = (
                "Application Default Credentials: the file GOOGLE_APPLICATION_CREDENTIALS "
                f"names ({env['GOOGLE_APPLICATION_CREDENTIALS']})"
            )
        else:
            source = (
                "Application Default Credentials: gcloud's file if there is one, else the "
                "metadata server (GKE workload identity, Cloud Run, GCE)"
            )
        return (
            f"project {self.project} in {self.region}; OAuth tokens from {source}, "
            "refreshed before they expire"
        )


def _project_of(path: str) -> str | None:
    """The ``project_id`` (or ``quota_project_id``) a credentials file names."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(document, dict):
        for key in ("project_id", "quota_project_id"):
            if isinstance(document.get(key), str) and document[key]:
                return str(document[key])
    return None


def _parse_cluster(section: Section) -> ProviderSettings:
    if importlib.util.find_spec("google.auth") is None:
        raise section.node("provider").error(
            "provider vertex needs google-auth (Google's credentials and token refresh): "
            "pip install 'filterproxy[vertex]'"
        )
    env = section.environ
    cluster = section.path.rsplit(".", 1)[-1]
    credentials_file = None
    if "credentials_file" in section:
        credentials_file = section["credentials_file"].string()
        if not Path(credentials_file).is_file():
            raise section["credentials_file"].error(f"no such file: {credentials_file!r}")
    region = section["region"].string() if "region" in section else "global"
    if not set(region) <= _REGION_CHARS:
        raise section["region"].error(f"not a Vertex AI region: {region!r} (e.g. us-east5)")
    if "project" in section:
        project = section["project"].string()
    else:
        adc = credentials_file or env.get("GOOGLE_APPLICATION_CREDENTIALS")
        project = (
            (_project_of(adc) if adc else None)
            or env.get("GOOGLE_CLOUD_PROJECT")
            or env.get("CLOUDSDK_CORE_PROJECT")
            or ""
        )
        if not project:
            raise section.node("project").error(
                "a vertex cluster needs its Google Cloud project: project: my-project "
                "(or GOOGLE_CLOUD_PROJECT in the environment)"
            )
    if "/" in project or not project.strip():
        raise section.node("project").error(f"not a project ID: {project!r}")
    option = VertexCluster(cluster, project, region, credentials_file)
    return ProviderSettings(
        option.base_url,
        frozenset({CHAT}),
        model_apis=((CLAUDE_PREFIX, frozenset({MESSAGES})),),
        options=option,
    )


def place(facts: ChainFacts) -> DefaultEntry | None:
    """At the end of the chain, when some cluster is a Vertex one."""
    if any(c.option(VertexCluster) is not None for c in facts.clusters.values()):
        return DefaultEntry("vertex")
    return None


#: What the vertex extension adds to the config.
SCHEMA = ExtensionSchema(
    name="vertex",
    place=place,
    providers=(
        ProviderSchema(
            "vertex", frozenset({"project", "region", "credentials_file"}), _parse_cluster
        ),
    ),
)
