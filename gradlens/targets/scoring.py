"""Turning a target into scores: :func:`scores`, the one place where gradlens does it, and
the class-index targets :func:`probability` and :func:`regression`. Class ids are read by
the one parser, :mod:`gradlens.targets.parse`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from ..core.output_selection import OutputSpec, select_output
from ..errors import TargetError
from .parse import class_ids, class_tensor

__all__ = ["Target", "scores", "probability", "regression"]

Target = Union[None, int, Sequence[int], Sequence[Sequence[int]], Tensor, Callable[[Any], Tensor]]


def scores(
    output: Any, target: Target, batch_size: int, output_spec: OutputSpec = None
) -> tuple[Tensor, Tensor | None]:
    """Turn a model output and a target into the scores to explain.

    Args:
        output: the raw model output.
        target: see the module docstring.
        batch_size: ``B``, the number of samples in the input.
        output_spec: see :func:`select_output`; ignored for callable targets, which get
            the raw output.

    Returns:
        ``(scores, classes)``: ``scores`` has shape ``(B,)`` or ``(B, K)`` (``K`` targets per
        sample) and keeps its autograd graph; ``classes`` holds the class indices
        (same shape, ``int64``), or ``None`` for callable targets and 1-D outputs.

    Raises:
        TargetError: a class out of range, a target whose length is not ``B``, ragged
            lists, or a callable returning the wrong shape.
        OutputSelectionError: see :func:`select_output`.
    """
    if callable(target) and not isinstance(target, Tensor):
        value = target(output)
        if (
            not isinstance(value, Tensor)
            or value.ndim not in (1, 2)
            or value.shape[0] != batch_size
        ):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise TargetError(
                f"a callable target must return scores of shape ({batch_size},) -- one per "
                f"sample -- or ({batch_size}, K); it returned {shape}"
            )
        return value, None

    logits = select_output(output, output_spec)
    if logits.shape[0:1] != (batch_size,):
        raise TargetError(
            f"the selected output has shape {tuple(logits.shape)}, but the input holds "
            f"{batch_size} samples; dim 0 of the output must be the batch"
        )
    if logits.ndim == 1:
        if target is not None:
            raise TargetError(
                f"the model returns one number per sample (shape ({batch_size},)); "
                f"use target=None to explain it, not target={target!r}"
            )
        return logits, None
    if logits.ndim == 3:  # (B, T, V): a language model; class targets are read at the end
        logits = logits[:, -1]
    if logits.ndim != 2:
        raise TargetError(
            f"class targets need logits of shape (B, num_classes) or (B, T, vocabulary), got "
            f"{tuple(logits.shape)}; pass a callable target (e.g. "
            f"gradlens.targets.segmentation) for this output"
        )
    num_classes = logits.shape[1]
    if target is None:
        classes = logits.detach().argmax(dim=1)
    else:
        classes = class_tensor(target, batch_size, num_classes, logits.device)
    if classes.ndim == 1:
        return logits.gather(1, classes[:, None])[:, 0], classes
    return logits.gather(1, classes), classes


def probability(
    class_index: int | Sequence[int] | Tensor, output_spec: OutputSpec = None
) -> Callable[[Any], Tensor]:
    """Target the softmax probability (instead of the logit) of a class.

    Returns:
        A callable ``output -> (B,)`` giving ``softmax(logits)[b, class_b]``.

    Raises:
        TargetError: ``class_index`` is not integer class ids (at once); when called, a
            class out of range or of the wrong length.
    """

    ids = class_ids(class_index, "class_index")

    def target(output: Any) -> Tensor:
        logits = select_output(output, output_spec)
        if logits.ndim == 3:  # a language model: the next-token distribution
            logits = logits[:, -1]
        classes = class_tensor(ids, logits.shape[0], logits.shape[1], logits.device)
        probs = torch.softmax(logits, dim=1)
        return probs.gather(1, classes if classes.ndim == 2 else classes[:, None]).squeeze(1)

    return target


def regression(index: int | None = None, output_spec: OutputSpec = None) -> Callable[[Any], Tensor]:
    """Target a regression output.

    Args:
        index: the column of a ``(B, D)`` output; ``None`` for a ``(B,)`` or ``(B, 1)`` output.
        output_spec: picks the tensor out of a structured output (see :func:`select_output`).

    Returns:
        A callable target, ``output -> (B,)`` scores.
    """

    def target(output: Any) -> Tensor:
        values = select_output(output, output_spec)
        if values.ndim == 2 and index is None and values.shape[1] == 1:
            return values[:, 0]
        if index is None:
            return values
        return values[:, index]

    return target
