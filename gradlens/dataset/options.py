"""The keyword options :func:`~gradlens.dataset.attribute_dataset` passes on to a registered
method: :class:`MethodOptions`."""

from __future__ import annotations

import torch
from torch import Tensor

from ..attention.rollout import HeadFusion
from ..attribution.integrated import Baselines
from ..attribution.occlusion import Size
from ..cam.base import CamOptions
from ..core.selection import Layers

__all__ = ["MethodOptions"]


class MethodOptions(CamOptions, total=False):
    """The keyword options of the methods of :data:`gradlens.registry.METHODS`
    (``**method_options: Unpack[MethodOptions]``), passed on unchanged; each method takes
    only its own (an option it does not take is a ``TypeError`` before the run starts), with
    its own default. ``method=`` (the method averaged by SmoothGrad/VarGrad) cannot be
    passed this way: give :func:`functools.partial` of ``smoothgrad`` as the method instead.
    It extends :class:`~gradlens.cam.CamOptions` with the other methods' options.

    Attributes:
        layer: the CAMs and ``guided_gradcam``: the layer(s) explained.
        layers: the attention methods: the attention layers rolled out.
        upsample: the CAMs and attention methods: resize maps to the input's size.
        normalize: the CAMs and attention methods: min-max normalise each map.
        reshape: the CAMs, attention methods and ``guided_gradcam``: the layer's layout.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.
        select: the CAMs: picks one tensor of a layer's structured output.
        per_layer: the CAMs: one map per layer instead of their mean.
        batch_size: ``ablationcam``, ``scorecam``, ``integrated_gradients``,
            ``smoothgrad``, ``vargrad``, ``occlusion``, ``deeplift_shap``,
            ``gradient_shap``: model inputs per forward.
        ablation_value: ``ablationcam``: the value an ablated channel is set to.
        skip_unchanged: ``ablationcam``: skip channels whose ablation changes nothing.
        reuse_upstream: ``ablationcam``: run the part before the layer once.
        score: ``scorecam``: the score the masks are weighted by.
        masks: ``scorecam``: how activation channels become masks.
        skip_constant: ``scorecam``: skip constant channels.
        channels_last: ``scorecam``: run the masked inputs channels-last.
        fold_batchnorm: ``scorecam``: evaluate a BatchNorm-folded copy of the model.
        head_fusion: ``attention_rollout``: how the heads are fused.
        discard_ratio: ``attention_rollout``: the fraction of lowest attentions dropped.
        row: the attention methods: the token whose attention is read.
        abs: ``saliency`` (and the noise methods averaging it): absolute gradients.
        interpolation: ``guided_gradcam``: how the Grad-CAM map is upsampled.
        baselines: ``integrated_gradients``, ``deeplift``: the baselines;
            ``deeplift_shap``, ``gradient_shap``: the baseline distribution.
        steps: ``integrated_gradients``: the number of integration points.
        rule: ``integrated_gradients``: the quadrature rule.
        return_delta: ``integrated_gradients``, ``deeplift``, ``deeplift_shap``,
            ``gradient_shap``: also return the convergence delta.
        stdevs: ``gradient_shap``: the standard deviation of the input noise.
        n: ``smoothgrad``, ``vargrad``: the number of noise samples; ``gradient_shap``:
            the number of draws.
        sigma: ``smoothgrad``, ``vargrad``: the noise level.
        seed: ``smoothgrad``, ``vargrad``, ``gradient_shap``: seeds a new generator for
            the random draws.
        generator: ``smoothgrad``, ``vargrad``, ``gradient_shap``: the generator for the
            random draws.
        window: ``occlusion``: the occluded window.
        stride: ``occlusion``: the window's stride.
        baseline: ``occlusion``: the value put in the window.
        epsilon: the ``lrp_*`` methods and ``attnlrp``: the ε rule's stabiliser.
        gamma: ``lrp_epsilon_gamma_box``: the γ rule's parameter.
        conv_gamma: ``attnlrp``: the γ rule on convolutions (``None``: the ε rule).
        linear_gamma: ``attnlrp``: the γ rule on ``nn.Linear`` layers (``None``: the ε rule).
        low: ``lrp_epsilon_gamma_box``: the lowest input value (z^B rule).
        high: ``lrp_epsilon_gamma_box``: the highest input value (z^B rule).
    """

    layer: Layers | None
    layers: Layers | None
    batch_size: int | None
    ablation_value: float
    skip_unchanged: bool
    reuse_upstream: bool
    score: str
    masks: str
    skip_constant: bool
    channels_last: bool
    fold_batchnorm: bool
    head_fusion: HeadFusion
    discard_ratio: float
    row: int | None
    abs: bool
    interpolation: str
    baselines: Baselines
    steps: int
    rule: str
    return_delta: bool
    stdevs: float | tuple[float, ...]
    n: int
    sigma: float
    seed: int | None
    generator: torch.Generator | None
    window: Size | list[Size]
    stride: Size | list[Size]
    baseline: float | Tensor
    epsilon: float
    gamma: float
    conv_gamma: float | None
    linear_gamma: float | None
    low: float | Tensor | None
    high: float | Tensor | None
