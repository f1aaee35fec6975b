"""A stand-in for AWS Bedrock Runtime (and the STS calls that issue its credentials), for
the integration tests, run as its own process. It prints ``PORT <n>`` when listening.

It checks what AWS checks: every Bedrock request carries a valid SigV4 signature
(service ``bedrock``) by known, unexpired credentials, or ``Authorization: Bearer`` with
the configured API key; bodies are validated as Bedrock does. Refusals come as AWS's:
a status, ``x-amzn-ErrorType: <Type>:<namespace>`` and ``{"message": …}``.

Operations (the model id percent-encoded in the path, decoded once):

- ``POST /model/{id}/invoke`` and ``/invoke-with-response-stream``: Claude's Messages
  body (``anthropic_version: bedrock-2023-05-31``); the answer is
  ``tests/support/claude_answers.py``'s, whole or as event-stream ``chunk`` frames.
- ``POST /model/{id}/converse`` and ``/converse-stream``: the Converse body, validated
  against botocore's service model; the same answers in Converse's shapes.
- ``POST /`` (form body): STS ``AssumeRoleWithWebIdentity`` (unsigned) and
  ``AssumeRole`` (signed, service ``sts``) issue fresh credentials, which Bedrock then
  accepts until they expire.

The model id chooses a failure: ``throttle`` (429, or an exception frame after two text
deltas), ``streamerror`` (424, or a ``modelStreamErrorException`` frame), ``truncate`` (the
stream ends after two text deltas, cleanly), ``badcrc`` (the second frame's CRC is wrong).

Control, without auth: ``GET /control/requests`` (every Bedrock request: raw path,
headers, parsed body, auth), ``GET /control/sts`` (the STS calls), ``POST
/control/credentials`` (``{access_key_id, secret_access_key, session_token?}``), ``POST
/control/reset`` (clears both logs).

Environment: ``BEDROCK_MOCK_REGION`` (us-east-1), ``BEDROCK_MOCK_CREDENTIALS`` (a JSON
list of credentials as /control/credentials takes them), ``BEDROCK_MOCK_API_KEY``,
``STS_MOCK_DURATION`` (seconds the issued credentials last, 900), ``BEDROCK_MOCK_DELAY``
(seconds between streamed events, 0.005).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hmac
import itertools
import json
import os
import random
import secrets
import string
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

from twisted.web import server
from twisted.web.resource import Resource

if __name__ == "__main__":  # run as a script: make the ``tests`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import claude_answers
from tests.support.eventstream import (
    chunk_payload,
    event_frame,
    exception_frame,
    padded,
)
from tests.support.sigv4 import MESSAGES, parse_authorization, verify

CORAL = "http://internal.amazon.com/coral/com.amazon.coral.service/"
BEDROCK = "http://internal.amazon.com/coral/com.amazon.bedrock/"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
OPERATIONS = ("invoke", "invoke-with-response-stream", "converse", "converse-stream")

INVOKE_KEYS = frozenset(
    {
        "anthropic_version",
        "max_tokens",
        "messages",
        "anthropic_beta",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "output_config",
        "context_management",
    }
)
BETAS = frozenset(
    {
        "interleaved-thinking-2025-05-14",
        "context-1m-2025-08-07",
        "token-efficient-tools-2025-02-19",
        "fine-grained-tool-streaming-2025-05-14",
        "computer-use-2025-01-24",
        "output-128k-2025-02-19",
        "context-management-2025-06-27",
    }
)
MALFORMED = "Malformed input request: {}, please reformat your input and try again."
THROTTLED = "Too many requests, please wait before trying again."
MODEL_FAILED = "The model failed to produce a response."
START_USER = (
    "A conversation must start with a user message. Try again with a conversation that"
    " starts with a user message."
)
ALTERNATE = (
    "A conversation must alternate between user and assistant roles. Make sure the"
    " conversation alternates between user and assistant roles and try again."
)
#: Latencies reported in metrics, in milliseconds.
LATENCY_MS = 120
FIRST_BYTE_MS = 40

#: STS names AWS's signature failures its own way.
STS_CODES = {
    "MissingAuthenticationTokenException": "MissingAuthenticationToken",
    "IncompleteSignatureException": "IncompleteSignature",
    "UnrecognizedClientException": "InvalidClientTokenId",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "ExpiredTokenException": "ExpiredToken",
}


class Rejected(Exception):
    """A request AWS would refuse: its status, error type and message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def _validation(message: str) -> Rejected:
    return Rejected(400, "ValidationException", message)


