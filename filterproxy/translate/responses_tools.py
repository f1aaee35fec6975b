"""The tools of a Responses request that Chat Completions has no form for, and the way
back (no I/O).

Chat Completions (and Messages, through it) knows one kind of tool: a function with a
name matching ``^[a-zA-Z0-9_-]{1,64}$`` and a JSON schema. A Responses client may send
three more kinds:

- ``namespace`` tools group function (and custom) tools under a name; each becomes a
  function tool of its own, named ``<namespace>__<name>`` (or, when that breaks the
  name rule or meets another tool's name, a shortened form with a digest of both
  names). The name is a function of the namespace and the tool's name, so a call that
  a client sends back in a later turn maps to the same upstream name; the model's
  calls come back as ``function_call`` items with ``name`` and ``namespace`` apart.
- ``custom`` (freeform) tools take one string: each becomes a function tool whose one
  parameter, ``input``, is that string (its grammar, if any, in the description); the
  model's calls come back as ``custom_tool_call`` items, their ``input`` decoded from
  the arguments as they stream (`CustomInput`).
- hosted tools (``web_search``, ``file_search``, ``code_interpreter``, ``computer``,
  ``image_generation``, ``mcp``, ``local_shell``, ``shell``, ``apply_patch``,
  ``tool_search``, …) run inside OpenAI's API and no other upstream can run them. The
  operator's policy (``hosted_tools``) says what happens: ``drop`` leaves them
  out — with the items of earlier turns that belong to them (``web_search_call``…)
  and a ``tool_choice`` that names them — and reports their types (`ToolSet.dropped`);
  ``refuse`` answers 400 naming the field.

The ids of the output items a translated response holds carry the response's id
(`item_id`), so that an ``item_reference`` to one of them leads to the stored response
(`response_of_item`) in one read, on any worker.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from filterproxy.translate.common import Untranslatable, chat_tool, loads

__all__ = [
    "HOSTED_ITEMS",
    "HOSTED_TYPES",
    "CustomInput",
    "ToolSet",
    "UpstreamTool",
    "custom_arguments",
    "custom_input",
    "hosted_name",
    "item_id",
    "response_of_item",
    "tool_set",
    "upstream_name",
]

#: The input items of hosted tools (an earlier turn's calls and their outputs), by the
#: tool type they belong to. Other unknown item types are refused whatever the policy:
#: they may hold what the conversation needs.
HOSTED_ITEMS: Final = {
    "web_search_call": "web_search",
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
    "image_generation_call": "image_generation",
    "computer_call": "computer",
    "computer_call_output": "computer",
    "local_shell_call": "local_shell",
    "local_shell_call_output": "local_shell",
    "shell_call": "shell",
    "shell_call_output": "shell",
    "apply_patch_call": "apply_patch",
    "apply_patch_call_output": "apply_patch",
    "mcp_call": "mcp",
    "mcp_list_tools": "mcp",
    "mcp_approval_request": "mcp",
    "mcp_approval_response": "mcp",
    "tool_search_call": "tool_search",
    "tool_search_output": "tool_search",
    "program": "programmatic_tool_calling",
    "program_output": "programmatic_tool_calling",
}
#: The hosted tool types of OpenAI's API (see docs/responses.md). A dropped one is
#: reported by this name — a dated one (``web_search_preview_2025_03_11``) by its base —
#: and any other type as ``other``: what a client names is neither written into a
#: response header nor made into a metric series of its own.
HOSTED_TYPES: Final = frozenset(
    {
        "web_search",
        "web_search_preview",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer",
        "computer_use_preview",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
        "programmatic_tool_calling",
    }
)
_DATED: Final = re.compile(r"^([a-z_]+?)_\d{4}_\d{2}_\d{2}$")
_NAME: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NOT_NAME: Final = re.compile(r"[^a-zA-Z0-9_-]")
#: Item ids made by `item_id`: a prefix, the response's 24 hex digits, 16 more.
_ITEM_ID: Final = re.compile(r"^[a-z]+_([0-9a-f]{24})[0-9a-f]{16}$")
_RESPONSE_ID: Final = re.compile(r"^resp_([0-9a-f]{24})$")
#: How a custom tool's arguments open, whitespace aside, and the JSON string's parts.
_OPENING: Final = '{"input":"'
_PLAIN: Final = re.compile(r'[^"\\]*')
_ESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


class UpstreamTool(NamedTuple):
    """What a function tool sent upstream stands for in the client's request."""

    name: str
    namespace: str | None
    custom: bool


