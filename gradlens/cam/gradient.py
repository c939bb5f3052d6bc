"""Gradient-weighted CAMs, each a small weight function over the generic :func:`~gradlens.cam.cam`.

Every method here has the signature
``method(model, x, layer=None, target=None, **options)`` with the options of
:class:`~gradlens.cam.CamOptions` (``upsample=True, normalize=True, reshape=None,
output=None, forward_kwargs=None, select=None, per_layer=False``) and returns float32 maps
``(B, H, W)`` (``(B, K, H, W)`` for ``K`` targets per sample); see :func:`~gradlens.cam.cam`
for the arguments, the post-processing and the errors. Notation: ``A`` the layer's
activation and ``G = d score / d A``, both ``(B, C, h, w)``.

In train mode the maps depend on dropout and, through BatchNorm batch statistics, on the
rest of the batch; the model's buffers are restored afterwards.
"""

from __future__ import annotations

from torch import Tensor, nn
from typing_extensions import Unpack

from ..core.checks import entry_point
from ..core.inputs import Inputs
from ..core.selection import Layers
from ..maps import safe_divide
from ..registry import register
from ..targets.scoring import Target
from .base import CamOptions, CamResult, cam
from .eigen import first_component

__all__ = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigengradcam"]

_SPATIAL = (2, 3)