def _json_object(raw: bytes) -> dict[str, Any]:
    """*raw* as a JSON object, or Rejected as Bedrock refuses a body that is none."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _validation(MALFORMED.format("#: expected type: JSONObject"))
    return body


# --- InvokeModel ---------------------------------------------------------------------


def validate_invoke(raw: bytes, model_id: str) -> dict[str, Any]:
    """The Messages body of an InvokeModel request for *model_id*, or Rejected (400
    ValidationException) where Bedrock refuses it."""
    if "anthropic." not in model_id:
        raise _validation("The provided model identifier is invalid.")
    body = _json_object(raw)
    for key in body:
        if key not in INVOKE_KEYS:
            raise _validation(f"{key}: Extra inputs are not permitted")
    for key in ("anthropic_version", "max_tokens", "messages"):
        if key not in body:
            raise _validation(MALFORMED.format(f"#: required key [{key}] not found"))
    if body["anthropic_version"] != "bedrock-2023-05-31":
        raise _validation(f"Invalid anthropic_version: {body['anthropic_version']!r}")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _validation("max_tokens: Input should be a valid integer greater than 0")
    if not isinstance(body["messages"], list) or not body["messages"]:
        raise _validation("messages: at least one message is required")
    betas = body.get("anthropic_beta", [])
    if not isinstance(betas, list) or any(beta not in BETAS for beta in betas):
        raise _validation("invalid beta flag")
    return body


def invoke_events(body: Mapping[str, Any], model_id: str) -> list[dict[str, Any]]:
    """The Messages events of a streamed invoke, the last (``message_stop``) carrying
    Bedrock's ``amazon-bedrock-invocationMetrics``."""
    events = claude_answers.messages_events(body, model_id)
    usage = claude_answers.messages_json(body, model_id)["usage"]
    events[-1] = {
        **events[-1],
        "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": usage["input_tokens"],
            "outputTokenCount": usage["output_tokens"],
            "invocationLatency": LATENCY_MS,
            "firstByteLatency": FIRST_BYTE_MS,
            "cacheReadInputTokenCount": usage["cache_read_input_tokens"],
            "cacheWriteInputTokenCount": usage["cache_creation_input_tokens"],
        },
    }
    return events


def invoke_stream(body: Mapping[str, Any], model_id: str) -> list[bytes]:
    """The frames of InvokeModelWithResponseStream's answer, failures included."""
    events = invoke_events(body, model_id)
    frames = [event_frame("chunk", chunk_payload(event)) for event in events]
    deltas = [
        i
        for i, event in enumerate(events)
        if event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta"
    ]
    return with_failures(frames, deltas, model_id)


def with_failures(frames: list[bytes], text_deltas: list[int], model_id: str) -> list[bytes]:
    """*frames* as the model id's failure sends them: cut after the second text delta
    (the frame indexes *text_deltas*) and followed by an exception frame (``throttle``,
    ``streamerror``) or nothing (``truncate``); or with the second frame's CRC broken
    (``badcrc``)."""
    cut = (text_deltas[:2] or [0])[-1] + 1
    if "throttle" in model_id:
        return [*frames[:cut], exception_frame("throttlingException", THROTTLED)]
    if "streamerror" in model_id:
        error = exception_frame(
            "modelStreamErrorException",
            MODEL_FAILED,
            originalStatusCode=500,
            originalMessage="Internal server error",
        )
        return [*frames[:cut], error]
    if "truncate" in model_id:
        return frames[:cut]
    if "badcrc" in model_id and len(frames) > 1:
        broken = bytearray(frames[1])
        broken[-1] ^= 0xFF
        return [frames[0], bytes(broken), *frames[2:]]
    return frames


