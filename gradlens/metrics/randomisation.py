"""Does the explanation depend on the model? The model-parameter randomisation test in its
cascading and independent modes and its smooth and efficient variants (Adebayo et al. 2018;
Hedström et al. 2023), the random-logit test (Sixt et al. 2020), and the original cascading
check :func:`randomization_test`.

The model is never changed: the parameter tests work on a deep copy, re-initialised layer
by layer with PyTorch's own ``reset_parameters()``; the random-logit test only explains the
model again for other classes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.checks import check_inputs, entry_point
from ..core.chunks import check_batch_size, chunks, copies_per_chunk
from ..core.output_selection import OutputSpec
from ..errors import LayerNotFoundError, TargetError
from ..targets.parse import class_ids
from ..targets.scoring import Target
from ._common import (
    Method,
    MetricResult,
    _classes,
    _logits,
    _maps_like,
    _normalise,
    _reduce_maps,
    _result,
    _untouched,
)
from ._explain import Explainer, MethodSpec, explainer, private_generator
from .sanity import spearman

__all__ = [
    "RandomizationResult",
    "randomization_test",
    "ParameterRandomisationResult",
    "model_parameter_randomisation",
    "random_logit",
]


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
    if not isinstance(target, Tensor):
        return _reduce_maps(method(model, images, target=target))
    parts = [
        _reduce_maps(method(model, images[rows], target=target[rows]))
        for rows in chunks(images.shape[0], batch_size)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@entry_point
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
    not the model. :func:`model_parameter_randomisation` is the general form (independent
    mode, smooth and efficient variants, a ``(B, L)`` table against given attributions).
    The test works on a deep copy (the model itself -- parameters, buffers, gradients,
    mode, hooks -- is untouched):

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
        ValueError: ``batch_size`` is not a positive int or ``None``.
    """
    check_inputs({"images": images})
    check_batch_size(batch_size, optional=True)
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
        classes = _classes(working, images, target, output, batch_size)  # buffers are kept

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


@dataclasses.dataclass(frozen=True, eq=False)
class ParameterRandomisationResult:
    """The outcome of :func:`model_parameter_randomisation`.

    Attributes:
        layer_names: the modules re-initialised, in order (one per column of
            ``correlations``).
        correlations: ``(B, L)`` float64; column ``l`` is the Spearman rank correlation
            between the absolute reference maps and the absolute maps after re-initialising
            ``layer_names[l]`` (on top of the previous ones in cascading mode, alone in
            independent mode).
        scores: ``(B,)`` float64: the last column of ``correlations`` (the fully randomised
            model in cascading mode), or with ``efficient=True`` the entropy ratio
            ``H(last maps) / H(reference maps)``.
    """

    layer_names: list[str]
    correlations: Tensor
    scores: Tensor


def _layer_names(model: nn.Module, layers: Sequence[str] | None, order: str) -> list[str]:
    if order not in ("top_down", "bottom_up"):
        raise ValueError(f'order must be "top_down" or "bottom_up", got {order!r}')
    if layers is None:
        names = _parameterised(model)
        names = list(reversed(names)) if order == "top_down" else names
    else:
        names = list(layers)
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing or not names:
        raise LayerNotFoundError(
            f"no module named {missing[0]!r} in the model"
            if missing
            else "the model has no parameters to randomise"
        )
    return names


def _histogram_entropy(maps: Tensor, bins: int) -> Tensor:
    """``(B,)`` entropy (nats) of each map's histogram in ``bins`` equal bins over its own
    ``[min, max]`` (the last bin closed, as :func:`numpy.histogram`)."""
    flat = maps.flatten(1).double()
    low = flat.amin(dim=1, keepdim=True)
    high = flat.amax(dim=1, keepdim=True)
    # a constant map is counted in one bin, as numpy widens the range to [v - 0.5, v + 0.5]
    same = high == low
    low, high = torch.where(same, low - 0.5, low), torch.where(same, high + 0.5, high)
    steps = torch.arange(bins + 1, dtype=torch.float64, device=flat.device)
    edges = low + steps * ((high - low) / bins)
    edges[:, -1:] = high
    index = (torch.searchsorted(edges.contiguous(), flat.contiguous(), right=True) - 1).clamp(
        0, bins - 1
    )
    counts = torch.zeros(flat.shape[0], bins, dtype=torch.float64, device=flat.device)
    counts.scatter_add_(1, index, torch.ones_like(flat))
    p = counts / counts.sum(dim=1, keepdim=True)
    return -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0).sum(dim=1)


