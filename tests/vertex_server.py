"""A stand-in for Google Vertex AI and the Google endpoints that issue its access tokens,
for the integration tests, run as its own process. It prints ``PORT <n>`` when listening.

It checks what Google checks:

- ``POST /token`` is a service account's OAuth token endpoint (the key file's
  ``token_uri``): a JWT-bearer grant whose RS256 assertion must verify against the public
  key in ``VERTEX_MOCK_PUBLIC_KEY_FILE`` (read on each request, so it may be written after
  the server starts; unset: signatures are not checked), come from
  ``VERTEX_MOCK_CLIENT_EMAIL``, be meant for Google's token endpoint (the ``aud``
  google-auth always sends) or this one, ask for the cloud-platform
  scope and not have expired. A bad grant gets 400 ``invalid_grant`` (a missing scope
  ``invalid_scope``), as Google answers.
- ``GET /`` and ``GET /computeMetadata/v1/...`` are the GCE/GKE metadata server that
  google-auth reaches with ``GCE_METADATA_HOST`` and ``GCE_METADATA_IP``: every request
  must carry ``Metadata-Flavor: Google`` (else 403) and every answer does.
- ``/v1/projects/{project}/locations/{location}/...`` is Vertex: Claude through
  ``publishers/anthropic/models/{model}:rawPredict`` and ``:streamRawPredict`` (Anthropic
  Messages bodies with ``anthropic_version: vertex-2023-10-16`` and no ``model``), Gemini
  through ``endpoints/openapi/chat/completions`` (OpenAI chat, models ``google/<name>``).
  A call needs a bearer token this server issued that has not expired (else 401
  UNAUTHENTICATED), the project ``VERTEX_MOCK_PROJECT`` (else 403 PERMISSION_DENIED) and a
  well-formed body (else 400 INVALID_ARGUMENT). Model ``claude-throttled`` (or
  ``google/gemini-throttled``) gets a 429 RESOURCE_EXHAUSTED wrapped in a JSON array, as
  Vertex sends it; ``claude-midfail`` an ``error`` event after two deltas.

The answers are ``tests/support/claude_answers.py``'s, as the Bedrock stand-in gives them
(text, tool call and tool result, usage, events); Claude's stream adds the ``ping``
Anthropic's API sends. Gemini answers the same, in OpenAI's chat shapes (a ``tool``
message is a tool result).

Control endpoints (no auth): ``GET /control/requests`` (the Vertex calls: path, method,
location, model, lower-case headers, body, token, anthropic_beta), ``GET /control/tokens``
(issued tokens: token, issued_at, expires_in, via ``jwt`` or ``metadata``),
``POST /control/lifetime`` ``{"seconds": n}`` (the lifetime of tokens issued from now
on), ``POST /control/expire`` (every token issued so far expires now) and
``POST /control/reset`` (forget the recorded calls and issued-token log, restore the
lifetime; tokens already issued stay valid).

Environment: ``VERTEX_MOCK_PROJECT`` (default ``test-project``),
``VERTEX_MOCK_PUBLIC_KEY_FILE``, ``VERTEX_MOCK_CLIENT_EMAIL`` (default
``vertex-test@<project>.iam.gserviceaccount.com``), ``VERTEX_MOCK_TOKEN_LIFETIME``
(seconds, default 3600), ``VERTEX_MOCK_DELAY`` (seconds between streamed events, default
0.005).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from twisted.internet import reactor
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

if __name__ == "__main__":  # run as a script: make the ``tests`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import claude_answers

CLOUD_PLATFORM: Final = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
VERTEX_VERSION: Final = "vertex-2023-10-16"
GOOGLE_TOKEN_URI: Final = "https://oauth2.googleapis.com/token"
#: What Google's token endpoint accepts as an assertion's ``aud``. google-auth always
#: sends the first, whatever the key file's ``token_uri``; the mock also takes its own URI.
GOOGLE_AUDIENCES: Final = frozenset(
    {
        GOOGLE_TOKEN_URI,
        "https://www.googleapis.com/oauth2/v4/token",
        "https://accounts.google.com/o/oauth2/token",
    }
)
#: Google refuses assertions meant to live longer than an hour, or dated too far ahead.
MAX_ASSERTION_SECONDS: Final = 3600
CLOCK_SKEW_SECONDS: Final = 300

_BAD_TIMEFRAME: Final = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)
_VERTEX_PREFIX: Final = (
    r"^/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/"
)
_CLAUDE_PATH: Final = re.compile(
    _VERTEX_PREFIX
    + r"publishers/anthropic/models/(?P<model>[^/:]+):(?P<method>rawPredict|streamRawPredict)$"
)
_CHAT_PATH: Final = re.compile(_VERTEX_PREFIX + r"endpoints/openapi/chat/completions$")
_LOCATION: Final = re.compile(r"^(global|us|eu|[a-z]+-[a-z]+[0-9]+)$")


# -- settings and state ------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the environment configures, read once at start."""

    project: str
    public_key_file: Path | None
    client_email: str
    lifetime: int
    delay: float

    @staticmethod
    def from_environ(environ: Mapping[str, str]) -> Settings:
        """The settings the ``VERTEX_MOCK_*`` variables of *environ* give."""
        project = environ.get("VERTEX_MOCK_PROJECT") or "test-project"
        key_file = environ.get("VERTEX_MOCK_PUBLIC_KEY_FILE")
        return Settings(
            project=project,
            public_key_file=Path(key_file) if key_file else None,
            client_email=environ.get("VERTEX_MOCK_CLIENT_EMAIL")
            or f"vertex-test@{project}.iam.gserviceaccount.com",
            lifetime=int(environ.get("VERTEX_MOCK_TOKEN_LIFETIME") or 3600),
            delay=float(environ.get("VERTEX_MOCK_DELAY") or 0.005),
        )


