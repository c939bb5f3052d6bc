"""Deletion and insertion curves (Petsiuk et al., "RISE", BMVC 2018) and the Gaussian blur
their default fills use."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.checks import check_inputs, entry_point
from ..core.chunks import check_batch_size, chunks
from ..core.output_selection import OutputSpec
from ..targets.scoring import Target
from ._common import _check_images, _classes, _logits, _reduce_maps, _score, _untouched

__all__ = ["CurveResult", "deletion", "insertion", "gaussian_blur"]

Fill = Literal["zero", "min", "blur", "mean"] | Tensor


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


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Blur ``(B, C, H, W)`` images with a separable Gaussian of std ``sigma`` pixels.

    The kernel spans ``+-3 sigma``; borders are padded by repeating the edge pixels, so
    the output has the input's shape. ``sigma <= 0`` returns the images unchanged.
    """
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def fill_images(images: Tensor, fill: Fill, blur_sigma: float | None) -> Tensor:
    if isinstance(fill, Tensor):
        try:
            return fill.to(images.device, images.dtype).expand_as(images)
        except RuntimeError as exc:
            raise ValueError(
                f"a fill tensor must broadcast to the images' shape {tuple(images.shape)}, "
                f"got {tuple(fill.shape)}"
            ) from exc
    if fill == "zero":
        return torch.zeros_like(images)
    if fill == "min":  # Quantus' "black": the sample's smallest value, in every channel
        return images.flatten(1).amin(1).view(-1, 1, 1, 1).expand_as(images)
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if fill == "blur":
        sigma = 0.1 * max(images.shape[-2:]) if blur_sigma is None else blur_sigma
        return gaussian_blur(images, sigma)
    raise ValueError(f'fill must be "zero", "min", "blur", "mean" or a tensor, got {fill!r}')


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
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_batch_size(batch_size)
    if score not in ("probability", "logit"):
        raise ValueError(f'score must be "probability" or "logit", got {score!r}')
    maps = _reduce_maps(maps, tuple(images.shape[-2:]))
    _check_images(images, maps)
    batch, _, height, width = images.shape
    pixels = height * width
    images = images.detach()
    with _untouched(model):
        classes = _classes(model, images, target, output, batch_size)
        baseline = fill_images(images, fill, blur_sigma)
        # rank[b, p] = position of pixel p in the most-important-first order of sample b.
        order = torch.argsort(
            maps.flatten(1).to(images.device), dim=1, descending=True, stable=True
        )
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(pixels, device=order.device).expand_as(order)
        )
        counts = torch.round(torch.linspace(0, pixels, steps + 1, device=images.device)).long()
        curve = torch.empty(batch * (steps + 1), dtype=torch.float64, device=images.device)
        jobs = batch * (steps + 1)  # job j = sample j // (steps + 1), step j % (steps + 1)
        for part in chunks(jobs, batch_size):
            job = torch.arange(part.start, part.stop, device=images.device)
            sample, step = job // (steps + 1), job % (steps + 1)
            chosen = (rank[sample] < counts[step][:, None]).view(-1, 1, height, width)
            source, other = (images, baseline) if insert else (baseline, images)
            x = torch.where(chosen, source[sample], other[sample])
            curve[part] = _score(_logits(model, x, output), classes[sample], score)
    # Clones made outside inference mode are normal tensors, usable later in autograd.
    fractions = counts.double().cpu().clone() / pixels
    curve = curve.view(batch, steps + 1).cpu().clone()
    return CurveResult(
        fractions=fractions,
        curve=curve,
        auc=torch.trapezoid(curve, fractions, dim=1),
        classes=classes.cpu().clone(),
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
