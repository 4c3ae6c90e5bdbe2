"""The decorator that fills a backend's op table (emitters, lowerings), shared by the backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def registrar(table: dict[str, Any], what: str) -> Callable[..., Callable[[F], F]]:
    """A decorator factory filling a backend's op table (``@emits("add", "sub")``); an op given
    two entries is an error at import."""
    def register(*names: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            for n in names:
                if n in table:
                    raise ValueError(f"op {n!r} has two {what}s")
                table[n] = fn
            return fn
        return deco
    return register


__all__ = ["registrar"]
