"""The generic CAM (:func:`cam`) and the post-processing every CAM method shares.

A class activation map of a layer with activation ``A`` (``(B, C, h, w)`` after
:func:`~gradlens.cam.reshape.to_nchw`) is ``ReLU(sum_c w_c A_c)`` for channel weights
``w``, or ``ReLU(M)`` for a map ``M`` computed directly. Post-processing, in this order:
ReLU, bilinear upsampling to the input size (``align_corners=False``) when ``upsample``,
then per-map min-max normalisation to ``[0, 1]`` when ``normalize`` (a constant map
becomes zeros, never NaN). Maps are computed in float32 whatever the model's dtype, and
returned on the input's device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.selection import Layers
from ..errors import OutputSelectionError
from ..layering.resolve import resolve_layers
from ..maps import normalize as normalize_maps
from ..maps import resize
from ..passes import differentiate
from ..targets.scoring import Target
from .reshape import Reshape, to_nchw

__all__ = [
    "Weights",
    "CamResult",
    "CamOptions",
    "cam",
    "postprocess",
    "normalize_maps",
    "weighted_sum",
]

Weights = Callable[[Tensor, Tensor], Tensor]
"""``(activations, gradients) -> channel weights (N, C) or a map (N, h, w)``; both
arguments are float32 ``(N, C, h, w)`` tensors."""

CamResult = Any  # a Tensor, or {layer: Tensor} with per_layer=True


class CamOptions(TypedDict, total=False):
    """The keyword options every CAM method takes (``**options: Unpack[CamOptions]``), with
    their defaults; :func:`cam` describes them in full.

    Attributes:
        upsample: resize the maps to the input's ``(H, W)`` (bilinear,
            ``align_corners=False``); default ``True``.
        normalize: min-max normalise each map to ``[0, 1]``; default ``True``.
        reshape: the layout of the layer's output (:mod:`gradlens.cam.reshape`); default
            ``None`` (automatic).
        output: picks the logits out of a structured model output; default ``None``.
        forward_kwargs: keyword inputs for the model; default ``None``.
        select: picks one tensor of a layer's structured output; default ``None``.
        per_layer: return ``{layer: maps}`` instead of the mean over layers; default
            ``False``.
    """

    upsample: bool
    normalize: bool
    reshape: Reshape
    output: OutputSpec
    forward_kwargs: Mapping[str, Any] | None
    select: OutputSpec | Mapping[str, OutputSpec]
    per_layer: bool


@entry_point
def cam(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    *,
    weights: Weights,
    upsample: bool = True,
    normalize: bool = True,
    reshape: Reshape = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    per_layer: bool = False,
) -> CamResult:
    """A gradient-weighted class activation map with user-defined weights.

    One forward pass (whose autograd tape starts at the first selected layer, so the part
    before it runs as plain inference) and one batched backward give each layer's
    activation ``A`` and the gradient ``G`` of the target score with respect to it. Both are
    turned into float32 ``(B, C, h, w)`` tensors and ``weights(A, G)`` is called; its result's
    rank decides what it is:

    * rank 2, ``(B, C)``: channel weights; the map is ``ReLU(sum_c w[:, c] * A[:, c])``;
    * rank 3, ``(B, h, w)``: the map itself, before the ReLU.

    For ``K`` targets per sample (a ``(B, K)`` target) ``weights`` is called once per target
    with that target's gradient (``A`` is shared, not copied); the gradients of all ``K``
    come from one batched backward.

    Works in eval and train mode (in train mode the maps depend on dropout and, through
    BatchNorm's batch statistics, on the rest of the batch; the buffers the forward pass
    updates are restored), inside ``torch.no_grad()`` / ``torch.inference_mode()``, on
    frozen models and for any floating dtype (maps are computed in float32).

    Example -- Grad-CAM in three lines::

        def gradcam_weights(A, G):
            return G.mean(dim=(2, 3))
        maps = gradlens.cam.cam(model, x, "layer4", weights=gradcam_weights)

    Args:
        model: the model (any mode; its state is left exactly as it was).
        x: its input ``(B, C, H, W)``, or a tuple of positional inputs (``model(*x)``).
        layer: a layer name, pattern, module or a list of them
            (:mod:`gradlens.selection`); ``None`` picks :func:`gradlens.default_layer`.
            Several layers give the mean of their normalised, upsampled maps
            (normalised again when ``normalize``).
        target: see :mod:`gradlens.targets`: ``None`` (top class), an int, one class per
            sample, ``(B, K)`` classes, or a callable ``output -> (B,)`` scores.
        weights: the weight function described above.
        upsample: resize maps to the input's ``(H, W)`` (bilinear, ``align_corners=False``).
        normalize: min-max normalise each map to ``[0, 1]``.
        reshape: the layout of the layer's output (see :mod:`gradlens.cam.reshape`).
        output: picks the logits out of a structured model output (index, key or function).
        forward_kwargs: keyword inputs for the model (e.g. an attention mask).
        select: picks one tensor of a layer's structured output.
        per_layer: return ``{layer: maps}`` instead of the mean over layers.

    Returns:
        float32 maps of shape ``(B, H, W)``, or ``(B, K, H, W)`` for ``K`` targets per sample
        (``(B, [K,] h, w)`` without ``upsample``), on the input's device; a dict of them per
        layer with ``per_layer``.

    Raises:
        LayerNotFoundError: ``layer`` names no module (the message suggests close names).
        LayerNotExecutedError: the layer exists but did not run in the forward pass.
        TargetError: a target that does not fit the output (class out of range, wrong
            number of targets, a callable returning the wrong shape).
        OutputSelectionError: a structured model output without ``output=`` (or a
            structured layer output without ``select=``).
        ValueError: the layer's output cannot be read as ``(B, C, h, w)``, or ``weights``
            returned a tensor of another shape.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    names = resolve_layers(model, inputs, layer)
    result = differentiate(model, inputs, target, layers=names, output=output, select=select)
    multi = result.scores.ndim == 2
    raw = {}
    for name in names:
        A = as_nchw(result.activations[name], inputs, reshape, name)
        gradients = layer_tensor(result.gradients[name], name)
        per_target = [
            apply_weights(weights, A, as_nchw(g, inputs, reshape, name))
            for g in (gradients.unbind(0) if multi else [gradients])
        ]
        raw[name] = torch.stack(per_target, dim=1) if multi else per_target[0]
    return finish(raw, inputs, upsample=upsample, normalize=normalize, per_layer=per_layer)


