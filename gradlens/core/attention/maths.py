"""Scaled dot-product attention written out, so that its probabilities exist as a tensor.

:func:`attention_with_probabilities` computes what
:func:`torch.nn.functional.scaled_dot_product_attention` computes, with the same arguments,
but step by step::

    probs   = softmax(Q K^T * scale + mask)        (the attention probabilities)
    weights = dropout(probs)                       (only when dropout_p > 0)
    output  = weights V

and returns ``probs`` beside the output. ``probs`` is the tensor the output is computed
from, so the gradient of anything downstream with respect to it is the exact gradient with
respect to the attention probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Attended", "attention_with_probabilities", "as_heads"]


class Attended(NamedTuple):
    """The result of :func:`attention_with_probabilities`.

    Attributes:
        output: what ``scaled_dot_product_attention`` returns, ``(..., L, Ev)``.
        probs: the post-softmax probabilities ``(..., L, S)``, before dropout; the output
            is computed from this tensor.
        weights: the probabilities after dropout (``probs`` itself when there is none),
            which multiply the values.
    """

    output: Tensor
    probs: Tensor
    weights: Tensor


def attention_with_probabilities(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    probs_hook: Callable[[Tensor], Tensor] | None = None,
) -> Attended:
    """Scaled dot-product attention in its maths form, keeping the probabilities.

    The arguments mean what they mean for
    :func:`torch.nn.functional.scaled_dot_product_attention`: a boolean ``attn_mask`` is
    ``True`` where a query may attend to a key, a float mask is added to the scores,
    ``is_causal`` applies the top-left aligned lower-triangular mask, ``scale`` defaults to
    ``1 / sqrt(E)``, and ``enable_gqa`` lets ``key``/``value`` have fewer heads (dim -3)
    than ``query``. Rows in which every key is masked give zero probabilities and a zero
    output, as PyTorch's kernels do.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``.
        value: ``(..., S, Ev)``.
        attn_mask: a mask broadcastable to ``(..., L, S)``, or ``None``.
        dropout_p: dropout probability applied to the probabilities (always applied
            when positive, as in ``scaled_dot_product_attention``).
        is_causal: apply a causal mask.
        scale: the factor applied to ``Q K^T``.
        enable_gqa: grouped-query attention (repeat each key/value head for its group).
        probs_hook: a function ``probs -> probs`` called on the probabilities before they
            are used, whose result is what the output is computed from (e.g. to record
            them, or to make them a leaf that requires grad); ``None`` for none.

    Returns:
        :class:`Attended` ``(output, probs, weights)``; ``probs`` is what ``probs_hook``
        returned.

    Raises:
        RuntimeError: ``attn_mask`` and ``is_causal`` are both given (as PyTorch does).
    """
    if attn_mask is not None and is_causal:
        raise RuntimeError(
            "scaled_dot_product_attention: an explicit attn_mask must not be set when "
            "is_causal=True"
        )
    if enable_gqa and key.size(-3) != query.size(-3):
        groups = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    factor = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = _scaled_scores(query, key, factor)
    if is_causal:
        allowed = torch.ones(
            query.size(-2), key.size(-2), dtype=torch.bool, device=query.device
        ).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    fully_masked = None
    if attn_mask is not None:
        # softmax of a row of -inf is NaN; PyTorch's kernels give 0 there
        fully_masked = torch.isneginf(scores).all(dim=-1, keepdim=True)
        if bool(fully_masked.any()):
            scores = scores.masked_fill(fully_masked, 0.0)
        else:
            fully_masked = None
    if scores.dtype in (torch.float16, torch.bfloat16):
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    elif scores.requires_grad:
        probs = torch.softmax(scores, dim=-1)
    else:  # no tape: the scores are not needed again, reuse their memory
        probs = torch.softmax(scores, dim=-1, out=scores)
    if fully_masked is not None:
        probs = probs.masked_fill(fully_masked, 0.0)
    if probs_hook is not None:
        probs = probs_hook(probs)
    weights = F.dropout(probs, dropout_p, training=True) if dropout_p > 0 else probs
    output = torch.matmul(weights.to(value.dtype), value)
    return Attended(output, probs, weights)


def _scaled_scores(query: Tensor, key: Tensor, factor: float) -> Tensor:
    """``Q K^T * factor``, ``(..., L, S)``."""
    batch = query.shape[:-2]
    if key.shape[:-2] != batch:  # broadcast batch dims
        return torch.matmul(query * factor, key.transpose(-2, -1))
    # one batched GEMM with the scale folded in; with the in-place softmax, 6 layers of
    # ViT-S/16 shapes at batch 8 took 144 ms instead of 194 ms with matmul of the scaled
    # 4-D queries (CPU, 2 threads; fused scaled_dot_product_attention: 92 ms)
    q = query.reshape(-1, query.size(-2), query.size(-1))
    k = key.reshape(-1, key.size(-2), key.size(-1))
    scores = torch.baddbmm(
        q.new_empty(q.size(0), q.size(1), k.size(1)), q, k.transpose(1, 2), beta=0.0, alpha=factor
    )
    return scores.view(*batch, q.size(1), k.size(1))


def as_heads(probs: Tensor) -> Tensor:
    """A ``(B, heads, L, S)`` view of probabilities of any rank: ``(L, S)`` and ``(B, L, S)``
    get singleton dims, more than two leading dims are merged into the heads dim."""
    if probs.ndim == 4:
        return probs
    if probs.ndim == 3:
        return probs.unsqueeze(1)
    if probs.ndim == 2:
        return probs[None, None]
    return probs.reshape(probs.shape[0], -1, *probs.shape[-2:])