def _explain_samples(
    explain: Explainer, model: nn.Module, inputs: Tensor, classes: Tensor, batch_size: int
) -> Tensor:
    """``(B, H, W)`` maps, the method called on chunks of ``batch_size`` samples."""
    parts = [
        explain(model, inputs[rows], classes[rows]).to(inputs.device)
        for rows in chunks(inputs.shape[0], batch_size)
    ]
    return torch.cat(parts)


def _explain_smoothed(
    explain: Explainer,
    model: nn.Module,
    inputs: Tensor,
    classes: Tensor,
    noise: Tensor,
    batch_size: int,
) -> Tensor:
    """``(B, H, W)`` the mean of the maps of ``inputs + noise[s]`` over the ``S`` draws of
    ``noise (S, B, C, H, W)``, whole draws stacked into one call up to ``batch_size`` rows."""
    batch = inputs.shape[0]
    total = torch.zeros(batch, *inputs.shape[-2:], dtype=torch.float64, device=inputs.device)
    for part in chunks(noise.shape[0], copies_per_chunk(batch_size, batch, noise.shape[0])):
        copies = part.stop - part.start
        x = (inputs[None] + noise[part]).flatten(0, 1)
        maps = explain(model, x, classes.repeat(copies)).to(inputs.device)
        total += maps.view(copies, batch, *maps.shape[-2:]).sum(dim=0)
    return total / noise.shape[0]


