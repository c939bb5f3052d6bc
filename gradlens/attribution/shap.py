"""GradientSHAP (:func:`gradient_shap`): expected gradients with input noise, and the
baseline distributions it shares with :func:`~gradlens.attribution.deeplift_shap`.

Lundberg & Lee (2017), "A Unified Approach to Interpreting Model Predictions" (the
gradient approximation of SHAP values), and Erion, Janizek, Sturmfels, Lundberg & Lee
(2021), "Improving performance of deep learning models with axiomatic attribution priors
and expected gradients". For a distribution of baselines ``D`` the *expected gradients*
are

    φ(x) = E_{x' ~ D, α ~ U(0, 1)} [ (x - x') * ∇f(x' + α (x - x')) ],

Integrated Gradients averaged over baselines drawn from ``D``, with the path integral
estimated by one random point per draw; they sum, in expectation, to
``f(x) - E_{x' ~ D}[f(x')]``. GradientSHAP also smooths the input: each draw replaces
``x`` by ``x̃ = x + ε``, ``ε ~ N(0, stdevs²)``, in both the point and the difference:

    φ(x) ≈ (1/S) Σ_s (x̃_s - x'_s) * ∇f(x'_s + α_s (x̃_s - x'_s)),

the estimator of Captum's ``GradientShap``, whose expectation it shares. On a linear model
``f(x) = w · x + b`` every gradient is ``w`` and, without noise, the estimate is exactly
``(x - mean_s x'_s) * w``.

Random draws. For each chunk of ``k`` draws (``batch_size // B`` at a time), from the one
generator: the baseline indices ``torch.randint(N, (k * B,))``, then the path positions
``torch.rand(k * B)``, then, for each floating-point input with ``stdevs > 0``, its noise
``torch.randn``, each read copy-major (row ``j * B + b`` is draw ``j`` for sample ``b``).
The same ``seed`` (or generator state) and ``batch_size`` give the same result. Captum
draws from numpy's and torch's global generators in another order, so the two agree in
expectation, not draw for draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.chunks import check_batch_size, chunks, copies_per_chunk
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..passes import clean_pass, differentiate
from ..registry import register
from ..targets.parse import check_target, repeat_target
from ..targets.scoring import Target
from ._common import (
    Attribution,
    as_result,
    gradient_or_zeros,
    require_float_inputs,
    targets_first_to_dim1,
)

__all__ = ["Distribution", "baseline_distribution", "gradient_shap"]

Baseline = Union[None, float, Tensor]
Distribution = Union[Baseline, tuple[Baseline, ...]]
"""A baseline distribution: ``(N, *sample_shape)`` (shared by the samples) or
``(B, N, *sample_shape)`` (one per sample) per floating-point input (see
:func:`baseline_distribution`)."""


def baseline_distribution(
    baselines: Distribution, args: Sequence[Any], positions: Sequence[int]
) -> dict[int, Tensor]:
    """``{input position: (B, N, *sample_shape)}``: ``N`` baselines for each sample, the
    same ``N`` for every input (expanded views where the samples share them).

    Each floating-point input's entry is a tensor ``(N, *sample_shape)`` (``N`` baselines
    shared by all samples), a tensor ``(B, N, *sample_shape)`` (``N`` baselines of each
    sample), a tensor shaped like one sample or a number (one baseline), or ``None`` (one
    all-zero baseline); an input with one baseline is paired with every baseline of the
    others.
    For a tuple input ``baselines`` is one such value for all floating-point inputs or a
    tuple with one entry per positional input (those of other inputs are ignored).

    Raises:
        ValueError: a tensor that is not ``(N, *sample_shape)`` or
            ``(B, N, *sample_shape)``, ``N = 0``, inputs with
            different ``N``, a tuple of the wrong length.
        TypeError: an entry that is not a tensor, number or ``None``.
    """
    if isinstance(baselines, tuple):
        if len(baselines) != len(args):
            raise ValueError(
                f"baselines has {len(baselines)} entries but the model takes {len(args)} "
                "positional inputs; give one distribution per input (None where there is "
                "nothing to attribute)"
            )
        specs: dict[int, Baseline] = dict(enumerate(baselines))
    else:
        specs = dict.fromkeys(positions, baselines)
    found = {i: _distribution(specs[i], args[i], i) for i in positions}
    sizes = {d.shape[1] for d in found.values()} - {1}
    if len(sizes) > 1:
        counts = ", ".join(f"input {i}: {d.shape[1]}" for i, d in found.items())
        raise ValueError(
            f"the baseline distributions of the inputs have different sizes ({counts}); "
            "give every input the same number N of baselines (or one)"
        )
    count = sizes.pop() if sizes else 1
    return {i: d.expand(d.shape[0], count, *d.shape[2:]) for i, d in found.items()}


def _distribution(spec: Baseline, like: Tensor, position: int) -> Tensor:
    """``(B, N, *sample_shape)`` for one input."""
    batch, sample = like.shape[0], like.shape[1:]
    name = f"the baseline distribution of input {position}"
    if spec is None:
        return like.new_zeros((1, *sample)).expand(batch, 1, *sample)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return like.new_full((1, *sample), float(spec)).expand(batch, 1, *sample)
    if not isinstance(spec, Tensor):
        raise TypeError(
            f"{name} must be a tensor (N, *sample_shape), a number or None; "
            f"got {type(spec).__name__}"
        )
    tensor = spec.detach().to(device=like.device, dtype=like.dtype)
    if tensor.shape == sample:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim == like.ndim and tensor.shape[1:] == sample and len(tensor) > 0:
        return tensor.unsqueeze(0).expand(batch, *tensor.shape)
    if tensor.ndim == like.ndim + 1 and tensor.shape[0] == batch and tensor.shape[2:] == sample:
        if tensor.shape[1] > 0:
            return tensor
    shape = ", ".join(map(str, sample))
    raise ValueError(
        f"{name} has shape {tuple(spec.shape)}, which is not a set of N >= 1 baselines "
        f"(N, {shape}) nor N per sample ({batch}, N, {shape}) for the input of shape "
        f"{tuple(like.shape)}"
    )


@register(
    "gradient_shap",
    "attribution",
    needs_layer=False,
    multi_target=True,
    quick_options={"n": 4, "seed": 0},
)
@entry_point
def gradient_shap(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    baselines: Distribution = None,
    n: int = 5,
    stdevs: float | tuple[float, ...] = 0.0,
    batch_size: int | None = 32,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_delta: bool = False,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Attribution | tuple[Attribution, Tensor]:
    """GradientSHAP: expected gradients over a baseline distribution, with input noise.

    ``(1/S) Σ_s (x̃_s - x'_s) * ∇f(x'_s + α_s (x̃_s - x'_s))`` with ``x'_s`` drawn from
    the baselines, ``α_s ~ U(0, 1)`` and ``x̃_s = x + N(0, stdevs²)`` (see the module
    docstring for the formula, the papers and the order of the draws). Equal to Captum's
    ``GradientShap`` in expectation; exact on a linear model without noise.

    Args:
        model: the model.
        x: its input, or a tuple of positional inputs (each floating-point input is
            noised and interpolated; the others are passed unchanged).
        target: see :mod:`gradlens.targets`; ``None`` is fixed to each sample's top class
            on the clean input (one inference forward) for every draw.
        baselines: the distribution ``D``: ``(N, *sample_shape)`` for each floating-point
            input (a tuple of them for tuple inputs), ``(B, N, *sample_shape)`` for ``N``
            baselines of each sample, one baseline (a tensor shaped like one sample, or a
            number), or ``None`` (one all-zero baseline); see
            :func:`baseline_distribution`.
        n: the number of draws ``S`` per sample (Captum's ``n_samples``; ``n`` as for
            :func:`~gradlens.attribution.smoothgrad`).
        stdevs: the standard deviation of the input noise, one for all floating-point
            inputs or a tuple with one per floating-point input (``0``: no noise).
        batch_size: model inputs per forward (``batch_size // B`` draws at a time, at
            least one); ``None``: all draws at once.
        seed: seeds a new generator for the draws.
        generator: the generator for the draws (default: torch's global one).
        return_delta: also return the completeness error.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model; tensors whose dim 0 is the batch are
            repeated for the stacked draws.

    Returns:
        Shaped like the input (``(B, K, ...)`` for ``K`` targets per sample; a tuple for
        tuple inputs, ``None`` for non-float inputs); with ``return_delta``,
        ``(attributions, delta)``: ``delta`` (``(B,)`` or ``(B, K)``) is the sum of the
        attributions minus ``f(x) - (1/N) Σ_n f(x'_n)``, from one extra inference forward
        of ``x`` and every baseline (a Monte-Carlo error, zero only in expectation).

    Raises:
        ValueError: ``n < 1``, a negative standard deviation, baselines that are
            not a distribution for the input, a bad ``batch_size``.
        TargetError: a target that does not fit the output.
        TypeError: no floating-point input.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    positions = require_float_inputs(inputs.args, "gradient_shap")
    batch = inputs.batch_size
    target = check_target(target, batch)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int of at least 1 (the number of draws), got {n!r}")
    check_batch_size(batch_size, optional=True)
    noise = _stdevs(stdevs, positions)
    distribution = baseline_distribution(baselines, inputs.args, positions)
    count = distribution[positions[0]].shape[1]

    endpoint_scores = None
    if return_delta:
        stacked = inputs.tile(count + 1).with_args(
            {i: torch.cat([inputs.args[i], copy_major(distribution[i])]) for i in positions}
        )
        clean = clean_pass(model, stacked, target, output=output, copies=count + 1)
        endpoint_scores, target = clean.scores, clean.target
    elif target is None:
        target = clean_pass(model, inputs, None, output=output).target
    device = inputs.args[positions[0]].device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    sums: dict[int, Tensor] = {}
    for part in chunks(n, copies_per_chunk(batch_size, batch, n)):
        k = part.stop - part.start
        rows = k * batch
        tiled = inputs.tile(k)
        which = torch.randint(count, (rows,), generator=generator, device=device)
        sample_of_row = torch.arange(rows, device=device) % batch
        alpha = torch.rand(rows, generator=generator, device=device, dtype=torch.float64)
        differences, points = {}, {}
        for i in positions:
            value = tiled.args[i]
            if noise[i] > 0:
                value = value + noise[i] * torch.randn(
                    value.shape, generator=generator, device=device, dtype=value.dtype
                )
            start = distribution[i][sample_of_row.to(value.device), which.to(value.device)]
            differences[i] = value - start
            scale = alpha.to(value.device, value.dtype).view(-1, *([1] * (value.ndim - 1)))
            points[i] = start + scale * differences[i]
        result = differentiate(
            model,
            tiled.with_args(points),
            repeat_target(target, batch, k),
            wrt_inputs=True,
            output=output,
        )
        multi = result.scores.ndim == 2
        for i in positions:
            gradient = gradient_or_zeros(result.input_gradients[i], points[i], result.scores)
            gradient = targets_first_to_dim1(gradient, multi)
            difference = differences[i].unsqueeze(1) if multi else differences[i]
            total = (difference * gradient).reshape(k, batch, *gradient.shape[1:]).sum(0)
            sums[i] = total + sums[i] if i in sums else total
    attributions = {i: s / n for i, s in sums.items()}
    result_value = as_result(inputs, attributions)
    if not return_delta:
        return result_value
    assert endpoint_scores is not None  # the clean pass above ran because of return_delta
    multi = endpoint_scores.ndim == 2
    keep = 2 if multi else 1
    total_sum = sum(a.flatten(keep).sum(-1) for a in attributions.values())
    start_mean = endpoint_scores[batch:].reshape(count, batch, *endpoint_scores.shape[1:]).mean(0)
    return result_value, total_sum - (endpoint_scores[:batch] - start_mean)


def copy_major(distribution: Tensor) -> Tensor:
    """``(B, N, *sample)`` as ``(N * B, *sample)``: row ``n * B + b`` is baseline ``n`` of
    sample ``b``."""
    return distribution.transpose(0, 1).reshape(-1, *distribution.shape[2:])


def _stdevs(stdevs: float | tuple[float, ...], positions: Sequence[int]) -> dict[int, float]:
    """``{input position: noise standard deviation}``."""
    values = tuple(stdevs) if isinstance(stdevs, (tuple, list)) else (stdevs,) * len(positions)
    if len(values) != len(positions):
        raise ValueError(
            f"stdevs has {len(values)} entries for {len(positions)} floating-point inputs; "
            "give one standard deviation, or one per floating-point input"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"stdevs must be non-negative numbers, got {stdevs!r}")
    return {i: float(v) for i, v in zip(positions, values)}
