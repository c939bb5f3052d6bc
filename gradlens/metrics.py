"""Evaluating attribution maps: deletion/insertion, pointing game, average drop, sanity checks.

Conventions shared by every function here:

* ``maps`` are ``(B, H, W)``, or ``(B, C, H, W)`` which are reduced to ``(B, H, W)`` by
  summing ``|.|`` over channels (:func:`gradlens.maps.to_2d`: per-channel gradients become
  one importance per pixel; a ``(B, 1, H, W)`` map becomes its absolute value). Maps whose
  ``(H, W)`` differ from the images' are resized bilinearly to the image size
  (:func:`gradlens.maps.resize`).
* ``images`` are ``(B, C, H, W)``, already preprocessed the way the model expects.
* ``target`` is read by :func:`gradlens.targets.scores`: ``None`` is the model's top class
  on the clean image, an int one class for all, a sequence or tensor one class per sample.
  These metrics need exactly one class per sample, so ``(B, K)`` and callable targets
  raise :class:`~gradlens.errors.TargetError`.
* ``output`` picks the logits out of a structured model output (see
  :func:`gradlens.targets.select_output`).
* The model is not changed: forwards run under ``torch.inference_mode()`` in chunks of
  ``batch_size`` samples, with the model in whatever mode it is in (call ``model.eval()``
  first). A model left in training mode triggers a warning, and its buffers (BatchNorm
  running statistics) are restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._explain import clean_pass
from ._inputs import ModelInput
from .buffers import preserve_buffers
from .errors import LayerNotFoundError, TargetError
from .maps import normalize, resize, to_2d
from .targets import OutputSpec, Target, select_output

__all__ = [
    "CurveResult",
    "deletion",
    "insertion",
    "pointing_game",
    "average_drop",
    "increase_in_confidence",
    "RandomizationResult",
    "randomization_test",
    "spearman",
    "gaussian_blur",
    "logit_difference",
    "normalized",
]

Fill = Literal["zero", "blur", "mean"] | Tensor
Method = Callable[..., Tensor]


@dataclasses.dataclass(eq=False)
class CurveResult:
    """A deletion or insertion curve.

    Attributes:
        fractions: ``(S + 1,)`` fraction of pixels removed (deletion) or inserted
            (insertion), ``0, 1/S, ..., 1``.
        curve: ``(B, S + 1)`` the target's score after each step.
        auc: ``(B,)`` trapezoidal area under ``curve`` over ``fractions``.

    All three are float64 (scores are computed from the logits in float64).
        classes: ``(B,)`` the class explained for each sample.
    """

    fractions: Tensor
    curve: Tensor
    auc: Tensor
    classes: Tensor


@dataclasses.dataclass(eq=False)
class RandomizationResult:
    """The outcome of :func:`randomization_test`.

    Attributes:
        layer_names: the modules re-initialised, in the order they were (cumulatively).
        correlations: ``(steps, B)``; row ``i`` is the Spearman rank correlation between the
            absolute original maps and the absolute maps after re-initialising
            ``layer_names[: i + 1]``.
        original_maps: ``(B, H, W)`` the maps of the unchanged model.
        maps: ``(steps, B, H, W)`` the maps after each step, or ``None`` unless
            ``keep_maps=True``.
    """

    layer_names: list[str]
    correlations: Tensor
    original_maps: Tensor
    maps: Tensor | None = None


# ----------------------------------------------------------------------------- helpers


def _reduce_maps(maps: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """``(B, H, W)`` float maps from ``(B, H, W)`` or ``(B, C, H, W)``
    (:func:`gradlens.maps.to_2d`), resized to ``size``."""
    if not isinstance(maps, Tensor):
        maps = torch.as_tensor(maps)
    maps = to_2d(maps.detach()).float()
    return maps if size is None else resize(maps, size)


def _check_images(images: Tensor, maps: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {images.shape[0]} images")


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Run forwards that leave ``model`` as it was (restores buffers in training mode)."""
    if model.training:
        warnings.warn(
            "the model is in training mode; metrics are usually computed in eval mode "
            "(call model.eval()). Its buffers will be restored afterwards.",
            UserWarning,
            stacklevel=5,
        )
    with preserve_buffers(model), torch.inference_mode():
        yield


