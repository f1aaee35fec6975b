"""Request bodies as JSON: which ones are read as JSON, and how they are parsed.

The gateway reads a request body as JSON unless its media type is clearly something else
(an upload): clients often send JSON with a wrong or missing type (``curl -d`` says
``application/x-www-form-urlencoded``).

A body is held to the JSON every party can read (`strict_loads`), because what the
gateway accepts it must also be able to write again — for the upstream after a
translation, into the conversation store — and what it forwards the provider must be
able to read: no ``NaN`` or ``Infinity`` (not JSON, RFC 8259), no number beyond a 64-bit
integer or float, no unpaired UTF-16 surrogate escape (not text), nothing nested deeper
than `MAX_DEPTH`. Each refusal names where in the document it is.
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any, Final

import orjson

__all__ = ["MAX_DEPTH", "BadBody", "parse_body", "strict_loads"]

#: How deep a request's JSON may nest. No API's request needs more than a few dozen
#: levels (a tool's schema is the deepest part); orjson, which writes stored
#: conversations, refuses more than 254.
MAX_DEPTH: Final = 128
#: The integers every provider's API and the gateway's own JSON writer take: 64 bits,
#: signed or unsigned (20 characters at most, with the sign).
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_INT_CHARS: Final = 20
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")
#: Bodies up to this size are looked over for signs of deep nesting or a surrogate
#: before they are written to be sure (`_suspect`).
_LOOK_FOR_SIGNS: Final = 2048
_TOO_DEEP: Final = f"the request body is nested too deeply (more than {MAX_DEPTH} levels)"


class BadBody(ValueError):
    """The request body cannot be routed; the message says why."""


#: Bodies of these media types are not JSON and are routed by path and headers alone.
_NOT_JSON_PREFIXES: Final = ("multipart/", "audio/", "image/", "video/", "application/octet-stream")


class _Refused(Exception):
    """A number the strict parse does not take (found again, with its place, after)."""


class _Odd:
    """A number the lenient parse kept in its place, to say where it was."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _int_problem(text: str) -> str | None:
    if len(text) <= _INT_CHARS and _INT_MIN <= int(text) <= _INT_MAX:
        return None
    digits = text.lstrip("-")
    shown = digits if len(digits) <= 24 else f"{digits[:12]}…{digits[-6:]}"
    return (
        f"the integer {'-' if text.startswith('-') else ''}{shown} ({len(digits)} digits) "
        "does not fit in 64 bits"
    )


def _float_problem(text: str) -> str | None:
    if math.isfinite(float(text)):
        return None
    return f"the number {text[:40]} is too large for a 64-bit float"


def _constant_problem(name: str) -> str:
    return f"{name} is not JSON (RFC 8259 has no NaN or Infinity); send a number or null"


def _strict_int(text: str) -> int:
    if _int_problem(text) is not None:
        raise _Refused
    return int(text)


def _strict_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused
    return value


def _strict_constant(name: str) -> float:
    raise _Refused


def _lenient_int(text: str) -> Any:
    problem = _int_problem(text)
    return int(text) if problem is None else _Odd(problem)


def _lenient_float(text: str) -> Any:
    problem = _float_problem(text)
    return float(text) if problem is None else _Odd(problem)


def _lenient_constant(name: str) -> Any:
    return _Odd(_constant_problem(name))


_STRICT: Final = json.JSONDecoder(
    parse_int=_strict_int, parse_float=_strict_float, parse_constant=_strict_constant
)
_LENIENT: Final = json.JSONDecoder(
    parse_int=_lenient_int, parse_float=_lenient_float, parse_constant=_lenient_constant
)


def _where(path: list[str | int]) -> str:
    """A place in a document as the errors of the translations write it:
    ``messages[0].content``; ``request body`` for the whole of it."""
    parts: list[str] = []
    for key in path:
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:  # a key as text that can be sent (its own surrogates escaped), not too long
            parts.append("." + key[:60].encode("utf-8", "backslashreplace").decode("utf-8"))
    if len(parts) > 40:  # a place deep in a document: its start and its end
        parts = [*parts[:24], "…", *parts[-12:]]
    return "".join(parts).lstrip(".") or "request body"


def _children(value: Any) -> list[tuple[str | int, Any]]:
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list):
        return list(enumerate(value))
    return []


def _odd(document: Any) -> str | None:
    """Where the lenient parse kept a refused number, and why (``place: problem``).
    Iterative: the document may nest as deep as the json module goes."""
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Odd):
            return f"{_where(path)}: {value.problem}"
        for key, child in _children(value)[::-1]:
            if isinstance(child, dict | list | _Odd):
                stack.append((child, [*path, key]))
    return None


def _too_deep(value: Any, remaining: int) -> list[str | int] | None:
    """The path (from the end) to a container *remaining* levels below the container
    *value*, or None. Recursive, but never deeper than *remaining*."""
    if remaining == 0:
        return []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        if isinstance(child, dict | list):
            path = _too_deep(child, remaining - 1)
            if path is not None:
                path.append(key)
                return path
    return None


