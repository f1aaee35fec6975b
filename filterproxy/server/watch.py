"""``config_watch``: reload when the config file, its ``keys_file`` or a listener's
certificate changes on disk.

Made for configs mounted from a Kubernetes ConfigMap or Secret: the kubelet writes a new
version beside the old one and swaps a symlink, so a file's identity (inode), size or
modification time changes — `fingerprint` follows symlinks. A check is a few ``stat``
calls on the reactor thread, every ``config_watch`` seconds.

A change that leaves an invalid config is logged and ignored like any rejected reload;
the next change is tried again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["ConfigWatch", "Fingerprint", "fingerprint"]

log = Logger(namespace="filterproxy.service")

#: What is known of each watched file: (path, (device, inode, size, mtime ns)) or
#: (path, None) for a file that cannot be read now.
Fingerprint = tuple[tuple[str, tuple[int, int, int, int] | None], ...]


def fingerprint(
    paths: Iterable[str], stat: Callable[[str], os.stat_result] = os.stat
) -> Fingerprint:
    """The state of *paths* (symlinks followed) to compare with a later one."""
    states: list[tuple[str, tuple[int, int, int, int] | None]] = []
    for path in paths:
        try:
            st = stat(path)
        except OSError:
            states.append((path, None))
            continue
        states.append((path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)))
    return tuple(states)


class ConfigWatch:
    """Calls *reload* whenever a fingerprint of *paths()* differs from the last one.

    *paths* is asked again after every check, since a reload may name other files.
    """

    def __init__(
        self,
        clock: Any,
        interval: float,
        paths: Callable[[], tuple[str, ...]],
        reload: Callable[[], str | None],
    ) -> None:
        self.interval = interval
        self.paths = paths
        self.reload = reload
        self.last = fingerprint(paths())
        self.loop = LoopingCall(self.check)
        self.loop.clock = clock

    def start(self) -> None:
        self.loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def check(self) -> None:
        paths = self.paths()
        now = fingerprint(paths)
        if now == self.last:
            return
        changed = [path for (path, state) in now if (path, state) not in self.last]
        self.last = now
        log.info("changed on disk: {files}; reloading the config", files=", ".join(changed))
        self.reload()
        # The reload may name other files (another keys_file): watch what it names now.
        after = self.paths()
        if after != paths:
            self.last = fingerprint(after)
