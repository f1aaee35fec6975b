"""The bedrock extension's config: ``provider: bedrock`` clusters, and the filter's place.

```yaml
clusters:
  bedrock:
    provider: bedrock
    region: us-east-1            # default: AWS_REGION, then AWS_DEFAULT_REGION
    credentials:                 # SigV4; absent: AWS's default chain
      profile: prod              # a profile of ~/.aws/config and ~/.aws/credentials
      role_arn: arn:aws:iam::123456789012:role/llm   # assumed with the credentials above
      external_id: …
      session_name: filterproxy
      duration: 1h
      access_key_id: ${AWS_ACCESS_KEY_ID}           # explicit keys (with the secret)
      secret_access_key: ${AWS_SECRET_ACCESS_KEY}
      session_token: ${AWS_SESSION_TOKEN}
    api_key: ${AWS_BEARER_TOKEN_BEDROCK}  # a Bedrock API key instead of SigV4
    bedrock_api: auto            # invoke (Claude: Messages bodies), converse, or auto
```
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Final

from filterproxy.config import (
    ChainFacts,
    DefaultEntry,
    ExtensionSchema,
    Node,
    ProviderSchema,
    ProviderSettings,
    Section,
)
from filterproxy.http.apis import MESSAGES

__all__ = ["BEDROCK_APIS", "SCHEMA", "AwsCredentials", "BedrockCluster", "aws_session"]

#: How a model is called: InvokeModel with Anthropic's Messages body (Claude), the
#: Converse API (every model), or ``auto`` (invoke for Anthropic's models, else converse).
BEDROCK_APIS: Final = ("auto", "invoke", "converse")
_CREDENTIAL_KEYS: Final = {
    "profile",
    "role_arn",
    "external_id",
    "session_name",
    "duration",
    "access_key_id",
    "secret_access_key",
    "session_token",
}
#: The session name an assumed role gets when none is given (CloudTrail shows it).
DEFAULT_SESSION_NAME: Final = "filterproxy"


@dataclass(frozen=True)
class AwsCredentials:
    """Where a Bedrock cluster's SigV4 credentials come from (all None: AWS's default
    chain — environment, web identity token file, profile files, container and instance
    metadata — as AWS's SDKs resolve it)."""

    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    #: A role assumed (STS AssumeRole) with the credentials above.
    role_arn: str | None = None
    external_id: str | None = None
    session_name: str = DEFAULT_SESSION_NAME
    #: Seconds the assumed role's credentials last (None: STS's default, an hour).
    duration: int | None = None

    def __repr__(self) -> str:
        # Never show the secret (the effective config and errors print this).
        shown = ", ".join(
            f"{name}={'***' if name in {'secret_access_key', 'session_token'} else value!r}"
            for name, value in vars(self).items()
            if value is not None
        )
        return f"AwsCredentials({shown})"


@dataclass(frozen=True)
class BedrockCluster:
    """A ``provider: bedrock`` cluster's settings (`ClusterConfig.option`)."""

    #: The cluster's name (its credentials are its own).
    cluster: str
    region: str
    credentials: AwsCredentials = AwsCredentials()
    #: A Bedrock API key (``Authorization: Bearer``) in place of SigV4.
    api_key: str | None = None
    bedrock_api: str = "auto"

    def __repr__(self) -> str:
        key = "***" if self.api_key else None
        return (
            f"BedrockCluster(cluster={self.cluster!r}, region={self.region!r}, "
            f"credentials={self.credentials!r}, api_key={key!r}, "
            f"bedrock_api={self.bedrock_api!r})"
        )

    @property
    def base_url(self) -> str:
        """Bedrock's runtime endpoint in the cluster's region."""
        return f"https://bedrock-runtime.{self.region}.amazonaws.com"

    def credential_source(self) -> str:
        """Where the credentials come from, in words (no secrets)."""
        creds = self.credentials
        if self.api_key:
            return "a Bedrock API key (api_key), sent as a bearer token"
        if creds.access_key_id:
            source = "explicit keys (credentials.access_key_id)"
        elif creds.profile:
            source = f"the profile {creds.profile!r} of the AWS config files"
        else:
            source = (
                "AWS's default chain (environment, web identity token file, profile "
                "files, container or instance metadata)"
            )
        if creds.role_arn:
            source = f"the role {creds.role_arn} assumed with {source}"
        return f"SigV4 in {self.region}, credentials from {source}"

    def describe(self) -> str:
        """Where the credentials come from, as the config says it."""
        return self.credential_source()

    def describe_credentials(self) -> str:
        """What ``check-config`` says: `describe`, with the source AWS's chain finds now
        (it reads files and may ask a metadata service; nothing is fetched from STS)."""
        described = self.describe()
        if self.api_key or self.credentials.access_key_id:
            return described
        try:
            found = aws_session(self).get_credentials()
        except Exception as e:  # what the chain says is shown, whatever it is
            return f"{described}; looking them up failed: {type(e).__name__}: {e}"
        if found is None:
            return f"{described}; none found now"
        return f"{described}; found: {found.method}"


