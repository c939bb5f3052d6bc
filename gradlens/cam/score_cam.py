"""Score-CAM (:func:`scorecam`): channels weighted by the target's score on the input masked
by each channel.

The clean pass, the batching and the target handling are shared with Ablation-CAM
(:mod:`gradlens.cam.perturbed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..core.buffers import preserve_buffers
from ..core.checks import entry_point
from ..core.chunks import check_batch_size, chunks
from ..core.folding import folded_copy
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.selection import Layers
from ..layering.resolve import resolve_layers
from ..maps import normalize as normalize_maps
from ..maps import resize
from ..passes import CleanPass
from ..registry import register
from ..targets.scoring import Target, probability, scores
from .base import CamResult, as_nchw, finish
from .perturbed import channel_maps, clean_layers, row_target
from .reshape import Reshape

__all__ = ["scorecam", "SCORES", "MASKS"]

SCORES = ("probability", "channel_softmax")
"""Score-CAM channel weightings: see :func:`scorecam`."""

MASKS = ("official", "align_corners", "normalize_first")
"""Score-CAM mask constructions: see :func:`scorecam`."""


@register("scorecam", "cam", needs_layer=True, multi_target=True)
@entry_point
def scorecam(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    *,
    score: str = "probability",
    masks: str = "official",
    batch_size: int = 16,
    skip_constant: bool = True,
    channels_last: bool = True,
    fold_batchnorm: bool = True,
    upsample: bool = True,
    normalize: bool = True,
    reshape: Reshape = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    per_layer: bool = False,
) -> CamResult:
    """Score-CAM (Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks").

    Each channel ``A_k`` of the layer is upsampled to the input size (bilinear,
    ``align_corners=False``) and min-max normalised to a mask ``M_k`` in ``[0, 1]`` (a
    constant channel gives an all-zero mask); the model is evaluated on ``x * M_k`` and the
    target's score there weights the channel: ``ReLU(sum_k w_k A_k)``.

    ``score`` chooses the weight:

    * ``"probability"`` (default): the target class's softmax probability for the masked
      input, as in the authors' implementation. For a callable target, or a model with
      one output per sample, the target's score itself.
    * ``"channel_softmax"``: the softmax, over the channels, of the target's raw score
      (logit) for each masked input -- what pytorch-grad-cam's and torchcam's ``ScoreCAM``
      compute (torchcam subtracts the clean input's logit first, which the softmax cancels).

    ``masks`` chooses how a channel becomes a mask:

    * ``"official"`` (default): bilinear upsampling (``align_corners=False``), then min-max
      normalisation, as in the authors' implementation;
    * ``"align_corners"``: upsampling with ``align_corners=True``, then normalisation
      (pytorch-grad-cam);
    * ``"normalize_first"``: normalisation at the layer's resolution, then upsampling
      (torchcam).

    ``score="channel_softmax", masks="align_corners"`` reproduces pytorch-grad-cam's
    ``ScoreCAM`` and ``score="channel_softmax", masks="normalize_first"`` torchcam's
    (up to the ``1e-8`` they add to the normalisation's denominator).

    Cost: one masked forward per channel and sample, under ``inference_mode``, in batches of
    ``batch_size`` rows. With ``skip_constant`` (default) the channels that are constant
    (in particular exactly zero) share one forward per sample, since their masks are all
    zero -- and need none at all when they are zero and the weights are not normalised
    across channels (``"probability"``), as they then add nothing to the map. This changes
    no result. With ``channels_last`` (default) the masked inputs are passed in
    channels-last memory format, for which CPU convolutions run faster; should the model
    fail on such an input (a ``.view()`` of a convolution's output), gradlens passes
    ordinary contiguous inputs instead. With ``fold_batchnorm`` (default), a model in eval
    mode whose BatchNorms follow convolutions runs the masked forwards as a temporary copy
    with each BatchNorm folded into its convolution (the copy holds a second set of
    weights while the call runs). The copy is used only when
    :func:`torch.fx.symbolic_trace` can trace the model, no module carries forward hooks,
    and the copy's target scores on the clean input match the model's; otherwise the
    model itself runs. Only floating-point rounding can differ. The documentation's
    Performance page lists what each lever gained in the benchmarks.

    Args:
        model, x, layer, target, upsample, normalize, reshape, output, forward_kwargs,
            select, per_layer: as for :func:`gradlens.cam.cam`. Callable targets must work
            on batches of any size.
        score: ``"probability"`` or ``"channel_softmax"`` (see above).
        masks: ``"official"``, ``"align_corners"`` or ``"normalize_first"`` (see above).
        batch_size: masked inputs per forward pass.
        skip_constant: share (or skip) the forwards of constant channels.
        channels_last: pass masked images in channels-last memory format.
        fold_batchnorm: run the masked forwards on a BatchNorm-folded copy when possible.

    Returns:
        float32 maps ``(B, H, W)``, ``(B, K, H, W)`` for ``K`` targets per sample, on the
        input's device (a dict per layer with ``per_layer``).

    Raises:
        LayerNotFoundError, LayerNotExecutedError, TargetError, OutputSelectionError: as
            for :func:`gradlens.cam.cam`.
        ValueError: an unknown ``score`` or ``masks``, a bad ``batch_size``, no image input,
            or a layer output that cannot be read as ``(B, C, h, w)``.
    """
    if score not in SCORES:
        raise ValueError(f"score={score!r} is not one of {', '.join(map(repr, SCORES))}")
    if masks not in MASKS:
        raise ValueError(f"masks={masks!r} is not one of {', '.join(map(repr, MASKS))}")
    check_batch_size(batch_size)
    inputs = ModelInput.parse(x, forward_kwargs)
    position = inputs.image_position
    if position is None:
        raise ValueError(
            "scorecam masks an image input of shape (B, C, H, W), and the model input holds none"
        )
    names = resolve_layers(model, inputs, layer)
    clean = clean_layers(model, inputs, names, target, output, select)
    runner = _folded_runner(model, inputs, clean, output) if fold_batchnorm else model
    forward = _MaskedForward(runner, inputs, position, channels_last)
    raw = {}
    for name in names:
        A = as_nchw(clean.activations[name], inputs, reshape, name)
        channel_scores = _masked_scores(
            model, forward, clean, A, masks, score, batch_size, skip_constant, output
        )
        weights = (
            torch.softmax(channel_scores, dim=1) if score == "channel_softmax" else channel_scores
        )
        raw[name] = channel_maps(weights, A, clean.scores.ndim == 2)
    return finish(raw, inputs, upsample=upsample, normalize=normalize, per_layer=per_layer)


def _folded_runner(
    model: nn.Module, inputs: ModelInput, clean: CleanPass, output: OutputSpec
) -> nn.Module:
    """A BatchNorm-folded copy of ``model`` if one exists and gives the clean pass's target
    scores (relative tolerance 1e-3), else ``model``."""
    folded = folded_copy(model)
    if folded is None:
        return model
    try:
        with torch.inference_mode():
            value, _ = scores(inputs.call(folded), clean.target, inputs.batch_size, output)
            value = value.float().cpu()
    except Exception:  # the traced copy cannot take these inputs
        return model
    reference = clean.scores.cpu()
    if not bool(torch.isfinite(reference).all()):  # NaN in, NaN out: nothing to compare
        return model
    tolerance = 1e-4 * (1.0 + float(reference.abs().max())) if reference.numel() else 0.0
    if value.shape != reference.shape or not torch.allclose(
        value, reference, rtol=1e-3, atol=tolerance
    ):
        return model
    return folded


def _masked_scores(
    model: nn.Module,
    forward: _MaskedForward,
    clean: CleanPass,
    A: Tensor,
    masks: str,
    score: str,
    chunk: int,
    skip_constant: bool,
    output: OutputSpec,
) -> Tensor:
    """The target's score for every ``x_b * M_k``: ``(B, C)`` or ``(B, C, K)``, evaluated
    by ``forward`` (on ``model`` or its folded copy)."""
    batch, channels = A.shape[:2]
    rows_b, rows_k, shared_by = _plan_rows(A, score, skip_constant)
    result = torch.zeros(batch, channels, *clean.scores.shape[1:])
    image = forward.image
    with torch.inference_mode(), preserve_buffers(model):
        for index in chunks(rows_b.numel(), chunk):
            b, k = rows_b[index], rows_k[index]
            mask = _masks(A[b.to(A.device), k.to(A.device)], image.shape[-2:], masks)
            out = forward(
                b, image[b.to(image.device)] * mask.to(image.device, image.dtype)[:, None]
            )
            target = row_target(clean.target, b)
            result[b, k] = _row_scores(out, target, b.numel(), output, score).float().cpu()
    for sample, (representative, constant) in shared_by.items():
        result[sample, constant] = result[sample, representative]
    return result.to(A.device)


def _plan_rows(
    A: Tensor, score: str, skip_constant: bool
) -> tuple[Tensor, Tensor, dict[int, tuple[int, Tensor]]]:
    """Which ``(sample, channel)`` masked inputs to evaluate: ``rows_b``, ``rows_k``, and per
    sample ``(representative channel, constant channels)`` whose scores the representative's
    evaluation gives (every constant channel has the same all-zero mask)."""
    batch, channels = A.shape[:2]
    flat = A.cpu().flatten(2)
    constant = flat.amax(dim=2) == flat.amin(dim=2)
    zero = constant & (flat.amax(dim=2) == 0)
    rows_b, rows_k, shared_by = [], [], {}
    for b in range(batch):
        if not skip_constant:
            ks = torch.arange(channels)
        else:
            ks = (~constant[b]).nonzero()[:, 0]
            # zero channels add nothing to the map unless the weights are normalised across channels
            if (constant[b] & (~zero[b] | (score == "channel_softmax"))).any():
                representative = int(constant[b].nonzero()[0])
                shared_by[b] = (representative, constant[b])
                ks = torch.cat([ks, torch.tensor([representative])])
        rows_b.append(torch.full_like(ks, b))
        rows_k.append(ks)
    return torch.cat(rows_b), torch.cat(rows_k), shared_by


class _MaskedForward:
    """Calls the model on masked copies of samples -- channels-last while the model accepts it."""

    def __init__(
        self, model: nn.Module, inputs: ModelInput, position: int, channels_last: bool
    ) -> None:
        self.model, self.inputs, self.channels_last = model, inputs, channels_last
        self.position, self.image = position, inputs.args[position]

    def __call__(self, rows: Tensor, masked: Tensor) -> Any:
        if self.channels_last:
            try:
                return self._call(rows, masked.contiguous(memory_format=torch.channels_last))
            except Exception:  # e.g. a .view() that needs contiguous tensors: stop trying
                self.channels_last = False
        return self._call(rows, masked)

    def _call(self, rows: Tensor, image: Tensor) -> Any:
        return self.inputs.take(rows).with_args({self.position: image}).call(self.model)


def _masks(channels: Tensor, size: tuple[int, int], construction: str) -> Tensor:
    """``(n, h, w)`` activation channels -> ``(n, H, W)`` masks in ``[0, 1]`` (see
    :data:`MASKS`)."""
    if construction == "normalize_first":
        return resize(normalize_maps(channels), size)
    return normalize_maps(resize(channels, size, align_corners=construction == "align_corners"))


def _row_scores(out: Any, target: Target, n: int, output: OutputSpec, score: str) -> Tensor:
    """The scores Score-CAM weights by: the class probability for ``"probability"`` and
    class targets, else the target's raw score."""
    if score == "probability" and isinstance(target, Tensor):
        value, _ = scores(out, probability(target, output), n)
        return value.reshape(target.shape)
    value, _ = scores(out, target, n, output)
    return value
