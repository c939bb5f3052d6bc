"""Calling a model on user inputs: tuple inputs, keyword inputs, inference-mode tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

Inputs = Any  # a tensor, or a tuple of positional inputs


def as_args(x: Inputs) -> tuple[Any, ...]:
    """Positional arguments for ``model(*args)``: a tuple is unpacked, anything else is one argument."""
    return tuple(x) if isinstance(x, tuple) else (x,)


def usable(value: Any) -> Any:
    """An ordinary copy of a tensor made under ``torch.inference_mode()`` (which autograd
    cannot use); anything else is returned unchanged."""
    if isinstance(value, Tensor) and value.is_inference():
        with torch.inference_mode(False):
            return value.clone()
    return value


def prepare(
    x: Inputs, forward_kwargs: Mapping[str, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` ready for ``model(*args, **kwargs)``, without inference tensors."""
    args = tuple(usable(a) for a in as_args(x))
    kwargs = {k: usable(v) for k, v in (forward_kwargs or {}).items()}
    return args, kwargs


def batch_size(x: Inputs) -> int:
    """``B``: dim 0 of the first tensor among the inputs."""
    for a in as_args(x):
        if isinstance(a, Tensor) and a.ndim > 0:
            return int(a.shape[0])
    raise TypeError("cannot find the batch size: no tensor among the inputs")


def first_tensor(x: Inputs) -> Tensor:
    """The first tensor among the inputs (whose device and spatial size results follow)."""
    for a in as_args(x):
        if isinstance(a, Tensor):
            return a
    raise TypeError("no tensor among the inputs")
