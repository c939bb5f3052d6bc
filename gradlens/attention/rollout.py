"""The maths of attention rollout and gradient-weighted rollout, on lists of attention maps.

Pure functions of the attention probabilities ``A_l`` of the layers ``l = 1 .. L`` (in the
order they ran), each ``(B, heads, N, N)`` with rows (queries) summing to 1, and for the
gradient rollout of the gradients ``dA_l`` of a score with respect to them. The methods
(:func:`gradlens.attention_rollout`, :func:`gradlens.gradient_attention_rollout`)
capture these and pick one row of the result.

* Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in
  Transformers"): fuse the heads (mean, max or min), optionally zero the smallest weights
  of each row, add the residual connection as ``(A + I) / 2`` with rows renormalised to
  sum 1, and multiply through the layers: ``R = Â_L · ... · Â_1``.
* Gradient-weighted rollout (Chefer, Gur & Wolf 2021, "Generic Attention-model
  Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", the
  self-attention rule): ``R = I``, then for each layer in order
  ``Ā = mean_heads(ReLU(dA ⊙ A))`` and ``R <- R + Ā · R``.

``R[b, i, j]`` is how much token ``j`` of the input contributes to token ``i`` of the last
layer; one row ``i`` (the class token's, for a ViT) is the explanation. Computing one row
costs ``O(L N^2)`` instead of the ``O(L N^3)`` of the whole matrix: the row vector is
multiplied from the left, last layer first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "HeadFusion",
    "HEAD_FUSIONS",
    "fuse_heads",
    "discard_lowest",
    "add_residual",
    "rollout",
    "gradient_rollout",
    "positive_weighted",
]

HeadFusion = Literal["mean", "max", "min"]

HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")
"""The ways :func:`fuse_heads` combines the heads."""


def fuse_heads(attention: Tensor, head_fusion: HeadFusion = "mean") -> Tensor:
    """Combine the heads of one layer's attention: ``(B, heads, N, N) -> (B, N, N)``.

    Args:
        attention: attention probabilities ``(B, heads, N_query, N_key)``.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads.

    Returns:
        ``(B, N_query, N_key)``, in the dtype of ``attention``.

    Raises:
        ValueError: an unknown ``head_fusion``, or ``attention`` is not 4-D.
    """
    check_head_fusion(head_fusion)
    if attention.ndim != 4:
        raise ValueError(
            f"attention maps must be (B, heads, N_query, N_key); got shape {tuple(attention.shape)}"
        )
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def check_head_fusion(head_fusion: str) -> None:
    """Raise ``ValueError`` unless ``head_fusion`` is one of :data:`HEAD_FUSIONS`."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(
            f"head_fusion must be one of {', '.join(map(repr, HEAD_FUSIONS))}, got {head_fusion!r}"
        )


def check_discard_ratio(discard_ratio: float) -> None:
    """Raise ``ValueError`` unless ``0 <= discard_ratio < 1``."""
    if not 0 <= discard_ratio < 1:
        raise ValueError(
            f"discard_ratio must be in [0, 1) (the fraction of each row's weights set to "
            f"zero), got {discard_ratio!r}"
        )


def discard_lowest(attention: Tensor, discard_ratio: float, *, keep: int = 0) -> Tensor:
    """Zero the ``floor(discard_ratio * N)`` smallest weights of each row.

    The weight of token ``keep`` (the class token) on itself, ``attention[:, keep, keep]``,
    is never discarded: in row ``keep`` the smallest of the other weights are. Ties are
    broken by :func:`torch.topk`. The rows are not renormalised (:func:`add_residual` does
    that).

    Args:
        attention: fused attention ``(B, N, N)``.
        discard_ratio: the fraction of each row to zero, in ``[0, 1)``.
        keep: the token whose own weight is kept (negative indices count from the end).

    Returns:
        A new ``(B, N, N)`` tensor (``attention`` itself when nothing is discarded).

    Raises:
        ValueError: ``discard_ratio`` outside ``[0, 1)``.
    """
    check_discard_ratio(discard_ratio)
    tokens = attention.shape[-1]
    count = int(discard_ratio * tokens)
    if count == 0:
        return attention
    ranked = attention.clone()
    keep = keep % tokens
    ranked[:, keep, keep] = torch.inf  # never among the smallest
    lowest = ranked.topk(count, dim=-1, largest=False).indices
    return attention.scatter(-1, lowest, 0.0)


def add_residual(attention: Tensor) -> Tensor:
    """``(A + I) / 2`` with each row renormalised to sum 1: the residual connection.

    Args:
        attention: fused attention ``(B, N, N)``.

    Returns:
        ``(B, N, N)`` with rows summing to 1.
    """
    eye = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
    mixed = (attention + eye) / 2
    return mixed / mixed.sum(dim=-1, keepdim=True)


def rollout(
    attentions: Sequence[Tensor],
    *,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    keep: int = 0,
    row: int | None = None,
) -> Tensor:
    """Attention rollout ``R = Â_L · ... · Â_1`` (Abnar & Zuidema 2020).

    ``Â_l = add_residual(discard_lowest(fuse_heads(A_l, head_fusion), discard_ratio, keep))``.

    Args:
        attentions: the layers' attention probabilities, first layer first, each
            ``(B, heads, N, N)`` (the same ``B`` and ``N``; the number of heads may differ).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads.
        discard_ratio: the fraction of each row's smallest weights to zero, in ``[0, 1)``.
        keep: the token whose own weight is never discarded (the class token).
        row: compute only this row of ``R`` (cheaper), or ``None`` for the whole matrix.

    Returns:
        float32 ``(B, N, N)``, or ``(B, N)`` for one ``row``.

    Raises:
        ValueError: no maps, maps of different or non-square shapes, an unknown
            ``head_fusion`` or ``discard_ratio`` outside ``[0, 1)``.
    """
    check_head_fusion(head_fusion)
    check_discard_ratio(discard_ratio)
    batch, tokens = check_maps(attentions)
    mixed = [
        add_residual(discard_lowest(fuse_heads(a.float(), head_fusion), discard_ratio, keep=keep))
        for a in attentions
    ]
    if row is None:
        result = mixed[0]
        for layer in mixed[1:]:
            result = layer @ result
        return result
    vector = one_hot_rows(batch, tokens, row, attentions[0].device)
    for layer in reversed(mixed):
        vector = (vector.unsqueeze(1) @ layer).squeeze(1)
    return vector


