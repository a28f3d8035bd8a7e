"""One registry pattern for everything pluggable.

An entry is a name mapped to a lazy ``"module:attr"`` path (or an object); heavy dependencies are
imported only when the entry is first used. Third-party packages add entries through the Python
entry-point group of the registry (for example ``medweave.adapters``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the allowed names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.group = entry_point_group
        self._paths: dict[str, str | T] = {}
        self._loaded: dict[str, T] = {}
        self._entry_points_read = False

    def register(self, name: str, target: "str | T") -> None:
        """Register ``target`` (an object, or a lazy ``"module:attr"`` path) under ``name``."""
        self._paths[name] = target
        self._loaded.pop(name, None)

    def _read_entry_points(self) -> None:
        if self._entry_points_read or not self.group:
            return
        self._entry_points_read = True
        for ep in entry_points(group=self.group):
            self._paths.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._read_entry_points()
        return sorted(self._paths)

    def get(self, name: str) -> T:
        self._read_entry_points()
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._paths:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; allowed values: {', '.join(self.names()) or '(none)'}"
            )
        target = self._paths[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            target = obj
        self._loaded[name] = target  # type: ignore[assignment]
        return target  # type: ignore[return-value]

    def __contains__(self, name: str) -> bool:
        self._read_entry_points()
        return name in self._paths