@dataclass(frozen=True)
class Issued:
    """An access token this server gave out."""

    token: str
    issued_at: float
    expires_in: int
    via: str

    def as_json(self) -> dict[str, Any]:
        """Its record for ``/control/tokens``."""
        return {
            "token": self.token,
            "issued_at": self.issued_at,
            "expires_in": self.expires_in,
            "via": self.via,
        }


class State:
    """The server's one mutable part: issued tokens, recorded calls, the token lifetime."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lifetime = settings.lifetime
        self.counter = 0
        #: token -> when it stops being accepted (epoch seconds); never forgotten.
        self.expiry: dict[str, float] = {}
        self.issued: list[Issued] = []
        self.requests: list[dict[str, Any]] = []

    def issue(self, via: str) -> Issued:
        """A new token, lasting the current lifetime."""
        self.counter += 1
        issued = Issued(f"ya29.mock-{self.counter}", time.time(), self.lifetime, via)
        self.expiry[issued.token] = issued.issued_at + issued.expires_in
        self.issued.append(issued)
        return issued

    def expire_all(self) -> None:
        """Every token issued so far stops being accepted now."""
        now = time.time()
        self.expiry = {token: min(at, now) for token, at in self.expiry.items()}

    def reset(self) -> None:
        """Forget the recorded calls and the issued-token log; the initial lifetime."""
        self.lifetime = self.settings.lifetime
        self.issued.clear()
        self.requests.clear()


# -- Google's error shapes -----------------------------------------------------------------


def google_error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A Google API error document (``google.rpc.Status`` as JSON)."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def unauthenticated(reason: str) -> dict[str, Any]:
    """The 401 Google gives a call whose credential is missing, unknown or expired."""
    message = (
        "Request is missing required authentication credential."
        if reason == "CREDENTIALS_MISSING"
        else "Request had invalid authentication credentials."
    )
    return google_error(
        401,
        "UNAUTHENTICATED",
        f"{message} Expected OAuth 2 access token, login cookie or other valid "
        "authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "aiplatform.googleapis.com", "method": "Predict"},
            }
        ],
    )


def permission_denied(project: str, location: str, resource: str) -> dict[str, Any]:
    """The 403 for a project the caller has no rights in (or that does not exist)."""
    name = f"projects/{project}/locations/{location}/{resource}"
    return google_error(
        403,
        "PERMISSION_DENIED",
        f"Permission 'aiplatform.endpoints.predict' denied on resource "
        f"'//aiplatform.googleapis.com/{name}' (or it may not exist).",
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "IAM_PERMISSION_DENIED",
                "domain": "aiplatform.googleapis.com",
                "metadata": {"permission": "aiplatform.endpoints.predict", "resource": name},
            }
        ],
    )


def resource_exhausted(model: str) -> list[dict[str, Any]]:
    """The 429 Vertex gives when a model's quota is used up: wrapped in an array."""
    return [
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model "
            f"with base model: {model}. Please submit a quota increase request. "
            "https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai.",
        )
    ]