def _logits(model: nn.Module, x: Tensor, output: OutputSpec) -> Tensor:
    return select_output(model(x), output)


def _classes(
    model: nn.Module, images: Tensor, target: Target, output: OutputSpec, batch_size: int
) -> Tensor:
    """``(B,)`` class indices: ``target`` parsed against the model's output on ``images``."""
    if target is not None and callable(target) and not isinstance(target, Tensor):
        raise TargetError(
            "this metric needs class targets (None, an int or one class per sample), not a callable"
        )
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        part = target
        if target is not None and not isinstance(target, int):
            part = _class_slice(target, images.shape[0], start, start + x.shape[0])
        classes = clean_pass(model, ModelInput.parse(x), part, output=output).classes
        if classes is None or classes.ndim != 1:
            raise TargetError(
                "this metric needs logits of shape (B, num_classes) and one class per sample"
            )
        chunks.append(classes)
    return torch.cat(chunks)


def _class_slice(target: Any, batch: int, start: int, stop: int) -> Any:
    """The part ``[start:stop]`` of a per-sample target (checked for length ``batch`` first)."""
    if isinstance(target, Tensor) and target.ndim == 0:
        return target
    try:
        length = len(target)
    except TypeError:
        return target  # let scores() complain about the type
    if length != batch:
        raise TargetError(f"target has {length} entries for {batch} samples")
    return target[start:stop]


def _score(logits: Tensor, classes: Tensor, score: str) -> Tensor:
    logits = logits.double()  # float64 keeps small probabilities (average drop divides by them)
    values = torch.softmax(logits, dim=1) if score == "probability" else logits
    return values.gather(1, classes[:, None].to(values.device))[:, 0]


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


def _fill_images(images: Tensor, fill: Fill, blur_sigma: float | None) -> Tensor:
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
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if fill == "blur":
        sigma = 0.1 * max(images.shape[-2:]) if blur_sigma is None else blur_sigma
        return gaussian_blur(images, sigma)
    raise ValueError(f'fill must be "zero", "blur", "mean" or a tensor, got {fill!r}')


