"""Gradient-free CAMs that weight channels by evaluating the model: Score-CAM and Ablation-CAM.

Both run one clean forward pass (recording the layer's activation and the model output,
which fixes ``target=None`` to the top class of the clean input), then evaluate the model
on many modified copies of each sample -- masked inputs for Score-CAM, ablated activations
for Ablation-CAM -- under :func:`torch.inference_mode` in batches of ``batch_size`` rows.
Several targets per sample (a ``(B, K)`` target) cost nothing extra: every target's score is
read from the same evaluations. The channel weights then go through the usual
``ReLU(sum_c w_c A_c)``, upsampling and normalisation (:mod:`gradlens.cam.base`).

Callable targets are evaluated on batches of modified copies, so they must work for any
batch size (``gradlens.targets.segmentation`` with a per-sample mask does not).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._folding import folded_copy
from .._inputs import Inputs, prepare
from .._inputs import batch_size as count_samples
from ..buffers import preserve_buffers
from ..outputs import replace_outputs
from ..recorder import Recorder
from ..registry import register
from ..selection import Layers
from ..targets import OutputSpec, Target, probability, scores
from .base import (
    CamResult,
    finish,
    image_size,
    layer_tensor,
    normalize_maps,
    resolve_layers,
    weighted_sum,
)
from .reshape import Reshape, channel_axis, to_nchw

__all__ = ["scorecam", "ablationcam", "SCORES", "MASKS"]

SCORES = ("probability", "channel_softmax")
"""Score-CAM channel weightings: see :func:`scorecam`."""

MASKS = ("official", "align_corners", "normalize_first")
"""Score-CAM mask constructions: see :func:`scorecam`."""


# -- shared -------------------------------------------------------------------------------


class _CleanPass:
    """One inference forward recording the layers' outputs, and the target scores on it."""

    def __init__(
        self,
        model: nn.Module,
        x: Inputs,
        names: list[str],
        target: Target,
        output: OutputSpec,
        forward_kwargs: Mapping[str, Any] | None,
        select: OutputSpec | Mapping[str, OutputSpec],
    ) -> None:
        self.batch = count_samples(x)
        self.args, self.kwargs = prepare(x, forward_kwargs)
        recorder = Recorder(model, names, select=select)
        with torch.inference_mode(), recorder:
            out = recorder.forward(*self.args, **self.kwargs)
            score, classes = scores(out, target, self.batch, output)
        self.activations = {name: layer_tensor(recorder.activations[name], name) for name in names}
        self.calls = {name: len(recorder.calls(name)) for name in names}
        self.scores = score.float().clone()  # (B,) or (B, K)
        self.classes = None if classes is None else classes.clone()
        self.target = (
            target if self.classes is None else None
        )  # a callable, or None for 1-D outputs
        self.multi = self.scores.ndim == 2

    def row_target(self, rows: Tensor) -> Target:
        """The target for modified copies of samples ``rows``."""
        return (
            self.classes[rows.to(self.classes.device)] if self.classes is not None else self.target
        )

    def row_inputs(
        self, rows: Tensor, image: Tensor | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword inputs for copies of samples ``rows``: batch-sized tensors
        are indexed by ``rows``; the image (first 4-D input) is replaced by ``image`` if given."""
        position = _image_position(self.args) if image is not None else None
        args = tuple(
            image if i == position else _take(a, rows, self.batch) for i, a in enumerate(self.args)
        )
        kwargs = {k: _take(v, rows, self.batch) for k, v in self.kwargs.items()}
        return args, kwargs


def _take(value: Any, rows: Tensor, batch: int) -> Any:
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value[rows.to(value.device)]
    return value


def _image_position(args: tuple[Any, ...]) -> int:
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and a.ndim == 4:
            return i
    raise ValueError(
        "scorecam masks an image input of shape (B, C, H, W), and the model input holds none"
    )


def _chunks(rows: Tensor, size: int) -> Iterator[Tensor]:
    for start in range(0, rows.numel(), size):
        yield rows[start : start + size]


def _check_batch_size(value: int) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"batch_size must be a positive int, got {value!r}")
    return value


def _channel_maps(weights: Tensor, A: Tensor, multi: bool) -> Tensor:
    """``(B, C)`` or ``(B, C, K)`` channel weights and ``(B, C, h, w)`` activations ->
    ``(B, h, w)`` or ``(B, K, h, w)`` maps (before ReLU)."""
    if multi:
        return weighted_sum(weights.movedim(2, 1), A[:, None])
    return weighted_sum(weights, A)


# -- Score-CAM ----------------------------------------------------------------------------


@register("scorecam", "cam")
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
    channels-last memory format, for which CPU convolutions run markedly faster (about
    1.4x on ResNets); should the model fail on such an input (a ``.view()`` of a
    convolution's output), gradlens passes ordinary contiguous inputs instead. With
    ``fold_batchnorm`` (default), a model in eval mode whose BatchNorms follow
    convolutions runs the masked forwards as a temporary copy with each BatchNorm folded
    into its convolution (ResNet-18 forwards about 1.15-1.2x faster on CPU, Score-CAM
    about 1.08x overall; the copy holds a second set of weights while the call runs). The copy is used only when
    :func:`torch.fx.symbolic_trace` can trace the model, no module carries forward hooks,
    and the copy's target scores on the clean input match the model's; otherwise the
    model itself runs. Only floating-point rounding can differ.

    Args:
        model, x, layer, target, upsample, normalize, reshape, output, forward_kwargs,
            select, per_layer: as for :func:`gradlens.cam.cam`. Callable targets must work
            on batches of any size.
        score: ``"probability"`` or ``"channel_softmax"`` (see above).
        masks: ``"official"``, ``"align_corners"`` or ``"normalize_first"`` (see above).
        batch_size: masked inputs per forward pass (16: on CPU, ResNets ran no faster per
            image in larger batches, which no longer fit the caches).
        skip_constant: share (or skip) the forwards of constant channels.
        channels_last: pass masked images in channels-last memory format.
        fold_batchnorm: run the masked forwards on a BatchNorm-folded copy when possible.

    Returns:
        float32 maps ``(B, H, W)``, ``(B, K, H, W)`` for ``K`` targets per sample, on the
        input's device (a dict per layer with ``per_layer``).

    Raises:
        LayerNotFoundError, TargetError, OutputSelectionError: as for :func:`gradlens.cam.cam`.
        ValueError: an unknown ``score`` or ``masks``, a bad ``batch_size``, no image input, or a layer
            output that cannot be read as ``(B, C, h, w)``.
    """
    if score not in SCORES:
        raise ValueError(f"score={score!r} is not one of {', '.join(map(repr, SCORES))}")
    if masks not in MASKS:
        raise ValueError(f"masks={masks!r} is not one of {', '.join(map(repr, MASKS))}")
    _check_batch_size(batch_size)
    names = resolve_layers(model, x, layer, forward_kwargs)
    clean = _CleanPass(model, x, names, target, output, forward_kwargs, select)
    size = image_size(x)
    if size is None:
        _image_position(clean.args)  # raises
    runner = _folded_runner(model, clean, output) if fold_batchnorm else model
    raw = {}
    for name in names:
        A = to_nchw(
            clean.activations[name], batch=clean.batch, image_size=size, reshape=reshape, layer=name
        ).float()
        channel_scores = _masked_scores(
            model,
            runner,
            clean,
            A,
            size,
            score,
            masks,
            batch_size,
            skip_constant,
            channels_last,
            output,
        )
        weights = (
            torch.softmax(channel_scores, dim=1) if score == "channel_softmax" else channel_scores
        )
        raw[name] = _channel_maps(weights, A, clean.multi)
    return finish(raw, x, upsample=upsample, normalize=normalize, per_layer=per_layer)


def _folded_runner(model: nn.Module, clean: _CleanPass, output: OutputSpec) -> nn.Module:
    """A BatchNorm-folded copy of ``model`` if one exists and gives the clean pass's target
    scores (relative tolerance 1e-3), else ``model``."""
    folded = folded_copy(model)
    if folded is None:
        return model
    try:
        with torch.inference_mode():
            out = folded(*clean.args, **clean.kwargs)
            rows = torch.arange(clean.batch)
            value = (
                _row_scores(out, clean.row_target(rows), clean.batch, output, "raw").float().cpu()
            )
    except Exception:  # the traced copy cannot take these inputs
        return model
    reference = clean.scores.cpu()
    tolerance = 1e-4 * (1.0 + float(reference.abs().max())) if reference.numel() else 0.0
    if value.shape != reference.shape or not torch.allclose(
        value, reference, rtol=1e-3, atol=tolerance
    ):
        return model
    return folded


def _masked_scores(
    model: nn.Module,
    runner: nn.Module,
    clean: _CleanPass,
    A: Tensor,
    size: tuple[int, int],
    score: str,
    masks: str,
    chunk: int,
    skip_constant: bool,
    channels_last: bool,
    output: OutputSpec,
) -> Tensor:
    """The target's score for every ``x_b * M_k``: ``(B, C)`` or ``(B, C, K)``, evaluated
    by ``runner`` (``model`` or its folded copy)."""
    batch, channels = A.shape[:2]
    rows_b, rows_k, shared_by = _plan_rows(A, score, skip_constant)
    k_dim = (clean.scores.shape[1],) if clean.multi else ()
    result = torch.zeros(batch, channels, *k_dim)
    image = clean.args[_image_position(clean.args)]
    forward = _MaskedForward(runner, clean, channels_last)
    with torch.inference_mode(), Recorder(model):  # the Recorder restores train-mode buffers
        for index in _chunks(torch.arange(rows_b.numel()), chunk):
            b, k = rows_b[index], rows_k[index]
            mask = _masks(A[b.to(A.device), k.to(A.device)], size, masks).to(
                image.device, image.dtype
            )
            out = forward(b, image[b.to(image.device)] * mask[:, None])
            result[b, k] = (
                _row_scores(out, clean.row_target(b), b.numel(), output, score).float().cpu()
            )
    for b, (representative, constant) in shared_by.items():
        result[b, constant] = result[b, representative]
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

    def __init__(self, model: nn.Module, clean: _CleanPass, channels_last: bool) -> None:
        self.model, self.clean, self.channels_last = model, clean, channels_last

    def __call__(self, rows: Tensor, masked: Tensor) -> Any:
        if self.channels_last:
            try:
                return self._call(rows, masked.contiguous(memory_format=torch.channels_last))
            except Exception:  # e.g. a .view() that needs contiguous tensors: stop trying
                self.channels_last = False
        return self._call(rows, masked)

    def _call(self, rows: Tensor, image: Tensor) -> Any:
        args, kwargs = self.clean.row_inputs(rows, image)
        return self.model(*args, **kwargs)


def _masks(channels: Tensor, size: tuple[int, int], construction: str) -> Tensor:
    """``(n, h, w)`` activation channels -> ``(n, H, W)`` masks in ``[0, 1]`` (see :data:`MASKS`)."""
    if construction == "normalize_first":
        channels = normalize_maps(channels)
    corners = construction == "align_corners"
    up = F.interpolate(channels[:, None], size=size, mode="bilinear", align_corners=corners)[:, 0]
    return up if construction == "normalize_first" else normalize_maps(up)


def _row_scores(out: Any, row_target: Target, n: int, output: OutputSpec, score: str) -> Tensor:
    if score == "probability" and isinstance(row_target, Tensor):
        value, _ = scores(out, probability(row_target, output), n)
        return value.reshape(row_target.shape)
    value, _ = scores(out, row_target, n, output)
    return value


# -- Ablation-CAM -------------------------------------------------------------------------


@register("ablationcam", "cam")
def ablationcam(
    model: nn.Module,
    x: Inputs,
    layer: Layers | None = None,
    target: Target = None,
    *,
    batch_size: int = 64,
    ablation_value: float = 0.0,
    skip_unchanged: bool = True,
    reuse_upstream: bool = True,
    upsample: bool = True,
    normalize: bool = True,
    reshape: Reshape = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    per_layer: bool = False,
) -> CamResult:
    """Ablation-CAM (Desai & Ramaswamy 2020, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization").

    ``ReLU(sum_k w_k A_k)`` with ``w_k = (y - y_k) / y``: ``y`` the target score on the clean
    input, ``y_k`` the score when channel ``k`` of the layer's output is set to
    ``ablation_value`` (0, as in the paper) everywhere -- for token outputs on every token,
    class token included; with a callable ``reshape`` (which must then only rearrange and
    select elements) on the elements it maps to channel ``k``. Where ``y`` is exactly 0 the
    weight is ``y - y_k``.
    pytorch-grad-cam computes the same weights; it ablates with 0 only when the layer's
    minimum is 0 (post-ReLU layers) and with ``min - 1e7`` otherwise.

    The ablated outputs replace the layer's output (its last call, for a module that runs
    several times) in batches of ``batch_size`` under ``inference_mode``. Levers, none of
    which changes the result:

    * ``skip_unchanged``: a channel already equal to ``ablation_value`` everywhere (a dead
      ReLU channel) has ``y_k = y``, so weight 0, without a forward.
    * ``reuse_upstream`` (eval mode only): the part of the network before the layer runs
      once per sample instead of once per ablated channel -- the model gets one copy of
      the sample and the layer's output is replaced by the batch of ablated outputs, so
      only the layers after it see the full batch. This needs every use of earlier
      tensors after the layer to broadcast over the batch (residual additions do; a
      concatenation does not); gradlens checks this on the first batch with an
      un-ablated control row that must reproduce ``y``, and otherwise runs the full network
      for every row.

    Args:
        model, x, layer, target, upsample, normalize, reshape, output, forward_kwargs,
            per_layer: as for :func:`gradlens.cam.cam`. Callable targets must work on
            batches of any size.
        select: must be ``None``: the layer has to return one tensor, which is replaced.
        batch_size: ablated copies per forward pass.
        ablation_value: the value an ablated channel is set to.
        skip_unchanged, reuse_upstream: see above.

    Returns:
        float32 maps ``(B, H, W)``, ``(B, K, H, W)`` for ``K`` targets per sample, on the
        input's device (a dict per layer with ``per_layer``).

    Raises:
        LayerNotFoundError, TargetError, OutputSelectionError: as for :func:`gradlens.cam.cam`.
        ValueError: ``select`` given, a bad ``batch_size``, or a layer output that cannot
            be read as ``(B, C, h, w)``.
    """
    if select is not None:
        raise ValueError(
            "ablationcam replaces the layer's output, so the layer must return one tensor (no select=)"
        )
    _check_batch_size(batch_size)
    names = resolve_layers(model, x, layer, forward_kwargs)
    clean = _CleanPass(model, x, names, target, output, forward_kwargs, None)
    size = image_size(x)
    reuse = reuse_upstream and not any(m.training for m in model.modules())
    raw = {}
    for name in names:
        activation = clean.activations[name]
        A = to_nchw(
            activation, batch=clean.batch, image_size=size, reshape=reshape, layer=name
        ).float()
        ablation = _Ablation(activation, A, size, reshape, ablation_value)
        runner = _AblatedRunner(model, clean, name, ablation, output, reuse)
        ablated = runner.scores(batch_size, skip_unchanged)  # (B, C[, K])
        y = clean.scores[..., None] if not clean.multi else clean.scores[:, None, :]
        y = y.to(ablated.device)
        drop = y - ablated
        weights = torch.where(y != 0, drop / torch.where(y != 0, y, 1.0), drop)
        raw[name] = _channel_maps(weights.to(A.device), A, clean.multi)
    return finish(raw, x, upsample=upsample, normalize=normalize, per_layer=per_layer)


class _Ablation:
    """Builds copies of a layer output with one channel set to ``value``, in its own layout."""

    def __init__(
        self,
        activation: Tensor,
        A: Tensor,
        size: tuple[int, int] | None,
        reshape: Reshape,
        value: float,
    ) -> None:
        self.activation = activation
        self.value = value
        self.channels = A.shape[1]
        self.axis = channel_axis(activation, image_size=size, reshape=reshape)
        if self.axis is None:
            # a callable layout: find where each channel's elements live by reshaping their indices
            index = torch.arange(activation[:1].numel(), device=activation.device).reshape(
                activation[:1].shape
            )
            owner = torch.full(
                (activation[:1].numel(),), -1, dtype=torch.long, device=activation.device
            )
            mapped = reshape(index)  # type: ignore[misc]
            owner[mapped[0].reshape(self.channels, -1)] = torch.arange(
                self.channels, device=activation.device
            )[:, None]
            self.owner = owner.reshape(activation.shape[1:])
            self.unchanged = (A.flatten(2) == value).all(dim=2)
        else:
            per_channel = activation.movedim(self.axis, 1).flatten(2)
            self.unchanged = (per_channel == value).all(dim=2)

    def rows(self, sample: int, ks: Tensor) -> Tensor:
        """Copies of sample ``sample``'s output, copy ``i`` with channel ``ks[i]`` ablated
        (``ks[i] = self.channels``: nothing ablated)."""
        ks = ks.to(self.activation.device)
        base = self.activation[sample : sample + 1]
        if self.axis is not None:
            shape = [ks.numel()] + [1] * (base.ndim - 1)
            shape[self.axis] = self.channels
            hit = (torch.arange(self.channels, device=ks.device)[None] == ks[:, None]).reshape(
                shape
            )
        else:
            hit = self.owner[None] == ks.reshape(-1, *[1] * self.owner.ndim)
        return torch.where(
            hit, torch.tensor(self.value, dtype=base.dtype, device=base.device), base
        )


class _Replace:
    """An edit for ``replace_outputs``: the ``call``-th output of the layer becomes ``tensor``."""

    def __init__(self, call: int, tensor: Tensor) -> None:
        self.call, self.tensor, self.seen = call, tensor, 0

    def __call__(self, name: str, module: nn.Module, output: Any) -> Any:
        self.seen += 1
        return self.tensor if self.seen - 1 == self.call else output


class _AblatedRunner:
    """Evaluates the target on ablated copies, reusing the upstream part when it can."""

    def __init__(
        self,
        model: nn.Module,
        clean: _CleanPass,
        name: str,
        ablation: _Ablation,
        output: OutputSpec,
        reuse: bool,
    ) -> None:
        self.model, self.clean, self.name, self.ablation, self.output = (
            model,
            clean,
            name,
            ablation,
            output,
        )
        self.reuse = reuse
        self.checked = False

    def scores(self, chunk: int, skip_unchanged: bool) -> Tensor:
        clean, channels = self.clean, self.ablation.channels
        k_dim = (clean.scores.shape[1],) if clean.multi else ()
        result = clean.scores.cpu()[:, None].expand(clean.batch, channels, *k_dim).clone()
        for b in range(clean.batch):
            todo = (
                ~self.ablation.unchanged[b].cpu()
                if skip_unchanged
                else torch.ones(channels, dtype=torch.bool)
            )
            for ks in _chunks(todo.nonzero()[:, 0], chunk):
                result[b, ks] = self._evaluate(b, ks).float().cpu()
        return result

    def _evaluate(self, b: int, ks: Tensor) -> Tensor:
        if self.reuse:
            try:
                value = self._run(b, ks, shared=True)
            except Exception:  # the layers after this one do not broadcast over the batch
                value = None
            if value is not None:
                return value
            self.reuse = False
        return self._run(b, ks, shared=False)

    def _run(self, b: int, ks: Tensor, *, shared: bool) -> Tensor | None:
        control = shared and not self.checked
        if control:
            ks = torch.cat([ks, torch.tensor([self.ablation.channels])])  # ablates nothing
        replacement = self.ablation.rows(b, ks)
        n = ks.numel()
        rows = torch.full((1 if shared else n,), b, dtype=torch.long)
        args, kwargs = self.clean.row_inputs(rows)
        modify = _Replace(self.clean.calls[self.name] - 1, replacement)
        replaced = replace_outputs(self.model, {self.name: modify})
        with torch.inference_mode(), preserve_buffers(self.model), replaced:
            out = self.model(*args, **kwargs)
            value = _row_scores(
                out, self.clean.row_target(torch.full((n,), b)), n, self.output, "raw"
            )
        value = value.float()
        if control:
            self.checked = True
            expected = self.clean.scores[b].to(value.device)
            if not torch.allclose(
                value[-1], expected, rtol=1e-4, atol=1e-5 * (1 + expected.abs().max().item())
            ):
                return None
            value = value[:-1]
        return value
