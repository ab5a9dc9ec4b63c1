"""One small generic registry, used for student families, teacher architectures and losses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from edgedistill.errors import RecipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a factory. Unknown names fail with the list of known ones.

    Args:
        kind: What is registered ("student", "teacher architecture", ...), used in errors.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a duplicate name is a bug."""

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise :class:`RecipeError` naming the choices."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RecipeError(f"unknown {self.kind} '{name}'; known: {known}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
