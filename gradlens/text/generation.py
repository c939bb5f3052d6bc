"""Attributions of each generated token to the tokens before it:
:func:`generation_attributions`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from .. import registry, targets
from ..core.batched_grad import targets_per_backward as targets_per_backward_context
from ..core.checks import check_value, entry_point
from ..core.output_selection import OutputSpec
from ..core.selection import Layers
from ..errors import TokenInputError
from ..targets.parse import class_ids
from .baselines import Baseline
from .tokens import TokenMethodOptions, token_attributions

__all__ = ["generation_attributions"]

# The default chunk of the K log-probabilities per batched backward (see the docstring).
TARGETS_PER_BACKWARD = 4


@entry_point
def generation_attributions(
    model: nn.Module,
    input_ids: Tensor,
    continuation_ids: Tensor | Sequence[int] | Sequence[Sequence[int]],
    *,
    method: str | Callable[..., Any] = "input_x_gradient",
    attention_mask: Tensor | None = None,
    layer: Layers | None = None,
    baseline: Baseline = "pad",
    reduce: Literal["sum", "norm"] = "sum",
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    targets_per_backward: int | None = TARGETS_PER_BACKWARD,
    **options: Unpack[TokenMethodOptions],
) -> Tensor:
    """For each continuation token, the attribution of its log-probability to every
    position before it.

    The model (a causal language model returning ``(B, T, vocabulary)`` logits) runs on the
    prompt followed by the continuation (teacher forcing), and the ``K`` scores ``log p(c_k |
    prompt, c_<k)`` (:func:`gradlens.targets.sequence` with ``per_token=True``) are
    attributed together by :func:`token_attributions`: all ``K`` rows come from one forward
    and one batched backward (saliency, Input×Gradient), or one forward and one batched
    backward per integration step (Integrated Gradients) -- not ``K`` separate passes. A
    batched backward holds one gradient of every intermediate tensor per score, so for
    long continuations it is split into backwards of ``targets_per_backward`` scores each
    (same forward, same rows).
    Row ``k`` equals a :func:`token_attributions` call with the single target ``log p(c_k)``,
    with the positions at and after ``c_k``'s own set to 0.

    Args:
        model: the language model.
        input_ids: the prompt, ``(B, P)`` token ids (left-padded with ``attention_mask``, if
            padded at all).
        continuation_ids: the continuation, ``(B, K)`` token ids, or ``(K,)`` for the same
            continuation after every prompt.
        method: as for :func:`token_attributions` (Input×Gradient by default: one pass).
        attention_mask: ``(B, P)`` mask of the prompt; the continuation counts as real.
        layer: the embedding layer, as for :func:`token_attributions`.
        baseline: the baseline tokens, as for :func:`token_attributions`.
        reduce: ``"sum"`` or ``"norm"``, as for :func:`token_attributions`.
        output: picks the logits out of a structured model output.
        forward_kwargs: further keyword inputs for the model (``attention_mask`` is
            extended over the continuation and added to them).
        targets_per_backward: how many of the ``K`` log-probabilities one batched
            backward differentiates (``ceil(K / targets_per_backward)`` backwards per
            forward); ``None`` for all ``K`` in one. With the default, 4, a 16-token
            continuation peaked at about 1.0x one forward and ``loss.backward()`` of the
            sequence (2.2x with ``None``) for about 15 % more time than ``None``
            (``docs/performance.md``); lower it for long sequences on a tight memory
            budget, raise it (or ``None``) where memory is plentiful.
        **options: passed to the attribution method
            (:class:`~gradlens.text.TokenMethodOptions`: ``abs``, ``steps``, ``rule``,
            ``batch_size``, ``n``, ``sigma``, ``seed``, ``generator``, ``window``,
            ``stride``). ``batch_size`` defaults to ``B`` here: one integration step (or
            noise sample) per forward, since the batched backward holds ``K`` gradients of
            every intermediate tensor.

    Returns:
        ``(B, K, P + K)``: row ``k`` over the prompt and the continuation; positions
        ``>= P + k`` (the token itself and later ones) and padding are 0.

    Raises:
        TargetError: ``continuation_ids`` holds floats or bools (token ids are integers).
        TokenInputError: ``input_ids`` is not ``(B, P)`` integers, ``continuation_ids`` not
            ``(B, K)`` or ``(K,)`` integers, or the continuation's batch is not the prompt's.
        ValueError: ``targets_per_backward`` is not a positive int or ``None``.
        LayerNotFoundError, ValueError, TypeError, OutputSelectionError: as for
            :func:`token_attributions`.
    """
    check_value(input_ids, "input_ids")
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        kind = (
            f"a {input_ids.dtype} tensor of shape {tuple(input_ids.shape)}"
            if isinstance(input_ids, Tensor)
            else type(input_ids).__name__
        )
        raise TokenInputError(f"input_ids must be a (B, P) integer tensor of prompts, got {kind}")
    batch, prompt = input_ids.shape
    continuation = _continuation(continuation_ids, batch, input_ids.device)
    k = continuation.shape[1]
    ids = torch.cat([input_ids, continuation], dim=1)
    inputs: Tensor | dict[str, Tensor] = ids
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise TokenInputError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; it must match "
                f"input_ids {tuple(input_ids.shape)}"
            )
        ones = torch.ones_like(continuation, dtype=attention_mask.dtype)
        forward_kwargs = {
            **(forward_kwargs or {}),
            "attention_mask": torch.cat([attention_mask, ones], dim=1),
        }
    target = targets.sequence(continuation, per_token=True, output_spec=output)
    if "batch_size" in inspect.signature(registry.get(method, "attribution")).parameters:
        # the batched backward holds K gradients of every intermediate tensor: one copy of
        # the batch per pass (one integration step, one noise sample) keeps the peak low and
        # was about as fast as larger chunks (benchmarks/bench_generation.py)
        options.setdefault("batch_size", batch)
    with targets_per_backward_context(targets_per_backward):
        scores = token_attributions(
            model,
            inputs,
            target,
            method=method,
            layer=layer,
            baseline=baseline,
            reduce=reduce,
            forward_kwargs=forward_kwargs,
            **options,
        )
    # row k attributes log p(c_k), at position P + k: only the positions before it count
    before = torch.arange(prompt + k, device=scores.device) < (
        prompt + torch.arange(k, device=scores.device)[:, None]
    )
    return torch.where(before, scores, torch.zeros_like(scores))


def _continuation(
    continuation_ids: Tensor | Sequence[int] | Sequence[Sequence[int]],
    batch: int,
    device: torch.device,
) -> Tensor:
    """``(B, K)`` int64 continuation ids on ``device`` (a TargetError for ids that are not
    integers, a TokenInputError for ids that do not fit the prompts)."""
    ids = class_ids(continuation_ids, "continuation_ids")
    if ids.ndim == 0:
        raise TokenInputError(
            f"continuation_ids must be (B, K) or (K,) token ids, got the one id {int(ids)}"
        )
    if ids.ndim == 1:
        ids = ids.expand(batch, -1)
    if ids.shape[0] != batch:
        raise TokenInputError(
            f"continuation_ids holds {ids.shape[0]} continuations but input_ids holds {batch} "
            f"prompts; give one continuation per prompt ({batch}, K), or one (K,) for all"
        )
    return ids.to(device=device, dtype=torch.long)
