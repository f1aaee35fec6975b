"""The ``twistd filterproxy`` command: options and service construction."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from filterproxy.chain.registry import FilterChain, build_chain
from filterproxy.config import Config, ConfigError
from filterproxy.extensions.builtin import load_config
from filterproxy.filters.resources import Resources
from filterproxy.observability.accesslog import cannot_open, open_for_append
from filterproxy.runtime.listeners import reuse_port_endpoint
from filterproxy.server.workers import worker_count

__all__ = ["DEMO_CONFIG", "Options", "config_summary", "makeService"]

#: The built-in demo config, used when no --config is given.
DEMO_CONFIG = Path(__file__).parent.parent / "demo" / "demo.yaml"


class Options(usage.Options):
    """twistd filterproxy [-c conf.yaml] [--listen ENDPOINT ...]"""

    synopsis = "[-c CONFIG] [--listen ENDPOINT ...]"
    longdesc = (
        "filterproxy: an LLM gateway. Without --config it runs the built-in demo config "
        "(a mock upstream for the model 'demo', no API key needed)."
    )
    optParameters = [
        ["config", "c", None, "The YAML config file (default: the built-in demo config)."],
        [
            "workers",
            None,
            "1",
            "Worker processes sharing the TCP listeners (SO_REUSEPORT); auto = one per CPU.",
        ],
        [
            "admin",
            None,
            None,
            "The admin listener's endpoint (replaces the config's admin.listen); "
            "with --workers, worker N listens on its port + N.",
        ],
        ["worker-index", None, None, "This worker's number (set by the supervisor)."],
    ]
    optFlags = [
        ["check", None, "Validate the config, print the result and exit."],
        ["worker", None, "Run as one worker of several (started by the supervisor)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.loaded: Config | None = None
        self.chain: FilterChain | None = None
        #: What the chain was built with: the service keeps it (the reactor is looked
        #: up when first used, after it is installed).
        self.resources = Resources()

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1 (repeatable);
        replaces the config's listeners."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        path = self["config"] or str(DEMO_CONFIG)
        try:
            self.loaded = load_config(path)
            self.chain = build_chain(self.loaded, self.resources)
        except ConfigError as e:
            raise usage.UsageError(f"invalid config {path}: {e}") from None
        if not self["listen"] and not self.loaded.listeners:
            raise usage.UsageError(
                f"invalid config {path}: listeners: none given; add listeners to the config or pass --listen"
            )
        try:
            self["workers"] = worker_count(self["workers"])
        except ValueError:
            raise usage.UsageError(
                f"--workers: expected a whole number of at least 1 or auto, got {self['workers']!r}"
            ) from None
        if self["workers"] > 1 or self["worker"]:
            for description in self["listen"] or self.loaded.listeners:
                try:
                    endpoint = reuse_port_endpoint(None, description)
                except ValueError as e:
                    raise usage.UsageError(str(e)) from None
                if endpoint.port == 0:
                    raise usage.UsageError(
                        f"listener {description!r}: --workers needs a fixed port to share, not 0"
                    )
        if self.loaded.access_log_path is not None and not self["check"]:
            try:
                os.close(open_for_append(self.loaded.access_log_path))
            except OSError as e:
                raise usage.UsageError(
                    f"invalid config {path}: access_log: "
                    f"{cannot_open(self.loaded.access_log_path, e)}"
                ) from None
        if self["worker-index"] is not None:
            self["worker-index"] = int(self["worker-index"])
        if self["check"]:
            print(config_summary(path, self.loaded))
            raise SystemExit(0)


def config_summary(path: str, config: Config) -> str:
    """The one line ``--check`` prints for a valid config."""
    return (
        f"{path}: OK ({len(config.clusters)} clusters, {len(config.routes)} routes, "
        f"filters: {', '.join(f.type_name for f in config.filters)}; "
        f"admin: {config.admin_listener or 'off'})"
    )


def makeService(options: Options | dict[str, Any]) -> IService:
    """The twistd service: the gateway, or a supervisor of worker processes, and the
    mock upstream when the config asks for it."""
    from filterproxy.runtime.lazytls import openssl_hidden, should_defer
    from filterproxy.runtime.reactor import install_if_unset

    config = options.loaded if isinstance(options, Options) else None
    chain = options.chain if isinstance(options, Options) else None
    resources = options.resources if isinstance(options, Options) else None
    if config is None:
        config = load_config(options["config"] or str(DEMO_CONFIG))
    listeners = tuple(options["listen"]) or None
    defer_tls = should_defer(
        config, listeners or config.listeners, options.get("admin") or config.admin_listener
    )
    with openssl_hidden() if defer_tls else contextlib.nullcontext():
        # Before anything imports twisted.internet.reactor (twistd installs its default
        # reactor only when the application starts it).
        install_if_unset()
        from twisted.application.service import MultiService

        from filterproxy.server.service import GatewayService
        from filterproxy.server.workers import ParentWatch, WorkerSupervisor

    if defer_tls:
        from twisted.logger import Logger

        Logger(namespace="filterproxy.service").info(
            "pyOpenSSL not loaded: no TLS in the config (it loads when first needed; "
            "preload_tls: true loads it at start-up)"
        )
    worker = bool(options.get("worker"))
    workers = int(options.get("workers", 1))
    if config.warnings and not worker:
        from twisted.logger import Logger

        for warning in config.warnings:
            Logger(namespace="filterproxy.config").warn("config: {warning}", warning=warning)
    top = MultiService()
    if config.mock_upstream and not worker:
        # Imported only here: it brings twisted.web (4 MB) into the process.
        from filterproxy.demo.mock_upstream import MockUpstreamService

        MockUpstreamService(config.mock_upstream).setServiceParent(top)
    if workers > 1 and not worker:
        argv = [
            "-c",
            # As under the twistd script, the working directory is not on sys.path.
            "import sys; sys.path[:] = [p for p in sys.path if p]; "
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "-l",
            "-",
            "filterproxy",
            "-c",
            str(options["config"] or DEMO_CONFIG),
            "--worker",
        ]
        logger = twistd_logger(sys.argv[1:])
        if logger is not None:
            # The workers log as the supervisor was told to (JSON on stdout, say).
            argv[argv.index("-l") : argv.index("-l")] = ["--logger", logger]
        for description in options["listen"]:
            argv += ["--listen", description]
        if options.get("admin"):
            argv += ["--admin", options["admin"]]
        WorkerSupervisor(workers, argv).setServiceParent(top)
    else:
        GatewayService(
            config,
            listeners,
            reuse_port=worker,
            admin_listener=options.get("admin"),
            worker_index=options.get("worker-index") if worker else None,
            chain=chain,
            resources=resources,
        ).setServiceParent(top)
    if worker:
        ParentWatch().setServiceParent(top)
    return top


def twistd_logger(argv: list[str]) -> str | None:
    """The ``--logger`` given to twistd in *argv* (its options, before the plugin's
    name), if any: the supervisor's own options are not the plugin's to read, so the
    command line is what tells them."""
    for index, arg in enumerate(argv):
        if arg == "filterproxy":
            return None
        if arg.startswith("--logger="):
            return arg.partition("=")[2]
        if arg == "--logger" and index + 1 < len(argv):
            return argv[index + 1]
    return None