@entry_point
def model_parameter_randomisation(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    method: MethodSpec,
    method_options: Mapping[str, Any] | None = None,
    mode: Literal["cascading", "independent"] = "cascading",
    layers: Sequence[str] | None = None,
    order: Literal["top_down", "bottom_up"] = "top_down",
    smooth_samples: int = 0,
    smooth_magnitude: float = 0.1,
    efficient: bool = False,
    bins: int = 100,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    output: OutputSpec = None,
) -> ParameterRandomisationResult:
    """The model-parameter randomisation test (MPRT; Adebayo et al., "Sanity checks for
    saliency maps", NeurIPS 2018) and its smooth (sMPRT) and efficient (eMPRT) variants
    (Hedström et al., "Sanity checks revisited: an exploration to repair the model parameter
    randomisation test", XAI in Action workshop, NeurIPS 2023).

    On a deep copy of the model, the ``L`` layers are re-initialised one by one (each with
    ``reset_parameters()`` of every module under it that owns parameters; a module without
    it has its parameters re-drawn from a normal distribution with their mean and std).
    ``mode="cascading"`` keeps the earlier layers randomised, so the last step is the fully
    randomised model; ``mode="independent"`` restores the trained weights before each layer.
    After each step the method explains the inputs again (for the classes explained on the
    unchanged model) and::

        rho_l = Spearman(|e_ref|, |e_l|)

    where ``e_ref`` is ``attributions`` (or, with ``smooth_samples``, the smoothed maps of
    the unchanged model). A method that depends on the model gives low ``rho``.

    * Smooth (``smooth_samples = S > 0``): every map, the reference included, is the mean
      of the method's maps of ``x + delta_s``, ``delta_s ~ N(0, sigma^2)`` with
      ``sigma = smooth_magnitude * (max x - min x)`` per sample; the same ``S`` draws are
      used for every layer.
    * Efficient (``efficient=True``): ``scores`` is the ratio of the complexities of the
      last step's maps and the reference maps, ``H(e_L) / H(e_ref)``, ``H`` the entropy of
      the map's histogram in ``bins`` equal bins: a method that depends on the model gives
      noisier maps after randomisation, a ratio above 1.

    The re-initialisation of layer ``l`` runs under ``torch.manual_seed(seeds[l])`` with
    ``seeds = torch.randint(2**62, (L,), generator=generator)`` drawn first (the smoothing
    noise is drawn after them), inside :func:`torch.random.fork_rng`: the global RNG is left
    as it was.

    Args:
        model: the classifier; only a deep copy is changed.
        inputs: ``(B, C, H, W)``.
        attributions: the method's explanations of the unchanged model, shaped like
            ``inputs`` or ``(B, h, w)`` maps.
        target: the classes explained (``None``: the top classes), parsed on the unchanged
            copy and passed to the method at every step.
        method: the explanation method, a registered name or a callable
            ``method(model, x, target=classes, **method_options)``.
        method_options: keyword options for ``method`` (checked before any work).
        mode: ``"cascading"`` or ``"independent"``.
        layers: the module names to randomise, in order (default: every module that owns
            parameters, ordered by ``order``).
        order: ``"top_down"`` (from the output layer) or ``"bottom_up"``, for the default
            ``layers``.
        smooth_samples: ``S``, the noisy copies per map of the smooth variant (0: off).
        smooth_magnitude: the smooth variant's noise std relative to each input's range.
        efficient: ``scores`` is the eMPRT entropy ratio instead of the last correlation.
        bins: the histogram bins of the efficient variant.
        generator: draws the seeds and the noise (default: a new generator seeded with 0).
        batch_size: samples (or noisy rows) per call of the method.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`ParameterRandomisationResult` with ``layer_names``, ``correlations
        (B, L)`` and ``scores (B,)``, float64 on the CPU (``nan`` where a map is constant).

    Raises:
        LayerNotFoundError: a name in ``layers`` is not a module, or the model has no
            parameters.
        ValueError: wrong shapes, ``batch_size``, ``bins`` or ``smooth_samples`` out of
            range, an unknown ``mode`` or ``order``, an unknown method name.
        TypeError: an option ``method`` does not take.
        TargetError: a target that is not one class per sample.
    """
    check_inputs({"inputs": inputs})
    check_batch_size(batch_size)
    reference = _maps_like(inputs, attributions).to(inputs.device)
    if mode not in ("cascading", "independent"):
        raise ValueError(f'mode must be "cascading" or "independent", got {mode!r}')
    if smooth_samples < 0 or bins < 1:
        raise ValueError(f"need smooth_samples >= 0 and bins >= 1, got {smooth_samples}, {bins}")
    names = _layer_names(model, layers, order)
    explain = explainer(method, method_options, caller="model_parameter_randomisation")
    inputs = inputs.detach()
    with torch.inference_mode(False):  # ordinary parameters, which autograd can save
        working = copy.deepcopy(model)
    trained = {}
    if mode == "independent":
        trained = {k: v.clone() for k, v in working.state_dict().items()}
    working_modules = dict(working.named_modules())
    with _untouched(working):
        classes = _classes(working, inputs, target, output, batch_size)
    rng = private_generator(generator)
    seeds = torch.randint(2**62, (len(names),), generator=rng, device=rng.device).tolist()
    noise = None
    if smooth_samples:
        span = inputs.flatten(1).amax(dim=1) - inputs.flatten(1).amin(dim=1)
        sigma = (smooth_magnitude * span).view(1, -1, *([1] * (inputs.ndim - 1)))
        shape = (smooth_samples, *inputs.shape)
        noise = torch.randn(shape, generator=rng, device=rng.device).to(inputs) * sigma

    def maps_of(network: nn.Module) -> Tensor:
        if noise is None:
            return _explain_samples(explain, network, inputs, classes, batch_size)
        return _explain_smoothed(explain, network, inputs, classes, noise, batch_size)

    devices = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if noise is not None:
            reference = maps_of(working)
        correlations = []
        maps = reference
        for name, seed in zip(names, seeds):
            if mode == "independent":
                working.load_state_dict(trained)
            torch.manual_seed(seed)
            _reinitialise(working_modules[name])
            maps = maps_of(working)
            correlations.append(spearman(reference.abs().cpu(), maps.abs().cpu()))
    table = torch.stack(correlations, dim=1)
    scores = table[:, -1]
    if efficient:
        scores = (_histogram_entropy(maps, bins) / _histogram_entropy(reference, bins)).cpu()
    return ParameterRandomisationResult(
        layer_names=names, correlations=table.clone(), scores=scores.double().clone()
    )