def gradcam_weights(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM: ``w_c = mean_ij G_cij``."""
    return G.mean(dim=_SPATIAL)


def gradcampp_weights(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM++: ``w_c = sum_ij alpha_cij ReLU(G_cij)`` with the closed form
    ``alpha = G^2 / (2 G^2 + sum_ab A_cab G^3)`` (0 where that is 0/0)."""
    g2 = G.pow(2)
    alpha = safe_divide(g2, 2 * g2 + A.sum(dim=_SPATIAL, keepdim=True) * g2 * G)
    return (alpha * G.clamp(min=0)).sum(dim=_SPATIAL)


def xgradcam_weights(A: Tensor, G: Tensor) -> Tensor:
    """XGrad-CAM: ``w_c = sum_ij G_cij A_cij / sum_ij A_cij`` (0 where ``sum_ij A_cij = 0``)."""
    return safe_divide((G * A).sum(dim=_SPATIAL), A.sum(dim=_SPATIAL))


def layercam_map(A: Tensor, G: Tensor) -> Tensor:
    """LayerCAM: ``sum_c ReLU(G_c) A_c`` (a map)."""
    return (G.clamp(min=0) * A).sum(dim=1)


def hirescam_map(A: Tensor, G: Tensor) -> Tensor:
    """HiResCAM: ``sum_c G_c A_c`` (a map)."""
    return (G * A).sum(dim=1)


def eigengradcam_map(A: Tensor, G: Tensor) -> Tensor:
    """Eigen-Grad-CAM: the first principal component of ``G * A`` (see
    :mod:`gradlens.cam.eigen`)."""
    return first_component(G * A)


@register("gradcam", "cam", needs_layer=True, multi_target=True)
@entry_point
def gradcam(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    **options: Unpack[CamOptions],
) -> CamResult:
    """Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks
    via Gradient-based Localization").

    ``ReLU(sum_c w_c A_c)`` with ``w_c`` the spatial mean of ``G_c``.

    Args:
        model, x, layer, target: as for :func:`gradlens.cam.cam`.
        **options: :class:`~gradlens.cam.CamOptions`: ``upsample``, ``normalize``,
            ``reshape``, ``output``, ``forward_kwargs``, ``select``, ``per_layer``, as for
            :func:`gradlens.cam.cam`.

    Returns:
        float32 maps ``(B, H, W)``, ``(B, K, H, W)`` for ``K`` targets per sample, on the
        input's device (see :func:`gradlens.cam.cam`).

    Raises:
        LayerNotFoundError, LayerNotExecutedError, TargetError, OutputSelectionError,
            ValueError: as for :func:`gradlens.cam.cam`.
    """
    return cam(model, x, layer, target, weights=gradcam_weights, **options)


@register("gradcampp", "cam", needs_layer=True, multi_target=True)
@entry_point
def gradcampp(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    **options: Unpack[CamOptions],
) -> CamResult:
    """Grad-CAM++ (Chattopadhyay et al. 2018, "Grad-CAM++: Generalized Gradient-based
    Visual Explanations for Deep Convolutional Networks").

    ``ReLU(sum_c w_c A_c)`` with ``w_c = sum_ij alpha_cij ReLU(G_cij)`` and the paper's
    closed form for an exponential score (its eq. 19),
    ``alpha_cij = G_cij^2 / (2 G_cij^2 + sum_ab A_cab G_cij^3)``, set to 0 where numerator and
    denominator vanish. pytorch-grad-cam adds ``1e-6`` to the denominator instead; the maps
    agree to within that. (torchcam's ``GradCAMpp`` divides a boolean-indexed copy in place,
    so its ``alpha`` stays ``G^2``; it is not the paper's method.)

    Args:
        model, x, layer, target: as for :func:`gradlens.cam.cam`.
        **options: :class:`~gradlens.cam.CamOptions`: ``upsample``, ``normalize``,
            ``reshape``, ``output``, ``forward_kwargs``, ``select``, ``per_layer``, as for
            :func:`gradlens.cam.cam`.

    Returns:
        float32 maps ``(B, H, W)``, ``(B, K, H, W)`` for ``K`` targets per sample, on the
        input's device (see :func:`gradlens.cam.cam`).

    Raises:
        LayerNotFoundError, LayerNotExecutedError, TargetError, OutputSelectionError,
            ValueError: as for :func:`gradlens.cam.cam`.
    """
    return cam(model, x, layer, target, weights=gradcampp_weights, **options)


@register("xgradcam", "cam", needs_layer=True, multi_target=True)
@entry_point
def xgradcam(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    **options: Unpack[CamOptions],
) -> CamResult:
    """XGrad-CAM (Fu et al. 2020, "Axiom-based Grad-CAM: Towards Accurate Visualization
    and Explanation of CNNs").

    ``ReLU(sum_c w_c A_c)`` with ``w_c = sum_ij G_cij A_cij / sum_ij A_cij``; channels whose
    activations sum to exactly 0 get weight 0 (pytorch-grad-cam and torchcam add a
    ``1e-7`` / ``1e-8`` to the denominator instead).

    Args:
        model, x, layer, target: as for :func:`gradlens.cam.cam`.
        **options: :class:`~gradlens.cam.CamOptions`: ``upsample``, ``normalize``,
            ``reshape``, ``output``, ``forward_kwargs``, ``select``, ``per_layer``, as for
            :func:`gradlens.cam.cam`.

    Returns:
        float32 maps ``(B, H, W)``, ``(B, K, H, W)`` for ``K`` targets per sample, on the
        input's device (see :func:`gradlens.cam.cam`).

    Raises:
        LayerNotFoundError, LayerNotExecutedError, TargetError, OutputSelectionError,
            ValueError: as for :func:`gradlens.cam.cam`.
    """
    return cam(model, x, layer, target, weights=xgradcam_weights, **options)


@register("layercam", "cam", needs_layer=True, multi_target=True)
@entry_point
def layercam(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    **options: Unpack[CamOptions],
) -> CamResult:
    """LayerCAM (Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation
    Maps for Localization").

    ``ReLU(sum_c ReLU(G_c) * A_c)``, element-wise weights, so it also works on early
    layers.

    Args:
        model, x, layer, target: as for :func:`gradlens.cam.cam`.
        **options: :class:`~gradlens.cam.CamOptions`: ``upsample``, ``normalize``,
            ``reshape``, ``output``, ``forward_kwargs``, ``select``, ``per_layer``, as for
            :func:`gradlens.cam.cam`.

    Returns:
        float32 maps ``(B, H, W)``, ``(B, K, H, W)`` for ``K`` targets per sample, on the
        input's device (see :func:`gradlens.cam.cam`).

    Raises:
        LayerNotFoundError, LayerNotExecutedError, TargetError, OutputSelectionError,
            ValueError: as for :func:`gradlens.cam.cam`.
    """
    return cam(model, x, layer, target, weights=layercam_map, **options)


@register("hirescam", "cam", needs_layer=True, multi_target=True)
@entry_point
def hirescam(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    **options: Unpack[CamOptions],
) -> CamResult:
    """HiResCAM (Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful
    explanations of convolutional neural networks").

    ``ReLU(sum_c G_c * A_c)``: the gradient multiplies the activation element-wise instead
    of being averaged first.

    Args:
        model, x, layer, target: as for :func:`gradlens.cam.cam`.
        **options: :class:`~gradlens.cam.CamOptions`: ``upsample``, ``normalize``,
            ``reshape``, ``output``, ``forward_kwargs``, ``select``, ``per_layer``, as for
            :func:`gradlens.cam.cam`.

    Returns:
        float32 maps ``(B, H, W)``, ``(B, K, H, W)`` for ``K`` targets per sample, on the
        input's device (see :func:`gradlens.cam.cam`).

    Raises:
        LayerNotFoundError, LayerNotExecutedError, TargetError, OutputSelectionError,
            ValueError: as for :func:`gradlens.cam.cam`.
    """
    return cam(model, x, layer, target, weights=hirescam_map, **options)


@register("eigengradcam", "cam", needs_layer=True, multi_target=True)
@entry_point
def eigengradcam(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    **options: Unpack[CamOptions],
) -> CamResult:
    """Eigen-Grad-CAM: Eigen-CAM (Muhammad & Yeasin 2020) applied to ``G * A`` instead of ``A``.

    The map is the projection of the centred (position x channel) matrix of ``G * A`` on
    its first principal component, with the sign that makes it correlate positively with
    the channel mean of ``G * A`` (pytorch-grad-cam's ``EigenGradCAM`` leaves the SVD's sign
    arbitrary), then ReLU.

    Args:
        model, x, layer, target: as for :func:`gradlens.cam.cam`.
        **options: :class:`~gradlens.cam.CamOptions`: ``upsample``, ``normalize``,
            ``reshape``, ``output``, ``forward_kwargs``, ``select``, ``per_layer``, as for
            :func:`gradlens.cam.cam`.

    Returns:
        float32 maps ``(B, H, W)``, ``(B, K, H, W)`` for ``K`` targets per sample, on the
        input's device (see :func:`gradlens.cam.cam`).

    Raises:
        LayerNotFoundError, LayerNotExecutedError, TargetError, OutputSelectionError,
            ValueError: as for :func:`gradlens.cam.cam`.
    """
    return cam(model, x, layer, target, weights=eigengradcam_map, **options)
