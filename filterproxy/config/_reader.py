"""Path-aware readers for the YAML config tree.

Every value is read through a `Node`, which knows the key path that led to it, so that
every error the user can cause names the key (``clusters.openai.url``), what was there
and how to fix it. Environment substitution (``${VAR}`` and ``${VAR:-default}``) happens
here too, on string values only, after YAML parsing, so a secret can never change the
structure of the document.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["ConfigError", "Node", "parse_duration", "substitute_env"]


class ConfigError(ValueError):
    """A config that cannot be used. The message names the key path and the fix."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(text: str, path: str, environ: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in *text* from *environ*.

    Raises:
        ConfigError: a variable without a default is not set.
    """
    if "${" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(
                    path,
                    f"environment variable {name} is not set; export it, "
                    f"or give a default with ${{{name}:-value}}",
                )
            return default
        return value

    return _ENV_REF.sub(replace, text)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object, path: str) -> float:
    """A duration in seconds from ``30``, ``2.5``, ``250ms``, ``30s``, ``5m`` or ``1h``."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a duration like 30s or 250ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ConfigError(path, f"expected a duration like 30s or 250ms, got {value!r}")
    if seconds < 0:
        raise ConfigError(path, f"a duration cannot be negative, got {value!r}")
    return seconds


class Node:
    """A value in the config tree together with the key path that reached it."""

    def __init__(self, value: Any, path: str, environ: Mapping[str, str]) -> None:
        self.value = value
        self.path = path
        self._environ = environ

    @property
    def environ(self) -> Mapping[str, str]:
        """Where ``${VAR}`` in this node's values are looked up."""
        return self._environ

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def error(self, problem: str) -> ConfigError:
        """A ConfigError for this node's path."""
        return ConfigError(self.path, problem)

    # -- structure ---------------------------------------------------------------------

    def mapping(self, allowed: set[str] | None = None) -> dict[str, Node]:
        """This node as a mapping of child nodes; unknown keys are an error when
        *allowed* is given (a typo must not be silently ignored)."""
        if self.value is None:
            return {}
        if not isinstance(self.value, dict):
            raise self.error(f"expected a mapping (key: value), got {_kind(self.value)}")
        out: dict[str, Node] = {}
        for key, value in self.value.items():
            if not isinstance(key, str):
                raise self.error(f"keys must be strings, got {key!r}")
            if allowed is not None and key not in allowed:
                raise ConfigError(
                    self._child_path(key),
                    f"unknown key; expected one of: {', '.join(sorted(allowed))}",
                )
            out[key] = Node(value, self._child_path(key), self._environ)
        return out

    def sequence(self) -> list[Node]:
        """This node as a list of child nodes."""
        if self.value is None:
            return []
        if not isinstance(self.value, list):
            raise self.error(f"expected a list, got {_kind(self.value)}")
        return [Node(v, self._child_path(i), self._environ) for i, v in enumerate(self.value)]

    def string_list(self) -> tuple[str, ...]:
        """A list of strings; a single string is taken as a list of one."""
        if isinstance(self.value, str):
            return (self.string(),)
        return tuple(node.string() for node in self.sequence())

    def items(self) -> Iterator[tuple[str, Node]]:
        yield from self.mapping().items()

    # -- scalars -----------------------------------------------------------------------

    def string(self, *, allow_empty: bool = False) -> str:
        """A string, with environment references substituted."""
        if isinstance(self.value, bool) or not isinstance(self.value, str | int | float):
            raise self.error(f"expected a string, got {_kind(self.value)}")
        text = substitute_env(str(self.value), self.path, self._environ)
        if not text and not allow_empty:
            raise self.error("must not be empty")
        return text

    def integer(self, *, minimum: int | None = None) -> int:
        value = self.value
        if isinstance(value, str):
            value = substitute_env(value, self.path, self._environ)
            try:
                value = int(value)
            except ValueError:
                raise self.error(f"expected a whole number, got {self.value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected a whole number, got {_kind(self.value)}")
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum}, got {value}")
        return value

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"expected true or false, got {self.value!r}")
        return self.value

    def duration(self) -> float:
        value = self.value
        if isinstance(value, str):
            value = substitute_env(value, self.path, self._environ)
        return parse_duration(value, self.path)


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def default_environ() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