def aws_session(option: BedrockCluster) -> Any:
    """A botocore session for the cluster: its profile (if any) and region."""
    import botocore.session

    session = botocore.session.Session(profile=option.credentials.profile)
    session.set_config_variable("region", option.region)
    return session


_REGION_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _parse_cluster(section: Section) -> ProviderSettings:
    if importlib.util.find_spec("botocore") is None:
        raise section.node("provider").error(
            "provider bedrock needs botocore (AWS's signing, credentials and event-stream "
            "decoding): pip install 'filterproxy[bedrock]'"
        )
    env = section.environ
    cluster = section.path.rsplit(".", 1)[-1]
    if "region" in section:
        region = section["region"].string()
    else:
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
        if not region:
            raise section.node("region").error(
                "a bedrock cluster needs its AWS region: region: us-east-1 "
                "(or AWS_REGION in the environment)"
            )
    if not set(region) <= _REGION_CHARS:
        raise section.node("region").error(f"not an AWS region: {region!r} (e.g. us-east-1)")
    api = section["bedrock_api"].string() if "bedrock_api" in section else "auto"
    if api not in BEDROCK_APIS:
        raise section["bedrock_api"].error(f"must be one of {', '.join(BEDROCK_APIS)}, got {api!r}")
    api_key = section["api_key"].string() if "api_key" in section else None
    credentials = AwsCredentials()
    if "credentials" in section:
        if api_key:
            raise section["credentials"].error(
                "give either api_key (a Bedrock API key) or credentials (SigV4), not both"
            )
        credentials = _parse_credentials(section["credentials"])
    option = BedrockCluster(cluster, region, credentials, api_key or None, api)
    return ProviderSettings(option.base_url, frozenset({MESSAGES}), options=option)


def _parse_credentials(node: Node) -> AwsCredentials:
    keys = node.mapping(_CREDENTIAL_KEYS)
    values = {k: keys[k].string() for k in keys if k != "duration"}
    if ("access_key_id" in values) != ("secret_access_key" in values):
        raise node.error("access_key_id and secret_access_key go together")
    if "session_token" in values and "access_key_id" not in values:
        raise keys["session_token"].error("a session_token goes with access_key_id")
    if "profile" in values and "access_key_id" in values:
        raise node.error("give either a profile or explicit keys, not both")
    if ("external_id" in values or "duration" in keys) and "role_arn" not in values:
        raise (keys.get("external_id") or keys["duration"]).error("needs role_arn")
    duration = None
    if "duration" in keys:
        duration = int(keys["duration"].duration())
        if not 900 <= duration <= 43200:
            raise keys["duration"].error("STS takes 15m to 12h")
    return AwsCredentials(duration=duration, **values)


def place(facts: ChainFacts) -> DefaultEntry | None:
    """At the end of the chain, when some cluster is a Bedrock one: it shapes the
    request as it goes (after every other filter) and reads the answer first."""
    if any(c.option(BedrockCluster) is not None for c in facts.clusters.values()):
        return DefaultEntry("bedrock")
    return None


#: What the bedrock extension adds to the config.
SCHEMA = ExtensionSchema(
    name="bedrock",
    place=place,
    providers=(
        ProviderSchema(
            "bedrock",
            frozenset({"region", "credentials", "api_key", "bedrock_api"}),
            _parse_cluster,
        ),
    ),
)