# ----------------------------------------------------------------------------- deletion / insertion


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
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if score not in ("probability", "logit"):
        raise ValueError(f'score must be "probability" or "logit", got {score!r}')
    maps = _reduce_maps(maps, tuple(images.shape[-2:]))
    _check_images(images, maps)
    batch, _, height, width = images.shape
    pixels = height * width
    images = images.detach()
    with _untouched(model):
        classes = _classes(model, images, target, output, batch_size)
        baseline = _fill_images(images, fill, blur_sigma)
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
        for start in range(0, jobs, batch_size):
            job = torch.arange(start, min(start + batch_size, jobs), device=images.device)
            sample, step = job // (steps + 1), job % (steps + 1)
            chosen = (rank[sample] < counts[step][:, None]).view(-1, 1, height, width)
            source, other = (images, baseline) if insert else (baseline, images)
            x = torch.where(chosen, source[sample], other[sample])
            curve[start : start + len(job)] = _score(
                _logits(model, x, output), classes[sample], score
            )
    # Clones made outside inference mode are normal tensors, usable later in autograd.
    fractions = counts.double().cpu().clone() / pixels
    curve = curve.view(batch, steps + 1).cpu().clone()
    return CurveResult(
        fractions=fractions,
        curve=curve,
        auc=torch.trapezoid(curve, fractions, dim=1),
        classes=classes.cpu().clone(),
    )


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
        fill: ``"zero"``, ``"blur"`` (:func:`gaussian_blur` of the image, std
            ``blur_sigma``, by default a tenth of the image side), ``"mean"`` (each
            image's per-channel mean) or a tensor broadcastable to ``(B, C, H, W)``.
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
    fast: *higher* AUC is better. Arguments, result and errors as in :func:`deletion`.
    """
    return _curve(
        model, images, maps, target, insert=True, steps=steps, fill=fill, score=score,
        batch_size=batch_size, blur_sigma=blur_sigma, output=output,
    )  # fmt: skip


# ----------------------------------------------------------------------------- pointing game


def pointing_game(
    maps: Tensor,
    masks: Tensor | None = None,
    boxes: Tensor | None = None,
    *,
    tolerance: float = 0,
) -> Tensor:
    """The pointing game (Zhang et al., "Top-down neural attention by excitation backprop",
    ECCV 2016).

    A sample is a hit when the map's maximum lies within ``tolerance`` pixels (Euclidean
    distance between pixel centres) of a pixel of the object; ``tolerance=0`` requires the
    maximum to be on the object. The maximum is the *first* maximal pixel in row-major
    order (``argmax`` of the flattened map: the top-most, then left-most of tied maxima).
    The paper uses a 15 px tolerance at 224 px. The accuracy over a data set is
    ``hits.float().mean()``.

    Args:
        maps: ``(B, H, W)`` or ``(B, C, H, W)`` (see the module docstring); resized
            bilinearly to the masks' size when ``masks`` is given and the sizes differ.
        masks: ``(B, H, W)`` bool (or 0/1) object masks.
        boxes: ``(B, 4)`` ``(x0, y0, x1, y1)``, ``x0``, ``y0`` inclusive and ``x1``, ``y1``
            exclusive (as :class:`gradlens.data.ShapesData` boxes), in the pixels of the
            maps, which are used at their own size (upsample them to the image first).
        tolerance: the largest distance in pixels that still counts as a hit.

    Returns:
        ``(B,)`` bool, on the maps' device. An empty mask or box is always a miss.

    Raises:
        ValueError: neither or both of ``masks`` and ``boxes``, mismatched shapes, or a
            negative ``tolerance``.
    """
    if (masks is None) == (boxes is None):
        raise ValueError("pass exactly one of masks= and boxes=")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    size = None if masks is None else tuple(masks.shape[-2:])
    maps = _reduce_maps(maps, size)
    batch, height, width = maps.shape
    if masks is not None:
        if masks.shape != (batch, height, width):
            raise ValueError(
                f"masks must have shape {(batch, height, width)}, got {tuple(masks.shape)}"
            )
        region = masks.to(maps.device).bool()
    else:
        boxes = torch.as_tensor(boxes, device=maps.device)
        if boxes.shape != (batch, 4):
            raise ValueError(f"boxes must have shape ({batch}, 4), got {tuple(boxes.shape)}")
        xs = torch.arange(width, device=maps.device)
        ys = torch.arange(height, device=maps.device)
        inside_x = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])  # (B, W)
        inside_y = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])  # (B, H)
        region = inside_y[:, :, None] & inside_x[:, None, :]
    peak = maps.flatten(1).argmax(dim=1)
    py, px = peak // width, peak % width
    ys = torch.arange(height, device=maps.device).view(1, -1, 1)
    xs = torch.arange(width, device=maps.device).view(1, 1, -1)
    distance2 = (ys - py.view(-1, 1, 1)) ** 2 + (xs - px.view(-1, 1, 1)) ** 2
    distance2 = torch.where(
        region, distance2.float(), torch.full_like(distance2, math.inf, dtype=torch.float)
    )
    return distance2.flatten(1).amin(dim=1) <= tolerance**2


# ----------------------------------------------------------------------------- average drop


def _confidences(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Target,
    batch_size: int,
    output: OutputSpec,
) -> tuple[Tensor, Tensor]:
    """``(Y, O)``: class probabilities on the images and on the explanation maps."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    maps = _reduce_maps(maps, tuple(images.shape[-2:]))
    _check_images(images, maps)
    weights = normalize(maps)
    images = images.detach()
    explanations = images * weights[:, None].to(images.device, images.dtype)
    with _untouched(model):
        classes = _classes(model, images, target, output, batch_size)
        y, o = [], []
        for start in range(0, images.shape[0], batch_size):
            part = slice(start, start + batch_size)
            y.append(_score(_logits(model, images[part], output), classes[part], "probability"))
            o.append(
                _score(_logits(model, explanations[part], output), classes[part], "probability")
            )
    return torch.cat(y).cpu().clone(), torch.cat(o).cpu().clone()


