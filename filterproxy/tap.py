"""The ``twistd filterproxy`` command: options and service construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from filterproxy.config import Config, ConfigError, load_config

__all__ = ["DEMO_CONFIG", "Options", "makeService"]

#: The built-in demo config, used when no --config is given.
DEMO_CONFIG = Path(__file__).parent / "demo.yaml"


class Options(usage.Options):
    """twistd filterproxy [-c conf.yaml] [--listen ENDPOINT ...]"""

    synopsis = "[-c CONFIG] [--listen ENDPOINT ...]"
    longdesc = (
        "filterproxy: an LLM gateway. Without --config it runs the built-in demo config "
        "(a mock upstream for the model 'demo', no API key needed)."
    )
    optParameters = [
        ["config", "c", None, "The YAML config file (default: the built-in demo config)."],
    ]
    optFlags = [["check", None, "Validate the config, print the result and exit."]]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.loaded: Config | None = None

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1 (repeatable);
        replaces the config's listeners."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        path = self["config"] or str(DEMO_CONFIG)
        try:
            self.loaded = load_config(path)
        except ConfigError as e:
            raise usage.UsageError(f"invalid config {path}: {e}") from None
        if not self["listen"] and not self.loaded.listeners:
            raise usage.UsageError(
                f"invalid config {path}: listeners: none given; add listeners to the config or pass --listen"
            )
        if self["check"]:
            print(
                f"{path}: OK ({len(self.loaded.clusters)} clusters, {len(self.loaded.routes)} routes, "
                f"filters: {', '.join(f.type_name for f in self.loaded.filters)})"
            )
            raise SystemExit(0)


def makeService(options: Options | dict[str, Any]) -> IService:
    """The gateway service for twistd."""
    from filterproxy.service import GatewayService

    config = options.loaded if isinstance(options, Options) else None
    if config is None:
        config = load_config(options["config"] or str(DEMO_CONFIG))
    listeners = tuple(options["listen"]) or None
    return GatewayService(config, listeners)
