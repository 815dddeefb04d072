"""A tiny name -> factory registry, shared by datasets, models and learning rules.

Registering twice under one name is an error; looking up an unknown name raises a
:class:`~bioprop.errors.BiopropError` that suggests the closest registered names and lists the
names that do exist.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from bioprop.checks import suggest
from bioprop.errors import BiopropError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, listing: str | None = None):
        self.kind = kind
        self.listing = listing  # where users find the names, instead of listing them all in errors
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("mnist-fc")``."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        expected = self.listing or f"expected one of: {', '.join(self.names())}"
        if not isinstance(name, str):
            raise BiopropError(f"{self.kind} must be a name ({expected}), got {name!r}")
        raise BiopropError(f"unknown {self.kind} {name!r}{suggest(name, self.names())} ({expected})")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
