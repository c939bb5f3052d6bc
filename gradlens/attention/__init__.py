"""Attention: the attention probabilities of any attention layer, with their gradients.

* :func:`attentions` -- ``{module name: (B, heads, N_query, N_key) probabilities}`` of a
  forward pass, without an autograd tape;
* :func:`capture_attention` / :class:`AttentionCapture` -- the context manager behind it,
  which also keeps the probabilities in the autograd graph for their gradients (used by
  ``gradlens.record(model, layers, attention=True)``);
* :func:`attention_modules` -- which modules count as attention;
* :func:`attention_rollout` and :func:`gradient_attention_rollout` -- the methods built on
  them (registered in :data:`gradlens.METHODS`, kind ``"attention"``), with their maths in
  :mod:`gradlens.attention.rollout`.

The probabilities are captured whatever kernel computes them (fused
``scaled_dot_product_attention``, ``nn.MultiheadAttention`` with ``need_weights=False``,
eager attention); see :mod:`gradlens.core.attention.capture`.
"""

from __future__ import annotations

from ..core.attention.capture import (
    AttentionCall,
    AttentionCapture,
    attention_modules,
    capture_attention,
)
from ..core.attention.probabilities import attentions
from .methods import attention_rollout, gradient_attention_rollout

__all__ = [
    "AttentionCall",
    "AttentionCapture",
    "attention_modules",
    "attention_rollout",
    "attentions",
    "capture_attention",
    "gradient_attention_rollout",
]
