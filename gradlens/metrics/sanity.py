"""The Spearman rank correlation that the randomisation metrics compare maps with."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["spearman"]


def _ranks(x: Tensor) -> Tensor:
    """Ranks ``0..n-1`` along dim 1 of ``(B, n)``; tied values share their average rank."""
    ranks = torch.empty_like(x, dtype=torch.float64)
    for row, values in enumerate(x):
        sorted_values, order = values.sort(stable=True)
        _, inverse, counts = torch.unique_consecutive(
            sorted_values, return_inverse=True, return_counts=True
        )
        ends = counts.cumsum(0).double()  # one past the last position of each tie group
        average = ends - (counts.double() + 1) / 2
        ranks[row, order] = average[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation between ``a[i]`` and ``b[i]`` for each ``i``.

    The Pearson correlation of the ranks, tied values getting their average rank
    (computed in float64).

    Args:
        a, b: tensors of the same shape ``(B, ...)``; each sample is flattened.

    Returns:
        ``(B,)`` float64 correlations in [-1, 1]; ``nan`` where either sample is constant.

    Raises:
        ValueError: the shapes differ.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    ra = _ranks(a.detach().flatten(1).cpu())
    rb = _ranks(b.detach().flatten(1).cpu())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    # sqrt of the product (not a product of norms) keeps identical rankings at exactly 1.
    denominator = torch.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    return ((ra * rb).sum(1) / denominator).clamp(-1.0, 1.0)
