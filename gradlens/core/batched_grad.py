"""Gradients of one or ``K`` scores per sample in one backward: :func:`batched_grad`, and
:func:`targets_per_backward`, which splits the ``K`` scores into smaller batched backwards.

Used by :meth:`gradlens.Recorder.grad` (and so by every gradient method through
:func:`gradlens.passes.differentiate`); it imports nothing from gradlens, so any module can
use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

__all__ = ["batched_grad", "targets_per_backward"]

_TARGETS_PER_BACKWARD: ContextVar[int | None] = ContextVar("targets_per_backward", default=None)


@contextmanager
def targets_per_backward(count: int | None) -> Iterator[None]:
    """Inside the block, :func:`batched_grad` differentiates at most ``count`` of the ``K``
    scores per sample in one batched backward (``None``: all ``K`` at once, the default).

    A batched backward holds one gradient of every intermediate tensor per score it
    differentiates, so for large ``K`` its peak memory is about ``K`` times a plain
    backward's; chunks of ``count`` scores bound it by ``count`` times, for
    ``ceil(K / count)`` backwards instead of one. The gradients are the same.

    Raises:
        ValueError: ``count`` is not ``None`` or a positive int.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"targets per backward must be a positive int or None, got {count!r}")
    token = _TARGETS_PER_BACKWARD.set(count)
    try:
        yield
    finally:
        _TARGETS_PER_BACKWARD.reset(token)


def batched_grad(
    score: Tensor, tensors: list[Tensor], *, retain_graph: bool = False
) -> list[Tensor | None]:
    """Gradients of ``score`` with respect to ``tensors`` (and nothing else).

    Args:
        score: a scalar; ``(B,)`` per-sample scores (their sum is differentiated); or
            ``(B, K)``, ``K`` scores per sample, differentiated in one batched backward
            (``torch.autograd.grad(..., is_grads_batched=True)``).
        tensors: the tensors to differentiate with respect to; they must require grad.
        retain_graph: keep the graph for another backward.

    Returns:
        One gradient per tensor, shaped like it (with a leading ``K`` dimension for a
        ``(B, K)`` score), or ``None`` for a tensor the score does not depend on.

    Raises:
        RuntimeError: from autograd, when the score cannot be differentiated.

    A backward that vmap cannot batch (a custom ``autograd.Function`` whose backward calls
    ``.item()`` or writes into a new tensor in place) makes the batched backward fail
    part-way, after the nodes nearer the score have run. So the batched backward always
    keeps the graph (``retain_graph=True``) and, if it fails, the ``K`` scores are
    differentiated one at a time; the last of those passes frees the graph unless
    ``retain_graph``. The price: while a batched backward runs, the tensors autograd saved
    for it are not freed node by node but stay until the score is no longer referenced
    (they were all held when the backward started, so the peak grows by at most the
    gradients computed meanwhile); and a later backward through the same graph is not
    refused.
    """
    if score.ndim < 2:
        total = score.sum() if score.ndim == 1 else score
        return list(
            torch.autograd.grad(total, tensors, retain_graph=retain_graph, allow_unused=True)
        )
    batch, k = score.shape
    # grad_outputs[k] selects score[:, k] for every sample: one vmapped backward for all K
    # (or for each chunk of targets_per_backward of them).
    eye = torch.eye(k, dtype=score.dtype, device=score.device)
    grad_outputs = eye[:, None, :].expand(k, batch, k)
    chunk = _TARGETS_PER_BACKWARD.get() or k
    try:
        chunks = [
            torch.autograd.grad(
                score,
                tensors,
                grad_outputs[start : start + chunk],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            for start in range(0, k, chunk)
        ]
    except RuntimeError:
        per_target = [
            torch.autograd.grad(
                score[:, i].sum(),
                tensors,
                retain_graph=retain_graph or i < k - 1,
                allow_unused=True,
            )
            for i in range(k)
        ]
        return [
            None if per_target[0][j] is None else torch.stack([g[j] for g in per_target])
            for j in range(len(tensors))
        ]
    if len(chunks) == 1:
        return list(chunks[0])
    return [
        None if chunks[0][j] is None else torch.cat([g[j] for g in chunks])
        for j in range(len(tensors))
    ]
