"""A name -> object registry used for benchmarks, models, criteria and losses."""
from __future__ import annotations

import contextlib
from typing import Callable, Generic, Iterator, TypeVar

from indistill.common.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """Raised for a name that is not registered; the message lists the allowed names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps stable string names to objects (factories, specs, functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(item: T) -> T:
            self._add(name, item)
            return item

        return decorator

    @contextlib.contextmanager
    def registered(self, name: str, obj: T) -> Iterator[T]:
        """``obj`` registered as ``name`` inside the ``with`` block only (e.g. a benchmark a test builds)."""
        self._add(name, obj)
        try:
            yield obj
        finally:
            del self._items[name]

    def _add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def _unknown(self, name: object) -> str:
        return f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}"

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self._unknown(name)) from None

    def check(self, name: object, field: str) -> T:
        """What ``name`` is registered as, where ``name`` is the value of config field ``field``.

        Anything else (an unknown name, a value that is not a string) raises a one-line
        :class:`ConfigError`: ``<field>: unknown <kind> <name>; choose from: <names>``.
        """
        if not isinstance(name, str) or name not in self._items:
            raise ConfigError(f"{field}: {self._unknown(name)}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
