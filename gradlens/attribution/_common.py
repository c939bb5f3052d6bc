"""Helpers shared by the attribution methods: floating-point inputs, results, layers.

Layout convention: when the methods evaluate the model on ``k`` modified copies of a batch of
``B`` samples (noisy copies, interpolation steps, occluded copies) the copies are stacked
*copy-major*: row ``j * B + b`` is copy ``j`` of sample ``b`` -- the layout of
:meth:`ModelInput.tile <gradlens.core.inputs.ModelInput.tile>`, for which
:func:`gradlens.targets.parse.repeat_target` tiles the targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from ..core.inputs import ModelInput

Attribution = Union[Tensor, tuple[Tensor | None, ...], dict[str, Tensor | None]]
"""A tensor shaped like the input, or for a tuple input a tuple of them (``None`` for
inputs that are not floating point), or for a mapping input a dict with its keys."""


def float_positions(args: Sequence[Any]) -> list[int]:
    """Indices of the floating-point tensors among the positional inputs."""
    return [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.is_floating_point()]


def require_float_inputs(args: Sequence[Any], method: str) -> list[int]:
    """:func:`float_positions`, raising when there is none to attribute to."""
    positions = float_positions(args)
    if not positions:
        kinds = ", ".join(str(a.dtype) if isinstance(a, Tensor) else type(a).__name__ for a in args)
        raise TypeError(
            f"{method} attributes to floating-point inputs, and the model input holds none "
            f"({kinds}); "
            "for token ids use gradlens.token_attributions (one score per token), or "
            "attribute to the embedding layer yourself "
            "(gradlens.attribution.layer_integrated_gradients or layer_gradient_x_activation)"
        )
    return positions


def as_result(inputs: ModelInput, per_input: Mapping[int, Tensor]) -> Attribution:
    """A tensor for a single-tensor input, else a tuple aligned with the inputs (``None``
    for inputs without an attribution)."""
    result = inputs.rebuild([per_input.get(i) for i in range(len(inputs.args))])
    # a single input has an attribution: every method first requires a floating-point input
    assert result is not None
    return result


def targets_first_to_dim1(gradient: Tensor, multi: bool) -> Tensor:
    """Move the leading target dim ``K`` of a ``(K, B, ...)`` gradient to dim 1."""
    return gradient.movedim(0, 1) if multi else gradient


def gradient_or_zeros(gradient: Tensor | None, like: Tensor, scores: Tensor) -> Tensor:
    """A gradient as the Recorder returns it (``(K, *like.shape)`` for ``(B, K)`` scores), or
    zeros of that shape where the scores do not depend on the input (``None``)."""
    if gradient is not None:
        return gradient
    return like.new_zeros((scores.shape[1], *like.shape) if scores.ndim == 2 else like.shape)


def broadcast_to_input(value: Any, like: Tensor, name: str) -> Tensor:
    """A number, or a tensor shaped like one sample, one-sample batch or the whole batch,
    as a tensor of ``like``'s shape, dtype and device."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full_like(like, value)
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a number, a tensor or a callable, got {type(value).__name__}"
        )
    tensor = value.to(device=like.device, dtype=like.dtype)
    if tensor.shape == like.shape[1:]:
        tensor = tensor.unsqueeze(0)
    try:
        return tensor.expand_as(like)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not fit the input of shape "
            f"{tuple(like.shape)}: give one sample {tuple(like.shape[1:])}, "
            f"(1, *sample) or the whole batch {tuple(like.shape)}"
        ) from None