def upstream_name(namespace: str | None, name: str) -> str:
    """The function name the upstream knows the tool *name* of *namespace* by.

    ``<namespace>__<name>`` when that is a valid function name; otherwise its valid
    characters, cut to leave room for ``_`` and eight hex digits of a digest of both
    names (so two tools whose names differ only in what was cut stay apart).
    """
    if namespace is None:
        return name
    joined = f"{namespace}__{name}"
    if _NAME.match(joined):
        return joined
    return _digested(joined, namespace, name)


def _digested(joined: str, namespace: str, name: str) -> str:
    digest = hashlib.sha256(f"{namespace}\0{name}".encode()).hexdigest()[:8]
    return f"{_NOT_NAME.sub('_', joined)[:55]}_{digest}"


def custom_arguments(text: str) -> str:
    """The function-call arguments that carry a custom tool's input *text*."""
    return json.dumps({"input": text}, ensure_ascii=False)


def custom_input(arguments: str) -> str:
    """A custom tool's input from the upstream's function-call *arguments*: the string
    ``input``, else the one string the object holds, else the arguments as they are (a
    model that wrote the input without the JSON around it)."""
    try:
        document = loads(arguments)
    except ValueError:
        return arguments
    if isinstance(document, dict):
        text = document.get("input")
        if isinstance(text, str):
            return text
        strings = [v for v in document.values() if isinstance(v, str)]
        if len(strings) == 1 and len(document) == 1:
            return strings[0]
    return arguments


def _custom_parameters(tool: Mapping[str, Any]) -> dict[str, Any]:
    what = "The input for this tool, as free text"
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        syntax = fmt.get("syntax") or "lark"
        what = f"The input for this tool: text that follows this {syntax} grammar:\n" + str(
            fmt.get("definition") or ""
        )
    return {
        "type": "object",
        "properties": {"input": {"type": "string", "description": what}},
        "required": ["input"],
        "additionalProperties": False,
    }


def hosted_name(kind: str) -> str:
    """How a dropped hosted tool of type *kind* is reported (see `HOSTED_TYPES`)."""
    if kind in HOSTED_TYPES:
        return kind
    dated = _DATED.match(kind)
    return dated.group(1) if dated is not None and dated.group(1) in HOSTED_TYPES else "other"


class ToolSet:
    """The function tools a Responses request's tools become upstream, and what each
    stands for on the way back."""

    __slots__ = ("_dropped", "_taken", "by_upstream", "chat", "upstream")

    def __init__(self) -> None:
        #: The Chat Completions tools, in the request's order.
        self.chat: list[dict[str, Any]] = []
        #: Upstream name to tool, for the tools whose calls come back other than as a
        #: plain function call of the same name (namespaced and custom tools).
        self.by_upstream: dict[str, UpstreamTool] = {}
        #: (namespace, name) to upstream name, for every tool; the upstream names taken.
        self.upstream: dict[tuple[str | None, str], str] = {}
        self._taken: set[str] = set()
        #: The hosted tools left out (`hosted_name`), each once, in the order met.
        self._dropped: dict[str, None] = {}

    @property
    def dropped(self) -> list[str]:
        """The hosted tools left out, as reported (`hosted_name`), each once, in order."""
        return list(self._dropped)

    def name_for(self, namespace: str | None, name: str) -> str:
        """The upstream name of a call to *name* in *namespace* (from an earlier turn's
        item, or a ``tool_choice``)."""
        found = self.upstream.get((namespace, name))
        return found if found is not None else upstream_name(namespace, name)

    def drop(self, kind: str) -> None:
        self._dropped[hosted_name(kind)] = None

    def _add(
        self,
        path: str,
        tool: Mapping[str, Any],
        namespace: Mapping[str, Any] | None,
        plain: set[str],
    ) -> None:
        """Adds a function or custom *tool* (of *namespace*); a namespaced one keeps off
        the *plain* names (the tools outside namespaces, which keep their own)."""
        kind = tool.get("type")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise Untranslatable(f"{path}.name", "a function or custom tool needs a name")
        ns = str(namespace.get("name")) if namespace is not None else None
        upstream = upstream_name(ns, name)
        if ns is not None and (upstream in plain or upstream in self._taken):
            upstream = _digested(f"{ns}__{name}", ns, name)
        if upstream in self._taken:
            raise Untranslatable(
                path, f"two tools would reach the upstream as {upstream!r}; rename one"
            )
        description = tool.get("description")
        if namespace is not None and namespace.get("description"):
            description = f"{namespace['description']}\n\n{description or ''}".strip()
        if kind == "custom":
            self.chat.append(chat_tool(upstream, _custom_parameters(tool), description))
        else:
            self.chat.append(
                chat_tool(upstream, tool.get("parameters"), description, tool.get("strict"))
            )
        self.upstream[(ns, name)] = upstream
        self._taken.add(upstream)
        if ns is not None or kind == "custom":
            self.by_upstream[upstream] = UpstreamTool(name, ns, kind == "custom")