def gradient_rollout(
    attentions: Sequence[Tensor], gradients: Sequence[Tensor], *, row: int | None = None
) -> Tensor:
    """Gradient-weighted rollout (Chefer, Gur & Wolf 2021, self-attention rule).

    ``R = I``; for each layer in order ``Ā = mean_heads(ReLU(dA ⊙ A))``, ``R <- R + Ā · R``;
    that is ``R = (I + Ā_L) · ... · (I + Ā_1)``.

    Args:
        attentions: the layers' attention probabilities, first layer first, each
            ``(B, heads, N, N)``.
        gradients: the gradient of the explained score with respect to each map: the same
            shapes, or ``(K, B, heads, N, N)`` for ``K`` scores per sample.
        row: compute only this row of ``R`` (cheaper), or ``None`` for the whole matrix.

    Returns:
        float32 ``(B, N, N)`` (``(B, N)`` for one ``row``), with a leading ``K`` dimension
        for ``K`` scores per sample.

    Raises:
        ValueError: no maps, maps of different or non-square shapes, or not one gradient
            of the matching shape per map.
    """
    batch, tokens = check_maps(attentions)
    if len(gradients) != len(attentions):
        raise ValueError(f"got {len(gradients)} gradients for {len(attentions)} attention maps")
    for a, g in zip(attentions, gradients):
        if g.shape[-4:] != a.shape or g.ndim not in (4, 5):
            raise ValueError(
                f"a gradient of shape {tuple(g.shape)} does not fit an attention map of shape "
                f"{tuple(a.shape)}; expected {tuple(a.shape)} or (K, *{tuple(a.shape)})"
            )
    leading = gradients[0].shape[:-3]  # (B,) or (K, B)
    device = attentions[0].device
    if row is None:
        eye = torch.eye(tokens, device=device)
        result = eye.expand(*leading, tokens, tokens).clone()
        for a, g in zip(attentions, gradients):
            result = result + positive_weighted(a, g) @ result
        return result
    # the row vector starts one-hot, so the last layer needs only its row of Ā; each
    # earlier layer's Ā is made when it is used (one (B, N, N) map alive at a time)
    vector = one_hot_rows(batch, tokens, row, device).expand(*leading, tokens)
    row %= tokens  # one_hot_rows checked it is in [-N, N)
    vector = vector + positive_weighted(attentions[-1], gradients[-1], row).squeeze(-2)
    for a, g in zip(reversed(attentions[:-1]), reversed(gradients[:-1])):
        vector = vector + (vector.unsqueeze(-2) @ positive_weighted(a, g)).squeeze(-2)
    return vector


def positive_weighted(attention: Tensor, gradient: Tensor, row: int | None = None) -> Tensor:
    """``Ā = mean_heads(ReLU(dA ⊙ A))``, the gradient-weighted map of one layer.

    Args:
        attention: the probabilities ``A``, ``(B, heads, N, N)``.
        gradient: their gradient ``dA``, ``(B, heads, N, N)`` or ``(K, B, heads, N, N)``.
        row: only this query row of ``Ā``, or ``None`` for all of them.

    Returns:
        float32 ``(..., B, N, N)`` (``(..., B, 1, N)`` for one ``row``).
    """
    if row is not None:
        attention = attention[..., row : row + 1, :]
        gradient = gradient[..., row : row + 1, :]
    weighted = gradient.float() * attention.float()  # a new tensor: ReLU in place
    return weighted.clamp_(min=0).mean(dim=-3)


def check_maps(attentions: Sequence[Tensor]) -> tuple[int, int]:
    """``(B, N)`` of a list of ``(B, heads, N, N)`` maps, which must all agree.

    Raises:
        ValueError: an empty list, a map that is not 4-D and square, or maps of different
            batch sizes or token counts.
    """
    if len(attentions) == 0:
        raise ValueError("rollout needs at least one attention map")
    shapes = [tuple(a.shape) for a in attentions]
    bad = [s for s in shapes if len(s) != 4 or s[2] != s[3]]
    if bad:
        raise ValueError(
            f"attention maps must be square (B, heads, N, N) self-attention; got {bad[0]}"
        )
    sizes = {(s[0], s[2]) for s in shapes}
    if len(sizes) > 1:
        raise ValueError(
            "rollout multiplies the layers' maps, so they need the same batch size and "
            f"number of tokens; got shapes {shapes}"
        )
    batch, tokens = sizes.pop()
    return batch, tokens


def one_hot_rows(batch: int, tokens: int, row: int, device: torch.device) -> Tensor:
    """``(B, N)`` float32 rows of the identity: the start of a one-row rollout.

    Raises:
        ValueError: ``row`` is not in ``[-N, N)``.
    """
    if not -tokens <= row < tokens:
        raise ValueError(f"row {row} does not exist: there are {tokens} tokens")
    vector = torch.zeros(batch, tokens, device=device)
    vector[:, row] = 1.0
    return vector
