"""What the built-in features tell each other, and the gateway's observers, about one
request: small immutable records kept in the request's typed state
(`StreamInfo.state`, `filterproxy.filters.state.FilterState`), one per class.

A filter sets one where the thing happens (``stream_info.state.set(Translated(...))``);
whoever needs it asks for its class (``stream_info.state.get(Translated)``). No feature
imports another to learn what it did, and no observer knows the features: a record that
has something for the access log says so itself (`LogFields`).

A filter of your own may read these records, and keep records of its own classes the
same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from filterproxy.http.headers import Headers

__all__ = [
    "AuthorizationFailed",
    "CacheResult",
    "CompressStream",
    "Cost",
    "DroppedTools",
    "EventFolds",
    "LimitRefusal",
    "LogFields",
    "PriceQuote",
    "ResolvedConversation",
    "StreamRecord",
    "TokenUsage",
    "Translated",
    "TranslatedResponse",
    "UpstreamAuthorization",
    "UpstreamAuthorizer",
]


class LogFields(Protocol):
    """A record that fills fields of the request's access-log line.

    The access log has fixed, documented fields; a record fills some of them (the
    others keep their defaults, null for the features' fields).
    """

    def log_fields(self) -> Mapping[str, object]:
        """The access-log fields this record fills, and their values (JSON types)."""
        ...


@dataclass(frozen=True, slots=True)
class Translated:
    """The request was rewritten into another API (the translate filter): its answer is
    rebuilt in the client's API. Absent when the request passes as it came."""

    #: The client's API (`filterproxy.http.apis`: chat, messages, responses).
    client_api: str
    #: The API the upstream is sent.
    upstream_api: str


class UpstreamAuthorizer(Protocol):
    """What signs or authorizes the requests of one cluster whose credentials are not a
    static key (AWS SigV4, an OAuth token): the router asks it once per attempt, with
    the request exactly as it goes upstream, so that each retry is signed anew and a
    fallback cluster never gets another cluster's credentials."""

    def ready(self) -> Deferred[None] | None:
        """None when `authorize` can run now; else a Deferred that fires when the
        credentials are fetched, or fails with an `AuthorizationFailed`."""
        ...

    def authorize(self, method: str, url: str, headers: Headers, body: bytes) -> None:
        """Add the credentials to *headers* (on the reactor thread; no I/O)."""
        ...

    def refused(self, status: int, headers: Headers) -> bool:
        """The upstream answered *status* (with *headers*), before anything went to the
        client: True when that says the credentials were refused (expired, revoked) —
        they are dropped, and the router tries the request once more with fresh ones."""
        ...


class AuthorizationFailed(Exception):
    """The credentials could not be had: the message names their source and why (never
    a secret). The client is answered `status`."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class UpstreamAuthorization:
    """The request goes to *cluster* with credentials `authorizer` adds per attempt (a
    provider extension's filter sets it for its clusters)."""

    cluster: str
    authorizer: UpstreamAuthorizer


@dataclass(frozen=True, slots=True)
class ResolvedConversation:
    """A ``previous_response_id`` resolved from a stored conversation (the responses
    filter) and taken out of the request: a translated answer repeats it."""

    previous_response_id: str


@dataclass(frozen=True, slots=True)
class TranslatedResponse:
    """The whole Responses answer a translated request made, once it is complete (the
    translate filter), for the responses filter to store."""

    #: The response object, as the client gets it.
    response: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DroppedTools:
    """The hosted tool types (``web_search``, …) a translated Responses request left out
    (``hosted_tools: drop``): the access log's ``dropped_tools``."""

    tools: tuple[str, ...]

    def log_fields(self) -> Mapping[str, object]:
        return {"dropped_tools": list(self.tools)}


@dataclass(frozen=True, slots=True)
class LimitRefusal:
    """A gateway key's limit refused the request (the keys filter answered 429)."""

    key: str
    #: The limit that refused it (`filterproxy.extensions.keys.limits.Admission.refused`).
    limit: str


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """The request started a resumable stream (``role`` ``origin``) or resumed one
    (``resume``): the access log's ``stream`` field."""

    id: str
    #: ``origin`` or ``resume``.
    role: str
    #: A resume's outcome: ``resumed``, or ``gone`` (410).
    outcome: str | None = None
    #: A resume's stream's route.
    route: str | None = None
    #: Where a resume started (an event's number, or a count of chunks), and the
    #: events it replayed.
    after: int | None = None
    replayed: int | None = None
    #: An origin's events, and the bytes its buffer held at its end.
    events: int | None = None
    held: int | None = None
    #: An origin's client did not come back within ``resume.grace``.
    expired: bool = False
    #: False when an origin's stream passed its buffer's cap.
    resumable: bool = True

    def log_fields(self) -> Mapping[str, object]:
        fields: dict[str, object] = {"id": self.id, "role": self.role}
        if self.role == "resume":
            fields["outcome"] = self.outcome
            fields["route"] = self.route
            if self.after is not None:
                fields["after"] = self.after
            if self.replayed is not None:
                fields["replayed"] = self.replayed
        else:
            fields["events"] = self.events
            fields["held"] = self.held
            if self.expired:
                fields["expired"] = True
            if not self.resumable:
                fields["resumable"] = False
        return {"stream": fields}


#: Picodollars (10^-12 USD) in a nanodollar (10^-9 USD): prices are kept per token in
#: picodollars, amounts (costs, budgets, spend) in nanodollars, both as integers.
PICO_PER_NANO = 1000
#: Nanodollars in a dollar.
NANO_PER_USD = 1_000_000_000


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The provider's usage report, its token counts kept apart as providers price
    them apart (the usage filter; replaced as later reports of the same answer come).

    OpenAI's convention: `input` counts every input token, cached and written ones
    included, and `output` every output token, reasoning included; the other fields
    say how many of those were of each kind.
    """

    #: All input tokens (``prompt_tokens``; Anthropic's ``input_tokens`` plus its cache
    #: reads and writes).
    input: int = 0
    #: Input tokens read from the provider's prompt cache.
    cached_input: int = 0
    #: Input tokens written to the provider's prompt cache (Anthropic's
    #: ``cache_creation_input_tokens``), and of those the ones kept for an hour.
    cache_write: int = 0
    cache_write_1h: int = 0
    #: All output tokens (``completion_tokens``).
    output: int = 0
    #: Output tokens spent on reasoning.
    reasoning: int = 0


@dataclass(frozen=True, slots=True)
class PriceQuote:
    """What the request's model costs per token, known once its body is in (the spend
    filter): what admission reserves against a budget in dollars."""

    model: str
    #: Picodollars per input token and per output token.
    input_pico: int
    output_pico: int

    def estimate_nano(self, input_tokens: int, output_tokens: int) -> int:
        """Nanodollars that many tokens would cost at this price (rounded up)."""
        pico = input_tokens * self.input_pico + output_tokens * self.output_pico
        return -(-pico // PICO_PER_NANO)


@dataclass(frozen=True, slots=True)
class Cost:
    """What the request cost, from its exact usage and its model's price (the spend
    filter, when the request ends — before the other filters' ``on_destroy``)."""

    #: The model priced (the one sent upstream) and its provider ("" when unknown).
    model: str
    provider: str
    #: The cost in nanodollars (10^-9 USD).
    nano_usd: int
    #: False when the model has no known price: counted at 0.
    priced: bool = True
    #: True when no usage came (the client left first): the input was estimated.
    estimated: bool = False

    @property
    def usd(self) -> float:
        """The cost in dollars."""
        return self.nano_usd / NANO_PER_USD

    def log_fields(self) -> Mapping[str, object]:
        return {"cost_usd": round(self.usd, 9), "cost_priced": self.priced}


@dataclass(frozen=True, slots=True)
class CacheResult:
    """What the response cache did with the request (the cache filter): the access log's
    ``cache`` field and the ``x-filterproxy-cache`` response header. A request answered
    from the cache (``hit``) or from an identical request's answer in flight
    (``coalesced``) cost nothing upstream: limits and budgets are not charged for it."""

    #: ``hit``, ``miss``, ``bypass`` (the client's ``Cache-Control``, or a request that
    #: cannot repeat) or ``coalesced``.
    status: str
    #: The entry's key (hex digest of the canonical upstream request and its partition).
    key: str = ""
    #: Why a request was bypassed (``no-cache``, ``temperature``, ``n``, ``tools``...).
    reason: str | None = None
    #: A hit's age in seconds.
    age: float | None = None

    @property
    def served(self) -> bool:
        """Whether the answer came from the cache or another request (nothing upstream)."""
        return self.status == "hit" or self.status == "coalesced"

    def log_fields(self) -> Mapping[str, object]:
        fields: dict[str, object] = {"status": self.status}
        if self.key:
            fields["key"] = self.key[:16]
        if self.reason is not None:
            fields["reason"] = self.reason
        if self.age is not None:
            fields["age"] = round(self.age, 3)
        return {"cache": fields}


@dataclass(frozen=True, slots=True)
class EventFolds:
    """Someone counts the events of this event stream as its client gets them (a
    resumable stream: a client may resume by the number of chunks it got). A filter that
    folds several of the stream's events into one before they reach the client (the
    delivery filter) tells `folded` of each: the id of the last event it stands for, and
    how many it stands for."""

    folded: Callable[[str | None, int], None]


@dataclass(frozen=True, slots=True)
class CompressStream:
    """A filter asks that this event stream be compressed for a client that accepts it
    (a resumable route's ``resume.gzip``), whether or not the client asked to save data;
    the delivery filter does it."""
