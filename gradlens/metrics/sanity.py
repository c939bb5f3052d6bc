"""The model-parameter randomisation sanity check (Adebayo et al., NeurIPS 2018) and the
Spearman rank correlation it compares maps with."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.checks import check_inputs, entry_point
from ..core.chunks import check_batch_size, chunks
from ..core.output_selection import OutputSpec
from ..errors import LayerNotFoundError
from ..targets.scoring import Target
from ._common import Method, _classes, _reduce_maps

__all__ = ["RandomizationResult", "randomization_test", "spearman"]


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