def average_drop(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Target = None,
    *,
    batch_size: int = 64,
    output: OutputSpec = None,
) -> float:
    """Average drop in % (Chattopadhyay et al., "Grad-CAM++", WACV 2018).

    With ``Y`` the target class's softmax probability on the image and ``O`` on the
    explanation ``E = image * M`` (``M`` the map min-max normalised to [0, 1] per sample;
    a constant map gives ``M = 0``)::

        average drop = 100 * mean_b( max(0, Y_b - O_b) / Y_b )

    Lower is better: the highlighted region alone keeps the class's confidence.

    Args:
        model, images, maps, target, output: see the module docstring.
        batch_size: samples per forward.

    Returns:
        A float in [0, 100].

    Raises:
        ValueError: bad shapes or ``batch_size`` < 1.
        TargetError: a target that is not one class per sample.
    """
    y, o = _confidences(model, images, maps, target, batch_size, output)
    return float(((y - o).clamp(min=0) / y).mean() * 100)


def increase_in_confidence(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Target = None,
    *,
    batch_size: int = 64,
    output: OutputSpec = None,
) -> float:
    """Increase in confidence in % (Chattopadhyay et al., "Grad-CAM++", WACV 2018).

    The percentage of samples whose class probability on the explanation map is higher
    than on the image, ``100 * mean_b [O_b > Y_b]``, with ``Y``, ``O`` and the explanation
    as in :func:`average_drop`. Higher is better. Arguments and errors as there; returns
    a float in [0, 100].
    """
    y, o = _confidences(model, images, maps, target, batch_size, output)
    return float((o > y).double().mean() * 100)


# ----------------------------------------------------------------------------- sanity check


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


# Mixed into the seed of randomization_test so that its default seed=0 does not replay the
# draws of a model that was itself initialised right after torch.manual_seed(0).
_SEED_MIX = 0x9E3779B97F4A7C15


def _parameterised(model: nn.Module) -> list[str]:
    """Names of modules that own parameters directly, in registration order."""
    return [
        name
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]


def _reinitialise(module: nn.Module) -> None:
    """Re-initialise every parameter under ``module`` (see :func:`randomization_test`)."""
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if not own:
            continue
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
            continue
        with torch.no_grad():
            for parameter in own:
                std = float(parameter.std()) if parameter.numel() > 1 else 0.0
                parameter.normal_(float(parameter.mean()), std if math.isfinite(std) else 0.0)


