"""Checks on what a user hands to gradlens, made before any hook is registered.

* :func:`check_model` -- the model is an ``nn.Module`` (a :class:`~gradlens.errors.InputTypeError`
  naming what it got, not an ``AttributeError`` from deep inside);
* :func:`check_value` -- an input is not a NumPy array or a list of numbers where a tensor
  is needed (an ``InputTypeError`` saying "pass a torch.Tensor (torch.from_numpy(...))");
* :func:`check_inputs` -- both of the above on a model input and its parts;
* :func:`warn_non_finite` -- one ``UserWarning`` per call naming the inputs that hold NaN
  or inf (the maps are computed all the same);
* :func:`entry_point` -- the decorator of the public functions that take a model: checks
  the model and opens the call's scope, so that methods calling other methods (SmoothGrad
  calls saliency on noisy copies, the metrics run the model in chunks) warn once per user
  call, not once per inner call.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from numbers import Number
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from ..errors import InputTypeError

__all__ = [
    "check_model",
    "check_value",
    "check_inputs",
    "labelled",
    "warn_non_finite",
    "one_call",
    "entry_point",
]

F = TypeVar("F", bound=Callable[..., Any])

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class _Call:
    """The state of one user call: whether its non-finite warning has been given."""

    warned: bool = False


_CALL: ContextVar[_Call | None] = ContextVar("gradlens_call", default=None)


def check_model(model: Any, name: str = "model") -> None:
    """Raise unless ``model`` is an ``nn.Module``.

    Raises:
        InputTypeError: (a ``TypeError``) naming the type given.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(
            f"{name} must be a torch.nn.Module, got {_describe(model)}; pass the module "
            f"itself (not its output, a state_dict or a bound method)"
        )


def check_value(value: Any, name: str, *, numbers: bool = True) -> None:
    """Raise for a NumPy array (or anything else with ``__array__`` that is not a tensor)
    or, with ``numbers``, a list of numbers given as a model input.

    Lists of tensors (the images of a torchvision detector), tuples and mappings pass (a
    tuple's items may be any positional argument of the model, e.g. a list of sizes).

    Raises:
        InputTypeError: (a ``TypeError``) saying "pass a torch.Tensor (torch.from_numpy(...))".
    """
    if isinstance(value, Tensor):
        return
    if hasattr(value, "__array__") or (
        numbers and isinstance(value, list) and _is_number_list(value)
    ):
        given = "a list of numbers" if isinstance(value, list) else _describe(value)
        raise InputTypeError(
            f"{name} is {given}, not a tensor: pass a torch.Tensor (torch.from_numpy(...)); "
            f"for a list of numbers, torch.tensor(...)"
        )


def _is_number_list(value: Any) -> bool:
    """A non-empty (nested) list of Python numbers."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, Number) or _is_number_list(v) for v in value)
    )


def _describe(value: Any) -> str:
    kind = type(value)
    where = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a {where}{kind.__qualname__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a {where}{kind.__qualname__}"


def check_inputs(
    inputs: Mapping[str, Any], forward_kwargs: Mapping[str, Any] | None = None
) -> None:
    """Check model inputs: :func:`check_value` on each input and its parts, then
    :func:`warn_non_finite` on them and on ``forward_kwargs``.

    Args:
        inputs: ``{argument name: model input}``, e.g. ``{"x": x}`` or
            ``{"clean": clean, "corrupted": corrupted}``.
        forward_kwargs: the further keyword inputs (checked for NaN and inf only).

    Raises:
        InputTypeError: see :func:`check_value`.
    """
    parts = []
    for name, x in inputs.items():
        check_value(x, name)
        for label, value in labelled(x, name):
            check_value(value, label, numbers=False)
            parts.append((label, value))
    warn_non_finite([*parts, *labelled(forward_kwargs or {}, "forward_kwargs")])


def labelled(x: Any, name: str) -> list[tuple[str, Any]]:
    """A model input's parts with the names messages give them: ``[("x", x)]`` for one
    input, ``x[0], x[1], ...`` for a tuple, ``x['pixel_values'], ...`` for a mapping."""
    if isinstance(x, Mapping):
        return [(f"{name}[{k!r}]", v) for k, v in x.items()]
    if isinstance(x, tuple):
        return [(f"{name}[{i}]", v) for i, v in enumerate(x)]
    return [(name, x)]


def warn_non_finite(named: Sequence[tuple[str, Any]]) -> None:
    """One ``UserWarning`` naming the floating-point tensors of ``named`` that hold NaN or
    inf; nothing if there are none, or if this user call has warned already.

    Args:
        named: ``(argument name, value)`` pairs; values other than floating-point tensors
            (and lists of them) are skipped.
    """
    call = _CALL.get()
    if call is not None and call.warned:
        return
    found = [(name, kind) for name, value in named for kind in _non_finite(value)]
    if not found:
        return
    if call is not None:
        call.warned = True
    names = sorted({name for name, _ in found})
    kinds = " and ".join(k for k in ("NaN", "inf") if any(kind == k for _, kind in found))
    inputs = (
        f"the input {names[0]} holds" if len(names) == 1 else f"the inputs {', '.join(names)} hold"
    )
    warnings.warn(
        f"{inputs} {kinds} values; the model's output, and the maps computed from it, may "
        f"be NaN or meaningless",
        UserWarning,
        stacklevel=_user_stacklevel(),
    )


def _non_finite(value: Any) -> list[str]:
    """``"NaN"`` and/or ``"inf"`` when the tensor(s) hold them."""
    tensors = value if isinstance(value, list) else [value]
    kinds = []
    for t in tensors:
        if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex()):
            t = t.detach()
            if bool(torch.isfinite(t).all()):
                continue
            if "NaN" not in kinds and bool(torch.isnan(t).any()):
                kinds.append("NaN")
            if "inf" not in kinds and bool(torch.isinf(t).any()):
                kinds.append("inf")
    return kinds


def _user_stacklevel() -> int:
    """The stack level of the first frame outside gradlens, for ``warnings.warn``."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level += 1
        frame = frame.f_back  # type: ignore[assignment]
    return level


@contextlib.contextmanager
def one_call() -> Iterator[None]:
    """The scope of one user call: inner gradlens calls share it (and its one warning)."""
    if _CALL.get() is not None:
        yield
        return
    token = _CALL.set(_Call())
    try:
        yield
    finally:
        _CALL.reset(token)


def entry_point(function: F) -> F:
    """Decorate a public function with a ``model`` parameter: the model is checked
    (:func:`check_model`) and the call opens :func:`one_call`."""
    position = function.__code__.co_varnames.index("model")

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        check_model(args[position] if len(args) > position else kwargs.get("model"))
        with one_call():
            return function(*args, **kwargs)

    return cast(F, call)
