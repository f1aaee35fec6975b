"""Inflating a compressed answer (gzip, deflate) within bounds (no I/O).

A filter that reads an answer the upstream compressed inflates it piece by piece, as it
arrives. A few kilobytes of gzip can stand for gigabytes (a "gzip bomb"), so `Inflater`
inflates in steps of at most 64 KiB (``zlib``'s ``max_length`` and
``unconsumed_tail``) and gives up with `InflateError` as soon as what it has inflated
passes `MAX_RATIO` times what it was given (past the first `RATIO_FLOOR` bytes): real
answers inflate to a few times their size, a run of repeated events to a few tens. It
holds nothing of its own between pieces but zlib's window.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

__all__ = ["MAX_RATIO", "RATIO_FLOOR", "InflateError", "Inflater", "inflater_for"]

#: What an answer may inflate to, at most, per byte of it that arrived.
MAX_RATIO: Final = 200
#: Up to this many inflated bytes, any ratio is accepted (a short answer).
RATIO_FLOOR: Final = 1024 * 1024
#: The most one step inflates.
_STEP: Final = 64 * 1024


class InflateError(ValueError):
    """The answer cannot be inflated within bounds: it inflates past `MAX_RATIO` times
    its size, or it is not what its ``Content-Encoding`` says."""


class Inflater:
    """Inflates one gzip or deflate body fed in pieces, within bounds (see the module's
    description)."""

    __slots__ = ("coding", "compressed", "inflated", "limit", "zlib")

    def __init__(self, coding: str, max_ratio: int = MAX_RATIO) -> None:
        self.coding = coding
        #: gzip: a gzip header; deflate: a zlib header (what HTTP's "deflate" means).
        self.zlib: Any = zlib.decompressobj(16 + zlib.MAX_WBITS if coding == "gzip" else 15)
        self.limit = max_ratio
        #: Bytes given, and bytes inflated from them, so far.
        self.compressed = 0
        self.inflated = 0

    def feed(self, data: bytes) -> bytes:
        """The inflated bytes of *data*, the next piece of the body.

        Raises:
            InflateError: the body inflates past the bounds, or is not valid.
        """
        self.compressed += len(data)
        bound = max(RATIO_FLOOR, self.limit * self.compressed)
        decompressor = self.zlib
        out: list[bytes] = []
        try:
            while data and not decompressor.eof:
                piece: bytes = decompressor.decompress(data, _STEP)
                data = decompressor.unconsumed_tail
                self.inflated += len(piece)
                if self.inflated > bound:
                    raise InflateError(
                        f"the upstream's {self.coding} answer inflates to more than "
                        f"{self.limit} times its size: it was not read further"
                    )
                out.append(piece)
        except zlib.error as e:
            raise InflateError(
                f"the upstream's answer is not valid {self.coding} (its content-encoding): {e}"
            ) from None
        return b"".join(out)


def inflater_for(encoding: str | None) -> Inflater | None:
    """An `Inflater` for a response's ``Content-Encoding`` *encoding*; None when there
    is nothing to inflate (none, or ``identity``).

    Raises:
        InflateError: a coding this cannot read (br, zstd, …).
    """
    if encoding is None:
        return None
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return Inflater("gzip")
    if coding == "deflate":
        return Inflater("deflate")
    raise InflateError(
        f"the upstream's answer is in a content-encoding the gateway cannot read: {coding}"
    )
