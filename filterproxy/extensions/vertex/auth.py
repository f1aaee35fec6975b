"""OAuth access tokens for a Vertex cluster, from google-auth, fetched off the reactor.

google-auth reads the credentials (a service account key, an external account's
configuration for workload identity federation, gcloud's user credentials, or the
metadata server of GKE, Cloud Run and GCE — Application Default Credentials) and
exchanges them for an access token (an hour, usually). The token is fetched and
refreshed in a thread (`RefreshingCredential`) before it expires; a 401 from Vertex
drops it, so that the next request fetches a new one.
"""

from __future__ import annotations

import datetime
import importlib
from typing import Any

from twisted.logger import Logger

from filterproxy.extensions.vertex.config import CLOUD_PLATFORM, VertexCluster
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

__all__ = ["TokenAuthorizer", "VertexAuthorizers"]

log = Logger(namespace="filterproxy.vertex")


def _google(name: str) -> Any:
    """google-auth's module *name*, imported when first needed (the ``vertex`` extra),
    untyped: ``google`` is a namespace other packages (protobuf) share, and where
    google-auth is absent the type checker of the compiled build finds only theirs."""
    return importlib.import_module(name)


def load(option: VertexCluster) -> Any:
    """The cluster's google-auth credentials (not yet refreshed). Blocks (files; the
    metadata server's probe)."""
    auth = _google("google.auth")
    if option.credentials_file:
        credentials, _ = auth.load_credentials_from_file(
            option.credentials_file, scopes=[CLOUD_PLATFORM]
        )
    else:
        credentials, _ = auth.default(scopes=[CLOUD_PLATFORM])
    return credentials


class TokenAuthorizer:
    """Adds ``Authorization: Bearer <token>`` to a Vertex cluster's requests
    (`filterproxy.filters.records.UpstreamAuthorizer`)."""

    def __init__(
        self, option: VertexCluster, clock: Any, fetches: CounterFamily | None = None
    ) -> None:
        self.option = option
        self.credentials: Any = None
        source = (
            f"the credentials file {option.credentials_file}"
            if option.credentials_file
            else "Application Default Credentials"
        )
        self.credential: RefreshingCredential[str] = RefreshingCredential(
            self._fetch,
            f"cluster {option.cluster!r}: Google token from {source}",
            clock,
            counted=counting(fetches, option.cluster),
        )

    def _fetch(self) -> Fetched[str]:
        transport = _google("google.auth.transport.requests")
        if self.credentials is None:
            self.credentials = load(self.option)
            log.info(
                "cluster {cluster}: Google credentials of type {kind}",
                cluster=self.option.cluster,
                kind=type(self.credentials).__module__.rsplit(".", 1)[-1],
            )
        self.credentials.refresh(transport.Request())
        token = self.credentials.token
        if not isinstance(token, str) or not token:
            raise ValueError("the token endpoint gave no access token")
        expiry = self.credentials.expiry
        expires_at = None
        if isinstance(expiry, datetime.datetime):
            # google-auth keeps expiries as naive UTC times.
            expires_at = expiry.replace(tzinfo=datetime.UTC).timestamp()
        return Fetched(token, expires_at)

    def ready(self) -> Any:
        return self.credential.ready()

    def authorize(self, method: str, url: str, headers: Headers, body: bytes) -> None:
        headers.set("authorization", f"Bearer {self.credential.value}")

    def prefetch(self) -> None:
        self.credential.prefetch()

    def refused(self, status: int, headers: Headers) -> bool:
        """Vertex answered 401 (the token expired or was revoked before its time): the
        token in hand is dropped, and the request tried once more."""
        if status != 401:
            return False
        self.credential.invalidate()
        return True

    def close(self) -> None:
        self.credential.close()


class VertexAuthorizers(Authorizers[VertexCluster, TokenAuthorizer]):
    """The process's Vertex authorizers, one per cluster's settings (the reactor's
    clock looked up only when one is made, as `BedrockAuthorizers` does)."""

    def __init__(self, resources: Resources) -> None:
        fetches = fetch_counter(resources.metrics)
        super().__init__(lambda option: TokenAuthorizer(option, resources.clock, fetches))
