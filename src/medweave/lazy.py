"""Lazy package exports (PEP 562): a package names what it offers without importing it.

``medweave.vqa`` offers ``Answerer`` (torch) and ``medweave.draft`` offers its drafters (scikit-learn,
the observation labeller); importing those at package import time made every ``medweave ... --help``
pay for torch. A package ``__init__`` instead says::

    __getattr__, __dir__ = lazy_exports(__name__, {"Answerer": ".model", "load_vqa": ".data"})

and ``from medweave.vqa import Answerer`` imports ``medweave.vqa.model`` on first use. Submodules
(``medweave.vqa.model``) stay reachable as attributes too.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each exported name maps to the relative module
    that defines it; the value is cached in the package on first access."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