def invalid_argument(message: str) -> dict[str, Any]:
    """The 400 for a body Vertex cannot accept."""
    return google_error(400, "INVALID_ARGUMENT", message)


# -- the token endpoint --------------------------------------------------------------------


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_assertion(
    assertion: str,
    *,
    public_key_pem: bytes | None,
    audiences: frozenset[str],
    client_email: str,
    now: float,
) -> tuple[str, str] | None:
    """Why Google would refuse the JWT-bearer *assertion* — ``(error, description)`` — or
    None when it is good: its signature (unchecked without *public_key_pem*), issuer,
    audience (one of *audiences*), time frame and scope. Without *public_key_pem* the
    signature is not checked."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return "invalid_grant", "Invalid JWT: malformed assertion."
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error):
        return "invalid_grant", "Invalid JWT: malformed assertion."
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return "invalid_grant", "Invalid JWT: malformed assertion."
    if header.get("alg") != "RS256":
        return "invalid_grant", "Invalid JWT Signature."
    if public_key_pem is not None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            return "invalid_grant", "Invalid JWT Signature."
        try:
            key.verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return "invalid_grant", "Invalid JWT Signature."
    if claims.get("iss") != client_email:
        return "invalid_grant", "Invalid grant: account not found"
    if claims.get("aud") not in audiences:
        return (
            "invalid_grant",
            f"Invalid JWT: Failed audience check. The right audience is {GOOGLE_TOKEN_URI}",
        )
    issued_at, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued_at, int | float) or not isinstance(expires, int | float):
        return "invalid_grant", _BAD_TIMEFRAME
    if (
        expires <= now
        or issued_at > now + CLOCK_SKEW_SECONDS
        or expires - issued_at > MAX_ASSERTION_SECONDS
    ):
        return "invalid_grant", _BAD_TIMEFRAME
    scopes = str(claims.get("scope") or "").split()
    if CLOUD_PLATFORM not in scopes:
        return "invalid_scope", "Invalid OAuth scope or ID token audience provided."
    return None


def token_json(issued: Issued) -> dict[str, Any]:
    """The token endpoint's (and the metadata server's) answer for *issued*."""
    return {"access_token": issued.token, "expires_in": issued.expires_in, "token_type": "Bearer"}


# -- the answers -----------------------------------------------------------------------------
# Claude's answers are tests/support/claude_answers.py's, as the Bedrock stand-in gives them;
# Gemini's are the same answers in OpenAI's chat shapes.

#: The id of every chat completion.
CHAT_ID: Final = "chatcmpl-vertex-01"
_FINISH_REASONS: Final = {"end_turn": "stop", "tool_use": "tool_calls"}


def messages_events(
    body: Mapping[str, Any], model: str, fail_after: int | None = None
) -> list[dict[str, Any]]:
    """The Anthropic events Vertex streams for the Messages *body*: claude_answers' events,
    with the ``ping`` Anthropic's API sends once the first block has started. With
    *fail_after*, the stream ends after that many deltas with an ``overloaded_error``."""
    events = claude_answers.messages_events(body, model)
    events.insert(2, {"type": "ping"})
    if fail_after is None:
        return events
    deltas = [i for i, event in enumerate(events) if event["type"] == "content_block_delta"]
    cut = (deltas[:fail_after] or [0])[-1] + 1
    overloaded = {"type": "overloaded_error", "message": "Overloaded"}
    return [*events[:cut], {"type": "error", "error": overloaded}]


def sse_event(document: Mapping[str, Any]) -> bytes:
    """One Anthropic server-sent event, named by its type."""
    return f"event: {document['type']}\ndata: {json.dumps(document)}\n\n".encode()


def chat_as_messages(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Messages body claude_answers answers alike to the OpenAI chat *body*: a ``tool``
    message becomes a ``tool_result`` block, a function tool a tool of the same name."""
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        if message.get("role") == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id"),
                "content": claude_answers.content_text(message.get("content")),
            }
            messages.append({"role": "user", "content": [result]})
        else:
            messages.append({"role": message.get("role"), "content": message.get("content")})
    tools = body.get("tools")
    names = [
        (tool.get("function") or {}).get("name") or tool.get("name") or ""
        for tool in (tools if isinstance(tools, list) else [])
        if isinstance(tool, Mapping)
    ]
    return {"messages": messages, **({"tools": [{"name": n} for n in names]} if names else {})}


