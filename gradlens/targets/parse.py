"""The one parser of class-index targets: every method, target and metric reads class ids here.

Class ids are integers: a Python ``int``, a sequence of ints (one per sample), ``B`` lists
of ``K`` ints, or an integer tensor. Floats (also a whole ``2.0`` or a float tensor) and
bools (``True``, a bool tensor) are refused with a :class:`~gradlens.errors.TargetError`
rather than truncated or read as 0/1.

* :func:`class_ids` -- any of those as an int64 CPU tensor (0-D, 1-D or 2-D);
* :func:`per_sample` -- a ``(B,)`` or ``(B, K)`` tensor of them, checked against ``B``;
* :func:`in_range` -- checked against the number of classes;
* :func:`class_tensor` -- the three together, on a device (what :func:`~.scores.scores` uses);
* :func:`per_row` -- repeated for an output holding stacked copies of the batch;
* :func:`check_target` / :func:`repeat_target` / :func:`target_rows` -- a whole target
  (``None``, class ids or a callable) checked up front, tiled for stacked copies, or sliced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from ..errors import TargetError

__all__ = [
    "ClassIds",
    "CheckedTarget",
    "class_ids",
    "per_sample",
    "in_range",
    "class_tensor",
    "per_row",
    "check_target",
    "repeat_target",
    "target_rows",
]

ClassIds = Union[int, Sequence[int], Sequence[Sequence[int]], Tensor]
"""Class (or token) ids: an int, ``B`` ints, ``B`` lists of ``K`` ints, or an integer tensor."""

CheckedTarget = Union[None, int, Tensor, Callable[[Any], Tensor]]
"""What :func:`check_target` returns: ``None``, an ``int``, an int64 tensor or a callable."""

_EXPECTED = (
    "class indices are integers: give an int, a sequence of ints, B lists of K ints or an "
    "integer tensor"
)


def class_ids(value: Any, name: str = "target") -> Tensor:
    """Read integer class ids.

    Args:
        value: an ``int``, a (nested) sequence of ints, or an integer tensor (any device,
            also an inference tensor).
        name: what the value is called in error messages (``"target"``, ``"continuation_ids"``).

    Returns:
        An ordinary int64 CPU tensor of shape ``()``, ``(N,)`` or ``(N, K)`` (a copy).

    Raises:
        TargetError: a float or a bool (a Python value, in a sequence, or a tensor's dtype),
            ragged or non-numeric sequences, more than two dimensions, or no ids at all.
    """
    if _holds_bool(value):
        raise TargetError(f"{name} holds a bool ({value!r}); {_EXPECTED}")
    if isinstance(value, Tensor):
        ids = value
    else:
        try:
            ids = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TargetError(_unreadable(value, name, exc)) from None
    if ids.ndim > 2 or (ids.ndim > 0 and ids.numel() == 0):
        raise TargetError(
            f"{name} has shape {tuple(ids.shape)}; expected one id, (B,) or (B, K) ids"
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        given = (
            f"a {ids.dtype} tensor"
            if isinstance(value, Tensor)
            else f"the {type(value).__name__} {value!r}"
        )
        raise TargetError(f"{name} must hold integer ids, got {given}; {_EXPECTED}")
    with torch.inference_mode(False):  # an ordinary copy, also of an inference tensor
        return ids.detach().to("cpu", torch.long, copy=True)


def _holds_bool(value: Any) -> bool:
    """A Python bool, also inside (nested) lists and tuples."""
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    return isinstance(value, bool)


def _unreadable(value: Any, name: str, exc: Exception) -> str:
    rows = value if isinstance(value, Sequence) and not isinstance(value, str) else ()
    lengths = {len(r) for r in rows if isinstance(r, (Sequence, Tensor)) and not isinstance(r, str)}
    if len(lengths) > 1:
        return (
            f"every sample needs the same number of targets; {name} holds lists of lengths "
            f"{sorted(lengths)}"
        )
    return f"could not read {name}={value!r} as class indices ({exc}); {_EXPECTED}"


def per_sample(ids: Tensor, batch: int, name: str = "target") -> Tensor:
    """Class ids per sample: one id for all samples is expanded to ``(B,)``.

    Args:
        ids: the output of :func:`class_ids`.
        batch: ``B``.
        name: as in :func:`class_ids`.

    Returns:
        ``(B,)`` (one class per sample) or ``(B, K)`` (``K`` classes per sample).

    Raises:
        TargetError: dim 0 is not ``B``.
    """
    if ids.ndim == 0:
        return ids.expand(batch)
    if ids.shape[0] != batch:
        raise TargetError(
            f"{name} has shape {tuple(ids.shape)}; expected ({batch},) for one class per "
            f"sample or ({batch}, K) for K classes per sample"
        )
    return ids


def in_range(ids: Tensor, num_classes: int, name: str = "target") -> Tensor:
    """``ids``, checked to lie in ``0 .. num_classes - 1``.

    Raises:
        TargetError: an id out of range (the message names the first).
    """
    bad = (ids < 0) | (ids >= num_classes)
    if bad.any():
        where = "" if name == "target" else f"{name}: "
        raise TargetError(
            f"{where}class index {int(ids[bad][0])} is out of range: the model has {num_classes} "
            f"classes, so valid targets are 0..{num_classes - 1}"
        )
    return ids


def class_tensor(
    target: ClassIds, batch: int, num_classes: int, device: torch.device, name: str = "target"
) -> Tensor:
    """Class ids ``(B,)`` or ``(B, K)`` on ``device``, read, shaped and range-checked.

    Raises:
        TargetError: see :func:`class_ids`, :func:`per_sample` and :func:`in_range`.
    """
    ids = per_sample(class_ids(target, name), batch, name)
    return in_range(ids, num_classes, name).to(device)


def per_row(ids: Tensor, rows: int, num_classes: int, device: torch.device, name: str) -> Tensor:
    """Per-sample ids ``(S,)`` or ``(S, K)`` for an output of ``rows`` rows that holds
    ``rows / S`` stacked copies of the ``S`` samples (repeated copy-major), range-checked.

    Raises:
        TargetError: ``rows`` is not a multiple of ``S``, or an id is out of range.
    """
    samples = ids.shape[0]
    if rows != samples:
        if rows % samples:
            raise TargetError(
                f"{name} has {samples} samples, but the model output holds {rows} rows; "
                f"give one entry per sample"
            )
        ids = ids.repeat(rows // samples, *([1] * (ids.ndim - 1)))
    return class_tensor(ids, rows, num_classes, device, name)


def check_target(target: Any, batch: int) -> CheckedTarget:
    """Check a target before anything runs: callables and ``None`` pass, class ids are read.

    Methods call this first, before a hook is registered or the model runs, so a float,
    bool or wrongly sized target fails at once, and a per-sample target is checked against
    the batch rather than against the stacked copies a method may evaluate. Class ranges
    need the model output and are checked later (:func:`gradlens.targets.scores`).

    Args:
        target: see :mod:`gradlens.targets`.
        batch: ``B``, the number of samples.

    Returns:
        ``None``, a callable (unchanged), an ``int``, or an int64 tensor ``(B,)`` or ``(B, K)``.

    Raises:
        TargetError: see :func:`class_ids` and :func:`per_sample`.
    """
    if target is None or (callable(target) and not isinstance(target, Tensor)):
        return target
    ids = class_ids(target)
    if ids.ndim == 0:
        return int(ids)
    return per_sample(ids, batch)


def repeat_target(target: Any, batch: int, times: int) -> CheckedTarget:
    """The target for an input repeated ``times`` times along dim 0 (``x.repeat(times, ...)``).

    Returns:
        Per-sample class ids (checked against ``batch`` first) tiled copy-major to
        ``(times * B,)`` or ``(times * B, K)``; an ``int``, ``None`` or a callable unchanged.

    Raises:
        TargetError: see :func:`check_target`.
    """
    checked = check_target(target, batch)
    if not isinstance(checked, Tensor):
        return checked
    return checked.repeat(times, *([1] * (checked.ndim - 1)))


def target_rows(target: Any, batch: int, start: int, stop: int) -> CheckedTarget:
    """The part of a target for samples ``start:stop`` of a batch of ``batch`` (for
    methods and metrics that run the batch in chunks).

    Returns:
        Per-sample class ids ``[start:stop]``; an ``int``, ``None`` or a callable unchanged.

    Raises:
        TargetError: see :func:`check_target`.
    """
    checked = check_target(target, batch)
    if not isinstance(checked, Tensor):
        return checked
    return checked[start:stop]
