"""Guided Backpropagation (:func:`guided_backprop`) and Guided Grad-CAM (:func:`guided_gradcam`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..cam.gradient import gradcam
from ..core.checks import entry_point
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.outputs import OutputReplacer, replace_outputs
from ..core.selection import Layers
from ..errors import LayerNotFoundError
from ..layering.discovery import default_layer
from ..layering.resolve import single_layer
from ..maps import resize
from ..registry import register
from ..targets.parse import check_target
from ..targets.scoring import Target
from ._common import Attribution, as_result
from .gradient import input_gradients

__all__ = ["guided_backprop", "guided_gradcam"]


class _GuidedReLU(torch.autograd.Function):
    """Identity in the forward pass; lets only positive gradients through backwards.

    Placed on a ReLU's output, it combines with the ReLU's own backward (which zeroes the
    gradient where the input was negative) into the guided rule
    ``grad_in = [input > 0] * max(grad_out, 0)``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        # a new tensor: downstream in-place operations cannot reach the ReLU's saved result
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


def _guide(name: str, module: nn.Module, output: Any) -> Any:
    return _GuidedReLU.apply(output) if isinstance(output, Tensor) else output


def _relu_guides(model: nn.Module) -> OutputReplacer:
    """A context that wraps the output of every ``nn.ReLU`` in the guided ReLU."""
    try:
        return replace_outputs(model, {nn.ReLU: _guide})
    except LayerNotFoundError:
        raise LayerNotFoundError(
            f"guided backpropagation changes the backward pass of nn.ReLU modules, and "
            f"{type(model).__name__} has none (a functional F.relu / torch.relu inside "
            "forward() is not a module and cannot be guided); use saliency for plain gradients"
        ) from None


@register("guided_backprop", "attribution", needs_layer=False, multi_target=True)
@entry_point
def guided_backprop(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Attribution:
    """Guided Backpropagation: the input gradient with only positive gradients passed
    back through each ReLU.

    Springenberg, Dosovitskiy, Brox & Riedmiller (2015), "Striving for Simplicity: The All
    Convolutional Net". During one forward and backward, the output of every ``nn.ReLU``
    module (each call: torchvision reuses one ReLU several times per block) is wrapped by
    :func:`gradlens.core.outputs.replace_outputs` in a guided-ReLU autograd function; the hooks come
    off afterwards and the modules, their ``inplace`` flags and their hooks are unchanged.
    In-place ReLUs work (full backward hooks, which Captum's ``GuidedBackprop`` uses, are
    not needed). Equal to Captum's ``GuidedBackprop``.

    Limitation: only ``nn.ReLU`` modules are guided; a functional ``F.relu`` /
    ``torch.relu`` called inside ``forward()`` is not a module and keeps its plain gradient.

    Args:
        model: the model (with ``nn.ReLU`` modules).
        x: its input, or a tuple of positional inputs.
        target: see :mod:`gradlens.targets`.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.

    Returns:
        Shaped like the input (``(B, K, ...)`` for ``K`` targets per sample; a tuple for
        tuple inputs, ``None`` for non-float inputs).

    Raises:
        LayerNotFoundError: the model has no ``nn.ReLU`` module.
        TargetError: a target that does not fit the output.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    _, grads = input_gradients(model, inputs, target, output=output, hooks=[_relu_guides(model)])
    return as_result(inputs, grads)


@register("guided_gradcam", "attribution", needs_layer=True, multi_target=True)
@entry_point
def guided_gradcam(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    layer: Layers | None = None,
    interpolation: str = "bilinear",
    reshape: Any = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Attribution:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

    Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization": the raw Grad-CAM map of ``layer``
    (:func:`gradlens.cam.gradcam` with ``upsample=False, normalize=False``: ReLU of the
    channel-weighted activations, weights = spatial mean of the gradients) upsampled to the
    input size (:func:`gradlens.maps.resize`), times :func:`guided_backprop`, element-wise
    (broadcast over channels). The paper upsamples bilinearly (the default); Captum's
    ``GuidedGradCam`` uses nearest-neighbour upsampling: ``interpolation="nearest"``
    gives its result. Both passes explain the same class: ``target=None`` is fixed to the
    top class found by the guided pass.

    Args:
        model: the model.
        x: its input ``(B, C, H, W)``, or a tuple of positional inputs (each image input
            gets the map resized to its own size).
        target: see :mod:`gradlens.targets`.
        layer: the Grad-CAM layer; ``None`` picks :func:`gradlens.default_layer`.
        interpolation: ``"bilinear"`` (``align_corners=False``) or ``"nearest"`` (or any
            :func:`torch.nn.functional.interpolate` mode for 4-D inputs).
        reshape: the layout of the layer's output, for :func:`gradlens.cam.gradcam`
            (e.g. transformer tokens; see :mod:`gradlens.cam.reshape`).
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.

    Returns:
        Shaped like the input (``(B, K, C, H, W)`` for ``K`` targets per sample; a tuple for
        tuple inputs).

    Raises:
        LayerNotFoundError: no ``nn.ReLU`` module, or no default layer can be chosen.
        LayerNotExecutedError: ``layer`` exists but did not run in the forward pass.
        ValueError: ``layer`` selects several modules, or its output cannot be read as
            ``(B, C, h, w)``.
        TargetError: a target that does not fit the output.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    target = check_target(target, inputs.batch_size)
    guided_pass, grads = input_gradients(
        model, inputs, target, output=output, hooks=[_relu_guides(model)]
    )
    if target is None and guided_pass.classes is not None:
        target = guided_pass.classes
    name = single_layer(
        model,
        layer
        if layer is not None
        else default_layer(model, inputs.x, forward_kwargs=inputs.kwargs),
    )
    cam = gradcam(
        model, inputs, name, target, upsample=False, normalize=False, reshape=reshape, output=output
    )
    attributions = {}
    for i, grad in grads.items():
        # (B, [K,] h, w) -> (B, [K,] 1, H, W): broadcast over the input's channels
        attributions[i] = grad * resize(cam, grad.shape[-2:], mode=interpolation).unsqueeze(-3)
    return as_result(inputs, attributions)
