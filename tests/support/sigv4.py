"""Checking an AWS Signature Version 4 as AWS does, for the tests' stand-ins of AWS.

The signature is recomputed with botocore's own signer from the request exactly as it
arrived: the URL as received (the Host header with its port, the raw percent-encoded
path and query), the headers the ``Authorization`` names, the raw body and the
``X-Amz-Date``. The failures are named by AWS's error types.
"""

from __future__ import annotations

import datetime
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.auth import SigV4Auth  # type: ignore[import-untyped, unused-ignore]
from botocore.awsrequest import AWSRequest, HTTPHeaders  # type: ignore[import-untyped, unused-ignore]
from botocore.credentials import Credentials  # type: ignore[import-untyped, unused-ignore]

__all__ = ["MESSAGES", "Authorization", "parse_authorization", "verify"]

#: What AWS says with each error type.
MESSAGES: Mapping[str, str] = {
    "MissingAuthenticationTokenException": "Missing Authentication Token",
    "IncompleteSignatureException": (
        "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'"
        " parameters, and either a 'X-Amz-Date' or a 'Date' header."
    ),
    "UnrecognizedClientException": "The security token included in the request is invalid.",
    "InvalidSignatureException": (
        "The request signature we calculated does not match the signature you provided."
        " Check your AWS Secret Access Key and signing method. Consult the service"
        " documentation for details."
    ),
    "ExpiredTokenException": "The security token included in the request is expired",
}

#: How far X-Amz-Date may be from the server's clock.
MAX_SKEW = datetime.timedelta(minutes=5)

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


@dataclass(frozen=True)
class Authorization:
    """The parts of a SigV4 ``Authorization`` header."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Authorization | None:
    """The parts of the ``Authorization`` header *value*, or None when it is not a
    well-formed ``AWS4-HMAC-SHA256`` one."""
    match = _AUTHORIZATION.match(value.strip())
    if match is None:
        return None
    scope = match["credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return None
    return Authorization(
        access_key=scope[0],
        date=scope[1],
        region=scope[2],
        service=scope[3],
        signed_headers=tuple(match["signed"].split(";")),
        signature=match["signature"],
    )


class _Recomputer(SigV4Auth):  # type: ignore[misc, unused-ignore]
    """botocore's signer, fed exactly the headers the client said it signed (AWS signs
    whatever SignedHeaders lists, botocore's skip list aside)."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed: Any) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed


def _signature(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    auth: Authorization,
    secret: str,
    token: str | None,
    timestamp: str,
) -> str:
    request = AWSRequest(method=method, url=url, data=body)
    request.context["timestamp"] = timestamp
    signed = HTTPHeaders()
    host = re.sub(r"^[a-z]+://", "", url).split("/", 1)[0]
    for name in auth.signed_headers:
        signed[name] = host if name == "host" else headers.get(name.lower(), "")
    signer = _Recomputer(
        Credentials(auth.access_key, secret, token), auth.service, auth.region, signed
    )
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))


def verify(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Mapping[str, tuple[str, str | None]],
    region: str,
    service: str,
    now: datetime.datetime,
) -> tuple[bool, str, str | None]:
    """Whether the request (*method*, *url* as received, with the Host header's port,
    *headers*, raw *body*) carries a valid SigV4 signature for *service* in *region* by
    one of *credentials* (access key → (secret, session token or None)) at time *now*.

    Returns (ok, reason, access key): reason is "" when ok, else an AWS error type
    (MissingAuthenticationTokenException, IncompleteSignatureException,
    UnrecognizedClientException, InvalidSignatureException); the access key is the one
    the header names, or None when it names none."""
    lower = {name.lower(): value for name, value in headers.items()}
    value = lower.get("authorization")
    if not value:
        return False, "MissingAuthenticationTokenException", None
    auth = parse_authorization(value)
    if auth is None:
        return False, "IncompleteSignatureException", None
    key = auth.access_key
    timestamp = lower.get("x-amz-date", "")
    if "host" not in auth.signed_headers or not re.fullmatch(r"\d{8}T\d{6}Z", timestamp):
        return False, "IncompleteSignatureException", key
    if key not in credentials:
        return False, "UnrecognizedClientException", key
    secret, token = credentials[key]
    if auth.region != region or auth.service != service or auth.date != timestamp[:8]:
        return False, "InvalidSignatureException", key
    sent = datetime.datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    if abs(now - sent) > MAX_SKEW:
        return False, "InvalidSignatureException", key
    sent_token = lower.get("x-amz-security-token")
    if token is not None and (
        sent_token is None
        or not hmac.compare_digest(sent_token.encode(), token.encode())
        or "x-amz-security-token" not in auth.signed_headers
    ):
        return False, "UnrecognizedClientException", key
    if token is None and sent_token is not None:
        return False, "UnrecognizedClientException", key
    expected = _signature(method, url, lower, body, auth, secret, token, timestamp)
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        return False, "InvalidSignatureException", key
    return True, "", key
