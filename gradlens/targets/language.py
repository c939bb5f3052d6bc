"""Language models: their targets, :func:`token` (a next-token id at a position) and
:func:`sequence` (the log-probabilities of a given continuation), and
:func:`config_token_id`, the one place where gradlens reads their special token ids."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.output_selection import OutputSpec, select_output
from ..errors import TargetError, TokenInputError
from .parse import class_ids, per_row

__all__ = ["token", "sequence", "config_token_id"]


def token(
    cls: int | Sequence[int] | Tensor, position: int = -1, output_spec: OutputSpec = None
) -> Callable[[Any], Tensor]:
    """Target the logit of a class at one sequence position of ``(B, T, V)`` logits.

    For a language model ``position=-1`` with ``cls`` a token id is the logit of the next
    token after the input.

    Args:
        cls: the class (token id): an int, one per sample (``B`` ints), or ``K`` per sample
            (a ``(B, K)`` tensor or ``B`` lists of ``K`` ints).
        position: the sequence position (negative counts from the end).
        output_spec: picks the logits out of a structured output (see :func:`select_output`).

    Returns:
        A callable ``output -> (B,)`` (or ``(B, K)``) giving ``logits[b, position, cls_b]``.
        When the output holds ``n * B`` rows (``n`` stacked copies of the batch, as the methods
        that evaluate modified copies make), per-sample classes are repeated for each copy.

    Raises:
        TargetError: ``cls`` is not integer ids; when called, logits that are not 3-D, a
            position or a class out of range, or a batch that is not a multiple of ``cls``'s.
    """
    cls_ids = class_ids(cls, "targets.token's cls")
    if cls_ids.ndim == 0:
        cls_ids = cls_ids[None]

    def target(output: Any) -> Tensor:
        logits = _sequence_logits(select_output(output, output_spec), "targets.token")
        rows, length, vocab = logits.shape
        if not -length <= position < length:
            raise TargetError(
                f"position {position} is out of range for a sequence of {length} positions"
            )
        classes = per_row(cls_ids, rows, vocab, logits.device, "targets.token's cls")
        at_position = logits[:, position]
        if classes.ndim == 1:
            return at_position.gather(1, classes[:, None])[:, 0]
        return at_position.gather(1, classes)

    return target


def sequence(
    continuation_ids: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    per_token: bool = False,
    output_spec: OutputSpec = None,
) -> Callable[[Any], Tensor]:
    """Target the log-probability of a continuation under teacher forcing.

    The model must be run on the prompt followed by the continuation (``K`` tokens, the last
    ``K`` positions of the input; pad on the left, if at all). The logits at position
    ``t`` predict the token at ``t + 1``, so continuation token ``k`` (at position
    ``T - K + k``) is scored with ``log_softmax(logits[:, T - K + k - 1])``. The first
    continuation token therefore needs at least one prompt token before it.

    Args:
        continuation_ids: the continuation's token ids, ``(B, K)`` (or ``(K,)``, the same for
            every sample).
        per_token: ``False``: the per-sample sum of the ``K`` log-probabilities, ``(B,)``.
            ``True``: one score per continuation token, ``(B, K)``, which the methods
            differentiate in one batched backward (``K`` targets per sample).
        output_spec: picks the logits out of a structured output (see :func:`select_output`).

    Returns:
        A callable ``output -> (B,)`` or ``(B, K)``. When the output holds ``n * B`` rows
        (stacked copies of the batch), the continuation is repeated for each copy.

    Raises:
        TargetError: ``continuation_ids`` is not a 1-D or 2-D integer tensor or list, or is
            empty; when called, logits that are not 3-D, a sequence not longer than the
            continuation, a batch that is not a multiple of the continuation's, or a token
            id outside the vocabulary.
    """
    ids = class_ids(continuation_ids, "continuation_ids")
    if ids.ndim == 0:
        raise TargetError("continuation_ids must be (B, K) or (K,) token ids, got one int")
    if ids.ndim == 1:  # the same continuation for every sample
        ids = ids[None]

    def target(output: Any) -> Tensor:
        logits = _sequence_logits(select_output(output, output_spec), "targets.sequence")
        rows, length, vocab = logits.shape
        k = ids.shape[-1]
        if length <= k:
            raise TargetError(
                f"the model saw {length} positions, but a continuation of {k} tokens needs at "
                f"least {k + 1}: run the model on the prompt followed by the continuation"
            )
        continuation = per_row(ids, rows, vocab, logits.device, "continuation_ids")
        predicting = logits[:, length - k - 1 : length - 1]  # (rows, K, V)
        log_probs = torch.log_softmax(predicting, dim=-1)
        picked = log_probs.gather(2, continuation[:, :, None])[:, :, 0]
        return picked if per_token else picked.sum(1)

    return target


def _sequence_logits(logits: Tensor, name: str) -> Tensor:
    if logits.ndim != 3:
        raise TargetError(
            f"{name} needs logits of shape (B, T, vocabulary), got {tuple(logits.shape)}"
        )
    return logits


def config_token_id(model: nn.Module, name: str, *, argument: str = "baseline") -> int:
    """``model.config.<name>_token_id``, e.g. the padding token for ``name="pad"``: the one
    place where gradlens reads special token ids (token baselines, ERASER replacements).

    Args:
        model: the model, e.g. a Hugging Face model or a
            :class:`~gradlens.demos.text_task.TinyTextClassifier`.
        name: ``"pad"``, ``"mask"``, ``"unk"``, ...
        argument: the caller's argument that asked for it, named in the error.

    Raises:
        TokenInputError: the model has no config, or the config names no such token.
    """
    field = f"{name}_token_id"
    config = getattr(model, "config", None)
    value = getattr(config, field, None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    where = (
        f"{type(model).__name__} has no .config"
        if config is None
        else f"model.config.{field} is {value!r}"
    )
    zero = " or baseline='zero' for zero embeddings" if argument == "baseline" else ""
    raise TokenInputError(
        f"{argument}={name!r} takes the token id from model.config.{field}, but {where}; pass "
        f"the token id itself instead ({argument}=<id>, e.g. your tokenizer's {name} "
        f"token){zero}"
    )
