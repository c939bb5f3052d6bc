"""Scores for per-token attributions of a text classifier: localisation against ground-truth
tokens, and the ERASER faithfulness scores comprehensiveness and sufficiency.

Conventions:

* ``scores`` are ``(B, T)`` per-token attributions (e.g. from
  :func:`gradlens.token_attributions`), larger meaning more important.
* ``input_ids`` are ``(B, T)`` token ids and ``attention_mask`` ``(B, T)`` is 1 (or
  ``True``) on real tokens and 0 on padding, as from a Hugging Face tokenizer; ``None``
  means every position is a real token. Padding is never counted: it is never the top
  token, never removed or kept, and not part of a sequence's length.
* The model is called as ``model(input_ids, attention_mask=attention_mask)`` (without the
  keyword when no mask is given and none is needed) and must return ``(B, num_classes)``
  logits, or a structured output from which ``output`` picks them (see
  :func:`gradlens.targets.select_output`).
* ``target`` is the class explained, as in the image metrics: ``None`` is the top class
  on the full input, an int one class for all, a sequence or tensor one per sample.
* The model is not changed: forwards run under ``torch.inference_mode()`` in chunks of
  ``batch_size`` sequences (call ``model.eval()`` first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.chunks import check_batch_size, chunks
from ..core.output_selection import OutputSpec, select_output
from ..errors import TokenInputError
from ..targets.language import config_token_id
from ..targets.scoring import Target
from ._common import _classes, _untouched

__all__ = ["ERASER_FRACTIONS", "token_localization", "comprehensiveness", "sufficiency"]

ERASER_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.20, 0.50)
"""The fractions of tokens ERASER averages over (its AOPC bins: 1, 5, 10, 20 and 50 %)."""

Removal = Literal["delete", "pad", "mask", "unk"] | int


def token_localization(
    scores: Tensor, triggers: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """Whether each sample's top-scoring real token is a ground-truth token.

    The text counterpart of the pointing game: on the synthetic text task
    (:func:`gradlens.demos.text_task.make_text_task`) the ground truth is the trigger tokens that
    decide the label. The top token is the *first* maximum among the real tokens (padding
    is never chosen). The localisation over a data set is ``hits.float().mean()``.

    Args:
        scores: ``(B, T)`` per-token scores; larger is more important (pass
            ``scores.abs()`` to rank by magnitude).
        triggers: ``(B, T)`` bool (or 0/1), the ground-truth tokens.
        attention_mask: ``(B, T)``, 1 on real tokens and 0 on padding; ``None``: all real.

    Returns:
        ``(B,)`` bool hits, on the scores' device. A sample without real tokens is a miss.

    Raises:
        ValueError: the shapes differ or are not ``(B, T)``.
    """
    scores = torch.as_tensor(scores).detach()
    if scores.ndim != 2 or tuple(triggers.shape) != tuple(scores.shape):
        raise ValueError(
            f"scores and triggers must both have shape (B, T), got {tuple(scores.shape)} and "
            f"{tuple(triggers.shape)}"
        )
    real = _real(attention_mask, scores)
    masked = scores.double().masked_fill(~real, -math.inf)
    top = masked.argmax(dim=1, keepdim=True)
    hit = triggers.to(scores.device).bool().gather(1, top)[:, 0]
    return hit & real.any(dim=1)


@entry_point
def comprehensiveness(
    model: nn.Module,
    input_ids: Tensor,
    scores: Tensor,
    target: Target = None,
    *,
    attention_mask: Tensor | None = None,
    k: float | Sequence[float] = ERASER_FRACTIONS,
    removal: Removal = "delete",
    batch_size: int = 64,
    output: OutputSpec = None,
) -> Tensor:
    """ERASER comprehensiveness (DeYoung et al. 2020, "ERASER: A Benchmark to Evaluate
    Rationalized NLP Models", ACL): how much the target's probability drops when the most
    important tokens are removed.

    For each sample with ``L`` real tokens and each fraction ``f`` in ``k``, the rationale
    ``r_f`` is the ``ceil(f * L)`` real tokens with the largest scores (ties: the first
    position first; at most ``L``), and::

        comprehensiveness_f = p(y | x) - p(y | x without r_f)

    with ``p`` the softmax probability of the target class ``y``. A list of fractions is
    averaged, as ERASER's AOPC over its bins (:data:`ERASER_FRACTIONS`, the default).
    Higher is better: removing the tokens the explanation points at should change the
    prediction. It can be negative.

    Args:
        model: the classifier; not changed (module docstring).
        input_ids: ``(B, T)`` token ids.
        scores: ``(B, T)`` per-token attributions, larger more important.
        target: the class explained (module docstring); ``None`` is the top class.
        attention_mask: ``(B, T)``, 1 on real tokens and 0 on padding; ``None``: all real.
        k: a fraction in (0, 1], or a sequence of them (averaged).
        removal: ``"delete"`` (ERASER's: the tokens are taken out and the rest moves up,
            the sequence getting shorter; the model must take ``attention_mask``), or a
            token put in their place: ``"pad"``, ``"mask"`` or ``"unk"`` (the id from
            ``model.config``, e.g. ``mask_token_id``) or an explicit token id.
        batch_size: sequences per forward; ``B * (len(k) + 1)`` are evaluated.
        output: picks the logits out of a structured output.

    Returns:
        ``(B,)`` float64 on the CPU; the data-set score is its mean.

    Raises:
        ValueError: bad shapes, a fraction outside (0, 1], an unknown ``removal``, a
            ``"pad"``/``"mask"``/``"unk"`` removal on a model whose ``config`` has no such
            id, or ``batch_size`` < 1.
        TargetError: a target that is not one class per sample.
    """
    return _eraser(
        model, input_ids, scores, target, keep_rationale=False, attention_mask=attention_mask,
        k=k, removal=removal, batch_size=batch_size, output=output,
    )  # fmt: skip


@entry_point
def sufficiency(
    model: nn.Module,
    input_ids: Tensor,
    scores: Tensor,
    target: Target = None,
    *,
    attention_mask: Tensor | None = None,
    k: float | Sequence[float] = ERASER_FRACTIONS,
    removal: Removal = "delete",
    batch_size: int = 64,
    output: OutputSpec = None,
) -> Tensor:
    """ERASER sufficiency (DeYoung et al. 2020, "ERASER: A Benchmark to Evaluate
    Rationalized NLP Models", ACL): how much the target's probability drops when *only*
    the most important tokens are kept.

    With the rationale ``r_f`` of :func:`comprehensiveness`, every other real token is
    removed (deleted, or replaced by the ``removal`` token)::

        sufficiency_f = p(y | x) - p(y | r_f)

    averaged over the fractions in ``k``. *Lower* is better: the rationale alone should
    keep the prediction. It can be negative.

    Args:
        model, input_ids, scores, target: as for :func:`comprehensiveness`.
        attention_mask: ``(B, T)``, 1 on real tokens and 0 on padding; ``None``: all real.
        k: a fraction in (0, 1], or a sequence of them (averaged).
        removal: ``"delete"``, ``"pad"``, ``"mask"``, ``"unk"`` or a token id, as for
            :func:`comprehensiveness`.
        batch_size: sequences per forward; ``B * (len(k) + 1)`` are evaluated.
        output: picks the logits out of a structured output.

    Returns:
        ``(B,)`` float64 on the CPU; the data-set score is its mean.

    Raises:
        ValueError, TargetError: as for :func:`comprehensiveness`.
    """
    return _eraser(
        model, input_ids, scores, target, keep_rationale=True, attention_mask=attention_mask,
        k=k, removal=removal, batch_size=batch_size, output=output,
    )  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def _real(attention_mask: Tensor | None, like: Tensor) -> Tensor:
    """``(B, T)`` bool: the real (non-padding) positions."""
    if attention_mask is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    if tuple(attention_mask.shape) != tuple(like.shape):
        raise ValueError(
            f"attention_mask must have shape {tuple(like.shape)}, got {tuple(attention_mask.shape)}"
        )
    return attention_mask.to(like.device).bool()


def _fractions(k: float | Sequence[float]) -> list[float]:
    fractions = [float(k)] if isinstance(k, (int, float)) else [float(f) for f in k]
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"k must be a fraction in (0, 1] or a list of them, got {k!r}")
    return fractions


def _special_id(model: nn.Module, removal: Removal) -> int | None:
    """The replacement token id of ``removal`` (``None`` for deletion)."""
    if isinstance(removal, int) and not isinstance(removal, bool):
        return removal
    if removal == "delete":
        return None
    if removal not in ("pad", "mask", "unk"):
        raise ValueError(
            f'removal must be "delete", "pad", "mask", "unk" or a token id, got {removal!r}'
        )
    return config_token_id(model, removal, argument="removal")


def _rationale(scores: Tensor, real: Tensor, fractions: list[float]) -> Tensor:
    """``(F, B, T)`` bool: for each fraction, the top ``ceil(f * L)`` real tokens."""
    masked = scores.double().masked_fill(~real, -math.inf)
    order = torch.argsort(masked, dim=1, descending=True, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    lengths = real.sum(dim=1)
    # the small tolerance keeps e.g. 0.2 * 15 = 3.0000000000000004 at 3 tokens
    counts = [torch.ceil(lengths.double() * f - 1e-9).long().clamp(max=lengths) for f in fractions]
    return torch.stack([(rank < count[:, None]) & real for count in counts])


def _delete(ids: Tensor, keep: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Sequences of the kept tokens, moved to the front in their order, padded after."""
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)
    kept = keep.gather(1, order)
    return ids.gather(1, order).masked_fill(~kept, pad_id), kept.long()


def _eraser(
    model: nn.Module,
    input_ids: Tensor,
    scores: Tensor,
    target: Target,
    *,
    keep_rationale: bool,
    attention_mask: Tensor | None,
    k: float | Sequence[float],
    removal: Removal,
    batch_size: int,
    output: OutputSpec,
) -> Tensor:
    check_batch_size(batch_size)
    if input_ids.ndim != 2 or tuple(torch.as_tensor(scores).shape) != tuple(input_ids.shape):
        raise ValueError(
            f"input_ids and scores must both have shape (B, T), got {tuple(input_ids.shape)} "
            f"and {tuple(torch.as_tensor(scores).shape)}"
        )
    fractions = _fractions(k)
    replacement = _special_id(model, removal)
    ids = input_ids.detach()
    real = _real(attention_mask, ids)
    scores = torch.as_tensor(scores).detach().to(ids.device)
    rationale = _rationale(scores, real, fractions)  # (F, B, T)
    removed = real & ~rationale if keep_rationale else rationale
    batch = ids.shape[0]
    variants_ids = ids.expand(len(fractions), -1, -1)
    if replacement is None:
        try:  # deleted tokens leave padding at the end
            pad: int | None = config_token_id(model, "pad", argument="removal")
        except TokenInputError:
            pad = None
        variant_ids, variant_mask = _delete(
            variants_ids.flatten(0, 1),
            (real & ~removed).flatten(0, 1),
            0 if pad is None else int(pad),
        )
        mask_needed = True
    else:
        variant_ids = variants_ids.masked_fill(removed, replacement).flatten(0, 1)
        variant_mask = real.long().expand(len(fractions), -1, -1).flatten(0, 1)
        mask_needed = attention_mask is not None
    all_ids = torch.cat([ids, variant_ids])  # the original first, then fraction-major
    all_mask = torch.cat([real.long(), variant_mask])
    with _untouched(model):
        classes = _classes(model, ids, target, output, batch_size, attention_mask)
        rows = classes.repeat(len(fractions) + 1)
        probabilities = []
        for part in chunks(all_ids.shape[0], batch_size):
            kwargs = {"attention_mask": all_mask[part]} if mask_needed else {}
            logits = select_output(model(all_ids[part], **kwargs), output).double()
            if logits.ndim != 2:
                raise ValueError(
                    f"the model must return (B, num_classes) logits, got {tuple(logits.shape)}"
                )
            chosen = rows[part].to(logits.device)[:, None]
            probabilities.append(torch.softmax(logits, dim=1).gather(1, chosen)[:, 0])
        p = torch.cat(probabilities).view(len(fractions) + 1, batch)
    # a clone made outside inference mode is a normal tensor, usable later in autograd
    return (p[0] - p[1:]).mean(dim=0).cpu().clone()
