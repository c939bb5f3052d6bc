"""Ablation-CAM (:func:`ablationcam`): channels weighted by the relative drop of the target's
score when the channel is set to zero.

The clean pass, the batching and the target handling are shared with Score-CAM
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
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.outputs import Replacement, replace_outputs
from ..core.selection import Layers
from ..layering.resolve import resolve_layers
from ..maps import safe_divide
from ..passes import CleanPass
from ..registry import register
from ..targets.scoring import Target, scores
from .base import CamResult, finish, layer_tensor
from .perturbed import channel_maps, clean_layers, row_target
from .reshape import Reshape, channel_axis, to_nchw

__all__ = ["ablationcam"]


@register("ablationcam", "cam", needs_layer=True, multi_target=True)
@entry_point
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
        LayerNotFoundError, LayerNotExecutedError, TargetError, OutputSelectionError: as
            for :func:`gradlens.cam.cam`.
        ValueError: ``select`` given, a bad ``batch_size``, or a layer output that cannot
            be read as ``(B, C, h, w)``.
    """
    if select is not None:
        raise ValueError(
            "ablationcam replaces the layer's output, so the layer must return one tensor "
            "(no select=)"
        )
    check_batch_size(batch_size)
    inputs = ModelInput.parse(x, forward_kwargs)
    names = resolve_layers(model, inputs, layer)
    clean = clean_layers(model, inputs, names, target, output, None)
    multi = clean.scores.ndim == 2
    reuse = reuse_upstream and not any(m.training for m in model.modules())
    raw = {}
    for name in names:
        activation = layer_tensor(clean.activations[name], name)
        A = to_nchw(
            activation,
            batch=inputs.batch_size,
            image_size=inputs.image_size,
            reshape=reshape,
            layer=name,
        ).float()
        ablation = _Ablation(activation, A, inputs.image_size, reshape, ablation_value)
        runner = _AblatedRunner(model, inputs, clean, name, ablation, output, reuse)
        ablated = runner.scores(batch_size, skip_unchanged)  # (B, C[, K])
        y = clean.scores[:, None, :] if multi else clean.scores[..., None]
        y = y.to(ablated.device)
        weights = safe_divide(y - ablated, y, default=y - ablated)
        raw[name] = channel_maps(weights.to(A.device), A, multi)
    return finish(raw, inputs, upsample=upsample, normalize=normalize, per_layer=per_layer)


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
            assert callable(reshape)  # channel_axis gives no axis only for a callable
            mapped = reshape(index)
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


class _AblatedRunner:
    """Evaluates the target on ablated copies, reusing the upstream part when it can."""

    def __init__(
        self,
        model: nn.Module,
        inputs: ModelInput,
        clean: CleanPass,
        name: str,
        ablation: _Ablation,
        output: OutputSpec,
        reuse: bool,
    ) -> None:
        self.model, self.inputs, self.clean = model, inputs, clean
        self.name, self.ablation, self.output = name, ablation, output
        self.reuse = reuse
        self.checked = False

    def scores(self, chunk: int, skip_unchanged: bool) -> Tensor:
        """The target's scores with each channel ablated: ``(B, C)`` or ``(B, C, K)``
        (the clean scores for skipped channels)."""
        clean, channels, batch = self.clean, self.ablation.channels, self.inputs.batch_size
        result = clean.scores.cpu()[:, None].expand(batch, channels, *clean.scores.shape[1:])
        result = result.clone()
        for b in range(batch):
            todo = (
                ~self.ablation.unchanged[b].cpu()
                if skip_unchanged
                else torch.ones(channels, dtype=torch.bool)
            )
            channels_todo = todo.nonzero()[:, 0]
            for part in chunks(channels_todo.numel(), chunk):
                ks = channels_todo[part]
                result[b, ks] = self._evaluate(b, ks).float().cpu()
        return result

    def _evaluate(self, b: int, ks: Tensor) -> Tensor:
        if self.reuse:
            try:
                value = self._run_shared(b, ks)
            except Exception:  # the layers after this one do not broadcast over the batch
                value = None
            if value is not None:
                return value
            self.reuse = False
        return self._run(b, ks, shared=False)

    def _run_shared(self, b: int, ks: Tensor) -> Tensor | None:
        """:meth:`_run` with the upstream part shared; the first time with one more row that
        ablates nothing, and ``None`` when that row does not give the clean score."""
        if self.checked:
            return self._run(b, ks, shared=True)
        control = torch.tensor([self.ablation.channels])  # ablates nothing
        value = self._run(b, torch.cat([ks, control]), shared=True)
        self.checked = True
        expected = self.clean.scores[b].to(value.device)
        if not torch.allclose(
            value[-1], expected, rtol=1e-4, atol=1e-5 * (1 + expected.abs().max().item())
        ):
            return None
        return value[:-1]

    def _run(self, b: int, ks: Tensor, *, shared: bool) -> Tensor:
        replacement = self.ablation.rows(b, ks)
        n = ks.numel()
        rows = torch.full((1 if shared else n,), b, dtype=torch.long)
        # the last call's output, as in the clean pass; with ``shared``, n rows stand for one
        modify = Replacement(replacement, fit="rows", call=self.clean.calls[self.name] - 1)
        replaced = replace_outputs(self.model, {self.name: modify})
        with torch.inference_mode(), preserve_buffers(self.model), replaced:
            out = self.inputs.take(rows).call(self.model)
            target = row_target(self.clean.target, torch.full((n,), b))
            value, _ = scores(out, target, n, self.output)
        return value.float()
