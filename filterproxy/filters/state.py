"""Typed per-request state that filters share: one object per class.

A filter that has something to tell the filters after it (or the gateway's observers)
puts an object of its own class there; whoever wants it asks for that class::

    @dataclass
    class ChosenModel:
        name: str

    # in one filter's decode hook
    self.callbacks.stream_info.state.set(ChosenModel("gpt-4o"))

    # in another filter's hook
    chosen = self.callbacks.stream_info.state.get(ChosenModel)
    if chosen is not None:
        ...

The class is the key, so nothing is found by a string two modules must spell alike, and
a type checker knows what `get` returns. This is Envoy's ``FilterState``, keyed by type.
What the built-in features keep there is `filterproxy.filters.records`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["FilterState"]

T = TypeVar("T")


class FilterState:
    """One request's typed state: at most one object per class."""

    __slots__ = ("_objects",)

    def __init__(self) -> None:
        self._objects: dict[type, Any] = {}

    def get(self, kind: type[T]) -> T | None:
        """The object of class *kind* set for this request, or None."""
        value: T | None = self._objects.get(kind)
        return value

    def set(self, value: object) -> None:
        """Keep *value* under its class (replacing what was kept under it)."""
        self._objects[type(value)] = value

    def setdefault(self, kind: type[T], factory: Callable[[], T]) -> T:
        """The object of class *kind*, made with *factory* (and kept) if there is none."""
        value = self._objects.get(kind)
        if value is None:
            value = factory()
            if type(value) is not kind:
                raise TypeError(f"the factory for {kind.__name__} made a {type(value).__name__}")
            self._objects[kind] = value
        return value

    def pop(self, kind: type[T]) -> T | None:
        """Take the object of class *kind* away; None if there was none."""
        value: T | None = self._objects.pop(kind, None)
        return value

    def values(self) -> Iterator[object]:
        """The objects kept, in the order their classes were first set (the access log
        reads its fields from them)."""
        return iter(self._objects.values())

    def __contains__(self, kind: type) -> bool:
        return kind in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def __repr__(self) -> str:
        return f"FilterState({', '.join(k.__name__ for k in self._objects)})"
