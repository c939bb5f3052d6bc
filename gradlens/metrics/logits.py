"""Metrics for activation patching: the logit difference and its normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.output_selection import OutputSpec, select_output
from ..errors import TargetError
from ..targets.parse import class_ids, in_range, per_sample

__all__ = ["logit_difference", "normalized"]


def logit_difference(
    correct: int | Sequence[int] | Tensor,
    wrong: int | Sequence[int] | Tensor,
    *,
    position: int | None = -1,
    output: OutputSpec = None,
) -> Callable[[Any], Tensor]:
    """A patching metric: the logit of the correct answer minus that of the wrong one.

    For :func:`gradlens.activation_patching` and :func:`gradlens.attribution_patching`,
    e.g. ``logit_difference(tok(" Mary"), tok(" John"))`` for the indirect-object task
    (Wang et al. 2022).

    Args:
        correct: the correct class or token id: one for all samples, or one per sample.
        wrong: the wrong one, likewise.
        position: for ``(B, T, V)`` language-model logits, the token position whose
            logits are compared (default the last); ignored for ``(B, K)`` logits.
        output: picks the logits out of a structured output (e.g. ``"logits"`` for a
            Hugging Face ``ModelOutput``; see :func:`gradlens.targets.select_output`).

    Returns:
        ``metric(output) -> (B,)``, differentiable.

    Raises:
        TargetError: (at once) ``correct`` or ``wrong`` is not integer ids (a float, a bool);
            (when called) a per-sample index list whose length is not ``B``, an
            index out of range, or logits that are neither ``(B, K)`` nor ``(B, T, V)``.
    """

    ids = {"correct": class_ids(correct, "correct"), "wrong": class_ids(wrong, "wrong")}

    def metric(model_output: Any) -> Tensor:
        logits = select_output(model_output, output)
        if logits.ndim == 3 and position is not None:
            logits = logits[:, position]
        if logits.ndim != 2:
            raise TargetError(
                f"logit_difference needs logits of shape (B, K) or (B, T, V); got "
                f"{tuple(logits.shape)} (position={position!r})"
            )
        picked = [
            logits.gather(1, _column(ids[name], logits, name))[:, 0]
            for name in ("correct", "wrong")
        ]
        return picked[0] - picked[1]

    return metric


def normalized(
    metric: Callable[[Any], Tensor], clean_output: Any, corrupted_output: Any
) -> Callable[[Any], Tensor]:
    """A patching metric rescaled so that the corrupted run scores 0 and the clean run 1.

    ``(metric(output) - metric(corrupted)) / (metric(clean) - metric(corrupted))``, per
    sample for a per-sample metric, so that :func:`gradlens.activation_patching` reads as
    "the fraction of the clean behaviour this patch restores".

    Args:
        metric: ``metric(output) -> (B,) or scalar``, e.g. :func:`logit_difference`.
        clean_output: the model's output on the clean input.
        corrupted_output: its output on the corrupted input.

    Returns:
        ``normalized_metric(output)``, of the shape ``metric`` returns.

    Raises:
        ValueError: the metric does not differ between the clean and corrupted outputs
            (for some sample), so there is nothing to normalise by.
    """
    with torch.no_grad():
        clean_value = metric(clean_output).detach()
        corrupted_value = metric(corrupted_output).detach()
    gap = clean_value - corrupted_value
    if bool((gap == 0).any()):
        raise ValueError(
            "the metric has the same value on the clean and the corrupted output "
            f"({clean_value.tolist()}), so it cannot be normalised: choose inputs (or a "
            "metric) on which the model's behaviour differs"
        )

    def normalized_metric(model_output: Any) -> Tensor:
        return (metric(model_output) - corrupted_value) / gap

    return normalized_metric


def _column(ids: Tensor, logits: Tensor, name: str) -> Tensor:
    """``(B, 1)`` ids for ``(B, K)`` logits: one id for all samples, or one per sample."""
    n, k = logits.shape
    flat = ids.reshape(-1)
    if flat.numel() == 1:  # one id for every sample
        flat = flat.reshape(())
    column = in_range(per_sample(flat, n, name), k, name)
    return column.to(logits.device)[:, None]