def tool_set(tools: Any, hosted_tools: str) -> ToolSet:
    """The function tools for a Responses request's *tools*, under the *hosted_tools*
    policy (``drop`` or ``refuse``).

    Raises:
        Untranslatable: a tool that cannot be sent (a hosted one, when refused).
    """
    found = ToolSet()
    listed = tools if isinstance(tools, list) else []
    plain = {
        str(t.get("name"))
        for t in listed
        if isinstance(t, dict) and t.get("type") in ("function", "custom")
    }
    for i, tool in enumerate(listed):
        path = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or not isinstance(kind, str):
            raise Untranslatable(path, "a tool is an object with a type")
        if kind in ("function", "custom"):
            found._add(path, tool, None, plain)
        elif kind == "namespace":
            inner = tool.get("tools")
            if not isinstance(tool.get("name"), str) or not isinstance(inner, list):
                raise Untranslatable(path, "a namespace tool has a name and a list of tools")
            for j, member in enumerate(inner):
                where = f"{path}.tools[{j}]"
                member_kind = member.get("type") if isinstance(member, dict) else None
                if member_kind not in ("function", "custom"):
                    raise Untranslatable(
                        f"{where}.type", "a namespace holds function and custom tools"
                    )
                found._add(where, member, tool, plain)
        elif hosted_tools == "drop":
            found.drop(kind)
        else:
            raise Untranslatable(
                path,
                f"the tool type {kind!r} runs only inside OpenAI's API; the upstream speaks "
                "Chat Completions (define it as a function tool, or set hosted_tools: drop "
                "to leave such tools out)",
            )
    return found


class CustomInput:
    """A custom tool call's ``input``, decoded from the function-call arguments
    (``{"input": "…"}``) as they stream, so the client sees the input grow as the model
    writes it. Arguments of another shape are not streamed: the whole input comes when
    the call ends (`custom_input`)."""

    __slots__ = ("pending", "state")

    def __init__(self) -> None:
        #: What arrived and is not decoded yet (an opening, or a cut escape).
        self.pending = ""
        #: 0: before the string, 1: in it, 2: after it, 3: not the expected shape.
        self.state = 0

    def feed(self, fragment: str) -> str:
        """The input text that *fragment* of the arguments completes."""
        state = self.state
        if state >= 2:
            return ""
        text = self.pending + fragment
        if state == 0:
            opening = _OPENING
            seen = 0
            start = -1
            for i, char in enumerate(text):
                if char.isspace():
                    continue
                if char != opening[seen]:
                    self.state = 3
                    self.pending = ""
                    return ""
                seen += 1
                if seen == len(opening):
                    start = i + 1
                    break
            if start < 0:
                self.pending = text
                return ""
            self.state = 1
            text = text[start:]
        out: list[str] = []
        i = 0
        size = len(text)
        while True:
            match = _PLAIN.match(text, i)
            end = match.end() if match is not None else i
            if end > i:
                out.append(text[i:end])
            i = end
            if i >= size:
                break
            if text[i] == '"':
                self.state = 2
                i = size
                break
            if i + 1 >= size:
                break  # a backslash cut from what it escapes
            code = text[i + 1]
            if code != "u":
                escaped = _ESCAPES.get(code)
                if escaped is None:
                    self.state = 3
                    self.pending = ""
                    return "".join(out)
                out.append(escaped)
                i += 2
                continue
            width = 6
            if i + 6 <= size and 0xD800 <= _hex(text[i + 2 : i + 6]) <= 0xDBFF:
                width = 12  # a surrogate pair: both halves decode together
            if i + width > size:
                break
            try:
                out.append(json.loads(f'"{text[i : i + width]}"'))
            except ValueError:
                self.state = 3
                self.pending = ""
                return "".join(out)
            i += width
        self.pending = text[i:]
        return "".join(out)


def _hex(digits: str) -> int:
    try:
        return int(digits, 16)
    except ValueError:
        return -1


def item_id(prefix: str, response_id: str) -> str:
    """A fresh id for an output item of the response *response_id*: *prefix*, the
    response's 24 hex digits and 16 random ones (see `response_of_item`)."""
    match = _RESPONSE_ID.match(response_id)
    return prefix + (match.group(1) if match else secrets.token_hex(12)) + secrets.token_hex(8)


def response_of_item(identifier: str) -> str | None:
    """The id of the response whose output holds the item *identifier* (`item_id`), or
    None for an id the gateway did not make."""
    match = _ITEM_ID.match(identifier)
    return "resp_" + match.group(1) if match else None
