"""Targets: what is being explained, turned into one score per sample (or K per sample).

A *target* says which number of the model output an explanation is about:

* ``None`` -- the top-scoring class of each sample (logits of shape ``(B, num_classes)``),
  or the output itself when the model returns one number per sample (shape ``(B,)``);
* an ``int`` -- that class for every sample;
* a sequence or 1-D tensor of length ``B`` -- one class per sample;
* a ``(B, K)`` tensor or a list of ``B`` lists of ``K`` classes -- ``K`` targets per sample;
* a callable ``output -> scores`` of shape ``(B,)`` (or ``(B, K)``) -- anything else, e.g.
  :func:`segmentation`, :func:`regression`, :func:`probability` below.

:func:`scores` is the single place where gradlens turns a target into scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from .errors import OutputSelectionError, TargetError

__all__ = [
    "Target",
    "OutputSpec",
    "select_output",
    "scores",
    "probability",
    "segmentation",
    "regression",
]

Target = Union[None, int, Sequence[int], Sequence[Sequence[int]], Tensor, Callable[[Any], Tensor]]
OutputSpec = Union[None, int, str, Callable[[Any], Tensor]]


def select_output(output: Any, output_spec: OutputSpec = None) -> Tensor:
    """Pick the logits tensor out of a model output.

    Args:
        output: whatever the model returned: a tensor, tuple/list, dict or dataclass.
        output_spec: ``None`` (the output must be a tensor), an index (tuple/list), a key
            (dict, or attribute name of a dataclass / HF-style output) or a function
            ``output -> tensor``.

    Returns:
        The selected tensor.

    Raises:
        OutputSelectionError: the output is structured and no ``output_spec`` was given,
            or the spec does not exist in it, or it does not lead to a tensor.
    """
    if output_spec is None:
        if isinstance(output, Tensor):
            return output
        raise OutputSelectionError(
            f"the model returned a {type(output).__name__}, not a tensor; pass output= "
            f"(an index, a key or a function) to say which part holds the scores"
            f"{_describe_structure(output)}, or pass a callable target"
        )
    if callable(output_spec):
        selected = output_spec(output)
    else:
        try:
            if isinstance(output, Mapping):
                selected = output[output_spec]
            elif isinstance(output, Sequence) and isinstance(output_spec, int):
                selected = output[output_spec]
            elif dataclasses.is_dataclass(output) and isinstance(output_spec, str):
                selected = getattr(output, output_spec)
            else:
                raise TypeError(f"cannot index a {type(output).__name__}")
        except (KeyError, IndexError, AttributeError, TypeError) as exc:
            raise OutputSelectionError(
                f"output={output_spec!r} does not exist in the model output"
                f"{_describe_structure(output)}"
            ) from exc
    if not isinstance(selected, Tensor):
        raise OutputSelectionError(
            f"output={output_spec!r} selected a {type(selected).__name__}, not a tensor"
        )
    return selected


def _describe_structure(output: Any) -> str:
    if isinstance(output, Mapping):
        return f" (keys: {', '.join(map(repr, output.keys()))})"
    if dataclasses.is_dataclass(output):
        names = [f.name for f in dataclasses.fields(output)]
        return f" (fields: {', '.join(names)})"
    if isinstance(output, (tuple, list)):
        kinds = [type(o).__name__ for o in output]
        return f" (items 0..{len(output) - 1}: {', '.join(kinds)})"
    return ""


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
    if logits.ndim != 2:
        raise TargetError(
            f"class targets need logits of shape (B, num_classes), got {tuple(logits.shape)}; "
            f"pass a callable target (e.g. gradlens.targets.segmentation) for this output"
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
        classes = _class_tensor(class_index, logits.shape[0], logits.shape[1], logits.device)
        probs = torch.softmax(logits, dim=1)
        return probs.gather(1, classes if classes.ndim == 2 else classes[:, None]).squeeze(1)

    return target


def segmentation(
    class_index: int, mask: Tensor | None = None, output_spec: OutputSpec = None
) -> Callable[[Any], Tensor]:
    """Target the summed logit of one class over a region of a segmentation output.

    Args:
        class_index: the class channel ``c`` of an output of shape ``(B, C, H, W)``.
        mask: optional ``(H, W)`` or ``(B, H, W)`` weights (bool or float); ``None`` sums
            over every pixel.
        output_spec: picks the logits out of a structured output (``"out"`` for
            torchvision's segmentation models).

    Returns:
        A callable ``output -> (B,)``.
    """

    def target(output: Any) -> Tensor:
        logits = select_output(output, output_spec)
        channel = logits[:, class_index]
        if mask is not None:
            channel = channel * mask.to(channel.device, channel.dtype)
        return channel.flatten(1).sum(1)

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
