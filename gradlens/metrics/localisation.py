"""Does the map fall on the object? Attribution localisation, top-k intersection, relevance
rank and mass accuracy and the ROC AUC of the map against a ground-truth mask (beside
:func:`gradlens.metrics.pointing_game`).

Each takes ``masks (B, H, W)`` (bool or 0/1, at the inputs' size) and reads only the
attributions; ``model`` and ``target`` are taken so that every metric has the same
signature. Input-shaped attributions are reduced with :func:`gradlens.maps.to_2d` (the sum of
``|.|`` over channels); ``(B, h, w)`` maps are used with their sign and resized to the
inputs. An empty mask gives ``nan``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..targets.scoring import Target
from ._common import MetricResult, _check_masks, _maps_like, _result
from .sanity import _ranks

__all__ = [
    "attribution_localisation",
    "top_k_intersection",
    "relevance_rank_accuracy",
    "relevance_mass_accuracy",
    "auc",
]


def _prepared(inputs: Tensor, attributions: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, H * W)`` float64 maps and bool masks."""
    maps = _maps_like(inputs, attributions)
    region = _check_masks(masks, maps)
    return maps.flatten(1), region.flatten(1)


def _nan_where_empty(scores: Tensor, region: Tensor) -> MetricResult:
    return _result(torch.where(region.any(dim=1), scores, torch.nan))


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    return numerator / torch.where(denominator == 0, 1.0, denominator)


@entry_point
def attribution_localisation(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    masks: Tensor,
    weighted: bool = False,
) -> MetricResult:
    """Attribution localisation (Kohlbrenner et al., "Towards best practice in explaining
    neural network decisions with LRP", IJCNN 2020).

    The share of the positive attribution that lies in the mask::

        mu = sum_{i in mask} max(a_i, 0) / sum_i max(a_i, 0)

    and, with ``weighted=True``, ``mu * n / |mask|`` (``n = H * W``): a map spread evenly
    scores ``|mask| / n`` unweighted and 1 weighted. *Higher* is better.

    Args:
        model: not used.
        inputs: ``(B, C, H, W)``; maps are resized to ``(H, W)``.
        attributions: shaped like ``inputs`` or ``(B, h, w)`` maps.
        target: not used.
        masks: ``(B, H, W)`` bool or 0/1 ground truth.
        weighted: scale by ``n / |mask|`` (the paper's weighted variant).

    Returns:
        A :class:`MetricResult`, ``scores (B,)`` float64; ``nan`` for an empty mask, 0 for a
        map without positive values.

    Raises:
        ValueError: wrong shapes of the inputs, attributions or masks.
    """
    maps, region = _prepared(inputs, attributions, masks)
    positive = maps.clamp(min=0)
    share = _ratio((positive * region).sum(dim=1), positive.sum(dim=1))
    if weighted:
        share = share * _ratio(torch.full_like(share, maps.shape[1]), region.sum(dim=1).double())
    return _nan_where_empty(share, region)


def _descending(maps: Tensor) -> Tensor:
    """Pixel indices from the largest value down (ties in row-major order)."""
    return torch.argsort(maps, dim=1, descending=True, stable=True)


@entry_point
def top_k_intersection(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    masks: Tensor,
    k: int = 1000,
    concept_influence: bool = False,
) -> MetricResult:
    """Top-k intersection (Theiner et al., "Interpretable semantic photo geolocation",
    WACV 2022).

    The fraction of the ``k`` highest pixels of the map (ties in row-major order) that lie
    in the mask::

        TKI = |top_k(a) ∩ mask| / k

    With ``concept_influence=True`` the score is divided by the mask's share of the image,
    ``|mask| / n``, so that a random map scores 1 on average. *Higher* is better.

    Args:
        model: not used.
        inputs: ``(B, C, H, W)``; maps are resized to ``(H, W)``.
        attributions: shaped like ``inputs`` or ``(B, h, w)`` maps.
        target: not used.
        masks: ``(B, H, W)`` bool or 0/1 ground truth.
        k: how many pixels, ``1 <= k <= H * W``.
        concept_influence: divide by ``|mask| / n``.

    Returns:
        A :class:`MetricResult`, ``scores (B,)`` float64; ``nan`` for an empty mask.

    Raises:
        ValueError: wrong shapes, or ``k`` outside ``[1, H * W]``.
    """
    maps, region = _prepared(inputs, attributions, masks)
    n = maps.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and H * W = {n}, got {k}")
    top = _descending(maps)[:, :k]
    hits = region.gather(1, top).double().mean(dim=1)
    if concept_influence:
        hits = hits * _ratio(torch.full_like(hits, n), region.sum(dim=1).double())
    return _nan_where_empty(hits, region)


