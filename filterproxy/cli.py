"""The ``filterproxy`` command: tools around the gateway (the gateway itself runs under
``twistd filterproxy``).

    filterproxy check-config FILE...   validate config files; exit 1 with the problems
"""

from __future__ import annotations

import argparse
import sys

from filterproxy.config import ConfigError, load_config
from filterproxy.filters.registry import build_chain
from filterproxy.tap import config_summary

__all__ = ["main"]


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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
