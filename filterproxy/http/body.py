"""Request bodies as JSON: which ones are read as JSON, and how they are parsed.

The gateway reads a request body as JSON unless its media type is clearly something else
(an upload): clients often send JSON with a wrong or missing type (``curl -d`` says
``application/x-www-form-urlencoded``).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BadBody", "parse_body"]


class BadBody(ValueError):
    """The request body cannot be routed; the message says why."""


#: Bodies of these media types are not JSON and are routed by path and headers alone.
_NOT_JSON_PREFIXES = ("multipart/", "audio/", "image/", "video/", "application/octet-stream")


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
        BadBody: the body should be JSON and is not a JSON object with a string model.
    """
    if not body or not _is_json(content_type):
        return None
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadBody("request body is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadBody(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadBody("request body is nested too deeply") from None
    if not isinstance(document, dict):
        raise BadBody(f"request body must be a JSON object, got a JSON {type(document).__name__}")
    model = document.get("model")
    if model is not None and not isinstance(model, str):
        raise BadBody(f"'model' must be a string, got {json.dumps(model)[:60]}")
    return document
