"""`IStreamOwner`: what a filter that owns its stream may do, on top of `IFilterCallbacks`.

Most filters look at a request and its response and pass them on; `IFilterCallbacks` is
all they need. A few own the stream itself: they keep an upstream's response going after
its client has left (so that another client can read the rest), hold what a slow client
cannot take yet, or answer with a stream of their own. They ask for these calls with
``self.callbacks.own_stream()``, in any hook, and keep what it returns::

    def encode_headers(self, head, end_stream):
        self.owner = self.callbacks.own_stream()
        self.owner.keep_going_without_client(self._client_gone)
        self.owner.take_flow_control(self._client_slow, self._client_ready)
        return FilterStatus.CONTINUE

Every call here changes how the request ends, or who waits for whom; `filterproxy.testing`
(`FilterHarness`, with its clock and its recording producer) exercises each of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["IStreamOwner"]


class IStreamOwner(Interface):
    """The opt-in calls of a filter that owns its stream (``callbacks.own_stream()``)."""

    def keep_going_without_client(on_client_gone: Callable[[], None]) -> None:
        """When the client leaves (or `drop_client`), do not stop the upstream: the
        response goes on through the encoders — to nobody — and *on_client_gone* is
        called. The filter ends it when it wants (`abandon`); it ends by itself when the
        upstream's response does. Call it once the response has started (in
        ``encode_headers``)."""

    def take_flow_control(
        on_pause: Callable[[], None],
        on_resume: Callable[[], None],
        on_gone: Callable[[], None] | None = None,
    ) -> None:
        """From now on, when the client cannot keep up, *on_pause* is called instead of
        the upstream being paused, and *on_resume* when it can take more again: the
        filter holds what comes meanwhile (returning less from ``encode_data``, sending
        it later with ``inject_encoded_data``), and pauses the upstream itself
        (`pause_upstream`) when it holds too much. Call it in ``encode_headers`` — or,
        for a filter that answers with a stream of its own (`send_local_stream`),
        before that call: the callbacks then say when its client can take more of it.

        One filter of a request has it: the first to ask (calls after that do nothing).
        The delivery filter, when it is in the chain, takes it for every event stream
        (it folds what a client that fell behind has not taken). When the client leaves
        a response that goes on without it (`keep_going_without_client`), *on_gone* is
        called: what the filter holds will never be sent, and nothing waits for the
        client any more (the upstream is resumed if it was paused)."""

    def pause_upstream() -> None:
        """Stop reading the upstream's response until `resume_upstream`."""

    def resume_upstream() -> None:
        """Read the upstream's response again."""

    def drop_client() -> None:
        """Close the client's connection now; with `keep_going_without_client`, the
        response goes on without it (a new reader took over a stale connection)."""

    def abandon() -> None:
        """End the request now, as when its client left: the upstream is stopped."""

    def send_local_stream(status: int, headers: Sequence[tuple[str, str]]) -> None:
        """Answer the request here with a response whose body this filter then sends
        piece by piece with ``inject_encoded_data`` (an event stream of the gateway's
        own); nothing goes upstream. The head passes the encoders as
        ``send_local_reply`` does."""
