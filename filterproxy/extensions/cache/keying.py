"""What a request's cache entry is (its key) and whether it may have one: plain
functions, no I/O.

The key is a SHA-256 digest of the request as the upstream gets it — the cluster, the
method and path, the headers that change an answer (``anthropic-version``,
``anthropic-beta``, ``openai-beta``) and the body as canonical JSON (keys sorted, no
whitespace, ``1.0`` written as ``1``) — and of its *partition*: whose answers it may be
given (a gateway key, a team, or the credential the upstream request carries). Whether
the answer is streamed is not part of it (``stream``, ``stream_options``): a streamed
answer serves a request that does not stream, and the other way round
(`filterproxy.extensions.cache.shapes`).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from filterproxy.extensions.cache.config import CacheConfig
from filterproxy.filters.owner import owner_digest

__all__ = [
    "KEYED_HEADERS",
    "Decision",
    "RequestShape",
    "cache_key",
    "canonical",
    "decide",
    "partition",
    "request_shape",
]

#: Request headers that change the answer of the same body.
KEYED_HEADERS: Final = ("anthropic-version", "anthropic-beta", "openai-beta")
#: Body fields that say how the answer is delivered, not what it is.
_DELIVERY: Final = frozenset({"stream", "stream_options"})


@dataclass(frozen=True, slots=True)
class Decision:
    """What the cache may do with a request."""

    #: Look it up (and merge it with an identical request in flight).
    read: bool
    #: Store its answer.
    write: bool
    #: Why not, when it may not do both: ``no-cache``, ``no-store``, ``temperature``,
    #: ``n``, ``tools``, ``not-json``.
    reason: str | None = None

    @property
    def bypass(self) -> bool:
        return not self.read


@dataclass(frozen=True, slots=True)
class RequestShape:
    """How a request wants its answer delivered."""

    #: As an event stream.
    stream: bool
    #: A chat stream's usage chunk (``stream_options.include_usage``); True for every
    #: other shape (a JSON answer, Messages and Responses streams, always carry usage).
    usage: bool = True


_BYPASS_NO_CACHE: Final = Decision(False, True, "no-cache")
_BYPASS_NO_STORE: Final = Decision(False, False, "no-store")
_CACHE: Final = Decision(True, True)


def _cache_control(value: str | None) -> Decision | None:
    if not value:
        return None
    directives = {part.strip().lower().replace(" ", "") for part in value.split(",")}
    if "no-store" in directives:
        return _BYPASS_NO_STORE
    if "no-cache" in directives or "max-age=0" in directives:
        return _BYPASS_NO_CACHE
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _tool_names(tools: object) -> list[str]:
    names: list[str] = []
    if not isinstance(tools, list):
        return names
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        name = tool.get("name")
        function = tool.get("function")
        if not isinstance(name, str) and isinstance(function, dict):
            name = function.get("name")
        if isinstance(name, str):
            names.append(name)
    return names


def decide(
    body: Mapping[str, Any] | None, config: CacheConfig, cache_control: str | None
) -> Decision:
    """Whether a request with JSON *body* (None: not a JSON object) may be looked up
    and stored, on a route cached with *config*, given the client's ``Cache-Control``."""
    told = _cache_control(cache_control)
    if told is not None:
        return told
    if body is None:
        return Decision(False, False, "not-json")
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return Decision(False, False, "n")
    if not config.sampled and body.get("seed") is None:
        temperature = _number(body.get("temperature"))
        if temperature is None or temperature > 0:
            return Decision(False, False, "temperature")
    patterns = config.side_effect_tools
    if patterns:
        for name in _tool_names(body.get("tools")):
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                return Decision(False, False, "tools")
    return _CACHE


def request_shape(body: Mapping[str, Any], api: str | None) -> RequestShape:
    """How a request with *body* (in *api*) wants its answer."""
    stream = body.get("stream") is True
    if not stream or api != "chat":
        return RequestShape(stream)
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return RequestShape(True, usage)


def _normal(value: Any) -> Any:
    """*value* with integral floats as integers (``1.0`` and ``1`` are one request)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def canonical(body: Mapping[str, Any]) -> bytes:
    """The body as the key sees it: without its delivery fields, keys sorted, compact."""
    document = {k: _normal(v) for k, v in body.items() if k not in _DELIVERY}
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def partition(
    share: str, key_name: str | None, team_name: str | None, credential: str | None
) -> str:
    """Whose answers a request may be given: its team's (``share: team``, a key with a
    team), its gateway key's, or — without gateway keys — those of the requests that
    carry the same credential upstream (a digest: never the credential itself)."""
    if share == "team" and team_name is not None:
        return "team:" + team_name
    return owner_digest(key_name, credential)


def cache_key(
    part: str,
    cluster: str,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: Mapping[str, Any],
) -> str:
    """The entry's key (64 hex digits) of a request (see the module's description);
    *headers* are the `KEYED_HEADERS` it carries, in that order."""
    digest = hashlib.sha256()
    head = [part, cluster, method, path]
    head += [f"{name}:{value}" for name, value in headers]
    digest.update("\n".join(head).encode())
    digest.update(b"\n\n")
    digest.update(canonical(body))
    return digest.hexdigest()