def _maps_in_batches(
    method: Method, model: nn.Module, images: Tensor, target: Any, batch_size: int | None
) -> Tensor:
    if batch_size is None or batch_size >= images.shape[0] or not isinstance(target, Tensor):
        return _reduce_maps(method(model, images, target=target))
    parts = [
        _reduce_maps(method(model, images[s : s + batch_size], target=target[s : s + batch_size]))
        for s in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(parts)


def randomization_test(
    model: nn.Module,
    images: Tensor,
    method: Method,
    target: Target = None,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    keep_maps: bool = False,
    output: OutputSpec = None,
) -> RandomizationResult:
    """Cascading model-parameter randomisation (Adebayo et al., "Sanity checks for saliency
    maps", NeurIPS 2018).

    A method whose maps barely change when the weights are destroyed explains the input,
    not the model. The test works on a deep copy (the model itself -- parameters,
    buffers, gradients, mode, hooks -- is untouched):

    1. the original maps are ``method(copy, images, target=classes)``;
    2. for each entry of ``layers`` in turn, that module is re-initialised (on top of the
       previous ones: cascading) and the maps are computed again;
    3. each step's maps are compared to the original ones by :func:`spearman` on their
       absolute values (maps ``(B, C, H, W)`` are first reduced by summing ``|.|`` over
       channels).

    Re-initialisation calls ``reset_parameters()`` of every module under the named one that
    owns parameters -- PyTorch's default initialisation, so BatchNorm gets weight 1,
    bias 0 *and* its running statistics reset (mean 0, variance 1). A module without
    ``reset_parameters`` has each parameter re-drawn from a normal distribution with that
    parameter's mean and standard deviation. The random draws come from ``seed`` (mixed
    with a constant, so that ``seed=0`` does not redraw the very weights of a model built
    right after ``torch.manual_seed(0)``), inside :func:`torch.random.fork_rng`, so the
    global RNG is left as it was. Hooks registered on
    the model are copied along with it by :func:`copy.deepcopy`, so they also fire on the
    copy.

    Args:
        model: the model; only a deep copy is used.
        images: ``(B, C, H, W)``.
        method: ``method(model, x, target=...) -> maps`` of shape ``(B, H, W)`` or
            ``(B, C, H, W)``, e.g. a Grad-CAM or saliency function. It may run backward
            passes and change the copy's mode.
        target: read by :func:`gradlens.targets.scores` on the copy's output before any
            change; the classes found (``None``: the *original* model's top classes) are
            passed as a ``(B,)`` int64 tensor to ``method`` at every step, so the same
            classes are explained throughout. A callable target is passed on unchanged.
        layers: names of the modules to re-initialise, in that order (containers allowed:
            all their parameters are reset in one step). Default: every module that owns
            parameters, from the last registered (the output layer) to the first.
        seed: seeds the re-initialisation.
        batch_size: call ``method`` on chunks of this many samples (``None``: all at once;
            a callable target is always given all samples at once).
        keep_maps: also return every step's maps.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`RandomizationResult`; ``correlations`` is ``(steps, B)`` float64 (``nan``
        where a map is constant, e.g. all zero).

    Raises:
        LayerNotFoundError: a name in ``layers`` is not a module of the model, or the model
            has no parameters.
        TargetError: see :func:`gradlens.targets.scores`.
    """
    names = list(reversed(_parameterised(model))) if layers is None else list(layers)
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing or not names:
        raise LayerNotFoundError(
            f"no module named {missing[0]!r} in the model"
            if missing
            else "the model has no parameters to randomise"
        )
    with torch.inference_mode(False):  # ordinary parameters, which autograd can save
        working = copy.deepcopy(model)
    working_modules = dict(working.named_modules())
    images = images.detach()
    classes: Any = target
    if not (callable(target) and not isinstance(target, Tensor)):
        step = images.shape[0] if batch_size is None else batch_size
        classes = _classes(working, images, target, output, step)  # buffers are kept

    devices = [images.device.index or 0] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_SEED_MIX ^ seed)
        original = _maps_in_batches(method, working, images, classes, batch_size).cpu()
        correlations, kept = [], []
        for name in names:
            _reinitialise(working_modules[name])
            maps = _maps_in_batches(method, working, images, classes, batch_size).cpu()
            correlations.append(spearman(original.abs(), maps.abs()))
            if keep_maps:
                kept.append(maps)
    return RandomizationResult(
        layer_names=names,
        correlations=torch.stack(correlations),
        original_maps=original,
        maps=torch.stack(kept) if keep_maps else None,
    )


# -- metrics for activation patching ------------------------------------------------------


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
        TargetError: (when called) a per-sample index list whose length is not ``B``, an
            index out of range, or logits that are neither ``(B, K)`` nor ``(B, T, V)``.
    """

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
            logits.gather(1, _class_column(ids, logits, name))[:, 0]
            for ids, name in ((correct, "correct"), (wrong, "wrong"))
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


def _class_column(ids: int | Sequence[int] | Tensor, logits: Tensor, name: str) -> Tensor:
    n, k = logits.shape
    column = torch.as_tensor(ids, dtype=torch.long, device=logits.device).reshape(-1, 1)
    if column.shape[0] not in (1, n):
        raise TargetError(f"{name} holds {column.shape[0]} indices for {n} samples")
    if bool(((column < 0) | (column >= k)).any()):
        raise TargetError(f"{name}={column.flatten().tolist()} is out of range for {k} logits")
    return column.expand(n, 1)
