"""Deletion and insertion curves (Petsiuk et al., "RISE", BMVC 2018), the result type of every
perturbation curve, and the Gaussian blur their default fills use (defined with the shared
machinery in :mod:`gradlens.metrics.perturbation`)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor, nn

from ..core.checks import check_inputs, entry_point
from ..core.output_selection import OutputSpec
from ..targets.scoring import Target
from ._common import _untouched
from .perturbation import (
    Fill,
    _check_score,
    check_count,
    features,
    gaussian_blur,
    ordered_curve,
)

__all__ = ["CurveResult", "deletion", "insertion", "gaussian_blur"]


@dataclasses.dataclass(eq=False)
class CurveResult:
    """A perturbation curve: deletion, insertion, pixel flipping, region perturbation,
    selectivity, IROF, ROAD.

    Attributes:
        fractions: ``(S + 1,)`` fraction of the features removed (deletion) or inserted
            (insertion), ``0, 1/S, ..., 1`` (regions, segments: the fraction of them).
        curve: ``(B, S + 1)`` the target's score after each step.
        auc: ``(B,)`` trapezoidal area under ``curve`` over ``fractions`` (also as
            ``scores``; IROF's is the area *over* its curve, see :func:`irof`).
        classes: ``(B,)`` the class explained for each sample.

    ``fractions``, ``curve`` and ``auc`` are float64 (scores are computed from the logits
    in float64).
    """

    fractions: Tensor
    curve: Tensor
    auc: Tensor
    classes: Tensor

    @property
    def scores(self) -> Tensor:
        """``(B,)`` one number per sample, the same as :attr:`auc` (the name every metric
        result shares)."""
        return self.auc


def _curve(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Target,
    *,
    insert: bool,
    steps: int,
    fill: Fill,
    score: str,
    batch_size: int,
    blur_sigma: float | None,
    output: OutputSpec,
) -> CurveResult:
    check_inputs({"images": images})
    check_count(steps, "steps")
    _check_score(score)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    with _untouched(model):
        feats = features(model, images, maps, target, fill=fill, batch_size=batch_size,
                         output=output, blur_sigma=blur_sigma)  # fmt: skip
        curve = ordered_curve(feats, steps, score, descending=True, insert=insert)
    counts = feats.step_counts(steps)[0]
    # Clones made outside inference mode are normal tensors, usable later in autograd.
    fractions = counts.double().cpu().clone() / feats.size
    curve = curve.cpu().clone()
    return CurveResult(
        fractions=fractions,
        curve=curve,
        auc=torch.trapezoid(curve, fractions, dim=1),
        classes=feats.classes.cpu().clone(),
    )


@entry_point
def deletion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Target = None,
    *,
    steps: int = 32,
    fill: Fill = "zero",
    score: Literal["probability", "logit"] = "probability",
    batch_size: int = 64,
    blur_sigma: float | None = None,
    output: OutputSpec = None,
) -> CurveResult:
    """The deletion curve and its area (Petsiuk et al., "RISE", BMVC 2018).

    Pixels are removed in the order of the map, most important (largest value) first;
    ties keep row-major order. After removing ``round(k * H * W / steps)`` pixels,
    ``k = 0..steps``, the target class's score is measured. Removed pixels (all channels)
    take the value of the ``fill`` image. A good map makes the score drop fast: *lower*
    AUC is better.

    Args:
        model: the classifier; not changed (see the module docstring).
        images: ``(B, C, H, W)``.
        maps: ``(B, H, W)`` or ``(B, C', H', W')`` (reduced and resized, module docstring).
        target: the class explained (module docstring); ``None`` is the top class.
        steps: ``S``, the curve has ``S + 1`` points from fraction 0 to 1.
        fill: ``"zero"``, ``"min"`` (each image's smallest value, Quantus' ``"black"``),
            ``"blur"`` (:func:`gaussian_blur` of the image, std ``blur_sigma``, by default
            a tenth of the image side), ``"mean"`` (each image's per-channel mean) or a
            tensor broadcastable to ``(B, C, H, W)``.
        score: ``"probability"`` (softmax) or ``"logit"``.
        batch_size: perturbed images per forward; all ``B * (S + 1)`` are evaluated.
        blur_sigma: see ``fill``.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`CurveResult` with ``fractions (S + 1,)``, ``curve (B, S + 1)``,
        ``auc (B,)`` and ``classes (B,)``, on the CPU.

    Raises:
        ValueError: bad shapes, ``steps`` or ``batch_size`` < 1, an unknown ``fill`` or
            ``score``.
        TargetError: a target that is not one class per sample.
    """
    return _curve(
        model, images, maps, target, insert=False, steps=steps, fill=fill, score=score,
        batch_size=batch_size, blur_sigma=blur_sigma, output=output,
    )  # fmt: skip


@entry_point
def insertion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Target = None,
    *,
    steps: int = 32,
    fill: Fill = "blur",
    score: Literal["probability", "logit"] = "probability",
    batch_size: int = 64,
    blur_sigma: float | None = None,
    output: OutputSpec = None,
) -> CurveResult:
    """The insertion curve and its area (Petsiuk et al., "RISE", BMVC 2018).

    Starts from the ``fill`` image (by default a strong blur of the image) and puts the
    original pixels back in the order of the map, most important first (ties in row-major
    order); at fraction 1 the image is the original. A good map makes the score rise
    fast: *higher* AUC is better.

    Args:
        model, images, maps, target: as for :func:`deletion`.
        steps: ``S``, the curve has ``S + 1`` points from fraction 0 to 1.
        fill: the image the pixels are inserted into: ``"blur"`` (the default), ``"zero"``,
            ``"min"``, ``"mean"`` or a tensor, as for :func:`deletion`.
        score: ``"probability"`` (softmax) or ``"logit"``.
        batch_size: perturbed images per forward; all ``B * (S + 1)`` are evaluated.
        blur_sigma: the blur's std in pixels (by default a tenth of the image side).
        output: picks the logits out of a structured output.

    Returns:
        A :class:`CurveResult`, as for :func:`deletion`.

    Raises:
        ValueError, TargetError: as for :func:`deletion`.
    """
    return _curve(
        model, images, maps, target, insert=True, steps=steps, fill=fill, score=score,
        batch_size=batch_size, blur_sigma=blur_sigma, output=output,
    )  # fmt: skip
