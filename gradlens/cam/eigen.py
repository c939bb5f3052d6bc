"""Eigen-CAM: the first principal component of a layer's activations -- no gradient, no target.

Muhammad & Yeasin (2020), "Eigen-CAM: Class Activation Map using Principal Components".
For each sample the ``(h*w) x C`` matrix of activations (one row per position) is centred
(each channel's mean over positions subtracted, as in principal component analysis and as
pytorch-grad-cam does) and projected on its first right singular vector. The SVD leaves
the sign of that vector arbitrary; gradlens fixes it so that the map correlates positively
with the channel-mean activation, so bright means "more active". Then ReLU, upsampling and
normalisation as for every CAM (:mod:`gradlens.cam.base`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.extract import extract
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.selection import Layers
from ..layering.resolve import resolve_layers
from ..registry import register
from ..targets.parse import check_target
from ..targets.scoring import Target
from .base import CamResult, as_nchw, finish
from .reshape import Reshape

__all__ = ["eigencam", "first_component"]


def first_component(values: Tensor) -> Tensor:
    """Projection of each sample's centred ``(positions x channels)`` matrix on its first
    principal component, signed to correlate positively with the channel mean.

    Args:
        values: ``(N, C, h, w)``.

    Returns:
        ``(N, h, w)`` float32 (before any ReLU); zeros where the matrix is constant, NaN
        for a sample whose matrix holds NaN or inf (it has no principal component).
    """
    n, c, h, w = values.shape
    matrix = values.float().reshape(n, c, h * w).transpose(1, 2)  # (N, hw, C)
    centred = matrix - matrix.mean(dim=1, keepdim=True)
    finite = torch.isfinite(centred).flatten(1).all(dim=1)
    centred = torch.where(finite[:, None, None], centred, torch.full_like(centred, torch.nan))
    # the SVD fails on non-finite values: those samples get a NaN map, the others theirs
    vh: Tensor = torch.linalg.svd(centred.nan_to_num(0.0), full_matrices=False).Vh
    projection = (centred @ vh[:, 0, :, None]).squeeze(-1)  # (N, hw), zero mean
    channel_mean = matrix.mean(dim=2)
    agreement = (projection * (channel_mean - channel_mean.mean(dim=1, keepdim=True))).sum(dim=1)
    sign = torch.where(agreement < 0, -1.0, 1.0)
    return (projection * sign[:, None]).reshape(n, h, w)


@register("eigencam", "cam", needs_layer=True, multi_target=False, uses_target=False)
@entry_point
def eigencam(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    *,
    upsample: bool = True,
    normalize: bool = True,
    reshape: Reshape = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    per_layer: bool = False,
) -> CamResult:
    """Eigen-CAM (Muhammad & Yeasin 2020, "Eigen-CAM: Class Activation Map using Principal
    Components"): ``ReLU`` of the activations' projection on their first principal
    component (centred; sign fixed as described in :mod:`gradlens.cam.eigen`).

    Class-agnostic: ``target`` (and ``output``) are accepted for a uniform signature and
    ignored; the maps are always ``(B, H, W)``, also for a ``(B, K)`` target. The
    activations come from :func:`gradlens.extract` -- one forward pass without autograd
    tape, stopped as soon as the layers have run.

    Args:
        model, x, layer, upsample, normalize, reshape, forward_kwargs, select, per_layer:
            as for :func:`gradlens.cam.cam`.
        target, output: ignored.

    Returns:
        float32 maps ``(B, H, W)`` (``(B, h, w)`` without ``upsample``) on the input's
        device, or ``{layer: maps}`` with ``per_layer``.

    Raises:
        LayerNotFoundError: ``layer`` names no module.
        LayerNotExecutedError: the layer exists but did not run in the forward pass.
        ValueError: the layer's output cannot be read as ``(B, C, h, w)``.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    check_target(target, inputs.batch_size)  # unused, but a float or bool target is a mistake
    names = resolve_layers(model, inputs, layer)
    activations = extract(model, inputs.x, names, forward_kwargs=inputs.kwargs, select=select)
    raw = {
        name: first_component(as_nchw(activations[name], inputs, reshape, name)) for name in names
    }
    return finish(raw, inputs, upsample=upsample, normalize=normalize, per_layer=per_layer)
