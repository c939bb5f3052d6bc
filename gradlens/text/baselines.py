"""Baselines for per-token attributions: the token ids (or zero embeddings) that stand for
"no information" at each position."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from ..errors import TokenInputError
from ..targets.language import config_token_id
from .inputs import TokenInput

__all__ = ["Baseline", "CONFIG_TOKENS", "baseline_ids", "check_vocabulary"]

Baseline = Union[str, int, Tensor]
"""``"pad"``, ``"mask"``, ``"unk"`` (the token id from ``model.config``), ``"zero"`` (zero
embeddings), a token id, or the baseline's ids ``(B, T)`` / ``(T,)``."""

CONFIG_TOKENS = ("pad", "mask", "unk")
"""Baseline names read from ``model.config.<name>_token_id``."""


def baseline_ids(model: nn.Module, tokens: TokenInput, baseline: Baseline) -> Tensor | None:
    """The baseline's token ids, ``(B, T)``; ``None`` for ``"zero"`` (zero embeddings).

    Positions that the attention mask marks as padding keep their own tokens, so that they
    differ in nothing between the input and the baseline.

    Raises:
        TokenInputError: an unknown name, a config without the token (see
            :func:`config_token_id`), a token id outside the embedding's vocabulary, or ids of
            the wrong shape.
    """
    if isinstance(baseline, str):
        if baseline == "zero":
            return None
        if baseline not in CONFIG_TOKENS:
            raise TokenInputError(
                f"unknown baseline {baseline!r}; use 'pad', 'mask', 'unk', 'zero', a token id "
                "or a (B, T) tensor of token ids"
            )
        baseline = config_token_id(model, baseline)
    if isinstance(baseline, bool) or not isinstance(baseline, (int, Tensor)):
        raise TokenInputError(
            f"baseline must be 'pad', 'mask', 'unk', 'zero', a token id or token ids, got "
            f"{type(baseline).__name__}"
        )
    ids = tokens.ids
    chosen = torch.as_tensor(baseline, device=ids.device)
    if chosen.is_floating_point() or chosen.ndim > 2:
        raise TokenInputError(
            f"baseline ids must be an integer token id or a (B, T) / (T,) integer tensor, got "
            f"a {chosen.dtype} tensor of shape {tuple(chosen.shape)}"
        )
    try:
        chosen = chosen.long().expand_as(ids)
    except RuntimeError:
        raise TokenInputError(
            f"baseline ids of shape {tuple(chosen.shape)} do not fit the token ids "
            f"{tuple(ids.shape)}"
        ) from None
    return torch.where(tokens.real, chosen, ids)


def check_vocabulary(layer: nn.Module, ids: Tensor, name: str) -> None:
    """Raise :class:`TokenInputError` when an ``nn.Embedding`` cannot look ``ids`` up."""
    size = getattr(layer, "num_embeddings", None)
    if isinstance(size, int) and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < size:
        bad = ids[(ids < 0) | (ids >= size)][0]
        raise TokenInputError(
            f"{name} holds token id {int(bad)}, outside the embedding's vocabulary 0..{size - 1}"
        )