def refuse_failing_model(model_id: str) -> None:
    """Raise the failure a non-streamed request to a failing model gets."""
    if "throttle" in model_id:
        raise Rejected(429, "ThrottlingException", THROTTLED)
    if "streamerror" in model_id:
        raise Rejected(424, "ModelErrorException", MODEL_FAILED)


# --- Converse ------------------------------------------------------------------------


@functools.cache
def _converse_shapes() -> tuple[Any, Any]:
    import botocore.session  # type: ignore[import-untyped, unused-ignore]
    from botocore.validate import ParamValidator  # type: ignore[import-untyped, unused-ignore]

    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    return model.operation_model("Converse").input_shape, ParamValidator()


def _from_wire(shape: Any, value: Any) -> Any:
    """*value* (JSON as sent) as botocore's parameters of *shape*: blobs base64-decoded,
    members under their Python names."""
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict) and not shape.is_document_type:
        names = {m.serialization.get("name", n): n for n, m in shape.members.items()}
        return {
            names.get(k, k): _from_wire(shape.members[names[k]], v) if k in names else v
            for k, v in value.items()
        }
    if kind == "list" and isinstance(value, list):
        return [_from_wire(shape.member, v) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _from_wire(shape.value, v) for k, v in value.items()}
    if kind == "blob" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise _validation(MALFORMED.format("blob is not valid base64")) from None
    return value


def validate_converse(raw: bytes, model_id: str) -> dict[str, Any]:
    """The Converse body of a request for *model_id*, or Rejected (400
    ValidationException) with botocore's validation report or the roles' rule."""
    body = _json_object(raw)
    shape, validator = _converse_shapes()
    params = {**_from_wire(shape, body), "modelId": model_id}
    report = validator.validate(params, shape)
    if report.has_errors():
        raise _validation(report.generate_report())
    roles = [message["role"] for message in body.get("messages", [])]
    if not roles or roles[0] != "user":
        raise _validation(START_USER)
    if any(a == b for a, b in itertools.pairwise(roles)):
        raise _validation(ALTERNATE)
    return body


def _result_text(content: list[dict[str, Any]]) -> str:
    return " ".join(
        part["text"] if "text" in part else json.dumps(part["json"], separators=(",", ":"))
        for part in content
        if "text" in part or "json" in part
    )