def _surrogate(value: Any) -> tuple[list[str | int], str] | None:
    """(path from the end, message) of the first string or key in *value* that holds an
    unpaired surrogate. Recursive: called only on a document known to nest at most
    `MAX_DEPTH` levels."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return None if found is None else ([], _surrogate_problem(found.group()))
    for key, child in _children(value):
        if isinstance(key, str) and (found := _SURROGATE.search(key)) is not None:
            return [key], "the key " + _surrogate_problem(found.group())
        if isinstance(child, str | dict | list) and (inner := _surrogate(child)) is not None:
            inner[0].append(key)
            return inner
    return None


def _surrogate_problem(char: str) -> str:
    return (
        f"holds an unpaired UTF-16 surrogate (\\u{ord(char):04x}), which is not text; send "
        "the character itself, or both halves of its surrogate pair"
    )


def _suspect(data: str | bytes) -> bool:
    """Whether *data* may hold what `_writable` looks for: a document nests only as deep
    as it has brackets, and a string holds a surrogate only where the text escapes one.
    Past a few KiB, writing the document (`_writable`) costs less than looking for signs."""
    if len(data) > _LOOK_FOR_SIGNS:
        return True
    if isinstance(data, bytes):
        brackets = data.count(b"[") + data.count(b"{")
        return brackets > MAX_DEPTH or b"\\ud" in data or b"\\uD" in data
    brackets = data.count("[") + data.count("{")
    return brackets > MAX_DEPTH or "\\ud" in data or "\\uD" in data


def _orjson_depth() -> int:
    """How many levels of nesting orjson writes (254 in the releases known so far); 0
    when it has no limit the gateway can use."""
    value: Any = []
    for depth in range(1, 1024):
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return depth - 1 if depth - 1 > MAX_DEPTH else 0
        value = [value]
    return 0


def _wrapper(levels: int) -> tuple[list[Any], list[Any]]:
    """(outermost, innermost) of *levels* lists nested in one another; a document put in
    the innermost one is written *levels* deeper."""
    innermost: list[Any] = [None]
    outermost = innermost
    for _ in range(levels - 1):
        outermost = [outermost]
    return outermost, innermost


#: How many levels `_writable` puts around a document, so that orjson's own limit on
#: nesting is `MAX_DEPTH` for the document (0: orjson cannot tell; walked in Python).
_WRAP: Final = max(_orjson_depth() - MAX_DEPTH, 0)
#: Those levels, made once (a document is put in for one call, under the lock).
_OUTERMOST, _INNERMOST = _wrapper(max(_WRAP, 1))
_WRAPPER_LOCK: Final = threading.Lock()


def _writable(document: Any) -> bool:
    """Whether *document* nests at most `MAX_DEPTH` levels and holds no unpaired
    surrogate. orjson refuses to write either (more than its limit of levels), at C
    speed — fifty times a walk in Python: the document is written inside as many more
    levels as make its limit ours."""
    if not _WRAP:
        deep = isinstance(document, dict | list) and _too_deep(document, MAX_DEPTH) is not None
        return not deep and _surrogate(document) is None
    with _WRAPPER_LOCK:
        _INNERMOST[0] = document
        try:
            orjson.dumps(_OUTERMOST)
        except orjson.JSONEncodeError:
            return False
        finally:
            _INNERMOST[0] = None
    return True


def strict_loads(data: str | bytes) -> Any:
    """The JSON value of *data*, held to what every party can read (see the module).

    Raises:
        BadBody: not UTF-8, not JSON, or something in it the gateway does not take; the
            message names where.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise BadBody("request body is not valid UTF-8") from None
    try:
        try:
            document = _STRICT.decode(text)
        except _Refused:
            # Rare: parsed again, keeping what was refused in its place, to say where it
            # is (the rest of the text may be worse: not JSON, or nested past the stack).
            problem = _odd(_LENIENT.decode(text))
            raise BadBody(
                problem or "request body holds a number the gateway does not take"
            ) from None
    except json.JSONDecodeError as e:
        raise BadBody(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadBody("request body is nested too deeply") from None
    if _suspect(data) and not _writable(document):
        # Rare: found again, with its place.
        path = _too_deep(document, MAX_DEPTH) if isinstance(document, dict | list) else None
        if path is not None:
            raise BadBody(f"{_where(path[::-1])}: {_TOO_DEEP}")
        found = _surrogate(document)
        if found is not None:
            raise BadBody(f"{_where(found[0][::-1])}: {found[1]}")
    return document


def _is_json(content_type: str | None) -> bool:
    """Whether a body of *content_type* is read as JSON. Anything that is not clearly a
    binary or multipart upload is: clients often send JSON with a wrong or missing type
    (``curl -d`` says ``application/x-www-form-urlencoded``)."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return not media.startswith(_NOT_JSON_PREFIXES)


def parse_body(body: bytes, content_type: str | None) -> dict[str, Any] | None:
    """The JSON object in *body*, None when there is nothing to parse.

    Raises:
        BadBody: the body should be JSON and is not a JSON object with a string model,
            or holds something `strict_loads` does not take.
    """
    if not body or not _is_json(content_type):
        return None
    document = strict_loads(body)
    if not isinstance(document, dict):
        raise BadBody(f"request body must be a JSON object, got a JSON {type(document).__name__}")
    model = document.get("model")
    if model is not None and not isinstance(model, str):
        raise BadBody(f"'model' must be a string, got {json.dumps(model)[:60]}")
    return document
