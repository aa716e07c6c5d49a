"""One rule for every registry of named entries (models, data sources, augmentation presets).

A :class:`Registry` maps names to objects (usually factory functions). Registering a name twice
is an error unless ``override=True`` (re-registering the very same object is a no-op, so a
re-imported module is harmless). ``names()`` lists entries sorted by name, whatever the order in
which modules registered them. Config validation asks the registries (``train.config``), so an
entry registered by a user's own module (listed under the config key ``plugins``) is accepted
exactly like a built-in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from invlab.config import ConfigError
from invlab.suggest import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one ``kind`` (e.g. ``"data source"``), found by ``get(name)``.

    ``hint`` is appended to the error for an unknown name (e.g. other accepted spellings).
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}

    def add(self, name: str, obj: T, *, override: bool = False) -> T:
        """Register ``obj`` under ``name``; a taken name needs ``override=True``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} needs a non-empty string name, got {name!r}.")
        taken = self._entries.get(name)
        if taken is not None and taken is not obj and not override:
            raise ValueError(
                f"{self.kind.capitalize()} {name!r} is already registered (by "
                f"{_origin(taken)}). Choose another name, or pass override=True to replace it."
            )
        self._entries[name] = obj
        return obj

    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            return self.add(name if name is not None else obj.__name__, obj, override=override)

        return deco

    def remove(self, name: str) -> T:
        """Unregister ``name`` and return its entry (KeyError if absent)."""
        return self._entries.pop(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def unknown(self, name: str, key: str | None = None) -> ConfigError:
        """The error for a name that is not registered: the closest names and every name."""
        where = f" in '{key}'" if key else ""
        return ConfigError(
            f"Unknown {self.kind} {name!r}{where}.{did_you_mean(name, self._entries)} "
            f"Registered: {', '.join(self.names())}.{self.hint} A module of your own can add "
            f"one with this registry's decorator; list it under 'plugins' in the config so that "
            f"it is imported before the config is checked."
        )

    def get(self, name: str, key: str | None = None) -> T:
        """The entry ``name``; else a :class:`ConfigError` naming ``key`` and the closest names."""
        if name not in self._entries:
            raise self.unknown(name, key)
        return self._entries[name]


def _origin(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(obj)