@dataclass(frozen=True)
class ChatAnswer:
    """The answer to a chat body, in the pieces a chat completion is made of."""

    text: str
    tool_calls: tuple[dict[str, Any], ...]
    finish_reason: str
    usage: dict[str, Any]

    @staticmethod
    def of(body: Mapping[str, Any]) -> ChatAnswer:
        """claude_answers' answer to the chat *body*."""
        blocks, stop = claude_answers.answer(chat_as_messages(body))
        completion = claude_answers.output_tokens(blocks)
        return ChatAnswer(
            text="".join(block["text"] for block in blocks if block["type"] == "text"),
            tool_calls=tuple(block for block in blocks if block["type"] == "tool_use"),
            finish_reason=_FINISH_REASONS[stop],
            usage={
                "prompt_tokens": claude_answers.INPUT_TOKENS,
                "completion_tokens": completion,
                "total_tokens": claude_answers.INPUT_TOKENS + completion,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        )


def _tool_call(block: Mapping[str, Any], arguments: str) -> dict[str, Any]:
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


def chat_completion(body: Mapping[str, Any], model: str, created: int) -> dict[str, Any]:
    """The whole chat completion answering *body*."""
    answer = ChatAnswer.of(body)
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.tool_calls:
        message["tool_calls"] = [
            _tool_call(block, json.dumps(block["input"])) for block in answer.tool_calls
        ]
    return {
        "id": CHAT_ID,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason}],
        "usage": answer.usage,
    }


def chat_chunks(
    body: Mapping[str, Any], model: str, created: int, include_usage: bool
) -> list[bytes]:
    """The streamed chat completion answering *body*: a chunk per word, a tool call's
    arguments in claude_answers' two fragments, the finish reason, a usage chunk when
    asked, ``[DONE]``."""
    answer = ChatAnswer.of(body)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": CHAT_ID,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    first, *rest = claude_answers.words(answer.text) or [""]
    documents = [chunk({"role": "assistant", "content": first})]
    documents += [chunk({"content": word}) for word in rest]
    for i, block in enumerate(answer.tool_calls):
        head, *tail = claude_answers.input_fragments(block["input"])
        documents.append(chunk({"tool_calls": [{"index": i, **_tool_call(block, head)}]}))
        documents += [
            chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}) for part in tail
        ]
    documents.append(chunk({}, answer.finish_reason))
    if include_usage:
        documents.append({**chunk({}), "choices": [], "usage": answer.usage})
    return [f"data: {json.dumps(d)}\n\n".encode() for d in documents] + [b"data: [DONE]\n\n"]


def messages_problem(body: Any, streaming: bool) -> str | None:
    """What Vertex would reject in an Anthropic body for (stream)rawPredict, or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. The request body must be a JSON object."
    if "model" in body:
        return "model: Extra inputs are not permitted (the model is named in the URL)"
    if "anthropic_version" not in body:
        return f'anthropic_version: Field required (expected "{VERTEX_VERSION}")'
    if body["anthropic_version"] != VERTEX_VERSION:
        return f'anthropic_version: Input should be "{VERTEX_VERSION}", got {body["anthropic_version"]!r}'
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        return "max_tokens: Field required (an integer)"
    if not isinstance(body.get("messages"), list):
        return "messages: Field required (a list)"
    if streaming and body.get("stream") is not True:
        return 'stream: streamRawPredict needs "stream": true in the body'
    if not streaming and body.get("stream"):
        return 'stream: rawPredict does not stream; use streamRawPredict for "stream": true'
    return None


def chat_problem(body: Any) -> str | None:
    """What Vertex's OpenAI endpoint would reject in a chat body, or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. The request body must be a JSON object."
    model = body.get("model")
    if not isinstance(model, str) or not re.fullmatch(r"google/[A-Za-z0-9._@-]+", model):
        return f'model: must be a publisher model such as "google/gemini-2.5-flash", got {model!r}'
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages: Field required (a non-empty list)"
    return None


# -- HTTP ----------------------------------------------------------------------------------


def _headers(request: server.Request) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): values[0].decode("latin-1")
        for name, values in request.requestHeaders.getAllRawHeaders()
    }


def _content(request: server.Request) -> bytes:
    return b"" if request.content is None else request.content.read()


