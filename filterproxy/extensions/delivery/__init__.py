"""delivery: event streams as weak networks need them.

A client on a poor link says so — ``Save-Data: on``, the client hint browsers and apps
send, or ``x-stream-coalesce: 150ms`` for a window of its choosing — and a route may set a
window for all its streams. Such a stream is coalesced: the events that arrive within a
window go to the client as one write, runs of deltas folded into one event (the same
text and tool-call arguments; the id of the last event each fold stands for, so a
resume stays exact), compressed with the best coding the client accepts and flushed at
every write. The first token is never held.

A client that falls behind on any route — its connection cannot take the events as
they come — gets what it has not taken folded, when it can take more; past ``hold``
bytes the upstream is paused. Without any of this a stream passes byte for byte.

The parts: `config` (the top-level and routes' ``delivery``), `pacing` (what a client
asks for, and the window; no I/O), `codings` (the compressed stream), `filter`,
`metrics`. The folding itself is `filterproxy.http.folding`.
"""

from filterproxy.extensions.delivery.filter import DeliveryFilter

__all__ = ["DeliveryFilter"]
