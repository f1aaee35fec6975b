"""``filterproxy keys ...``, ``filterproxy teams ...`` and ``filterproxy spend``: the
admin API's keys, teams and spend report from a shell.

Each command is one HTTP call to a running gateway's admin listener (``--admin URL``,
else ``FILTERPROXY_ADMIN_URL``, else ``http://127.0.0.1:9901``) with the admin token
(``FILTERPROXY_ADMIN_TOKEN``, or the first line of ``--token-file``). Answers print as a
plain table, or as the API's JSON with ``--json``. The standard library's urllib: no
HTTP client to install next to the gateway for this.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["DEFAULT_ADMIN_URL", "add_manage_commands", "add_spend_command", "run_manage"]

DEFAULT_ADMIN_URL = "http://127.0.0.1:9901"

#: The limits ``--limit FIELD=VALUE`` takes (dollar amounts in dollars).
_LIMITS = (
    "requests_per_minute",
    "tokens_per_minute",
    "concurrent_requests",
    "tokens_per_day",
    "tokens_per_month",
    "usd_per_day",
    "usd_per_month",
    "soft_usd_per_day",
    "soft_usd_per_month",
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin",
        metavar="URL",
        default=os.environ.get("FILTERPROXY_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="the gateway's admin listener (default: $FILTERPROXY_ADMIN_URL or %(default)s)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="a file holding the admin token (default: $FILTERPROXY_ADMIN_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON")


def _limits_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"a limit ({', '.join(_LIMITS)}); dollars for usd_*; an empty VALUE clears it",
    )


def add_manage_commands(keys: Any, teams: Any) -> None:
    """The management subcommands, on the ``keys`` and ``teams`` subparsers."""
    create = keys.add_parser("create", help="create a key on a running gateway (shown once)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--team", metavar="TEAM")
    create.add_argument("--models", nargs="+", metavar="MODEL", help="models or glob patterns")
    _limits_option(create)
    update = keys.add_parser("update", help="change a key's team, models or limits")
    update.add_argument("name", metavar="NAME")
    update.add_argument("--team", metavar="TEAM", help="'' leaves the team")
    update.add_argument("--models", nargs="*", metavar="MODEL", help="none given: any model")
    _limits_option(update)
    listing = keys.add_parser("list", help="the gateway's keys")
    show = keys.add_parser("show", help="one key")
    show.add_argument("name", metavar="NAME")
    revoke = keys.add_parser("revoke", help="revoke a key (at once, on every gateway)")
    revoke.add_argument("name", metavar="NAME")
    for command in (create, update, listing, show, revoke):
        _common(command)

    team_create = teams.add_parser("create", help="create a team")
    team_create.add_argument("name", metavar="NAME")
    _limits_option(team_create)
    team_update = teams.add_parser("update", help="change a team's limits")
    team_update.add_argument("name", metavar="NAME")
    _limits_option(team_update)
    team_list = teams.add_parser("list", help="the gateway's teams")
    team_show = teams.add_parser("show", help="one team")
    team_show.add_argument("name", metavar="NAME")
    team_delete = teams.add_parser("delete", help="delete a team that has no keys")
    team_delete.add_argument("name", metavar="NAME")
    for command in (team_create, team_update, team_list, team_show, team_delete):
        _common(command)


def add_spend_command(commands: Any) -> None:
    """``filterproxy spend``, on the top-level subparsers."""
    spend = commands.add_parser(
        "spend", help="what was spent, per key, team, model or provider (admin API)"
    )
    spend.add_argument("--from", dest="first", metavar="YYYY-MM-DD", help="first UTC day")
    spend.add_argument(
        "--to", dest="last", metavar="YYYY-MM-DD", help="last UTC day (default: today)"
    )
    spend.add_argument("--key", metavar="NAME", help="only this key's requests")
    spend.add_argument("--team", metavar="NAME", help="only this team's requests")
    spend.add_argument(
        "--by",
        choices=("key", "team", "model", "provider"),
        default="key",
        help="what to total by (default: %(default)s)",
    )
    _common(spend)


class Failed(Exception):
    """What to tell the user, and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text  # the API names the field and what it expected