def converse_as_messages(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Messages body claude_answers answers alike to the Converse *body*."""
    messages = []
    for message in body.get("messages", []):
        blocks: list[dict[str, Any]] = []
        for block in message.get("content", []):
            if "text" in block:
                blocks.append({"type": "text", "text": block["text"]})
            elif "toolResult" in block:
                result = block["toolResult"]
                blocks.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": result.get("toolUseId"),
                        "content": _result_text(result.get("content", [])),
                    }
                )
            elif "toolUse" in block:
                use = block["toolUse"]
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": use.get("toolUseId"),
                        "name": use.get("name"),
                        "input": use.get("input"),
                    }
                )
        messages.append({"role": message["role"], "content": blocks})
    tools = [
        {"name": tool["toolSpec"]["name"]}
        for tool in (body.get("toolConfig") or {}).get("tools", [])
        if "toolSpec" in tool
    ]
    return {"messages": messages, **({"tools": tools} if tools else {})}


def converse_usage(body: Mapping[str, Any], output_tokens: int) -> dict[str, int]:
    """Converse's ``usage``: cache counts only when the request has a ``cachePoint``;
    ``inputTokens`` excludes them and ``totalTokens`` adds everything up."""
    usage = {"inputTokens": claude_answers.INPUT_TOKENS, "outputTokens": output_tokens}
    if claude_answers.holds_key(body, "cachePoint"):
        usage["cacheReadInputTokens"] = claude_answers.CACHE_READ_TOKENS
        usage["cacheWriteInputTokens"] = claude_answers.CACHE_WRITE_TOKENS
    return {**usage, "totalTokens": sum(usage.values())}


def converse_json(body: Mapping[str, Any]) -> dict[str, Any]:
    """The whole Converse answer to *body*."""
    blocks, stop = claude_answers.answer(converse_as_messages(body))
    content = [
        {"text": block["text"]}
        if block["type"] == "text"
        else {"toolUse": {"toolUseId": block["id"], "name": block["name"], "input": block["input"]}}
        for block in blocks
    ]
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": converse_usage(body, claude_answers.output_tokens(blocks)),
        "metrics": {"latencyMs": LATENCY_MS},
    }


def converse_events(body: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """ConverseStream's events for *body*: (event type, member JSON), from Messages'
    events one for one (a text block opens with its first delta; ``metadata`` with the
    usage comes after ``messageStop``)."""
    messages_body = converse_as_messages(body)
    blocks, _ = claude_answers.answer(messages_body)
    out: list[tuple[str, dict[str, Any]]] = []
    for event in claude_answers.messages_events(messages_body, "converse"):
        kind = event["type"]
        if kind == "message_start":
            out.append(("messageStart", {"role": "assistant"}))
        elif kind == "content_block_start" and event["content_block"]["type"] == "tool_use":
            block = event["content_block"]
            start = {"toolUse": {"toolUseId": block["id"], "name": block["name"]}}
            out.append(("contentBlockStart", {"contentBlockIndex": event["index"], "start": start}))
        elif kind == "content_block_delta":
            delta = event["delta"]
            member = (
                {"text": delta["text"]}
                if delta["type"] == "text_delta"
                else {"toolUse": {"input": delta["partial_json"]}}
            )
            out.append(
                ("contentBlockDelta", {"contentBlockIndex": event["index"], "delta": member})
            )
        elif kind == "content_block_stop":
            out.append(("contentBlockStop", {"contentBlockIndex": event["index"]}))
        elif kind == "message_delta":
            out.append(("messageStop", {"stopReason": event["delta"]["stop_reason"]}))
        elif kind == "message_stop":
            usage = converse_usage(body, claude_answers.output_tokens(blocks))
            out.append(("metadata", {"usage": usage, "metrics": {"latencyMs": LATENCY_MS}}))
    return out


def converse_stream(body: Mapping[str, Any], model_id: str) -> list[bytes]:
    """The frames of ConverseStream's answer, failures included."""
    events = converse_events(body)
    frames = [event_frame(kind, padded(member)) for kind, member in events]
    deltas = [
        i
        for i, (kind, member) in enumerate(events)
        if kind == "contentBlockDelta" and "text" in member["delta"]
    ]
    return with_failures(frames, deltas, model_id)


# --- STS -----------------------------------------------------------------------------


def _random_key(prefix: str) -> str:
    return prefix + "".join(random.choices(string.ascii_uppercase + string.digits, k=16))


def _jwt_claims(token: str) -> dict[str, Any]:
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def _assumed_role(role_arn: str, session_name: str) -> str:
    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else "123456789012"
    role = role_arn.rsplit("/", 1)[-1]
    return (
        f"<AssumedRoleUser><Arn>{escape(f'arn:aws:sts::{account}:assumed-role/{role}/{session_name}')}"
        f"</Arn><AssumedRoleId>{escape(_random_key('AROA'))}:{escape(session_name)}"
        "</AssumedRoleId></AssumedRoleUser>"
    )


def sts_error(code: str, message: str, sender: bool = True) -> bytes:
    """An STS error document."""
    return (
        f'<ErrorResponse xmlns="{STS_NS}"><Error><Type>{"Sender" if sender else "Receiver"}'
        f"</Type><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    ).encode()


def sts_answer(action: str, result: str) -> bytes:
    """An STS answer document of *action* holding *result*."""
    return (
        f'<{action}Response xmlns="{STS_NS}"><{action}Result>{result}</{action}Result>'
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    ).encode()


# --- The server ----------------------------------------------------------------------


@dataclass
class State:
    """What the server knows and has seen."""

    region: str
    api_key: str | None
    duration: float
    delay: float
    credentials: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    expires: dict[str, datetime.datetime] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    sts_calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, document: Mapping[str, Any]) -> None:
        """Accept the credentials *document* (``access_key_id``, ``secret_access_key``,
        ``session_token``)."""
        self.credentials[str(document["access_key_id"])] = (
            str(document["secret_access_key"]),
            document.get("session_token") or None,
        )

    def issue(self) -> tuple[str, str, str, datetime.datetime]:
        """Fresh session credentials, accepted until they expire."""
        key = _random_key("ASIA")
        secret = base64.b64encode(secrets.token_bytes(30)).decode()
        token = base64.b64encode(secrets.token_bytes(300)).decode()
        expiration = (_now() + datetime.timedelta(seconds=self.duration)).replace(microsecond=0)
        self.credentials[key] = (secret, token)
        self.expires[key] = expiration
        return key, secret, token, expiration


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _headers(request: server.Request) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): ",".join(v.decode("latin-1") for v in values)
        for name, values in request.requestHeaders.getAllRawHeaders()
    }


