"""systemd's notification protocol (``Type=notify``): READY, STOPPING, RELOADING.

A notification is one datagram of ``KEY=value`` lines sent to the UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without that
variable (not started by systemd) nothing is sent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from twisted.logger import Logger

__all__ = ["notify", "reloading_message"]

log = Logger(namespace="filterproxy.sdnotify")


def reloading_message(monotonic_usec: int | None = None) -> str:
    """RELOADING=1 with the timestamp systemd (``Type=notify-reload``) requires."""
    if monotonic_usec is None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}"


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send *message* (e.g. ``READY=1``) to systemd; False when there is no socket or the
    send failed (logged: a notification must never stop the gateway)."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as e:
        log.warn("cannot notify systemd ({message!r}): {error}", message=message, error=e)
        return False
    return True
