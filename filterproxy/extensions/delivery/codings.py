"""Compressing an event stream for its client, flushed at every write (no I/O).

Every piece handed to a `StreamEncoder` comes out whole: the compressor is flushed after
it (zlib's sync flush, brotli's flush, a zstd block), so that a client decodes each
event as soon as it arrives — nothing waits in a compressor for the next one. What is
saved comes from the compressor's window: an event stream repeats the same JSON keys
event after event.

gzip is always there (zlib); ``br`` and ``zstd`` are offered where their libraries
(``brotli``, ``zstandard``: the ``compress`` extra) are installed. Windows and match
tables are kept small (a stream's events repeat within a few KB): a stream's compressor
takes about 47 KiB (gzip), 90 KiB (zstd), 300 KiB (br).
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final, Protocol

from filterproxy.http.encoding import parse_accept_encoding

__all__ = ["StreamEncoder", "available_codings", "choose_coding"]

#: gzip: level 6, a 4 KiB window (16 + 12: a gzip header), memLevel 6: about 48 KiB.
_GZIP_WBITS: Final = 16 + 12
_GZIP_MEMLEVEL: Final = 6


class StreamEncoder(Protocol):
    """One client's compressed stream."""

    def chunk(self, data: bytes) -> bytes:
        """*data* compressed and flushed: the client can decode all of it at once."""
        ...

    def finish(self, data: bytes) -> bytes:
        """*data* compressed, then the end of the compressed stream."""
        ...


class _Encoder:
    """A `StreamEncoder` made of a library's calls: *process* compresses, *flush* ends
    a piece decodable at once, *end* ends the compressed stream."""

    __slots__ = ("end", "flush", "process")

    def __init__(
        self,
        process: Callable[[bytes], bytes],
        flush: Callable[[], bytes],
        end: Callable[[], bytes],
    ) -> None:
        self.process = process
        self.flush = flush
        self.end = end

    def chunk(self, data: bytes) -> bytes:
        out = self.process(data)
        return out + self.flush()

    def finish(self, data: bytes) -> bytes:
        out = self.process(data)
        return out + self.end()


def _gzip() -> StreamEncoder:
    compressor: Any = zlib.compressobj(6, zlib.DEFLATED, _GZIP_WBITS, _GZIP_MEMLEVEL)
    return _Encoder(
        compressor.compress,
        partial(compressor.flush, zlib.Z_SYNC_FLUSH),
        partial(compressor.flush, zlib.Z_FINISH),
    )


def _brotli(module: Any) -> StreamEncoder:
    # Quality 5: most of brotli's gain on small pieces at a few µs each; a 64 KiB window
    # (about 300 KiB a stream, most of it the quality's match finder, whatever the window).
    compressor = module.Compressor(quality=5, lgwin=16)
    return _Encoder(compressor.process, compressor.flush, compressor.finish)


def _zstd(module: Any) -> StreamEncoder:
    # Level 3 with a 32 KiB window and small match tables: about 90 KiB a stream (the
    # level's own tables took 825) for the same ratio on token-sized events.
    params = module.ZstdCompressionParameters.from_level(
        3, window_log=15, hash_log=12, chain_log=12
    )
    compressor = module.ZstdCompressor(compression_params=params).compressobj()
    return _Encoder(
        compressor.compress,
        partial(compressor.flush, module.COMPRESSOBJ_FLUSH_BLOCK),
        compressor.flush,
    )


def _module(name: str) -> Any:
    """A compression library by name, or None when it is not installed (imported by
    name: neither ships type information)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def available_codings() -> dict[str, Callable[[], StreamEncoder]]:
    """The codings this process can make, by name, each with what makes an encoder."""
    makers: dict[str, Callable[[], StreamEncoder]] = {"gzip": _gzip}
    brotli = _module("brotli")
    if brotli is not None:
        makers["br"] = partial(_brotli, brotli)
    zstandard = _module("zstandard")
    if zstandard is not None:
        makers["zstd"] = partial(_zstd, zstandard)
    return makers


def choose_coding(
    accept_encoding: str | None, offered: Sequence[str], available: Sequence[str]
) -> str | None:
    """The coding a client that sent *accept_encoding* gets: the first of *offered* (the
    route's order of preference) that it accepts with a weight above 0 — named, or
    covered by ``*`` — and that this process can make; None: uncompressed."""
    entries = parse_accept_encoding(accept_encoding)
    weights = {entry.name: entry.q for entry in entries}
    star = weights.get("*", 0.0)
    for name in offered:
        if name in available and weights.get(name, star) > 0:
            return name
    return None
