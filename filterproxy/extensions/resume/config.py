"""The resume extension's config: a route's ``resume`` (its streams survive a dropped
client), the process's ``resume_buffers``, and its place in the default chain."""

from __future__ import annotations

from dataclasses import dataclass

from filterproxy.config import (
    ChainFacts,
    DefaultEntry,
    ExtensionSchema,
    Node,
    RouteConfig,
    Section,
)

__all__ = ["SCHEMA", "ResumeBuffers", "ResumeConfig", "RouteResume", "resume_of"]


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
class ResumeBuffers:
    """The process's bound on what every resumable stream holds together
    (`Config.section(ResumeBuffers)`); past it, a stream stops being resumable."""

    resume_buffers: int = 256 * 1024 * 1024


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


def parse(section: Section) -> ResumeBuffers:
    """The top-level ``resume_buffers``."""
    if "resume_buffers" not in section:
        return ResumeBuffers()
    return ResumeBuffers(section["resume_buffers"].integer(minimum=1024))


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
    keys=frozenset({"resume_buffers"}),
    parse=parse,
    route_keys=frozenset({"resume"}),
    parse_route=parse_route,
    place=place,
)
