"""spend: what each request costs, in dollars, from its exact usage.

First in the chain. Once the request body is in (held until its end, and parsed once
for the chain), the model's price is known: a `PriceQuote` for the keys filter's dollar
budgets to reserve against. When the request ends, its `Cost` is set from the
provider's usage (the usage filter's `TokenUsage`) at the price of the model sent
upstream — before the other filters' ``on_destroy``, so the keys filter charges it — and
counted: the metrics, the access log (``cost_usd``), the trace, the spend ledger.

No usage and a successful answer (the client left first, or the provider does not
report usage): the input is estimated from the body (a quarter of its bytes), marked
``estimated``. An upstream error or the gateway's own answer: 0.

With ``spend.header`` (the default), a streaming client is told the cost at the end of
its event stream, as an SSE comment (``: cost_usd=0.000123``) that every SSE client
skips; see docs/spend.md for why not a trailer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from twisted.logger import Logger

from filterproxy.config import Node
from filterproxy.extensions.spend import source
from filterproxy.extensions.spend.admin import register
from filterproxy.extensions.spend.config import SpendSettings
from filterproxy.extensions.spend.ledger import SpendLedger, ledger_for
from filterproxy.extensions.spend.metrics import SpendMetrics
from filterproxy.extensions.spend.pricing import PriceBook, Resolved, cost_of
from filterproxy.filters.admin import AdminRoutes
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    HeadersResult,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.metrics import MetricFamilies
from filterproxy.filters.records import CacheResult, Cost, TokenUsage
from filterproxy.filters.resources import Resources
from filterproxy.http.body import BadBody, parse_body

__all__ = ["CostLedger", "NoLedger", "SpendConfig", "SpendFilter", "estimate_input_tokens"]

log = Logger(namespace="filterproxy.spend")


class CostLedger(Protocol):
    """Where each request's cost is kept per day, for budgets and reports."""

    def record(
        self, key: str, team: str, model: str, provider: str, cost: Cost, usage: TokenUsage | None
    ) -> None:
        """Add one finished request's *cost* (no one waits for this)."""


class NoLedger:
    """A ledger that keeps nothing."""

    def record(
        self, key: str, team: str, model: str, provider: str, cost: Cost, usage: TokenUsage | None
    ) -> None:
        return None


def estimate_input_tokens(body_bytes: int) -> int:
    """The input tokens of a request whose body has *body_bytes* bytes, when the
    provider says nothing: a quarter of its bytes (about what a tokenizer makes of
    English and JSON), at least one."""
    return max(1, math.ceil(body_bytes / 4))


def _warn_unpriced(model: str) -> None:
    log.warn(
        "no price known for the model {model!r}: its requests are counted at $0; "
        "give its price under spend.prices",
        model=model,
    )


class PriceBooks:
    """The process's price books (in its `Resources`), one per config's prices: a
    reload with the same prices keeps what was looked up, and warns no more."""

    def __init__(self, resources: Resources) -> None:
        self.books: dict[tuple[object, ...], PriceBook] = {}

    def book_for(self, settings: SpendSettings, use_source: bool) -> PriceBook:
        ident = (tuple(sorted(settings.prices.items())), use_source)
        book = self.books.get(ident)
        if book is None:
            book = PriceBook(
                settings.prices,
                source.genai_prices_source if use_source else None,
                _warn_unpriced,
            )
            self.books = {ident: book}  # the previous config's book goes
        return book


def _uses_price_list(settings: SpendSettings) -> bool:
    """Whether the price list is read (imported now, at start-up, rather than at the
    first request)."""
    if settings.prices_source == "none":
        return False
    if settings.prices_source is None and not source.available():
        log.warn(
            "genai-prices is not installed: only the models under spend.prices have a "
            "price (install filterproxy[prices] for the providers' price list)"
        )
        return False
    source.load()
    return True


@dataclass(frozen=True)
class SpendConfig:
    book: PriceBook
    aliases: Mapping[str, str]
    #: The price list's provider id of each cluster (None: any provider).
    providers: Mapping[str, str | None]
    #: Tell a streaming client the cost at the end of its stream.
    header: bool = True
    metrics: SpendMetrics = field(default_factory=lambda: SpendMetrics(MetricFamilies()))
    #: Where each request's cost is kept per day.
    ledger: CostLedger = field(default_factory=NoLedger)


#: What ends the comment telling a streaming client its cost.
_COMMENT: Final = b": cost_usd=%s\n\n"