@entry_point
def relevance_rank_accuracy(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    masks: Tensor,
) -> MetricResult:
    """Relevance rank accuracy (Arras et al., "CLEVR-XAI: a benchmark dataset for the ground
    truth evaluation of neural network explanations", Information Fusion 2022).

    With ``K = |mask|``, the fraction of the ``K`` highest pixels of the map (ties in
    row-major order) that lie in the mask::

        RRA = |top_K(a) ∩ mask| / K

    *Higher* is better; 1 when the mask holds the ``K`` highest pixels.

    Args:
        model: not used.
        inputs: ``(B, C, H, W)``; maps are resized to ``(H, W)``.
        attributions: shaped like ``inputs`` or ``(B, h, w)`` maps.
        target: not used.
        masks: ``(B, H, W)`` bool or 0/1 ground truth.

    Returns:
        A :class:`MetricResult`, ``scores (B,)`` float64; ``nan`` for an empty mask.

    Raises:
        ValueError: wrong shapes.
    """
    maps, region = _prepared(inputs, attributions, masks)
    size = region.sum(dim=1, keepdim=True)
    n = maps.shape[1]
    in_top = torch.arange(n, device=maps.device).expand_as(maps) < size
    hits = (region.gather(1, _descending(maps)) & in_top).sum(dim=1).double()
    return _nan_where_empty(_ratio(hits, size[:, 0].double()), region)


@entry_point
def relevance_mass_accuracy(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    masks: Tensor,
) -> MetricResult:
    """Relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022).

    The share of the map's total that lies in the mask::

        RMA = sum_{i in mask} a_i / sum_i a_i

    *Higher* is better. Signed maps are used as they are (give non-negative maps for a
    value in ``[0, 1]``).

    Args:
        model: not used.
        inputs: ``(B, C, H, W)``; maps are resized to ``(H, W)``.
        attributions: shaped like ``inputs`` or ``(B, h, w)`` maps.
        target: not used.
        masks: ``(B, H, W)`` bool or 0/1 ground truth.

    Returns:
        A :class:`MetricResult`, ``scores (B,)`` float64; ``nan`` for an empty mask or a
        map summing to 0.

    Raises:
        ValueError: wrong shapes.
    """
    maps, region = _prepared(inputs, attributions, masks)
    total = maps.sum(dim=1)
    mass = (maps * region).sum(dim=1) / torch.where(total == 0, torch.nan, total)
    return _nan_where_empty(mass, region)


@entry_point
def auc(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    masks: Tensor,
) -> MetricResult:
    """The area under the ROC curve of the map as a detector of the mask's pixels (Fawcett,
    "An introduction to ROC analysis", Pattern Recognition Letters 2006).

    Pixels in the mask are the positives (``P`` of them), the others the negatives
    (``N``). The area equals the probability that a random positive pixel scores above a
    random negative one, ties counting one half; with ``r_i`` the (average, 1-based) rank of
    pixel ``i`` among all pixels::

        AUC = (sum_{i in mask} r_i - P (P + 1) / 2) / (P N)

    *Higher* is better; 0.5 is chance.

    Args:
        model: not used.
        inputs: ``(B, C, H, W)``; maps are resized to ``(H, W)``.
        attributions: shaped like ``inputs`` or ``(B, h, w)`` maps.
        target: not used.
        masks: ``(B, H, W)`` bool or 0/1 ground truth.

    Returns:
        A :class:`MetricResult`, ``scores (B,)`` float64; ``nan`` where the mask is empty
        or covers every pixel.

    Raises:
        ValueError: wrong shapes.
    """
    maps, region = _prepared(inputs, attributions, masks)
    ranks = _ranks(maps.cpu()).to(maps.device) + 1
    positives = region.sum(dim=1).double()
    negatives = region.shape[1] - positives
    u = (ranks * region).sum(dim=1) - positives * (positives + 1) / 2
    area = u / torch.where(positives * negatives == 0, torch.nan, positives * negatives)
    return _nan_where_empty(area, region)
