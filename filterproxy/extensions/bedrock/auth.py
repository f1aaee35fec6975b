"""How a Bedrock cluster's requests are authorized: SigV4 with credentials botocore
resolves and refreshes (in a thread), or a Bedrock API key.

botocore resolves AWS's credential chain as every AWS SDK does — environment variables,
a web identity token file (EKS's IRSA: ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``,
re-read at each refresh), profile files (``AWS_PROFILE``, ``AWS_SHARED_CREDENTIALS_FILE``,
``AWS_CONFIG_FILE``, with their assume-role, SSO and ``credential_process`` settings),
the container credentials endpoint (ECS, EKS Pod Identity) and the instance metadata
service. Every call that may block (files, STS, metadata services) runs in a thread
(`RefreshingCredential`); on the reactor, a request is signed with a frozen snapshot of
the credentials (CPU only).

The request is signed over its method, URL, ``host``, ``content-type``, the ``x-amz-*``
headers and the final body; the gateway's other headers go unsigned.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.logger import Logger

from filterproxy.extensions.bedrock.config import BedrockCluster, aws_session
from filterproxy.filters.credentials import (
    Authorizers,
    Fetched,
    RefreshingCredential,
    counting,
    fetch_counter,
)
from filterproxy.filters.metrics import CounterFamily
from filterproxy.filters.resources import Resources
from filterproxy.http.headers import Headers

__all__ = ["BearerAuthorizer", "BedrockAuthorizers", "SigV4Authorizer", "resolve"]

log = Logger(namespace="filterproxy.bedrock")
#: Bedrock's SigV4 signing name.
SERVICE = "bedrock"
#: AWS's answers that say the credentials in hand were refused, not the request.
_REFUSED = frozenset({"ExpiredTokenException", "UnrecognizedClientException"})
#: What `SigV4Authorizer` puts on a request (botocore's names).
_SIGNED_OUT = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")


class NoCredentials(Exception):
    """No AWS credentials were found where the cluster says to look."""


def resolve(option: BedrockCluster) -> Any:
    """The cluster's botocore credentials object (refreshable where its source is).
    Blocks (files; the chain's probes of metadata services)."""
    from botocore.credentials import (
        AssumeRoleCredentialFetcher,
        Credentials,
        DeferredRefreshableCredentials,
    )

    creds = option.credentials
    session = aws_session(option)
    if creds.access_key_id and creds.secret_access_key:
        found: Any = Credentials(
            creds.access_key_id, creds.secret_access_key, creds.session_token, method="explicit"
        )
    else:
        found = session.get_credentials()
        if found is None:
            raise NoCredentials(
                "no AWS credentials found"
                + (f" for the profile {creds.profile!r}" if creds.profile else "")
                + ": set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE, or give the cluster's "
                "credentials"
            )
    if creds.role_arn:
        extra: dict[str, Any] = {"RoleSessionName": creds.session_name}
        if creds.external_id:
            extra["ExternalId"] = creds.external_id
        if creds.duration:
            extra["DurationSeconds"] = creds.duration
        fetcher = AssumeRoleCredentialFetcher(
            session.create_client, found, creds.role_arn, extra_args=extra
        )
        found = DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")
    return found


class SigV4Authorizer:
    """Signs a Bedrock cluster's requests (`filterproxy.filters.records.UpstreamAuthorizer`)."""

    def __init__(
        self, option: BedrockCluster, clock: Any, fetches: CounterFamily | None = None
    ) -> None:
        self.option = option
        self.resolved: Any = None
        self.credential: RefreshingCredential[Any] = RefreshingCredential(
            self._fetch,
            f"cluster {option.cluster!r}: AWS credentials",
            clock,
            counted=counting(fetches, option.cluster),
        )

    def _fetch(self) -> Fetched[Any]:
        if self.resolved is None:
            self.resolved = resolve(self.option)
            log.info(
                "cluster {cluster}: AWS credentials from {method}",
                cluster=self.option.cluster,
                method=getattr(self.resolved, "method", "?"),
            )
        frozen = self.resolved.get_frozen_credentials()
        # botocore keeps a refreshable credential's expiry here (no public accessor).
        expiry = getattr(self.resolved, "_expiry_time", None)
        expires_at = expiry.timestamp() if isinstance(expiry, datetime.datetime) else None
        return Fetched(frozen, expires_at)

    def ready(self) -> Any:
        return self.credential.ready()

    def authorize(self, method: str, url: str, headers: Headers, body: bytes) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        signed = {"content-type": headers.get("content-type") or "application/json"}
        for name, value in headers:
            if name.lower().startswith("x-amz-"):
                signed[name] = value
        request = AWSRequest(method=method, url=url, data=body, headers=signed)
        SigV4Auth(self.credential.value, SERVICE, self.option.region).add_auth(request)
        for name in _SIGNED_OUT:
            value = request.headers.get(name)
            if value:
                headers.set(name.lower(), value)

    def refused(self, status: int, headers: Headers) -> bool:
        """AWS answered that the session token expired (or is not known, after a
        rotation): the credentials in hand are dropped, and the request tried once more."""
        kind = (headers.get("x-amzn-errortype") or "").split(":", 1)[0]
        if status != 403 or kind not in _REFUSED:
            return False
        self.credential.invalidate()
        return True

    def prefetch(self) -> None:
        self.credential.prefetch()

    def close(self) -> None:
        self.credential.close()


class BearerAuthorizer:
    """A Bedrock API key, sent as ``Authorization: Bearer`` on every attempt."""

    def __init__(self, key: str) -> None:
        self.value = f"Bearer {key}"

    def ready(self) -> None:
        return None

    def authorize(self, method: str, url: str, headers: Headers, body: bytes) -> None:
        headers.set("authorization", self.value)

    def refused(self, status: int, headers: Headers) -> bool:
        return False  # a static key: another try would be refused the same

    def prefetch(self) -> None:
        pass

    def close(self) -> None:
        pass


class BedrockAuthorizers(Authorizers[BedrockCluster, SigV4Authorizer | BearerAuthorizer]):
    """The process's Bedrock authorizers, one per cluster's settings. Made while a
    config is read; the reactor's clock is looked up only when an authorizer is made
    (at a request, or when the chain goes in force), after ``twistd`` installed it."""

    def __init__(self, resources: Resources) -> None:
        fetches = fetch_counter(resources.metrics)
        super().__init__(
            lambda option: (
                BearerAuthorizer(option.api_key)
                if option.api_key
                else SigV4Authorizer(option, resources.clock, fetches)
            )
        )
