"""A small name → object registry, so that a new component is one file and one decorator."""

from __future__ import annotations

import fnmatch
import warnings
from typing import Callable, Generic, TypeVar

from dlforge.core.errors import DlforgeError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps public names to components (``@encoders.register("cnn")``).

    ``register`` returns what it decorates, so the decorated name stays usable (Ludwig's
    ``register_config_check`` returned None and silently disabled checks).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                warnings.warn(f"{self.kind} '{name}' registered twice; the later one wins", stacklevel=2)
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            names = ", ".join(sorted(self._items))
            raise DlforgeError(
                f"unknown {self.kind} '{name}'; known: {names}{did_you_mean(name, self._items)}"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def items(self):
        return self._items.items()
