"""The resume extension's config: a route's ``resume`` (its streams survive a dropped
client), the process's ``resume_buffers`` and ``resume_affinity_header``, and its place in
the default chain."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from filterproxy.config import (
    ChainFacts,
    DefaultEntry,
    ExtensionSchema,
    Node,
    RouteConfig,
    Section,
)
from filterproxy.http.headers import validate_header_name

__all__ = ["SCHEMA", "ResumeConfig", "ResumeSettings", "RouteResume", "resume_of"]

#: Header names whose values are credentials: never put in a stream id, which is logged
#: and handed to anyone the stream is shown to.
_CREDENTIAL_NAME: Final = re.compile(
    r"auth|api[-_]?key|token|secret|password|cookie|credential|signature", re.IGNORECASE
)


@dataclass(frozen=True)
class ResumeConfig:
    """A route's resumable streams: a client that drops may come back for the rest."""

    #: How long the upstream keeps generating for a client that left without finishing.
    grace: float = 30.0
    #: The most bytes of one stream kept for resuming; a stream past it stops being
    #: resumable (it goes on for its client).
    buffer: int = 4 * 1024 * 1024
    #: How long a finished stream can still be resumed.
    keep: float = 120.0
    #: Compress the stream (gzip, flushed after every event) for clients that accept it.
    gzip: bool = False


@dataclass(frozen=True)
class RouteResume:
    """A route's resume setting (`RouteConfig.option(RouteResume)`); the field name is
    what the effective config shows of the route."""

    #: The route's resumable streams, or None: its streams end with their client.
    resume: ResumeConfig | None = None


@dataclass(frozen=True)
class ResumeSettings:
    """The process's settings for its resumable streams (`Config.section(ResumeSettings)`);
    the field names are the top-level keys."""

    #: The bound on what every resumable stream holds together; past it, a stream stops
    #: being resumable.
    resume_buffers: int = 256 * 1024 * 1024
    #: The request header a load balancer in front sets to the key it hashed the request
    #: on: a resumable stream's id then ends with ``-<that key>``, so that the balancer can
    #: hash a resume of it onto the same replica. None: ids carry no key.
    resume_affinity_header: str | None = None


def _is_off(value: object) -> bool:
    return value is None or value is False or value == "off"


def parse_resume(node: Node) -> ResumeConfig | None:
    """``resume``: true, false, or ``{grace, buffer, keep, gzip}``."""
    if _is_off(node.value):
        return None
    if node.value is True:
        return ResumeConfig()
    keys = node.mapping({"grace", "buffer", "keep", "gzip"})
    default = ResumeConfig()
    grace = keys["grace"].duration() if "grace" in keys else default.grace
    if not 0 < grace <= 3600:
        raise keys["grace"].error("between 1ms and 1h: how long a dropped stream goes on")
    buffer = keys["buffer"].integer(minimum=1024) if "buffer" in keys else default.buffer
    keep = keys["keep"].duration() if "keep" in keys else default.keep
    if not 0 <= keep <= 86400:
        raise keys["keep"].error("between 0s and 24h: how long a finished stream stays resumable")
    gzip = keys["gzip"].boolean() if "gzip" in keys else default.gzip
    return ResumeConfig(grace, buffer, keep, gzip)


def parse_route(section: Section) -> RouteResume:
    """A route's ``resume``."""
    return RouteResume(parse_resume(section["resume"]) if "resume" in section else None)


def parse_affinity_header(node: Node) -> str | None:
    """``resume_affinity_header``: a header name (lower-cased), or null for none."""
    if node.value is None:
        return None
    name = node.string()
    try:
        name = validate_header_name(name)
    except ValueError as e:
        raise node.error(str(e)) from None
    if _CREDENTIAL_NAME.search(name):
        raise node.error(
            "a credential header: its value would be in every stream id (which is logged); "
            "name the header your load balancer sets to the key it hashes on, such as "
            "x-request-id"
        )
    return name


def parse(section: Section) -> ResumeSettings:
    """The top-level ``resume_buffers`` and ``resume_affinity_header``."""
    default = ResumeSettings()
    buffers = (
        section["resume_buffers"].integer(minimum=1024)
        if "resume_buffers" in section
        else default.resume_buffers
    )
    affinity = (
        parse_affinity_header(section["resume_affinity_header"])
        if "resume_affinity_header" in section
        else None
    )
    return ResumeSettings(buffers, affinity)


def resume_of(route: RouteConfig) -> ResumeConfig | None:
    """*route*'s resumable streams, or None."""
    option = route.option(RouteResume)
    return option.resume if option is not None else None


def resumes(facts: ChainFacts) -> bool:
    """Whether some route's streams are resumable."""
    return any(resume_of(route) is not None for route in facts.routes)


def place(facts: ChainFacts) -> DefaultEntry | None:
    """Right after body-accumulate (it hashes the whole body) and before every filter
    that rewrites the answer (it numbers the events the client gets), when some route
    resumes."""
    return DefaultEntry("resume", after="body-accumulate") if resumes(facts) else None


#: What the resume extension adds to the config.
SCHEMA = ExtensionSchema(
    name="resume",
    keys=frozenset({"resume_buffers", "resume_affinity_header"}),
    parse=parse,
    route_keys=frozenset({"resume"}),
    parse_route=parse_route,
    place=place,
)
