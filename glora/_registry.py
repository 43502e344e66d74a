"""A name -> object registry filled by the modules of one package (execution paths, data sources).

Every module of the package is imported the first time the registry is read, so adding an entry is adding a module
to that package: nothing else lists the modules.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of package ``package`` (its modules register on import), called ``what`` in error messages."""

    def __init__(self, package: str, what: str) -> None:
        self.package, self.what = package, what
        self._entries: dict[str, T] = {}
        self._loaded = False

    def add(self, name: str, entry: T, same: Callable[[T, T], bool] = lambda a, b: a is b) -> None:
        """Register ``entry`` as ``name``; a second, different entry under one name is an error."""
        if not name:
            raise ValueError(f"a {self.what} needs a name")
        if name in self._entries and not same(self._entries[name], entry):
            raise ValueError(f"a {self.what} named {name!r} is already registered")
        self._entries[name] = entry

    def entries(self) -> dict[str, T]:
        """Every registered entry, the package's modules imported first."""
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{info.name}")
        return self._entries

    def get(self, name: str, allowed: str) -> T:
        """The entry ``name``; unknown: ``ValueError`` naming ``allowed`` (the listing the user may choose from)."""
        try:
            return self.entries()[name]
        except KeyError:
            raise ValueError(f"{self.what} must be one of {allowed}; got {name!r}") from None
