"""AccessLogFile: lines in batches, whole lines in each write, on a fake clock."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock

from filterproxy.filters.api import StreamInfo
from filterproxy.observability.accesslog import AccessLogFile


def info(n: int) -> StreamInfo:
    return StreamInfo(request_id=f"req-{n}", status=200, outcome="complete")


def request_ids(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


def test_lines_wait_for_the_clock_or_a_full_batch(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    clock = MemoryReactorClock()
    log = AccessLogFile(str(path), clock)
    log.start()
    log.write(None, info(1), 0.01)
    log.write(None, info(2), 0.01)
    assert path.read_text() == ""  # gathered, not written
    clock.advance(1.0)
    assert request_ids(path) == ["req-1", "req-2"]

    log.batch_bytes = 600  # about two lines: the third write fills the batch
    for n in range(3, 6):
        log.write(None, info(n), 0.01)
    written = request_ids(path)
    assert written[:2] == ["req-1", "req-2"] and len(written) > 2
    assert path.read_text().endswith("\n")  # whole lines only

    log.close()
    assert request_ids(path) == [f"req-{n}" for n in range(1, 6)]
    log.write(None, info(6), 0.01)  # after close: dropped, nothing kept in memory
    assert log.lines == []
    assert request_ids(path)[-1] == "req-5"


def test_reopen_follows_a_moved_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLogFile(str(path), MemoryReactorClock())
    log.write(None, info(1), 0.01)
    path.rename(tmp_path / "access.log.1")
    log.reopen()  # writes what it held to the old file first
    log.write(None, info(2), 0.01)
    log.close()
    assert request_ids(tmp_path / "access.log.1") == ["req-1"]
    assert request_ids(path) == ["req-2"]
