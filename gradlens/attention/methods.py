"""Attention rollout and gradient-weighted attention rollout: maps from a model and an input.

Both methods capture the attention probabilities of every attention module
(:mod:`gradlens.core.attention.capture`, whatever kernel computes them), roll them out through the
layers (:mod:`gradlens.attention.rollout`) and explain one token's row of the result:

* images (a ``(B, C, H, W)`` input): the class token's row over the patch tokens, read as
  the patch grid by the token rules of the CAMs (:mod:`gradlens.cam.reshape`: the leading
  class token is dropped and the rest must tile the image), then post-processed like a CAM
  (ReLU, bilinear upsampling to ``(H, W)``, per-map min-max normalisation): ``(B, H, W)``;
* text (token ids ``(B, T)``): the row of the first token for encoders, of the last token
  for causal models (recognised by attention maps that never look ahead), over all ``T``
  tokens, min-max normalised per sample: ``(B, T)``. ``row=`` chooses another.

Attention that is not one global ``(B, heads, N, N)`` self-attention per layer cannot be
rolled out: Swin's windowed attention (``B * windows`` maps of the tokens of one window),
layers over different token counts, cross-attention. Such models get an
:class:`~gradlens.errors.AttentionRolloutError`; use a CAM on them instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..cam.base import postprocess
from ..cam.reshape import Reshape, to_nchw, token_grid
from ..core.attention.probabilities import attentions
from ..core.checks import entry_point
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.recorder import Recorder
from ..core.selection import Layers
from ..errors import AttentionRolloutError
from ..maps import normalize as normalize_maps
from ..registry import register
from ..targets.parse import check_target
from ..targets.scoring import Target, scores
from .rollout import (
    HeadFusion,
    check_discard_ratio,
    check_head_fusion,
    gradient_rollout,
    rollout,
)

__all__ = ["attention_rollout", "gradient_attention_rollout"]


@register("attention_rollout", "attention", multi_target=False, uses_target=False)
@entry_point
def attention_rollout(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    row: int | None = None,
    layers: Layers | None = None,
    upsample: bool = True,
    normalize: bool = True,
    reshape: Reshape = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

    For the attention probabilities ``A_l`` of the layers ``l = 1 .. L`` (in the order they
    ran): fuse the heads (``head_fusion``), zero the ``floor(discard_ratio * N)`` smallest
    weights of each row (never the explained token's weight on itself), add the residual
    connection as ``Â_l = (A_l + I) / 2`` with rows renormalised to sum 1, and multiply:
    ``R = Â_L · ... · Â_1``. The map is row ``row`` of ``R`` (see the module docstring for
    the default row and the layout). One inference forward, no gradient: the map does not
    depend on the class, so ``target`` and ``output`` are not used.

    Args:
        model: a transformer (any mode; its state is left exactly as it was).
        x: an image batch ``(B, C, H, W)``, token ids ``(B, T)``, or a tuple of positional
            inputs.
        target: not used (accepted for the common method signature).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads.
        discard_ratio: the fraction of each row's smallest weights set to zero, in
            ``[0, 1)``.
        row: the token whose row is explained (negative counts from the end); ``None``
            for the class token (images), the first token (text encoders) or the last
            token (causal text models).
        layers: the attention modules to roll out (names, patterns, types; see
            :mod:`gradlens.selection`); ``None`` for all of them.
        upsample: resize image maps to ``(H, W)`` (bilinear, ``align_corners=False``).
        normalize: min-max normalise each map to ``[0, 1]``.
        reshape: how the row over the tokens becomes the patch grid, as for a CAM layer's
            ``(B, N, C)`` token output (see :mod:`gradlens.cam.reshape`); a callable gets
            the row as ``(B, N, 1)`` and returns ``(B, 1, h, w)``.
        output: not used (accepted for the common method signature).
        forward_kwargs: keyword inputs for the model (e.g. an ``attention_mask``).

    Returns:
        float32 maps ``(B, H, W)`` for images (``(B, h, w)`` without ``upsample``) or
        ``(B, T)`` for text, on the input's device.

    Raises:
        ValueError: ``head_fusion`` not ``"mean"``, ``"max"`` or ``"min"``;
            ``discard_ratio`` outside ``[0, 1)``; a patch grid that cannot be recognised
            (pass ``reshape=``).
        AttentionCaptureError: the model has no attention module, or its attention could
            not be captured.
        AttentionRolloutError: the attention cannot be rolled out (windowed attention,
            layers over different token counts) or ``row`` does not exist.
    """
    del output  # the rollout does not depend on the class
    check_head_fusion(head_fusion)
    check_discard_ratio(discard_ratio)
    inputs = ModelInput.parse(x, forward_kwargs)
    check_target(target, inputs.batch_size)  # unused, but a float or bool target is a mistake
    captured = attentions(model, inputs, layers=layers)
    maps = list(captured.values())
    tokens = check_rollable(captured, inputs.batch_size)
    row = choose_row(maps, tokens, inputs.image_size, row, reshape)
    rolled = rollout(maps, head_fusion=head_fusion, discard_ratio=discard_ratio, keep=row, row=row)
    return finish(rolled, inputs, upsample=upsample, normalize=normalize, reshape=reshape)