def parse_limits(options: list[str], *, clearing: bool) -> dict[str, Any]:
    """``--limit FIELD=VALUE`` options as the API's ``limits``; an empty value is
    ``null`` (clears it) where *clearing*."""
    limits: dict[str, Any] = {}
    for option in options:
        name, equals, value = option.partition("=")
        if not equals or name not in _LIMITS:
            raise Failed(
                f"--limit {option!r}: expected FIELD=VALUE, FIELD one of {', '.join(_LIMITS)}", 2
            )
        if value == "" and not clearing:
            raise Failed(f"--limit {option!r}: give a value", 2)
        limits[name] = None if value == "" else _number(value)
    return limits


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                return f.readline().strip() or None
        except OSError as e:
            raise Failed(f"cannot read the token file {args.token_file!r}: {e.strerror}") from None
    return os.environ.get("FILTERPROXY_ADMIN_TOKEN") or None


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One admin API call; its JSON answer.

    Raises:
        Failed: the gateway cannot be reached, or refused the call (its message).
    """
    base = args.admin.rstrip("/")
    token = _token(args)
    headers = {"accept": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", "")
        except (ValueError, AttributeError):
            message = ""
        if e.code == 401:
            where = "--token-file" if args.token_file else "FILTERPROXY_ADMIN_TOKEN"
            state = "is wrong" if token else "is missing"
            raise Failed(f"{base}: 401: the admin token {state} (give it in {where})") from None
        raise Failed(f"{base}: {e.code}: {message or e.reason}") from None
    except urllib.error.URLError as e:
        raise Failed(
            f"cannot reach the gateway's admin API at {base}: {e.reason} "
            "(give its address with --admin URL or FILTERPROXY_ADMIN_URL)"
        ) from None
    except (TimeoutError, ConnectionError) as e:
        raise Failed(f"cannot reach the gateway's admin API at {base}: {e}") from None


def _limits_text(limits: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in limits.items()) or "-"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _key_rows(keys: list[dict[str, Any]]) -> str:
    rows = [
        [
            k["name"],
            k.get("team") or "-",
            ", ".join(k.get("models") or []) or "any",
            _limits_text(k.get("limits") or {}),
            k.get("source", ""),
        ]
        for k in keys
    ]
    return _table(rows, ["NAME", "TEAM", "MODELS", "LIMITS", "SOURCE"])


def _team_rows(teams: list[dict[str, Any]]) -> str:
    rows = [
        [
            t["name"],
            _limits_text(t.get("limits") or {}),
            ", ".join(t.get("keys") or []) or "-",
            t.get("source", ""),
        ]
        for t in teams
    ]
    return _table(rows, ["NAME", "LIMITS", "KEYS", "SOURCE"])


def _keys(args: argparse.Namespace) -> tuple[Any, str]:
    command = args.keys_command
    name = quote(getattr(args, "name", "") or "", safe="")
    if command == "list":
        answer = call(args, "GET", "/keys")
        return answer, _key_rows(answer["keys"])
    if command == "show":
        answer = call(args, "GET", f"/keys/{name}")
        return answer, _key_rows([answer])
    if command == "revoke":
        answer = call(args, "DELETE", f"/keys/{name}")
        return answer, f"key {args.name} revoked"
    if command == "create":
        body: dict[str, Any] = {"name": args.name}
        if args.team:
            body["team"] = args.team
        if args.models:
            body["models"] = args.models
        if args.limit:
            body["limits"] = parse_limits(args.limit, clearing=False)
        answer = call(args, "POST", "/keys", body)
        text = f"key (give it to {args.name}; it is shown only now): {answer['key']}\n" + _key_rows(
            [answer]
        )
        return answer, text
    change: dict[str, Any] = {}
    if args.team is not None:
        change["team"] = args.team or None
    if args.models is not None:
        change["models"] = args.models or None
    if args.limit:
        change["limits"] = parse_limits(args.limit, clearing=True)
    if not change:
        raise Failed("nothing to change: give --team, --models or --limit", 2)
    answer = call(args, "PATCH", f"/keys/{name}", change)
    return answer, _key_rows([answer])


def _teams(args: argparse.Namespace) -> tuple[Any, str]:
    command = args.teams_command
    name = quote(getattr(args, "name", "") or "", safe="")
    if command == "list":
        answer = call(args, "GET", "/teams")
        return answer, _team_rows(answer["teams"])
    if command == "show":
        answer = call(args, "GET", f"/teams/{name}")
        return answer, _team_rows([answer])
    if command == "delete":
        answer = call(args, "DELETE", f"/teams/{name}")
        return answer, f"team {args.name} deleted"
    if command == "create":
        body: dict[str, Any] = {"name": args.name}
        if args.limit:
            body["limits"] = parse_limits(args.limit, clearing=False)
        answer = call(args, "POST", "/teams", body)
        return answer, _team_rows([answer])
    if not args.limit:
        raise Failed("nothing to change: give --limit FIELD=VALUE", 2)
    answer = call(
        args, "PATCH", f"/teams/{name}", {"limits": parse_limits(args.limit, clearing=True)}
    )
    return answer, _team_rows([answer])


def _spend(args: argparse.Namespace) -> tuple[Any, str]:
    # Imported here: the report's module is the spend extension's, needed by this
    # command only.
    from filterproxy.extensions.spend.report import render_table

    query = {"by": args.by}
    if args.first:
        query["from"] = args.first
    if args.last:
        query["to"] = args.last
    for name in ("key", "team"):
        if getattr(args, name):
            query[name] = getattr(args, name)
    answer = call(args, "GET", "/spend?" + urlencode(query))
    return answer, render_table(answer).rstrip("\n")


def run_manage(args: argparse.Namespace) -> int:
    """Run a ``keys``, ``teams`` or ``spend`` command; its exit status."""
    commands = {"keys": _keys, "teams": _teams, "spend": _spend}
    try:
        answer, text = commands[args.command](args)
    except Failed as e:
        print(f"filterproxy {args.command}: {e.message}", file=sys.stderr)
        return e.status
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0
