"""The ``filterproxy`` command: tools around the gateway (the gateway itself runs under
``twistd filterproxy``).

    filterproxy check-config FILE...   validate config files and print what they say;
                                       exit 1 with the problems
    filterproxy keys new NAME          make a gateway key; print it and its config entry
                                       (offline: nothing is kept)
    filterproxy keys create|list|show|update|revoke ...
    filterproxy teams create|list|show|update|delete ...
                                       manage keys and teams of a running gateway
                                       through its admin API (`filterproxy.server.manage`)
    filterproxy spend [--from DAY] [--to DAY] [--by key|team|model|provider]
                                       what was spent, from a running gateway's ledger
"""

from __future__ import annotations

import argparse
import re
import sys

from filterproxy.chain.registry import build_chain
from filterproxy.config import Config, ConfigError
from filterproxy.extensions.builtin import load_config
from filterproxy.extensions.keys.config import GatewayKeys, hash_key, new_key
from filterproxy.filters.resources import Resources
from filterproxy.server.manage import add_manage_commands, add_spend_command, run_manage
from filterproxy.server.tap import config_summary

__all__ = ["describe", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="filterproxy", description="filterproxy tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check-config", help="validate config files and print what is wrong"
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    keys = commands.add_parser("keys", help="gateway keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = key_commands.add_parser("new", help="make a new key and print its config entry")
    new.add_argument("name", metavar="NAME", help="the key's name (logs, metrics)")
    teams = commands.add_parser("teams", help="teams of a running gateway (admin API)")
    team_commands = teams.add_subparsers(dest="teams_command", required=True)
    add_manage_commands(key_commands, team_commands)
    add_spend_command(commands)
    args = parser.parse_args(argv)
    if args.command == "keys" and args.keys_command == "new":
        return new_key_entry(args.name)
    if args.command in ("keys", "teams", "spend"):
        return run_manage(args)
    failed = 0
    for path in args.files:
        try:
            config = load_config(path)
            build_chain(config, Resources())  # the filters' own options are part of the config
        except ConfigError as e:
            print(f"{path}: invalid: {e}", file=sys.stderr)
            failed += 1
            continue
        print(config_summary(path, config))
        print(describe(config))
    return 1 if failed else 0


def new_key_entry(name: str) -> int:
    """Print a new key (shown once; the gateway keeps only its hash) and its entry."""
    if not re.match(r"^[A-Za-z0-9_.@-]{1,64}$", name):
        print(
            f"{name!r}: a key's name is 1 to 64 letters, digits, '_', '.', '@' or '-'",
            file=sys.stderr,
        )
        return 2
    key = new_key()
    print(f"key (give it to {name}; it is not stored anywhere): {key}")
    print("\nadd to 'keys:' in the config or the keys file:")
    print(f"  - name: {name}\n    hash: sha256:{hash_key(key)}")
    print(
        '    # models: ["gpt-4o*"]\n    # limits: {requests_per_minute: 60, tokens_per_minute: 100000}'
    )
    return 0


def describe(config: Config) -> str:
    """What the gateway understood of *config*: listeners, providers, models, aliases,
    and what it ignores."""
    lines = [f"  listeners: {', '.join(config.listeners) or '(none: give --listen)'}"]
    lines.append("  clusters:")
    for name, cluster in config.clusters.items():
        kind = f"provider {cluster.provider}" if cluster.provider else "upstream"
        urls = ", ".join(e.url for e in cluster.endpoints)
        speaks = ", ".join(sorted(cluster.apis))
        for prefix, apis in cluster.model_apis:
            speaks += f" ({', '.join(sorted(apis))} for {prefix}*)"
        lines.append(f"    {name}: {kind} at {urls}; speaks {speaks}")
        for option in cluster.options:
            # A provider extension's cluster says where its credentials come from (it
            # may look: read files, ask a metadata service).
            said = getattr(option, "describe_credentials", None)
            if callable(said):
                lines.append(f"      credentials: {said()}")
    lines.append("  routes:")
    for route in config.routes:
        models = ", ".join(route.models) or "any model"
        sent = f" (sent as {route.upstream_model})" if route.upstream_model else ""
        lines.append(f"    {route.name}: {models} -> {route.cluster}{sent}")
    if config.aliases:
        lines.append("  aliases:")
        lines.extend(f"    {alias} -> {target}" for alias, target in config.aliases.items())
    keys = config.section(GatewayKeys)
    if keys is not None and keys.gateway_keys:
        lines.append(f"  keys: {', '.join(k.name for k in keys.gateway_keys)}")
    lines.extend(f"  warning: {w}" for w in config.warnings)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