@register("gradient_attention_rollout", "attention")
@entry_point
def gradient_attention_rollout(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    row: int | None = None,
    layers: Layers | None = None,
    upsample: bool = True,
    normalize: bool = True,
    reshape: Reshape = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, "Generic
    Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers"), the rule for self-attention.

    With ``dA_l`` the gradient of the target score with respect to the attention
    probabilities ``A_l`` of layer ``l``: ``R = I``, then for each layer in the order they
    ran ``Ā_l = mean_heads(ReLU(dA_l ⊙ A_l))`` and ``R <- R + Ā_l · R``. The map is row
    ``row`` of ``R`` (see the module docstring for the default row and the layout).

    One forward pass, whose autograd tape starts at the first attention probabilities,
    and one backward with respect to the probabilities only; the parameters stay out of the
    tape (their ``requires_grad`` is switched off during the call and restored after it), so
    no parameter gradient is computed and no layer input is kept for one. ``K`` targets per
    sample share both (a batched backward). Works in eval
    and train mode, inside ``torch.no_grad()`` / ``torch.inference_mode()`` and on
    frozen models.

    Args:
        model: a transformer (any mode; its state is left exactly as it was).
        x: an image batch ``(B, C, H, W)``, token ids ``(B, T)``, or a tuple of positional
            inputs.
        target: see :mod:`gradlens.targets`: ``None`` (top class), an int, one class per
            sample, ``(B, K)`` classes, or a callable ``output -> (B,)`` scores.
        row: the token whose row is explained (negative counts from the end); ``None``
            for the class token (images), the first token (text encoders) or the last
            token (causal text models).
        layers: the attention modules to roll out (names, patterns, types; see
            :mod:`gradlens.selection`); ``None`` for all of them.
        upsample: resize image maps to ``(H, W)`` (bilinear, ``align_corners=False``).
        normalize: min-max normalise each map to ``[0, 1]``.
        reshape: how the row over the tokens becomes the patch grid (see
            :func:`attention_rollout`); a callable gets ``(B, N, 1)`` (``(B, N, K)`` for
            ``K`` targets) and returns ``(B, 1, h, w)`` (``(B, K, h, w)``).
        output: picks the logits out of a structured model output (index, key or
            function); an output with a ``logits`` entry (a Hugging Face ``ModelOutput``)
            needs none.
        forward_kwargs: keyword inputs for the model (e.g. an ``attention_mask``).

    Returns:
        float32 maps ``(B, H, W)`` for images (``(B, h, w)`` without ``upsample``) or
        ``(B, T)`` for text, with a ``K`` dimension after ``B`` for ``K`` targets per
        sample, on the input's device.

    Raises:
        TargetError: a target that does not fit the output.
        OutputSelectionError: a structured model output without a ``logits`` entry and
            without ``output=``.
        ValueError: a patch grid that cannot be recognised (pass ``reshape=``).
        AttentionCaptureError: the model has no attention module, or its attention could
            not be captured.
        AttentionRolloutError: the attention cannot be rolled out (windowed attention,
            layers over different token counts) or ``row`` does not exist.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    target = check_target(target, inputs.batch_size)
    probs, grads = attention_gradients(model, inputs, target, layers=layers, output=output)
    tokens = check_rollable(probs, inputs.batch_size)
    maps = list(probs.values())
    row = choose_row(maps, tokens, inputs.image_size, row, reshape)
    rolled = gradient_rollout(maps, list(grads.values()), row=row)  # (B, N) or (K, B, N)
    if rolled.ndim == 3:
        rolled = rolled.transpose(0, 1)
    return finish(rolled, inputs, upsample=upsample, normalize=normalize, reshape=reshape)


def attention_gradients(
    model: nn.Module,
    inputs: ModelInput,
    target: Target,
    *,
    layers: Layers | None,
    output: OutputSpec,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The attention probabilities and the gradients of the target score with respect to
    them: ``({name: (B, heads, N, N)}, {name: (B, heads, N, N) or (K, B, heads, N, N)})``
    in execution order. A layer the score does not depend on gets a zero gradient."""
    spec = True if layers is None else layers
    with torch.inference_mode(False):
        # no tape until the first attention probabilities, which start it; the parameters
        # stay off it (parameter_grads=False): no layer input is kept for their gradients
        with Recorder(
            model, tape_from_layers=True, attention=spec, parameter_grads=False
        ) as recorder:
            with torch.enable_grad():
                args, kwargs = inputs.bind()
                out = recorder.forward(*args, **kwargs)
                score, _ = scores(out, target, inputs.batch_size, output)
            recorder.grad(score)
            probs = dict(recorder.attentions)
            reached = dict(recorder.attention_gradients)
    # a layer the score does not depend on (none in a classifier) has a zero gradient
    grads = {
        name: reached[name] if name in reached else p.new_zeros(*score.shape[1:], *p.shape)
        for name, p in probs.items()
    }
    return probs, grads


def check_rollable(maps: Mapping[str, Tensor], batch: int) -> int:
    """``N``, the token count shared by every layer's ``(B, heads, N, N)`` map.

    Raises:
        AttentionRolloutError: a map whose first dim is not the batch size (windowed
            attention), a non-square map (cross-attention), or layers over different
            token counts.
    """
    for name, probs in maps.items():
        if probs.shape[0] != batch:
            raise AttentionRolloutError(
                f"the attention of {name!r} has {probs.shape[0]} maps for a batch of {batch}: "
                "windowed attention (as in Swin) attends within each window only, so no token "
                "sees the whole input and there is no global class-token row to roll out. "
                "Explain such models with a CAM on a stage output instead (e.g. "
                "gradlens.gradcam(model, x, 'features.3') for torchvision's Swin)"
            )
        if probs.shape[-1] != probs.shape[-2]:
            raise AttentionRolloutError(
                f"the attention of {name!r} has shape {tuple(probs.shape)}: queries and keys "
                "are different sequences (cross-attention), which rollout cannot chain; "
                "select the self-attention modules with layers=..."
            )
    counts = {name: int(probs.shape[-1]) for name, probs in maps.items()}
    if len(set(counts.values())) > 1:
        raise AttentionRolloutError(
            f"the attention layers attend over different numbers of tokens ({counts}), so "
            "their maps cannot be multiplied; select layers with the same tokens with layers=..."
        )
    return next(iter(counts.values()))


def choose_row(
    maps: Sequence[Tensor],
    tokens: int,
    size: tuple[int, int] | None,
    row: int | None,
    reshape: Reshape,
) -> int:
    """The explained row, in ``[0, N)``: ``row`` itself, or the default of the module
    docstring.

    Raises:
        AttentionRolloutError: ``row`` is not in ``[-N, N)``, or an image model whose
            tokens tile the image without a leading class token and no ``row`` was given.
    """
    if row is not None:
        if not -tokens <= row < tokens:
            raise AttentionRolloutError(
                f"row {row} does not exist: the attention has {tokens} tokens, so row must be "
                f"in [{-tokens}, {tokens - 1}]"
            )
        return row % tokens
    if size is None:
        return tokens - 1 if is_causal(maps) else 0
    if reshape is None and token_grid(tokens - 1, size) is None and token_grid(tokens, size):
        raise AttentionRolloutError(
            f"the {tokens} tokens tile the image without a leading class token, so there is "
            "no class-token row to explain; pass row= the index of the token to explain"
        )
    return 0


def is_causal(maps: Sequence[Tensor]) -> bool:
    """Whether no query attends to a later key in any layer (a causal model)."""
    tokens = maps[0].shape[-1]
    if tokens < 2:
        return False
    ahead = torch.ones(tokens, tokens, dtype=torch.bool, device=maps[0].device).triu(1)
    return all(not bool(m[..., ahead].any()) for m in maps)


def finish(
    rolled: Tensor, inputs: ModelInput, *, upsample: bool, normalize: bool, reshape: Reshape
) -> Tensor:
    """Rows ``(B, [K,] N)`` of the rollout as maps: the patch grid of an image, upsampled
    and normalised like a CAM, or the ``T`` tokens of a text, normalised."""
    device = inputs.device
    size = inputs.image_size
    if size is None:
        maps = rolled.clamp(min=0)
        if normalize:
            maps = normalize_maps(maps.unsqueeze(-2)).squeeze(-2)
        return maps.to(device)
    multi = rolled.ndim == 3
    as_tokens = rolled.transpose(1, 2) if multi else rolled.unsqueeze(-1)  # (B, N, K or 1)
    grid = to_nchw(
        as_tokens, batch=len(rolled), image_size=size, reshape=reshape, layer="the rollout"
    )
    raw = grid if multi else grid[:, 0]
    return postprocess(raw, size, upsample=upsample, normalize=normalize).to(device)