def _json(request: server.Request, status: int, document: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"x-amzn-RequestId", str(uuid.uuid4()).encode())
    return json.dumps(document).encode()


def _error(request: server.Request, rejected: Rejected) -> bytes:
    namespace = CORAL if rejected.status in (403, 404) else BEDROCK
    request.setHeader(b"x-amzn-ErrorType", f"{rejected.error_type}:{namespace}".encode())
    return _json(request, rejected.status, {"message": rejected.message})


def _sigv4(
    state: State, request: server.Request, headers: dict[str, str], raw: bytes, service: str
) -> tuple[bool, str, str | None]:
    url = "http://" + headers.get("host", "") + request.uri.decode("latin-1")
    region = state.region
    parsed = parse_authorization(headers.get("authorization", ""))
    if service == "sts" and parsed is not None and parsed.region == "us-east-1":
        region = "us-east-1"  # STS's global endpoint signs for us-east-1
    method = request.method.decode()
    ok, reason, key = verify(method, url, headers, raw, state.credentials, region, service, _now())
    if ok and key in state.expires and state.expires[key] <= _now():
        return False, "ExpiredTokenException", key
    return ok, reason, key


def _authenticate(
    state: State, request: server.Request, headers: dict[str, str], raw: bytes
) -> str:
    """How the Bedrock request authenticated (``sigv4:<key>``, ``bearer``), or
    ``rejected:<error type>``."""
    value = headers.get("authorization", "")
    if value.startswith("Bearer "):
        key = value[len("Bearer ") :].strip().encode()
        good = state.api_key is not None and hmac.compare_digest(key, state.api_key.encode())
        return "bearer" if good else "rejected:UnrecognizedClientException"
    ok, reason, access_key = _sigv4(state, request, headers, raw, "bedrock")
    return f"sigv4:{access_key}" if ok else f"rejected:{reason}"


def _stream(request: server.Request, frames: list[bytes], delay: float) -> int:
    """Send *frames*, each in two writes split at a random byte (the second a reactor
    turn later), *delay* seconds apart; then end the response."""
    from twisted.internet import reactor

    gone: list[bool] = []
    request.notifyFinish().addBoth(lambda _: gone.append(True))
    call_later: Callable[..., Any] = reactor.callLater

    def send(index: int) -> None:
        if gone:
            return
        if index == len(frames):
            request.finish()
            return
        frame = frames[index]
        cut = random.randint(1, len(frame) - 1)
        request.write(frame[:cut])
        call_later(0, rest, index, frame[cut:])

    def rest(index: int, data: bytes) -> None:
        if gone:
            return
        request.write(data)
        call_later(delay, send, index + 1)

    send(0)
    return server.NOT_DONE_YET