def _json(request: server.Request, status: int, document: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=UTF-8")
    return json.dumps(document).encode()


def _send_paced(request: server.Request, pieces: Iterable[bytes], delay: float) -> None:
    """Write *pieces* one per write, *delay* seconds apart, then finish; stop when the
    client goes away."""
    queue = list(pieces)
    pending: list[IDelayedCall] = []
    gone: list[bool] = []

    def on_gone(_: Failure) -> None:
        gone.append(True)
        for call in pending:
            if call.active():
                call.cancel()

    request.notifyFinish().addErrback(on_gone)

    def step() -> None:
        pending.clear()
        if gone:
            return
        if not queue:
            request.finish()
            return
        request.write(queue.pop(0))
        pending.append(reactor.callLater(delay, step))

    step()


class Mock(Resource):
    """Every path of the server: token endpoint, metadata server, Vertex and control."""

    isLeaf = True

    def __init__(self, state: State) -> None:
        super().__init__()
        self.state = state

    def render(self, request: server.Request) -> bytes | int:
        path = request.path.decode("latin-1")
        method = request.method.decode("latin-1")
        if path.startswith("/control/"):
            return self.control(request, method, path)
        if path == "/token" and method == "POST":
            return self.token(request)
        if path == "/" or path.startswith("/computeMetadata/"):
            return self.metadata(request, method, path)
        if method == "POST" and (_CLAUDE_PATH.match(path) or _CHAT_PATH.match(path)):
            return self.vertex(request, path)
        return _json(request, 404, google_error(404, "NOT_FOUND", f"No such path: {path}"))

    # -- control

    def control(self, request: server.Request, method: str, path: str) -> bytes:
        state = self.state
        if method == "GET" and path == "/control/requests":
            return _json(request, 200, state.requests)
        if method == "GET" and path == "/control/tokens":
            return _json(request, 200, [issued.as_json() for issued in state.issued])
        if method == "POST" and path == "/control/lifetime":
            state.lifetime = int(json.loads(_content(request))["seconds"])
            return _json(request, 200, {"seconds": state.lifetime})
        if method == "POST" and path == "/control/expire":
            state.expire_all()
            return _json(request, 200, {"expired": len(state.expiry)})
        if method == "POST" and path == "/control/reset":
            state.reset()
            return _json(request, 200, {"reset": True})
        return _json(request, 404, {"error": f"no control {method} {path}"})

    # -- token endpoint

    def token(self, request: server.Request) -> bytes:
        form = parse_qs(_content(request).decode(), keep_blank_values=True)
        grant = (form.get("grant_type") or [""])[0]
        if grant != JWT_BEARER:
            return _json(
                request,
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"Invalid grant_type: {grant}",
                },
            )
        settings = self.state.settings
        key_file = settings.public_key_file
        pem: bytes | None = None
        if key_file is not None:
            if not key_file.exists():
                return _json(
                    request,
                    400,
                    {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                )
            pem = key_file.read_bytes()
        host = request.getHost()
        problem = check_assertion(
            (form.get("assertion") or [""])[0],
            public_key_pem=pem,
            audiences=frozenset({*GOOGLE_AUDIENCES, f"http://127.0.0.1:{host.port}/token"}),
            client_email=settings.client_email,
            now=time.time(),
        )
        if problem is not None:
            error, description = problem
            return _json(request, 400, {"error": error, "error_description": description})
        return _json(request, 200, token_json(self.state.issue("jwt")))

    # -- metadata server

    def metadata(self, request: server.Request, method: str, path: str) -> bytes:
        request.setHeader(b"metadata-flavor", b"Google")
        request.setHeader(b"server", b"Metadata Server for VM")
        if request.getHeader(b"metadata-flavor") != b"Google":
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/html; charset=UTF-8")
            return b"Missing required header: Metadata-Flavor: Google\n"
        if method != "GET":
            request.setResponseCode(405)
            return b"Method not allowed\n"
        settings = self.state.settings
        recursive = request.args.get(b"recursive") == [b"true"]
        account = re.fullmatch(r"/computeMetadata/v1/instance/service-accounts/([^/]+)/(.*)", path)
        text: str | None = None
        if path == "/":
            text = "computeMetadata/\n"
        elif path == "/computeMetadata/v1/project/project-id":
            text = settings.project
        elif path == "/computeMetadata/v1/project/numeric-project-id":
            text = "123456789012"
        elif path == "/computeMetadata/v1/universe/universe-domain":
            text = "googleapis.com"
        elif account and account.group(1) in ("default", settings.client_email):
            rest = account.group(2)
            info = {
                "email": settings.client_email,
                "scopes": [CLOUD_PLATFORM],
                "aliases": ["default"],
            }
            if rest == "token":
                return _json(request, 200, token_json(self.state.issue("metadata")))
            if rest == "" and recursive:
                return _json(request, 200, info)
            if rest == "":
                text = "aliases\nemail\nidentity\nscopes\ntoken\n"
            elif rest == "email":
                text = settings.client_email
            elif rest == "scopes":
                text = CLOUD_PLATFORM + "\n"
            elif rest == "aliases":
                text = "default\n"
        if text is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/html; charset=UTF-8")
            return b"Not Found\n"
        request.setHeader(b"content-type", b"application/text")
        return text.encode()

    # -- Vertex

    def vertex(self, request: server.Request, path: str) -> bytes | int:
        state = self.state
        headers = _headers(request)
        raw = _content(request)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        claude = _CLAUDE_PATH.match(path)
        match = claude or _CHAT_PATH.match(path)
        assert match is not None
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        location = match.group("location")
        model = (
            unquote(claude.group("model"))
            if claude
            else str(body.get("model") if isinstance(body, dict) else "")
        )
        state.requests.append(
            {
                "path": request.uri.decode("latin-1"),
                "method": claude.group("method") if claude else "chat/completions",
                "location": location,
                "model": model,
                "headers": headers,
                "body": body,
                "token": token or None,
                "anthropic_beta": headers.get("anthropic-beta"),
            }
        )
        if not token:
            request.setHeader(b"www-authenticate", b'Bearer realm="https://accounts.google.com/"')
            return _json(request, 401, unauthenticated("CREDENTIALS_MISSING"))
        expiry = state.expiry.get(token)
        if expiry is None or expiry <= time.time():
            request.setHeader(
                b"www-authenticate",
                b'Bearer realm="https://accounts.google.com/", error="invalid_token"',
            )
            reason = "ACCESS_TOKEN_TYPE_UNSUPPORTED" if expiry is None else "ACCESS_TOKEN_EXPIRED"
            return _json(request, 401, unauthenticated(reason))
        resource = f"publishers/anthropic/models/{model}" if claude else "endpoints/openapi"
        if match.group("project") != state.settings.project:
            return _json(
                request, 403, permission_denied(match.group("project"), location, resource)
            )
        if not _LOCATION.match(location):
            return _json(request, 400, invalid_argument(f"Unsupported location: {location}"))
        if claude:
            return self.claude(request, body, model, claude.group("method") == "streamRawPredict")
        return self.chat(request, body)

    def claude(
        self, request: server.Request, body: Any, model: str, streaming: bool
    ) -> bytes | int:
        problem = messages_problem(body, streaming)
        if problem is not None:
            return _json(request, 400, invalid_argument(problem))
        if model == "claude-throttled":
            return _json(request, 429, resource_exhausted(model))
        if not streaming:
            return _json(request, 200, claude_answers.messages_json(body, model))
        fail_after = 2 if model == "claude-midfail" else None
        request.setHeader(b"cache-control", b"no-cache")
        events = messages_events(body, model, fail_after)
        return self.stream(request, b"text/event-stream; charset=utf-8", map(sse_event, events))

    def chat(self, request: server.Request, body: Any) -> bytes | int:
        problem = chat_problem(body)
        if problem is not None:
            return _json(request, 400, invalid_argument(problem))
        model = body["model"]
        if model == "google/gemini-throttled":
            return _json(request, 429, resource_exhausted(model))
        created = int(time.time())
        if not body.get("stream"):
            return _json(request, 200, chat_completion(body, model, created))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = chat_chunks(body, model, created, include_usage)
        return self.stream(request, b"text/event-stream", chunks)

    def stream(self, request: server.Request, content_type: bytes, pieces: Iterable[bytes]) -> int:
        """Answer with *pieces*, paced by the configured delay."""
        request.setHeader(b"content-type", content_type)
        _send_paced(request, pieces, self.state.settings.delay)
        return server.NOT_DONE_YET


def main() -> None:
    """Serve on a free loopback port until killed; print ``PORT <n>``."""
    state = State(Settings.from_environ(os.environ))
    site = server.Site(Mock(state))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
    print(f"PORT {port.getHost().port}", flush=True)  # type: ignore[attr-defined]
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
