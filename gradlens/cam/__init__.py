"""The CAM family: class activation maps for any layer of any model.

Gradient-weighted: :func:`gradcam`, :func:`gradcampp`, :func:`xgradcam`, :func:`layercam`,
:func:`hirescam`, :func:`eigengradcam` -- each a small weight function over the generic
:func:`cam` (one forward pass whose autograd tape starts at the layer, one batched
backward). Gradient-free: :func:`eigencam` (activations only), :func:`scorecam` and
:func:`ablationcam` (batched ``inference_mode`` evaluations).

Common signature: ``method(model, x, layer=None, target=None, **options)`` with the
options of :class:`CamOptions` (``upsample=True, normalize=True, reshape=None,
output=None, forward_kwargs=None, select=None, per_layer=False``), returning float32 maps
``(B, H, W)`` -- ``(B, K, H, W)`` for ``K`` targets per sample -- on the input's device.
Post-processing (:mod:`gradlens.maps`): ReLU, bilinear upsampling
(``align_corners=False``), per-map min-max normalisation (constant maps become zeros).
Token and channels-last layouts: :mod:`gradlens.cam.reshape`.

:data:`METHODS` maps each name to its function (the ``"cam"`` part of
:data:`gradlens.METHODS`).
"""

from __future__ import annotations

from ..registry import CAM_METHODS
from .ablation_cam import ablationcam
from .base import CamOptions, Weights, cam, normalize_maps, postprocess
from .eigen import eigencam, first_component
from .gradient import eigengradcam, gradcam, gradcampp, hirescam, layercam, xgradcam
from .reshape import Reshape, to_nchw
from .score_cam import MASKS, SCORES, scorecam

METHODS = CAM_METHODS
"""``{name: method}`` of every CAM method (``gradlens.registry.CAM_METHODS``)."""

__all__ = [
    "CamOptions",
    "MASKS",
    "METHODS",
    "Reshape",
    "SCORES",
    "Weights",
    "ablationcam",
    "cam",
    "eigencam",
    "eigengradcam",
    "first_component",
    "gradcam",
    "gradcampp",
    "hirescam",
    "layercam",
    "normalize_maps",
    "postprocess",
    "scorecam",
    "to_nchw",
    "xgradcam",
]
