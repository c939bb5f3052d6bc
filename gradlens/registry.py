"""The method registry: ``gradlens.METHODS`` maps a name to ``f(model, x, target=None, **options)``.

CAM methods and gradient attributions register themselves here when their modules are
imported (``import gradlens`` imports them all). The demo, the command line and
dataset-scale attribution iterate over this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["METHODS", "CAM_METHODS", "ATTRIBUTION_METHODS", "register"]

F = TypeVar("F", bound=Callable[..., Any])

METHODS: dict[str, Callable[..., Any]] = {}
"""Every registered method, name -> function."""

CAM_METHODS: dict[str, Callable[..., Any]] = {}
"""Methods returning class activation maps of shape ``(B, H, W)``."""

ATTRIBUTION_METHODS: dict[str, Callable[..., Any]] = {}
"""Methods returning input-space attributions shaped like the input."""


def register(name: str, kind: str) -> Callable[[F], F]:
    """Decorator adding a method to :data:`METHODS` and to its family (``"cam"`` or ``"attribution"``)."""
    family = {"cam": CAM_METHODS, "attribution": ATTRIBUTION_METHODS}[kind]

    def add(function: F) -> F:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        METHODS[name] = family[name] = function
        return function

    return add
