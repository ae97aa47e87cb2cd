"""A name -> constructor table with errors that list the valid names (models, datasets, regularisers, projections)."""
from __future__ import annotations

import difflib
import typing
from typing import Callable, Dict, Iterator, TypeVar

T = TypeVar("T", bound=Callable)


class Registry:
    """``@REG.register("name")`` adds an entry; ``REG.get(name)`` looks one up or says what exists."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj
        return add

    def get(self, name: str) -> Callable:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> list:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def keyword_types(fn: Callable) -> Dict[str, type]:
    """The plain types (bool, int, float, str) of ``fn``'s annotated parameters, ``Optional[X]`` read as ``X``.

    Config validation uses them where a default is ``None`` ("decided from other options") and so says nothing."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not evaluate: no type to check against
        return {}
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) is typing.Union and len(args) == 1:
            hint = args[0]
        if hint in (bool, int, float, str):
            out[name] = hint
    return out