def _ssim(a: Tensor, b: Tensor, win_size: int) -> Tensor:
    """``(B,)`` mean structural similarity (Wang et al., IEEE TIP 2004) of maps
    ``(B, H, W)``: ``win_size x win_size`` uniform windows inside the map, sample
    (co)variances, ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2`` with ``R`` the range of the
    pair's values."""
    x, y = a.double()[:, None], b.double()[:, None]
    both = torch.cat([x.flatten(1), y.flatten(1)], dim=1)
    data_range = (both.amax(dim=1) - both.amin(dim=1)).view(-1, 1, 1, 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, win_size, stride=1)

    unbias = win_size**2 / (win_size**2 - 1)
    mx, my = mean(x), mean(y)
    vx = unbias * (mean(x * x) - mx * mx)
    vy = unbias * (mean(y * y) - my * my)
    vxy = unbias * (mean(x * y) - mx * my)
    index = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index.flatten(1).mean(dim=1)


@entry_point
def random_logit(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    method: MethodSpec,
    method_options: Mapping[str, Any] | None = None,
    off_target: Sequence[int] | Tensor | None = None,
    win_size: int = 7,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    output: OutputSpec = None,
) -> MetricResult:
    """The random-logit test (Sixt et al., "When explanations lie: why many modified BP
    attributions fail", ICML 2020).

    The method explains each input again for another class ``c'`` (``off_target``, or
    drawn uniformly among the classes other than the explained one), and the two maps,
    each normalised by its own largest ``|.|``, are compared by the structural
    similarity index (SSIM; Wang et al. 2004) on the 2-D maps::

        SSIM(a, b) = mean over w x w windows of
            (2 mu_a mu_b + C1) (2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1) (s_a^2 + s_b^2 + C2))

    with ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2``, ``R`` the range of the pair's values,
    windows entirely inside the map and sample (co)variances (as
    ``skimage.metrics.structural_similarity`` with its defaults). A class-sensitive method
    gives *low* similarity.

    Args:
        model: the classifier; not changed.
        inputs: ``(B, C, H, W)``.
        attributions: the maps for the explained classes, shaped like ``inputs`` or
            ``(B, h, w)``.
        target: the explained classes (``None``: the top classes).
        method: the explanation method, a registered name or a callable
            ``method(model, x, target=classes, **method_options)``.
        method_options: keyword options for ``method``.
        off_target: ``(B,)`` the other classes; each must differ from the explained class.
        win_size: the SSIM window side, odd, ``3 <= win_size <= min(H, W)``.
        generator: draws the other classes (default: a new generator seeded with 0).
        batch_size: samples per call of the method.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` float64 SSIM in ``[-1, 1]``.

    Raises:
        ValueError: wrong shapes, ``batch_size`` < 1, a bad ``win_size``, an unknown method
            name.
        TypeError: an option ``method`` does not take.
        TargetError: a target that is not one class per sample, an ``off_target`` of the
            wrong shape, out of range or equal to the explained class, or a model with one
            class.
    """
    check_inputs({"inputs": inputs})
    check_batch_size(batch_size)
    maps = _maps_like(inputs, attributions).to(inputs.device)
    if win_size < 3 or win_size % 2 == 0 or win_size > min(maps.shape[-2:]):
        raise ValueError(
            f"win_size must be odd, >= 3 and at most min(H, W) = {min(maps.shape[-2:])}, "
            f"got {win_size}"
        )
    explain = explainer(method, method_options, caller="random_logit")
    inputs = inputs.detach()
    batch = inputs.shape[0]
    with _untouched(model):
        classes = _classes(model, inputs, target, output, batch_size)
        num_classes = _logits(model, inputs[:1], output).shape[-1]
    if num_classes < 2:
        raise TargetError("the random-logit test needs a model with at least two classes")
    if off_target is None:
        rng = private_generator(generator)
        drawn = torch.randint(num_classes - 1, (batch,), generator=rng, device=rng.device)
        drawn = drawn.to(classes.device)
        others = drawn + (drawn >= classes).long()
    else:
        others = class_ids(off_target, "off_target").to(classes.device)
        if others.shape != (batch,):
            raise TargetError(f"off_target must have shape ({batch},), got {tuple(others.shape)}")
        if ((others < 0) | (others >= num_classes)).any() or (others == classes).any():
            raise TargetError(
                f"off_target must hold classes in [0, {num_classes}) other than the explained ones"
            )
    other_maps = _explain_samples(explain, model, inputs, others, batch_size)
    return _result(_ssim(_normalise(maps), _normalise(other_maps), win_size))
