"""Header rule blocks: ``{set: {...}, append: {...}, remove: [...]}``."""

from __future__ import annotations

from collections.abc import Mapping

from filterproxy.config._reader import Node
from filterproxy.config._types import HeaderPolicy, HeaderRules
from filterproxy.http.headers import validate_header_name, validate_header_value

_RULE_KEYS = {"set", "append", "remove"}


def parse_header_policy(nodes: Mapping[str, Node]) -> HeaderPolicy:
    """`request_headers` and `response_headers` blocks of a cluster, route or filter."""
    request = parse_header_rules(nodes["request_headers"]) if "request_headers" in nodes else None
    response = (
        parse_header_rules(nodes["response_headers"]) if "response_headers" in nodes else None
    )
    return HeaderPolicy(request or HeaderRules(), response or HeaderRules())


def parse_header_rules(node: Node) -> HeaderRules:
    """A ``{set: {name: value}, append: {name: value}, remove: [name]}`` block."""
    parts = node.mapping(_RULE_KEYS)

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        if key not in parts:
            return ()
        return tuple(
            (header_name(name, value_node), _header_value(value_node))
            for name, value_node in parts[key].items()
        )

    remove: tuple[str, ...] = ()
    if "remove" in parts:
        remove = tuple(header_name(n.string(), n) for n in parts["remove"].sequence())
    return HeaderRules(set=pairs("set"), append=pairs("append"), remove=remove)


def header_name(name: str, node: Node) -> str:
    """*name* lower-cased, or a ConfigError at *node* if it is not a header name."""
    try:
        return validate_header_name(name)
    except ValueError as e:
        raise node.error(str(e)) from None


def _header_value(node: Node) -> str:
    value = node.string(allow_empty=True)
    try:
        return validate_header_value(value)
    except ValueError as e:
        raise node.error(str(e)) from None
