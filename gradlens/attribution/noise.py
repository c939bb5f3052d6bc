"""Noise averaging over any attribution method: :func:`smoothgrad` and :func:`vargrad`.

Noise level. Following Smilkov et al. (2017) the noise standard deviation is a fraction
``sigma`` of each sample's value range: ``std_b = sigma * (x_b.max() - x_b.min())``,
computed per sample (and per input tensor for tuple inputs). Captum's ``NoiseTunnel``
takes an absolute ``stdevs`` shared by the whole batch instead; the two agree when
``stdevs = sigma * (x.max() - x.min())`` and every sample has the same value range.

Random draws. For each batch of ``k`` noise samples the noise of each floating-point
input is one ``torch.randn((B * k, *sample_shape))`` draw, read sample-major (row
``b * k + j`` is noise ``j`` of sample ``b``) -- the draws Captum's ``NoiseTunnel`` makes
with ``nt_samples_batch_size=k``. With the same seed and ``batch_size = k * B`` the noisy
inputs, and hence the results, are the same as Captum's. Results depend on ``batch_size``
(it decides the shapes of the draws), as Captum's depend on ``nt_samples_batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypedDict, Union

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from .. import registry
from ..cam.reshape import Reshape
from ..core.checks import entry_point
from ..core.chunks import chunks, copies_per_chunk
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.selection import Layers
from ..passes import clean_pass
from ..registry import register
from ..targets.parse import check_target, repeat_target
from ..targets.scoring import Target
from ._common import Attribution, as_result, require_float_inputs
from .gradient import saliency
from .integrated import Baselines
from .occlusion import Size

__all__ = ["smoothgrad", "vargrad", "noise_scale", "NoiseMethodOptions"]

Method = Union[Callable[..., Attribution], str]


class NoiseMethodOptions(TypedDict, total=False):
    """The keyword options :func:`smoothgrad` and :func:`vargrad` pass on to the method
    they average (``**method_options: Unpack[NoiseMethodOptions]``): those of the
    registered attribution methods that the noise methods do not take themselves. Each
    goes only to a method that has it; the defaults are the method's.

    Attributes:
        abs: :func:`~gradlens.attribution.saliency`: absolute gradients (default ``True``).
        baselines: :func:`~gradlens.attribution.integrated_gradients`,
            :func:`~gradlens.attribution.deeplift`: the baselines;
            :func:`~gradlens.attribution.deeplift_shap`,
            :func:`~gradlens.attribution.gradient_shap`: the baseline distribution.
        steps: :func:`~gradlens.attribution.integrated_gradients`: the integration points.
        rule: :func:`~gradlens.attribution.integrated_gradients`: the quadrature rule.
        return_delta: :func:`~gradlens.attribution.integrated_gradients` and the DeepLIFT
            and SHAP methods: only ``False`` is allowed here (a ``ValueError`` for ``True``).
        stdevs: :func:`~gradlens.attribution.gradient_shap`: the input noise.
        window: :func:`~gradlens.attribution.occlusion`: the occluded window.
        stride: :func:`~gradlens.attribution.occlusion`: the window's stride.
        baseline: :func:`~gradlens.attribution.occlusion`: the value put in the window.
        layer: :func:`~gradlens.attribution.guided_gradcam`: the Grad-CAM layer.
        interpolation: :func:`~gradlens.attribution.guided_gradcam`: how the map is
            upsampled.
        reshape: :func:`~gradlens.attribution.guided_gradcam`: the layer's layout.
        epsilon: the ``lrp_*`` methods and ``attnlrp``: the ε rule's stabiliser.
        gamma: ``lrp_epsilon_gamma_box``: the γ rule's parameter.
        conv_gamma: ``attnlrp``: the γ rule on convolutions (``None``: the ε rule).
        linear_gamma: ``attnlrp``: the γ rule on ``nn.Linear`` layers (``None``: the ε rule).
        low: ``lrp_epsilon_gamma_box``: the lowest input value.
        high: ``lrp_epsilon_gamma_box``: the highest input value.
    """

    abs: bool
    baselines: Baselines
    steps: int
    rule: str
    return_delta: bool
    stdevs: float | tuple[float, ...]
    window: Size | list[Size]
    stride: Size | list[Size]
    baseline: float | Tensor
    layer: Layers | None
    interpolation: str
    reshape: Reshape
    epsilon: float
    gamma: float
    conv_gamma: float | None
    linear_gamma: float | None
    low: float | Tensor | None
    high: float | Tensor | None


def noise_scale(x: Tensor, sigma: float) -> Tensor:
    """The noise standard deviation of each sample, ``sigma * (max - min)``, shape ``(B,)``."""
    flat = x.detach().flatten(1)
    return sigma * (flat.amax(1) - flat.amin(1))


@register(
    "smoothgrad",
    "attribution",
    needs_layer=False,
    multi_target=True,
    quick_options={"n": 8, "seed": 0},
)
@entry_point
def smoothgrad(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    method: Method = saliency,
    n: int = 50,
    sigma: float = 0.15,
    batch_size: int | None = 32,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    **method_options: Unpack[NoiseMethodOptions],
) -> Attribution:
    """SmoothGrad: the mean of an attribution over noisy copies of the input.

    Smilkov, Thorat, Kim, Viégas & Wattenberg (2017), "SmoothGrad: removing noise by adding
    noise": ``mean_j A(x + eps_j)``, ``eps_j ~ N(0, std^2)`` with ``std = sigma * (max - min)``
    of each sample (see the module docstring for the conversion to Captum's ``stdevs``).

    Args:
        model: the model.
        x: its input, or a tuple of positional inputs (noise is added to each
            floating-point input).
        target: see :mod:`gradlens.targets`; ``None`` is fixed to each sample's top class on
            the clean input (one inference forward) and used for every noisy copy.
        method: the attribution averaged: a function ``f(model, x, target, **options)``
            (e.g. :func:`saliency`, :func:`integrated_gradients`) or a registered name.
        n: the number of noise samples per input.
        sigma: the noise level as a fraction of each sample's value range.
        batch_size: the number of noisy inputs per call of ``method`` (``k = batch_size // B``
            noise samples of the whole batch at a time; at least one); ``None``: all at once.
        seed: seeds a new generator for the noise.
        generator: the generator for the noise (default: torch's global one).
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model; tensors whose dim 0 is the batch are
            repeated for the noisy copies.
        **method_options: passed to ``method`` (:class:`NoiseMethodOptions`: ``abs``,
            ``baselines``, ``steps``, ``rule``, ``return_delta``, ``stdevs``,
            ``window``, ``stride``, ``baseline``, ``layer``, ``interpolation``,
            ``reshape``), e.g. ``abs=False`` or ``steps=16``; only those ``method`` takes.

    Returns:
        Shaped as ``method``'s result for ``x``: like the input, ``(B, K, ...)`` for ``K``
        targets per sample, a tuple for tuple inputs.

    Raises:
        ValueError: ``n < 1``, ``sigma < 0``, an unknown method name, ``return_delta=True``.
        TypeError: an option of ``method_options`` that ``method`` does not take (before
            any forward pass).
        TargetError: a target that does not fit the output.
    """
    return _noise_average(
        model,
        x,
        target,
        method,
        n,
        sigma,
        batch_size,
        seed,
        generator,
        output,
        forward_kwargs,
        method_options,
        variance=False,
    )


@register(
    "vargrad",
    "attribution",
    needs_layer=False,
    multi_target=True,
    quick_options={"n": 8, "seed": 0},
)
@entry_point
def vargrad(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    method: Method = saliency,
    n: int = 50,
    sigma: float = 0.15,
    batch_size: int | None = 32,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    **method_options: Unpack[NoiseMethodOptions],
) -> Attribution:
    """VarGrad: the variance of an attribution over noisy copies of the input.

    Adebayo, Gilmer, Goodfellow & Kim (2018), "Local Explanation Methods for Deep Neural
    Networks Lack Sensitivity to Parameter Values": ``mean_j A_j^2 - (mean_j A_j)^2`` (the
    population variance, as Captum's ``NoiseTunnel(nt_type="vargrad")``), with the noise of
    :func:`smoothgrad`.

    Args:
        model: the model.
        x: its input, or a tuple of positional inputs.
        target: as for :func:`smoothgrad`.
        method: the attribution whose variance is taken (a function or a registered name).
        n: the number of noise samples per input.
        sigma: the noise level as a fraction of each sample's value range.
        batch_size: the number of noisy inputs per call of ``method``; ``None``: all at once.
        seed: seeds a new generator for the noise.
        generator: the generator for the noise (default: torch's global one).
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.
        **method_options: passed to ``method`` (:class:`NoiseMethodOptions`: ``abs``,
            ``baselines``, ``steps``, ``rule``, ``return_delta``, ``stdevs``,
            ``window``, ``stride``, ``baseline``, ``layer``, ``interpolation``,
            ``reshape``); only those ``method`` takes.

    Returns:
        Shaped as ``method``'s result for ``x`` (see :func:`smoothgrad`).

    Raises:
        ValueError, TypeError, TargetError: as for :func:`smoothgrad`.
    """
    return _noise_average(
        model,
        x,
        target,
        method,
        n,
        sigma,
        batch_size,
        seed,
        generator,
        output,
        forward_kwargs,
        method_options,
        variance=True,
    )


def _noise_average(
    model: nn.Module,
    x: Inputs,
    target: Target,
    method: Method,
    n: int,
    sigma: float,
    batch_size: int | None,
    seed: int | None,
    generator: torch.Generator | None,
    output: OutputSpec,
    forward_kwargs: Mapping[str, Any] | None,
    method_options: NoiseMethodOptions,
    *,
    variance: bool,
) -> Attribution:
    if n < 1:
        raise ValueError(f"n must be at least 1 noise sample, got {n}")
    if sigma < 0:
        raise ValueError(
            f"sigma is a fraction of the value range and cannot be negative, got {sigma}"
        )
    if method_options.get("return_delta"):
        raise ValueError(
            "smoothgrad/vargrad average attributions; return_delta=True is not supported "
            "inside them"
        )
    attribute = registry.get(method, "attribution")
    registry.check_options(
        attribute, method_options, caller="vargrad" if variance else "smoothgrad"
    )
    inputs = ModelInput.parse(x, forward_kwargs)
    positions = require_float_inputs(inputs.args, "smoothgrad/vargrad")
    batch = inputs.batch_size
    target = check_target(target, batch)
    if target is None:
        target = clean_pass(model, inputs, None, output=output).target
    if generator is None and seed is not None:
        generator = torch.Generator(device=inputs.args[positions[0]].device).manual_seed(seed)
    stds = {i: noise_scale(inputs.args[i], sigma) for i in positions}

    per_chunk = copies_per_chunk(batch_size, batch, n)
    sums: dict[int, Tensor] = {}
    squares: dict[int, Tensor] = {}
    for chunk in chunks(n, per_chunk):
        k = chunk.stop - chunk.start
        copies = inputs.tile(k)
        noisy = copies.with_args(
            {i: copies.args[i] + _draw(inputs.args[i], stds[i], k, generator) for i in positions}
        )
        result = attribute(
            model,
            noisy.x,
            repeat_target(target, batch, k),
            output=output,
            forward_kwargs=noisy.kwargs,
            **method_options,
        )
        parts = result if isinstance(result, tuple) else (result,)
        for i, part in enumerate(parts):
            if part is None:
                continue
            part = part.detach().reshape(k, batch, *part.shape[1:])
            sums[i] = part.sum(0) + sums[i] if i in sums else part.sum(0)
            if variance:
                square = part.square().sum(0)
                squares[i] = square + squares[i] if i in squares else square
    means = {i: s / n for i, s in sums.items()}
    if variance:
        means = {i: (squares[i] / n - m.square()).clamp_(min=0) for i, m in means.items()}
    return as_result(inputs, means)


def _draw(x: Tensor, std: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """Noise for ``k`` copies of the batch, copy-major, from one sample-major draw."""
    batch, sample_shape = x.shape[0], x.shape[1:]
    z = torch.randn((batch * k, *sample_shape), generator=generator, device=x.device, dtype=x.dtype)
    z = z.view(batch, k, *sample_shape).transpose(0, 1).reshape(k * batch, *sample_shape)
    return z * std.to(x.dtype).repeat(k).view(-1, *([1] * len(sample_shape)))
