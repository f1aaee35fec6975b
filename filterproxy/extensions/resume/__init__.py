"""resume: event streams that survive a dropped client (routes with ``resume``).

An event stream answered on a resumable route gets a stream id (the ``x-stream-id``
response header) and numbered events (an ``id: <stream id>.<n>`` line ends each event;
the ``data:`` bytes are not touched; `filterproxy.extensions.resume.framing.EventFramer`). Its events are
kept (`filterproxy.extensions.resume.framing.ResumeBuffer`) while it runs and for ``resume.keep`` after.

- When its client goes away before the end, the upstream keeps generating into the
  buffer for ``resume.grace``; then it is stopped, as for any other request.
- A client resumes with ``GET /v1/streams/{id}`` and the last event it saw — the
  ``Last-Event-ID`` header (what a browser's EventSource sends), or ``?starting_after=N``
  (OpenAI's convention) — or by sending the same ``POST`` again with ``Last-Event-ID``
  (what fetch-based SSE clients do), which never starts a second generation. It gets
  every event after that one, exactly once — runs of text deltas folded into fewer
  events (`framing.merge_deltas`) — then the live tail. A count
  (``starting_after``) names the chunk it stopped at whatever was folded before it
  (`framing.Folds`): the chunks are what an SDK lets its user count.
- A new reader takes over from the one before: the old connection (maybe a half-open
  socket after a network change) is closed.
- ``DELETE /v1/streams/{id}`` stops it at once, for a client that means to stop.
- A stream that finished is resumable for ``resume.keep``; an unknown or evicted one,
  or a position no longer held, gets 410 with a JSON error. A stream belongs to the
  gateway key or the credentials that started it: anyone else is told it does not exist.

Memory is bounded: each stream's buffer by ``resume.buffer``, all of a process's by
``resume_buffers``; a stream past either stops being resumable (its client is told in
an SSE comment) and goes on as a plain stream.

The parts, by role: `streams` (a stream, the registry and budget, the read decision),
`framing` (numbering, buffering and folding events; no I/O), `origin` (the filter, and
its encode side: the request that starts a stream), `reader` (the stream endpoint and
the reader of a stream), `relay` (between workers).
"""

from filterproxy.extensions.resume.origin import ResumeFilter

__all__ = ["ResumeFilter"]
