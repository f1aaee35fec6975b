"""AWS's binary event-stream framing (``application/vnd.amazon.eventstream``), read with
botocore's decoder: bytes in, in pieces split anywhere; whole messages out, CRCs checked.

Bounded: a frame that would hold more than the limit given (the config's
``max_event_bytes``) is refused before it is read in full, and a corrupt frame (a CRC
that does not match, impossible lengths) ends the reading with `FrameError` — a stream
cannot be read on past a frame it cannot delimit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = ["EXCEPTION", "Frame", "FrameError", "FrameReader"]

#: A message's ``:message-type``: an event, a modelled exception, or an unmodelled error.
EVENT: Final = "event"
EXCEPTION: Final = "exception"
ERROR: Final = "error"
#: A frame's fixed parts: the prelude (lengths and their CRC) and the message CRC.
_OVERHEAD: Final = 16


class FrameError(ValueError):
    """The bytes are not a readable event stream (the message says how)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One message: its type (`EVENT`, `EXCEPTION`, `ERROR`), its name (the event's
    ``:event-type``, the exception's ``:exception-type``, the error's ``:error-code``)
    and its payload."""

    message_type: str
    name: str
    payload: bytes


class FrameReader:
    """Reads frames from the pieces of a response body (see the module's description)."""

    __slots__ = ("buffer", "max_frame_bytes", "pending")

    def __init__(self, max_frame_bytes: int) -> None:
        from botocore.eventstream import EventStreamBuffer

        self.buffer: Any = EventStreamBuffer()
        self.max_frame_bytes = max_frame_bytes + _OVERHEAD
        #: Bytes given and not yet read as a whole frame.
        self.pending = 0

    @property
    def between_frames(self) -> bool:
        """No frame is partly read."""
        return self.pending == 0

    def feed(self, data: bytes) -> list[Frame]:
        """The frames that *data* completes, in order.

        Raises:
            FrameError: a frame is corrupt or larger than the limit.
        """
        from botocore.eventstream import ParserError

        self.buffer.add_data(data)
        self.pending += len(data)
        frames: list[Frame] = []
        try:
            for message in self.buffer:
                self.pending -= message.prelude.total_length
                headers = message.headers
                kind = headers.get(":message-type", EVENT)
                if kind == EVENT:
                    name = headers.get(":event-type", "")
                elif kind == EXCEPTION:
                    name = headers.get(":exception-type", "")
                else:
                    name = headers.get(":error-code", "") or headers.get(":error-message", "")
                frames.append(Frame(kind, str(name), message.payload))
        except ParserError as e:
            raise FrameError(
                f"the upstream's event stream is corrupt ({type(e).__name__}: {e})"
            ) from None
        if self.pending > self.max_frame_bytes:
            raise FrameError(
                f"the upstream sent an event-stream frame larger than {self.max_frame_bytes - _OVERHEAD} "
                "bytes (max_event_bytes)"
            )
        return frames
