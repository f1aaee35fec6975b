"""Using every core: N worker processes sharing each TCP listener.

``twistd -n filterproxy --workers N`` starts a supervisor that runs no gateway itself.
It starts N workers — the same command with ``--worker`` — each of which binds every
``tcp:``, ``tcp6:`` and ``ssl:`` listener with ``SO_REUSEPORT``, so the kernel spreads new connections
over them. A worker that dies is restarted (after a short pause that grows when it keeps
dying). A worker that cannot start — a listener it cannot bind, such as a port another
process holds — exits with `CANNOT_START`: then start-up has failed, and the supervisor
stops the other workers and exits with that status too, rather than restart workers
that would fail again. SIGTERM to the supervisor is passed to every worker; each stops
accepting, lets its in-flight streams finish for up to ``shutdown_grace``, and exits.

Each worker has its own pools and passive health state, as separate gateway instances
behind an L4 load balancer would; what they share is what the config puts outside the
process (Redis) and the resume relay (a stream resumed on another worker is read from
the one that holds it). The listeners themselves are `filterproxy.runtime.listeners`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import sys
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from filterproxy.server import sdnotify

if TYPE_CHECKING:
    pass

__all__ = [
    "CANNOT_START",
    "WORKER_SECRET_ENV",
    "ParentWatch",
    "WorkerSupervisor",
    "exit_after_shutdown",
    "worker_count",
]

log = Logger(namespace="filterproxy.workers")
#: The environment variable that gives the workers their supervisor's secret.
WORKER_SECRET_ENV = "FILTERPROXY_WORKER_SECRET"
#: The exit status of a gateway, a worker or a supervisor that could not start (a
#: listener could not be bound): EX_CONFIG of sysexits.h. Restarting does not help.
CANNOT_START = 78

_exit_status: list[int] = []


def exit_after_shutdown(status: int) -> None:
    """Make the process exit with *status* once twistd has shut it down (twistd ends
    with status 0 whatever stopped its reactor)."""
    if not _exit_status:
        atexit.register(_exit)
    _exit_status[:] = [status]


def _exit() -> None:
    # The last thing the process does: twistd has stopped the reactor, removed its
    # pidfile and its logger; only the status is left to give.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed
            stream.flush()
    os._exit(_exit_status[0])


def worker_count(value: str) -> int:
    """``auto`` (one per CPU this process may use: `usable_cpus`) or a whole number of at
    least 1."""
    if value == "auto":
        return usable_cpus(_affinity(), _read_cpu_quota())
    count = int(value)
    if count < 1:
        raise ValueError("--workers must be at least 1, or auto")
    return count


class ParentWatch(Service):
    """In a worker: exit when the supervisor is gone (a worker never outlives it)."""

    def __init__(self, reactor: Any = None, interval: float = 1.0) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.supervisor_pid = os.getppid()
        self.loop = LoopingCall(self._check)
        self.loop.clock = reactor
        self.interval = interval

    def startService(self) -> None:
        super().startService()
        self.loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self.loop.running:
            self.loop.stop()

    def _check(self) -> None:
        if os.getppid() != self.supervisor_pid:
            log.error(
                "the supervisor (pid {pid}) is gone; this worker stops", pid=self.supervisor_pid
            )
            self.loop.stop()
            self.reactor.stop()


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class WorkerSupervisor(Service):
    """Starts and keeps alive the worker processes."""

    def __init__(self, count: int, worker_argv: list[str], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.count = count
        self.worker_argv = worker_argv
        self.secret = secrets.token_hex(32)
        self.reactor = reactor
        self.workers: dict[int, _Worker] = {}
        self.transports: dict[int, Any] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = False

    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self._spawn(index)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._sighup)
        sdnotify.notify(f"READY=1\nSTATUS={self.count} workers")

    def _sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Ask every worker to re-read the config (SIGHUP)."""
        sdnotify.notify(sdnotify.reloading_message())
        for index, transport in self.transports.items():
            if not self.workers[index].ended.called:
                transport.signalProcess("HUP")
        sdnotify.notify("READY=1")

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        worker = _Worker(self, index)
        self.workers[index] = worker
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # the supervisor speaks to systemd, not the workers
        # What the workers sign the addresses in their stream ids with (filterproxy.extensions.resume.relay).
        env[WORKER_SECRET_ENV] = self.secret
        self.transports[index] = self.reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, *self.worker_argv, f"--worker-index={index}"],
            env=env,
            childFDs={0: "w", 1: 1, 2: 2},
        )
        log.info("worker {index} started (pid {pid})", index=index, pid=self.transports[index].pid)

    def worker_ended(self, worker: _Worker, reason: Any) -> None:
        if self.stopping or self.workers.get(worker.index) is not worker:
            return
        status = getattr(reason.value, "exitCode", None)
        if status == CANNOT_START and worker.index not in self.restarts:
            # Its first start failed (it logged why): the next would fail the same way.
            log.error(
                "worker {index} could not start (exit status {status}; its reason is above): "
                "start-up failed, stopping the other workers",
                index=worker.index,
                status=status,
            )
            exit_after_shutdown(CANNOT_START)
            self.reactor.stop()
            return
        failures = self.restarts.get(worker.index, 0) + 1
        self.restarts[worker.index] = failures
        delay = min(30.0, 0.5 * 2 ** min(failures - 1, 6))
        log.error(
            "worker {index} exited ({reason}); restarting in {delay:g}s",
            index=worker.index,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self.reactor.callLater(delay, self._spawn, worker.index)
        # A worker that stays up for a minute is healthy again.
        self.reactor.callLater(delay + 60, self.restarts.__setitem__, worker.index, 0)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        sdnotify.notify("STOPPING=1")
        self.stopping = True
        for index, transport in self.transports.items():
            if self.workers[index].ended.called:
                continue
            try:
                transport.signalProcess("TERM")
            except Exception:
                log.failure("cannot signal worker {index}", index=index)
        return defer.gatherResults([w.ended for w in self.workers.values()], consumeErrors=True)


def usable_cpus(affinity: int, quota: tuple[int, int] | None) -> int:
    """How many CPUs a process may keep busy: those it may run on (*affinity*), fewer
    under a CPU quota (*quota*: microseconds of CPU per period, and the period — a
    container's CPU limit, rounded up). At least 1."""
    count = max(affinity, 1)
    if quota is not None:
        allowed, period = quota
        if allowed > 0 and period > 0:
            count = min(count, -(-allowed // period))
    return max(count, 1)


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


#: Where the kernel says a cgroup's CPU quota: cgroup v2, then v1's two files.
_CPU_MAX = "/sys/fs/cgroup/cpu.max"
_CFS_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
_CFS_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def _read_cpu_quota() -> tuple[int, int] | None:
    """This process's cgroup CPU quota (a Kubernetes CPU limit, ``--cpus``), if any."""
    with contextlib.suppress(OSError, ValueError):
        with open(_CPU_MAX) as f:
            allowed, period = f.read().split()
        return None if allowed == "max" else (int(allowed), int(period))
    with contextlib.suppress(OSError, ValueError):
        with open(_CFS_QUOTA) as quota_file, open(_CFS_PERIOD) as period_file:
            allowed_us = int(quota_file.read())
            period_us = int(period_file.read())
        return None if allowed_us < 0 else (allowed_us, period_us)
    return None