class SpendFilter(StreamFilter):
    """The cost of each request (see the module's description)."""

    provides = ("spend",)

    config: SpendConfig

    @classmethod
    def variant(cls, config: Any) -> type[StreamFilter]:
        """With ``header``, the class that tells a streaming client the cost."""
        return _TellingSpendFilter if config.header else cls

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> SpendConfig:
        Node(dict(options), context.path, context.environ).mapping(set())
        config = context.config
        settings = config.section(SpendSettings) or SpendSettings()
        book = context.resources.get(PriceBooks, PriceBooks).book_for(
            settings, _uses_price_list(settings)
        )
        providers = {
            name: source.GENAI_PROVIDERS.get(cluster.provider, cluster.provider)
            if cluster.provider is not None
            else None
            for name, cluster in config.clusters.items()
        }
        return SpendConfig(
            book,
            config.aliases,
            providers,
            settings.header,
            SpendMetrics.of(context.resources),
            ledger_for(config.redis, context.resources),
        )

    @classmethod
    def activate(cls, config: SpendConfig, resources: Resources) -> None:
        """Serve the spend report of this config's ledger on the admin listener."""
        if isinstance(config.ledger, SpendLedger):
            register(resources.get(AdminRoutes, AdminRoutes), config.ledger, resources.clock)

    def __init__(self, config: SpendConfig) -> None:
        super().__init__(config)
        self.content_type: str | None = None
        self.body_size = 0
        #: The model the body names (after the config's aliases).
        self.requested: str | None = None
        #: The request's cost, once known.
        self.cost: Cost | None = None
        #: The response is an event stream the cost is told at the end of.
        self.stream = False
        #: The last response bytes ended a line.
        self.line_ended = True

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        self.content_type = head.headers.get("content-type")
        return FilterStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        self.body_size += len(data)
        if not end_stream:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        document = self.callbacks.request_json()
        if document is None:  # the body came in pieces: parsed here, once for the chain
            try:
                document = parse_body(
                    self.callbacks.buffered_request_body() + data, self.content_type
                )
            except BadBody:
                document = None  # the route filter answers it with a 400
            if document is not None:
                self.callbacks.set_request_json(document, changed=False)
        model = document.get("model") if document is not None else None
        if isinstance(model, str):
            model = self.config.aliases.get(model, model)
            self.requested = model
            price = self.config.book.resolve(None, model).schedule
            if price is not None:
                now = self.callbacks.clock.seconds()
                self.callbacks.stream_info.state.set(price.at(now).quote(model))
        return FilterStatus.CONTINUE

    def _priced(self) -> Cost:
        """The request's cost, from what the request got."""
        info = self.callbacks.stream_info
        model = info.model or self.requested or ""
        provider = self.config.providers.get(info.cluster) if info.cluster else None
        cached = info.state.get(CacheResult)
        if cached is not None and cached.served:
            return Cost(model, provider or "", 0, priced=True)  # nothing was generated
        usage = info.state.get(TokenUsage)
        estimated = False
        if usage is None:
            if info.status is None or info.status >= 400 or info.outcome == "local_reply":
                return Cost(model, provider or "", 0, priced=True)
            usage = TokenUsage(input=estimate_input_tokens(self.body_size))
            estimated = True
        resolved = self.config.book.resolve(provider, model) if model else Resolved(None, "")
        schedule = resolved.schedule
        price = schedule.at(self.callbacks.clock.seconds()) if schedule is not None else None
        return cost_of(model, resolved.provider or provider or "", price, usage, estimated)

    def on_destroy(self) -> None:
        cost = self.cost
        if cost is None:
            cost = self.cost = self._priced()
        info = self.callbacks.stream_info
        info.state.set(cost)
        usage = info.state.get(TokenUsage)
        if info.attempts == 0 and usage is None:
            return  # never reached a provider (refused, answered by the gateway): no spend
        cached = info.state.get(CacheResult)
        if cached is not None and cached.served:
            return  # answered from the cache: nothing spent
        key = info.key_name or ""
        team = info.team_name or ""
        self.config.metrics.count(key or "none", team or "none", cost, usage)
        self.config.ledger.record(key, team, cost.model, cost.provider, cost, usage)


def _told(cost: Cost) -> bytes:
    return _COMMENT % f"{cost.usd:.9f}".encode()


class _TellingSpendFilter(SpendFilter):
    """`SpendFilter` with ``spend.header``: a streaming client is told the cost at the
    end of its stream. (Only this class looks at response bytes: the chain does not
    call, per chunk, a filter that does not override ``encode_data``.)"""

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        self.stream = (
            head.status == 200
            and not end_stream
            and (head.headers.get("content-type") or "").startswith("text/event-stream")
            and head.headers.get("content-encoding") in (None, "identity")
        )
        if self.stream:
            # The comment makes the body longer than an upstream's Content-Length says:
            # the stream goes chunked, or its last bytes would be read as the next
            # response on a kept-alive connection.
            head.headers.remove("content-length")
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if not self.stream:
            return FilterStatus.CONTINUE
        if data:
            self.line_ended = data.endswith(b"\n")
        if not end_stream or not self.line_ended:
            return FilterStatus.CONTINUE
        outcome = self.callbacks.stream_info.outcome
        if outcome and outcome != "complete":
            return FilterStatus.CONTINUE  # the stream failed: its error event ends it
        cost = self.cost = self._priced()
        return data + _told(cost)
