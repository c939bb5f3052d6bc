"""How concentrated a map is: sparseness (Gini index), complexity (entropy) and effective
complexity.

These read only the attributions; ``model``, ``inputs`` and ``target`` are taken so that
every metric has the same signature (``inputs`` give the size maps are resized to). Each map
is reduced to one non-negative value per pixel: input-shaped attributions by
:func:`gradlens.maps.to_2d` (the sum of ``|.|`` over channels), ``(B, H, W)`` maps by their
absolute value.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..targets.scoring import Target
from ._common import MetricResult, _maps_like, _normalise, _result

__all__ = ["sparseness", "complexity", "effective_complexity"]


def _magnitudes(inputs: Tensor, attributions: Tensor) -> Tensor:
    """``(B, H * W)`` float64 ``|map|`` per pixel."""
    return _maps_like(inputs, attributions).abs().flatten(1)


@entry_point
def sparseness(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
) -> MetricResult:
    """Sparseness: the Gini index of the map (Chalasani et al., "Concise explanations of
    neural networks using adversarial training", ICML 2020).

    With the ``n = H * W`` pixel magnitudes sorted in increasing order
    ``a_(1) <= ... <= a_(n)``::

        G = sum_i (2 i - n - 1) a_(i) / (n * sum_i a_(i))

    ``G`` is 0 for a uniform map and ``(n - 1) / n`` when all the mass is on one pixel:
    *higher* is sparser (more concise). The index does not depend on the maps' scale, so no
    normalisation is needed.

    Args:
        model: not used (the metric reads only the attributions).
        inputs: ``(B, C, H, W)``; maps are resized to ``(H, W)``.
        attributions: shaped like ``inputs`` or ``(B, h, w)`` maps (module docstring).
        target: not used.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` float64; an all-zero map scores 0.

    Raises:
        ValueError: wrong shapes.
    """
    a = _magnitudes(inputs, attributions).sort(dim=1).values
    n = a.shape[1]
    weights = 2 * torch.arange(1, n + 1, dtype=a.dtype, device=a.device) - n - 1
    total = a.sum(dim=1)
    gini = (weights * a).sum(dim=1) / (n * torch.where(total == 0, 1.0, total))
    return _result(gini)


@entry_point
def complexity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
) -> MetricResult:
    """Complexity: the entropy of the map's share per pixel (Bhatt et al., "Evaluating and
    aggregating feature-based model explanations", IJCAI 2020).

    With ``p_i = |a_i| / sum_j |a_j|`` over the ``n = H * W`` pixels::

        H = -sum_i p_i ln p_i          (0 ln 0 = 0)

    ``H`` is ``ln n`` for a uniform map and 0 for a map on one pixel: *lower* is simpler.

    Args:
        model: not used.
        inputs: ``(B, C, H, W)``; maps are resized to ``(H, W)``.
        attributions: shaped like ``inputs`` or ``(B, h, w)`` maps.
        target: not used.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` float64 in nats; ``nan`` for an
        all-zero map.

    Raises:
        ValueError: wrong shapes.
    """
    a = _magnitudes(inputs, attributions)
    p = a / a.sum(dim=1, keepdim=True)
    terms = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0)
    entropy = -terms.sum(dim=1)
    return _result(torch.where(a.sum(dim=1) > 0, entropy, torch.nan))


@entry_point
def effective_complexity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    eps: float = 1e-5,
) -> MetricResult:
    """Effective complexity: how many pixels matter (Nguyen & Martínez, "On quantitative
    aspects of model interpretability", 2020).

    Each map is normalised by its own largest magnitude, then::

        EC = #{ i : |a_i| / max_j |a_j| > eps }

    *Lower* is simpler.

    Args:
        model: not used.
        inputs: ``(B, C, H, W)``; maps are resized to ``(H, W)``.
        attributions: shaped like ``inputs`` or ``(B, h, w)`` maps.
        target: not used.
        eps: the threshold on the normalised magnitude, ``>= 0``.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` float64 counts (0 for an all-zero map).

    Raises:
        ValueError: wrong shapes or a negative ``eps``.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    a = _normalise(_magnitudes(inputs, attributions))
    return _result((a > eps).sum(dim=1))
