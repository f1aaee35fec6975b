"""The ``filterproxy`` command: tools around the gateway (the gateway itself runs under
``twistd filterproxy``).

    filterproxy check-config FILE...   validate config files and print what they say;
                                       exit 1 with the problems
"""

from __future__ import annotations

import argparse
import sys

from filterproxy.config import Config, ConfigError, load_config
from filterproxy.filters.registry import build_chain
from filterproxy.tap import config_summary

__all__ = ["describe", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="filterproxy", description="filterproxy tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check-config", help="validate config files and print what is wrong"
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            config = load_config(path)
            build_chain(config)  # the filters' own options are part of the config
        except ConfigError as e:
            print(f"{path}: invalid: {e}", file=sys.stderr)
            failed += 1
            continue
        print(config_summary(path, config))
        print(describe(config))
    return 1 if failed else 0


def describe(config: Config) -> str:
    """What the gateway understood of *config*: listeners, providers, models, aliases,
    and what it ignores."""
    lines = [f"  listeners: {', '.join(config.listeners) or '(none: give --listen)'}"]
    lines.append("  clusters:")
    for name, cluster in config.clusters.items():
        kind = f"provider {cluster.provider}" if cluster.provider else "upstream"
        urls = ", ".join(e.url for e in cluster.endpoints)
        lines.append(f"    {name}: {kind} at {urls}; speaks {', '.join(sorted(cluster.apis))}")
    lines.append("  routes:")
    for route in config.routes:
        models = ", ".join(route.models) or "any model"
        sent = f" (sent as {route.upstream_model})" if route.upstream_model else ""
        lines.append(f"    {route.name}: {models} -> {route.cluster}{sent}")
    if config.aliases:
        lines.append("  aliases:")
        lines.extend(f"    {alias} -> {target}" for alias, target in config.aliases.items())
    lines.extend(f"  warning: {w}" for w in config.warnings)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
