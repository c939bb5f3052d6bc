"""The method registry: ``gradlens.METHODS`` maps a name to ``f(model, x, target=None, **options)``.

CAM methods and gradient attributions register themselves here when their modules are
imported (``import gradlens`` imports them all). The demo, the command line, dataset-scale
attribution and the noise methods look methods up with :func:`get`, the one place where a
name becomes a method; :data:`INFO` carries what callers need to know about each one.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from typing_extensions import Unpack

__all__ = [
    "METHODS",
    "CAM_METHODS",
    "ATTRIBUTION_METHODS",
    "ATTENTION_METHODS",
    "INFO",
    "MethodInfo",
    "Kind",
    "register",
    "get",
    "info",
    "names",
    "accepted_options",
    "check_options",
]

F = TypeVar("F", bound=Callable[..., Any])
Kind = Literal["cam", "attribution", "attention"]

METHODS: dict[str, Callable[..., Any]] = {}
"""Every registered method, name -> function."""

CAM_METHODS: dict[str, Callable[..., Any]] = {}
"""Methods returning class activation maps of shape ``(B, H, W)``."""

ATTRIBUTION_METHODS: dict[str, Callable[..., Any]] = {}
"""Methods returning input-space attributions shaped like the input."""

ATTENTION_METHODS: dict[str, Callable[..., Any]] = {}
"""Methods explaining a transformer through its attention: maps ``(B, H, W)`` for images,
``(B, T)`` for text."""

_FAMILIES: dict[str, dict[str, Callable[..., Any]]] = {
    "cam": CAM_METHODS,
    "attribution": ATTRIBUTION_METHODS,
    "attention": ATTENTION_METHODS,
}


@dataclass(frozen=True)
class MethodInfo:
    """What callers need to know about a registered method.

    Attributes:
        name: the registered name.
        kind: its family, ``"cam"``, ``"attribution"`` or ``"attention"``.
        needs_layer: it takes a ``layer`` argument (the CAMs, Guided Grad-CAM).
        multi_target: it accepts ``K`` targets per sample (a ``(B, K)`` target).
        uses_target: its result depends on the target (Eigen-CAM's does not).
        quick_options: options that make it fast enough for smoke runs (fewer samples,
            steps or window positions), used by the demo's quick mode and the tests.
        transformers: it explains transformers (the LRP composites for CNNs have no
            rules for attention and layer norms: ``False``); the text demo runs only these.
    """

    name: str
    kind: Kind
    needs_layer: bool = False
    multi_target: bool = True
    uses_target: bool = True
    quick_options: Mapping[str, Any] = field(default_factory=dict)
    transformers: bool = True


INFO: dict[str, MethodInfo] = {}
"""name -> :class:`MethodInfo` for every registered method."""


def register(
    name: str,
    kind: Kind,
    *,
    needs_layer: bool | None = None,
    multi_target: bool = True,
    uses_target: bool = True,
    quick_options: Mapping[str, Any] | None = None,
    transformers: bool = True,
) -> Callable[[F], F]:
    """Decorator adding a method to :data:`METHODS`, to its family and to :data:`INFO`.

    Args:
        name: the name users pass (``gradlens cam --method NAME``, ``attribute_dataset``).
        kind: ``"cam"``, ``"attribution"`` or ``"attention"``.
        needs_layer: it takes a ``layer`` argument; defaults to ``True`` for CAMs.
        multi_target: it accepts ``(B, K)`` targets.
        uses_target: its result depends on the target.
        quick_options: options for a fast smoke run (see :class:`MethodInfo`).
        transformers: it explains transformers (see :class:`MethodInfo`).

    Raises:
        ValueError: the name is taken, or ``kind`` is not a known family.
    """
    if kind not in _FAMILIES:
        raise ValueError(f"kind must be one of {', '.join(map(repr, _FAMILIES))}, got {kind!r}")
    family = _FAMILIES[kind]
    entry = MethodInfo(
        name=name,
        kind=kind,
        needs_layer=kind == "cam" if needs_layer is None else needs_layer,
        multi_target=multi_target,
        uses_target=uses_target,
        quick_options=dict(quick_options or {}),
        transformers=transformers,
    )

    def add(function: F) -> F:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        METHODS[name] = family[name] = function
        INFO[name] = entry
        return function

    return add


def get(method: str | Callable[..., Any], kind: Kind | None = None) -> Callable[..., Any]:
    """The registered method called ``method``; a callable is returned as it is.

    Args:
        method: a registered name, or a function with the method signature.
        kind: look only in this family (``"attribution"`` for the noise methods).

    Raises:
        ValueError: no method of that name (in that family); the message lists close
            names and every registered name.
    """
    if callable(method):
        return method
    methods = METHODS if kind is None else _FAMILIES[kind]
    if isinstance(method, str) and method in methods:
        return methods[method]
    what = "method" if kind is None else f"{kind} method"
    hints = difflib.get_close_matches(str(method), list(methods), n=3)
    raise ValueError(
        f"unknown {what} {method!r}"
        + (f"; did you mean {', '.join(map(repr, hints))}?" if hints else "")
        + f" Registered: {', '.join(sorted(methods)) or 'none'}"
    )


def info(method: str) -> MethodInfo:
    """The :class:`MethodInfo` of a registered method (raises like :func:`get`)."""
    get(method)
    return INFO[method]


def names(kind: Kind, *, needs_layer: bool | None = None) -> list[str]:
    """The registered methods of ``kind``, in registration order; with ``needs_layer``,
    only those that do (``True``) or do not (``False``) take a layer of their own (e.g. the
    attributions :func:`gradlens.token_attributions` can run: ``needs_layer=False``)."""
    return [
        name
        for name, entry in INFO.items()
        if entry.kind == kind and (needs_layer is None or entry.needs_layer == needs_layer)
    ]


def accepted_options(method: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword options a method ``f(model, x, ...)`` accepts: its parameters after
    ``model`` and ``x`` that can be passed by keyword (``target`` and ``layer`` included),
    and the keys of a ``**options: Unpack[SomeTypedDict]``; ``None`` when it takes any
    keyword (a ``**kwargs`` not annotated with ``Unpack``) or has no Python signature."""
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):  # e.g. a C function: the call itself will tell
        return None
    names = {p.name for p in parameters[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    catch_all = next((p for p in parameters if p.kind is p.VAR_KEYWORD), None)
    if catch_all is None:
        return frozenset(names)
    try:
        annotation = typing.get_type_hints(method, include_extras=True).get(catch_all.name)
    except (NameError, TypeError):  # annotations that only a type checker can resolve
        return None
    if typing.get_origin(annotation) is not Unpack:
        return None
    (options,) = typing.get_args(annotation)
    return frozenset(names | options.__required_keys__ | options.__optional_keys__)


def check_options(method: Callable[..., Any], options: Mapping[str, Any], *, caller: str) -> None:
    """Raise a clear error, before any work, for options ``method`` does not take.

    Args:
        method: the method the options are passed to.
        options: the keyword options given for it.
        caller: the public function passing them on, named in the message.

    Raises:
        TypeError: an option ``method`` has no parameter for; the message names the method,
            suggests close names and lists the options it takes.
    """
    accepted = accepted_options(method)
    if accepted is None:
        return
    unknown = [name for name in options if name not in accepted]
    if not unknown:
        return
    method_name = getattr(method, "__name__", None) or repr(method)
    hints = difflib.get_close_matches(unknown[0], sorted(accepted), n=3)
    raise TypeError(
        f"{caller} got the option{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(map(repr, unknown))}, which {method_name} does not take"
        + (f"; did you mean {', '.join(map(repr, hints))}?" if hints else ".")
        + f" {method_name} takes: {', '.join(sorted(accepted)) or 'no keyword options'}"
    )