def as_nchw(value: Any, inputs: ModelInput, reshape: Reshape, name: str) -> Tensor:
    """A layer's recorded output (or gradient) as a float32 ``(B, C, h, w)`` tensor."""
    return to_nchw(
        layer_tensor(value, name),
        batch=inputs.batch_size,
        image_size=inputs.image_size,
        reshape=reshape,
        layer=name,
    ).float()


def layer_tensor(value: Any, name: str) -> Tensor:
    """A layer's recorded output (or gradient), which must be one tensor."""
    if isinstance(value, Tensor):
        return value
    raise OutputSelectionError(
        f"layer {name!r} returns a {type(value).__name__}, not a tensor; pass select= (an index, "
        "a key or a function) to say which of its tensors the CAM is about"
    )


def apply_weights(weights: Weights, A: Tensor, G: Tensor) -> Tensor:
    """The map ``(N, h, w)`` (before ReLU) for channel weights or a map returned by ``weights``."""
    result = weights(A, G)
    if isinstance(result, Tensor) and result.ndim == 2 and result.shape == A.shape[:2]:
        return weighted_sum(result.float(), A)
    if (
        isinstance(result, Tensor)
        and result.ndim == 3
        and result.shape == (A.shape[0], *A.shape[2:])
    ):
        return result.float()
    got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
    raise ValueError(
        f"the CAM weight function must return channel weights of shape {tuple(A.shape[:2])} "
        f"or a map of shape {(A.shape[0], *A.shape[2:])} for activations of shape "
        f"{tuple(A.shape)}; it returned {got}"
    )


def weighted_sum(channel_weights: Tensor, A: Tensor) -> Tensor:
    """``sum_c w[..., c] * A[..., c, :, :]``: ``(..., C)`` weights and ``(..., C, h, w)``
    activations (broadcast over leading dims) give ``(..., h, w)``."""
    return (channel_weights[..., None, None] * A).sum(dim=-3)


def postprocess(
    raw: Tensor, size: tuple[int, int] | None, *, upsample: bool, normalize: bool
) -> Tensor:
    """ReLU, then bilinear upsampling of the last two dims to ``size`` (when ``upsample``),
    then per-map min-max normalisation (when ``normalize``), in float32
    (:mod:`gradlens.maps`).

    Args:
        raw: maps before the ReLU, ``(..., h, w)``.
        size: the ``(H, W)`` to upsample to; ``None`` when the input is not an image.
        upsample: resize the maps to ``size`` (bilinear, ``align_corners=False``).
        normalize: min-max normalise each map to ``[0, 1]``.

    Returns:
        float32 maps ``(..., H, W)`` (``(..., h, w)`` without ``upsample``).

    Raises:
        ValueError: ``upsample`` without a ``size``.
    """
    maps = raw.float().clamp(min=0)
    if upsample:
        if size is None:
            raise ValueError(
                "upsample=True needs an image input (B, C, H, W) to take the size from; "
                "pass upsample=False for the maps at the layer's resolution"
            )
        maps = resize(maps, size)
    return normalize_maps(maps) if normalize else maps


def finish(
    raw: Mapping[str, Tensor],
    inputs: ModelInput,
    *,
    upsample: bool,
    normalize: bool,
    per_layer: bool,
) -> CamResult:
    """Post-process each layer's raw map and combine the layers (see :func:`cam`)."""
    maps = {
        name: postprocess(m, inputs.image_size, upsample=upsample, normalize=normalize).to(
            inputs.device
        )
        for name, m in raw.items()
    }
    if per_layer:
        return maps
    if len(maps) == 1:
        return next(iter(maps.values()))
    shapes = {tuple(m.shape) for m in maps.values()}
    if len(shapes) > 1:
        sizes = ", ".join(f"{n}: {tuple(m.shape)}" for n, m in maps.items())
        raise ValueError(
            f"the layers' maps have different sizes ({sizes}) and cannot be averaged without "
            "upsample=True; pass per_layer=True to get each one"
        )
    mean = torch.stack(list(maps.values())).mean(dim=0)
    return normalize_maps(mean) if normalize else mean
