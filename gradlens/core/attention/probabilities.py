"""The attention probabilities of a forward pass, without an autograd tape: :func:`attentions`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import AttentionCaptureError, LayerNotExecutedError
from ..buffers import preserve_buffers
from ..checks import entry_point
from ..inputs import Inputs, ModelInput
from ..selection import Layers
from .capture import AttentionCapture

__all__ = ["attentions"]


@entry_point
def attentions(
    model: nn.Module,
    x: Inputs,
    *,
    layers: Layers | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    every_call: bool = False,
    stop_early: bool | None = None,
) -> dict[str, Any]:
    """The attention probabilities of every attention module for input ``x``.

    Works whatever kernel the model's attention uses: ``nn.MultiheadAttention`` called
    with ``need_weights=False`` and its fast path, ``F.scaled_dot_product_attention``
    (Hugging Face ``sdpa``, timm ``fused_attn``) with masks, causal masking, dropout and
    grouped-query attention, and eager attention; see :mod:`gradlens.core.attention.capture`.
    The model's outputs and state are unchanged. The forward runs under
    ``torch.inference_mode()``; the results are ordinary tensors.

    Args:
        model: the model.
        x: its input; a tuple is passed as several positional inputs (for a Hugging Face
            text model, the token ids).
        layers: which attention modules (names, glob patterns, types, filters; see
            :mod:`gradlens.selection`); ``None`` for every module of
            :func:`~gradlens.attention.attention_modules`. A selection spanning several
            layers keeps its attention modules; see
            :class:`~gradlens.attention.AttentionCapture`.
        forward_kwargs: keyword inputs for the model (e.g. ``attention_mask``).
        every_call: return a list of every call's probabilities per module (for modules
            that run several times in one pass) instead of the last call's.
        stop_early: end the forward pass once every selected module has been captured.
            By default only when ``layers`` is given: with ``layers=None`` the whole pass
            runs, so that attention modules shared across depth give every call.

    Returns:
        ``{attention module's dotted name: probabilities}`` in execution order, each the
        post-softmax probabilities ``(B, heads, N_query, N_key)`` before attention dropout
        (rows sum to 1; rows whose keys are all masked are 0). Windowed attention gives
        ``B * windows`` rows. With ``every_call``, ``{name: [probabilities, ...]}``.

    Raises:
        AttentionCaptureError: the model has no attention module (``layers=None``); an
            attention module ran but its attention could not be captured (a flash or flex
            attention kernel, a custom operator: the message names the module and what
            was tried); no attention module ran.
        LayerNotFoundError: a layer spec selects nothing.
        LayerNotExecutedError: a selected module captured nothing (it did not run).
    """
    args, kwargs = ModelInput.parse(x, forward_kwargs).bind()
    capture = AttentionCapture(
        model,
        layers,
        stop_early=layers is not None if stop_early is None else stop_early,
        reduce=_ordinary,
    )
    with torch.inference_mode(), preserve_buffers(model), capture:
        model(*args, **kwargs)
    if not capture.names:
        raise AttentionCaptureError(
            f"no attention module of {type(model).__name__} ran during the forward pass "
            f"(attention modules: {', '.join(map(repr, capture.modules))})"
        )
    missing = [name for name in capture.modules if name not in capture.covered]
    if layers is not None and missing:
        raise LayerNotExecutedError(
            f"no attention was captured in {', '.join(map(repr, missing))}: the selected "
            "modules did not run (is each used by the model's forward()?)"
        )
    if every_call:
        return {name: [call.probs for call in capture.calls(name)] for name in capture.names}
    return {name: capture.probs[name] for name in capture.names}


def _ordinary(probs: Tensor) -> Tensor:
    """An ordinary copy (usable by autograd later) of probabilities computed under
    ``inference_mode``, made as each is captured, so that the inference-mode original is
    freed with its layer instead of living until the end of the pass."""
    with torch.inference_mode(False):
        return probs.clone()