class Bedrock(Resource):
    """Bedrock Runtime, STS and the control API on one port."""

    isLeaf = True

    def __init__(self, state: State) -> None:
        super().__init__()
        self.state = state

    def render(self, request: server.Request) -> bytes | int:
        raw = request.content.read() if request.content is not None else b""
        path = request.path.decode("latin-1")
        if path.startswith("/control/"):
            return self.control(request, path, raw)
        if path == "/" and request.method == b"POST":
            return self.sts(request, raw)
        return self.bedrock(request, path, raw)

    # Bedrock

    def bedrock(self, request: server.Request, path: str, raw: bytes) -> bytes | int:
        headers = _headers(request)
        auth = _authenticate(self.state, request, headers, raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.state.requests.append(
            {"path": request.uri.decode("latin-1"), "headers": headers, "body": body, "auth": auth}
        )
        parts = path.split("/")
        if (
            request.method != b"POST"
            or len(parts) != 4
            or parts[:2] != ["", "model"]
            or not parts[2]
            or parts[3] not in OPERATIONS
        ):
            message = "The requested operation is not recognized by the service."
            return _error(request, Rejected(404, "UnknownOperationException", message))
        if auth.startswith("rejected:"):
            reason = auth.removeprefix("rejected:")
            return _error(request, Rejected(403, reason, MESSAGES[reason]))
        model_id, operation = unquote(parts[2]), parts[3]
        try:
            if operation.startswith("invoke"):
                return self.invoke(request, model_id, raw, operation.endswith("stream"))
            return self.converse(request, model_id, raw, operation.endswith("stream"))
        except Rejected as rejected:
            return _error(request, rejected)

    def invoke(
        self, request: server.Request, model_id: str, raw: bytes, stream: bool
    ) -> bytes | int:
        body = validate_invoke(raw, model_id)
        if stream:
            frames = invoke_stream(body, model_id)
            return self.event_stream(request, frames)
        refuse_failing_model(model_id)
        document = claude_answers.messages_json(body, model_id)
        usage = document["usage"]
        for name, value in (
            ("Input-Token-Count", usage["input_tokens"]),
            ("Output-Token-Count", usage["output_tokens"]),
            ("Cache-Read-Input-Token-Count", usage["cache_read_input_tokens"]),
            ("Cache-Write-Input-Token-Count", usage["cache_creation_input_tokens"]),
            ("Invocation-Latency", LATENCY_MS),
        ):
            request.setHeader(f"X-Amzn-Bedrock-{name}".encode(), str(value).encode())
        return _json(request, 200, document)

    def converse(
        self, request: server.Request, model_id: str, raw: bytes, stream: bool
    ) -> bytes | int:
        body = validate_converse(raw, model_id)
        if stream:
            return self.event_stream(request, converse_stream(body, model_id))
        refuse_failing_model(model_id)
        return _json(request, 200, converse_json(body))

    def event_stream(self, request: server.Request, frames: list[bytes]) -> int:
        request.setHeader(b"content-type", b"application/vnd.amazon.eventstream")
        request.setHeader(b"x-amzn-bedrock-content-type", b"application/json")
        request.setHeader(b"x-amzn-RequestId", str(uuid.uuid4()).encode())
        return _stream(request, frames, self.state.delay)

    # STS

    def sts(self, request: server.Request, raw: bytes) -> bytes:
        form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)

        def get(name: str) -> str:
            return form.get(name, [""])[0]

        action = get("Action")
        call: dict[str, Any] = {
            "action": action,
            "role_arn": get("RoleArn") or None,
            "session_name": get("RoleSessionName") or None,
            "web_identity_token": get("WebIdentityToken") or None,
            "access_key_id": None,
            "expiration": None,
            "error": None,
        }
        self.state.sts_calls.append(call)
        request.setHeader(b"content-type", b"text/xml")
        request.setHeader(b"x-amzn-RequestId", str(uuid.uuid4()).encode())

        def fail(status: int, code: str, message: str) -> bytes:
            call["error"] = code
            request.setResponseCode(status)
            return sts_error(code, message)

        if action not in ("AssumeRoleWithWebIdentity", "AssumeRole"):
            return fail(
                400, "InvalidAction", f"Could not find operation {action} for version 2011-06-15"
            )
        if action == "AssumeRole":
            headers = _headers(request)
            ok, reason, _ = _sigv4(self.state, request, headers, raw, "sts")
            if not ok:
                return fail(403, STS_CODES[reason], MESSAGES[reason])
        required = {"RoleArn": "roleArn", "RoleSessionName": "roleSessionName"}
        if action == "AssumeRoleWithWebIdentity":
            required["WebIdentityToken"] = "webIdentityToken"
        missing = [wire for name, wire in required.items() if not get(name)]
        if missing:
            message = f"{len(missing)} validation error(s) detected: " + "; ".join(
                f"Value null at '{name}' failed to satisfy constraint: Member must not be null"
                for name in missing
            )
            return fail(400, "ValidationError", message)
        key, secret, token, expiration = self.state.issue()
        call["access_key_id"] = key
        call["expiration"] = expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
        credentials = (
            f"<Credentials><AccessKeyId>{key}</AccessKeyId>"
            f"<SecretAccessKey>{escape(secret)}</SecretAccessKey>"
            f"<SessionToken>{escape(token)}</SessionToken>"
            f"<Expiration>{call['expiration']}</Expiration></Credentials>"
        )
        user = _assumed_role(get("RoleArn"), get("RoleSessionName"))
        if action == "AssumeRole":
            return sts_answer(action, f"{user}{credentials}<PackedPolicySize>6</PackedPolicySize>")
        claims = _jwt_claims(get("WebIdentityToken"))
        subject = str(claims.get("sub", "system:serviceaccount:default:default"))
        audience = claims.get("aud", "sts.amazonaws.com")
        audience = audience[0] if isinstance(audience, list) and audience else audience
        provider = str(claims.get("iss", "oidc.example.com")).removeprefix("https://")
        result = (
            f"{credentials}<SubjectFromWebIdentityToken>{escape(subject)}"
            f"</SubjectFromWebIdentityToken>{user}<Provider>{escape(provider)}</Provider>"
            f"<Audience>{escape(str(audience))}</Audience>"
        )
        return sts_answer(action, result)

    # Control

    def control(self, request: server.Request, path: str, raw: bytes) -> bytes:
        state = self.state
        if request.method == b"GET" and path == "/control/requests":
            return _json(request, 200, state.requests)
        if request.method == b"GET" and path == "/control/sts":
            return _json(request, 200, state.sts_calls)
        if request.method == b"POST" and path == "/control/credentials":
            try:
                state.add(json.loads(raw))
            except (ValueError, KeyError, TypeError) as error:
                return _json(request, 400, {"message": f"bad credentials: {error}"})
            return _json(request, 200, {"ok": True})
        if request.method == b"POST" and path == "/control/reset":
            state.requests.clear()
            state.sts_calls.clear()
            return _json(request, 200, {"ok": True})
        return _json(request, 404, {"message": f"no control {path}"})


def state_from_env(env: Mapping[str, str]) -> State:
    """The server's configuration from *env* (see the module's docstring)."""
    state = State(
        region=env.get("BEDROCK_MOCK_REGION", "us-east-1"),
        api_key=env.get("BEDROCK_MOCK_API_KEY") or None,
        duration=float(env.get("STS_MOCK_DURATION", "900")),
        delay=float(env.get("BEDROCK_MOCK_DELAY", "0.005")),
    )
    for document in json.loads(env.get("BEDROCK_MOCK_CREDENTIALS", "[]")):
        state.add(document)
    return state


def main() -> None:
    """Serve on a free loopback port until killed."""
    from twisted.internet import reactor

    site = server.Site(Bedrock(state_from_env(os.environ)))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type, unused-ignore]
    print(f"PORT {port.getHost().port}", flush=True)  # type: ignore[attr-defined]
    reactor.run()


if __name__ == "__main__":
    main()
