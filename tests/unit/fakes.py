"""Test doubles for the filter chain: a downstream and a router that only record."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from filterproxy.chain.interfaces import IDownstream
from filterproxy.chain.manager import FilterManager
from filterproxy.filters.api import FilterStatus, RequestHead, ResponseHead, StreamFilter
from filterproxy.http.headers import Headers


@implementer(IDownstream)
class RecordingDownstream:
    scheme = "http"
    client_ip = "127.0.0.1"

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.producer: object | None = None

    def send_head(self, status: int, headers: Headers, end_stream: bool) -> None:
        self.events.append(("head", status, headers, end_stream))

    def send_data(self, data: bytes, end_stream: bool) -> None:
        self.events.append(("data", data, end_stream))

    def flush(self) -> None:
        pass

    def abort(self) -> None:
        self.events.append(("abort",))

    def register_producer(self, producer: object) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.producer = None

    def body(self) -> bytes:
        return b"".join(e[1] for e in self.events if e[0] == "data")


class RecordingRouter:
    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.events: list[tuple[Any, ...]] = []
        self.cancelled = False

    def on_request_headers(self, head: RequestHead, end_stream: bool) -> None:
        self.events.append(("headers", head.path, end_stream))

    def on_request_data(self, data: bytes, end_stream: bool) -> None:
        self.events.append(("data", data, end_stream))

    def cancel(self) -> None:
        self.cancelled = True


class Recorder(StreamFilter):
    """Appends every hook it sees to a shared log, and returns scripted statuses."""

    def __init__(self, name: str, log: list[str], **statuses: FilterStatus) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.statuses = statuses

    def _status(self, hook: str) -> FilterStatus:
        return self.statuses.get(hook, FilterStatus.CONTINUE)

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        self.log.append(f"{self.name}.decode_headers")
        return self._status("decode_headers")

    def decode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        self.log.append(f"{self.name}.decode_data({data!r},{end_stream})")
        return self._status("decode_data")

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        self.log.append(f"{self.name}.encode_headers")
        return self._status("encode_headers")

    def encode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        self.log.append(f"{self.name}.encode_data({data!r},{end_stream})")
        return self._status("encode_data")

    def on_destroy(self) -> None:
        self.log.append(f"{self.name}.on_destroy")


def request_head(
    path: str = "/v1/chat/completions", method: str = "POST", **headers: str
) -> RequestHead:
    return RequestHead(method, path, Headers((k.replace("_", "-"), v) for k, v in headers.items()))


def build_manager(
    filters: list[StreamFilter], limit: int = 1000
) -> tuple[FilterManager, RecordingDownstream, RecordingRouter]:
    """A filter manager for *filters* between a recording client and router."""
    downstream = RecordingDownstream()
    routers: list[RecordingRouter] = []

    def router_factory(manager: FilterManager) -> RecordingRouter:
        routers.append(RecordingRouter(manager))
        return routers[0]

    manager = FilterManager(downstream, filters, router_factory, limit)  # type: ignore[arg-type]
    return manager, downstream, routers[0]
