"""Parsing targets and turning them into scores: :func:`scores`, the one place where gradlens
does it, and the class-index targets :func:`probability` and :func:`regression`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from ..core.output_selection import OutputSpec, select_output
from ..errors import TargetError

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
        classes = _class_tensor(target, batch_size, num_classes, logits.device)
    if classes.ndim == 1:
        return logits.gather(1, classes[:, None])[:, 0], classes
    return logits.gather(1, classes), classes


def _class_tensor(
    target: Target, batch_size: int, num_classes: int, device: torch.device
) -> Tensor:
    """Class indices of shape ``(B,)`` or ``(B, K)`` for an int, sequence or tensor target."""
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index, got the bool {target}")
    if isinstance(target, int):
        classes = torch.full((batch_size,), target, dtype=torch.long)
    else:
        if isinstance(target, Tensor):
            if target.is_floating_point() or target.is_complex():
                raise TargetError(
                    f"a target tensor must hold integer class indices, got {target.dtype}"
                )
            with torch.inference_mode(False):  # an ordinary copy, also of an inference tensor
                classes = target.detach().to("cpu", torch.long, copy=True)
            if classes.ndim == 0:
                classes = classes.expand(batch_size)
        else:
            try:
                rows = list(target)  # type: ignore[arg-type]
            except TypeError:
                raise TargetError(
                    f"target must be None, an int, a sequence of ints, a (B, K) tensor or a "
                    f"callable, got {type(target).__name__}"
                ) from None
            nested = [
                r for r in rows if isinstance(r, (Sequence, Tensor)) and not isinstance(r, str)
            ]
            if nested:
                lengths = {len(r) for r in nested}
                if len(lengths) > 1:
                    raise TargetError(
                        f"every sample needs the same number of targets; got lists of "
                        f"lengths {sorted(lengths)}"
                    )
            try:
                classes = torch.as_tensor(rows, dtype=torch.long)
            except (TypeError, ValueError) as exc:
                raise TargetError(
                    f"could not read target {target!r} as class indices: {exc}"
                ) from None
        if classes.ndim not in (1, 2) or classes.shape[0] != batch_size:
            raise TargetError(
                f"target has shape {tuple(classes.shape)}; expected ({batch_size},) for one "
                f"class per sample or ({batch_size}, K) for K classes per sample"
            )
    bad = (classes < 0) | (classes >= num_classes)
    if bad.any():
        raise TargetError(
            f"class index {int(classes[bad][0])} is out of range: the model has "
            f"{num_classes} classes, so valid targets are 0..{num_classes - 1}"
        )
    return classes.to(device)


def probability(
    class_index: int | Sequence[int] | Tensor, output_spec: OutputSpec = None
) -> Callable[[Any], Tensor]:
    """Target the softmax probability (instead of the logit) of a class.

    Returns:
        A callable ``output -> (B,)`` giving ``softmax(logits)[b, class_b]``.
    """

    def target(output: Any) -> Tensor:
        logits = select_output(output, output_spec)
        if logits.ndim == 3:  # a language model: the next-token distribution
            logits = logits[:, -1]
        classes = _class_tensor(class_index, logits.shape[0], logits.shape[1], logits.device)
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


def _ids(values: int | Sequence[int] | Sequence[Sequence[int]] | Tensor, name: str) -> Tensor:
    """Integer ids as a 1-D or 2-D int64 CPU tensor (an ordinary copy), checked."""
    try:
        with torch.inference_mode(False):  # an ordinary copy, also of an inference tensor
            tensor = torch.as_tensor(values).detach().to("cpu", copy=True)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(
            f"{name} must be integer ids: an int, a list or a tensor, got {values!r}"
        ) from None
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TargetError(f"{name} must hold integer ids, got {tensor.dtype}")
    if tensor.ndim > 2 or tensor.numel() == 0:
        raise TargetError(f"{name} must be 1-D or 2-D and not empty, got {tuple(tensor.shape)}")
    return tensor.long()


def _per_row(classes: Tensor, rows: int, num_classes: int, device: torch.device) -> Tensor:
    """Per-sample classes ``(S,)`` or ``(S, K)`` for ``rows`` output rows: repeated copy-major
    when the output holds ``n`` stacked copies of the ``S`` samples, then checked."""
    samples = classes.shape[0]
    if rows != samples:
        if rows % samples:
            raise TargetError(
                f"the target has {samples} samples, but the model output holds {rows} rows; "
                f"give one entry per sample"
            )
        classes = classes.repeat(rows // samples, *([1] * (classes.ndim - 1)))
    return _class_tensor(classes, rows, num_classes, device)
