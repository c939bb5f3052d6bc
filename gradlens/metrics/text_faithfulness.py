"""Soft comprehensiveness and sufficiency (Zhao & Aletras, "Incorporating Attribution
Importance for Improving Faithfulness Metrics", ACL 2023): ERASER's scores with the tokens
perturbed in proportion to their importance instead of removed outright.

The perturbation is on the input embeddings: each element of token ``i``'s embedding is
kept with probability ``q_i`` and zeroed otherwise (a Bernoulli mask, from ``generator``),
through an output edit of the embedding layer (the model is not changed). With ``s_i`` the
token scores min-max normalised to [0, 1] over the sample's real tokens, sufficiency keeps
``q_i = s_i`` and comprehensiveness ``q_i = 1 - s_i``; padding is never perturbed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.chunks import check_batch_size, chunks
from ..core.output_selection import OutputSpec, select_output
from ..core.outputs import replace_outputs
from ..errors import TokenInputError
from ..targets.scoring import Target
from ..text.embedding import embedding_layer
from ..text.inputs import TokenInput, TokenInputs
from ._common import MetricResult, _classes_of, _score, _untouched
from .perturbation import check_count, is_tokens, per_job_draws, seed_from

__all__ = ["soft_comprehensiveness", "soft_sufficiency"]


def _keep_probabilities(scores: Tensor, real: Tensor) -> Tensor:
    """``(B, T)``: the scores min-max normalised over the real tokens (0 on padding; a
    constant row becomes 0)."""
    values = scores.double()
    low = values.masked_fill(~real, torch.inf).amin(dim=1, keepdim=True)
    high = values.masked_fill(~real, -torch.inf).amax(dim=1, keepdim=True)
    span = high - low
    normalised = torch.where(span > 0, (values - low) / torch.where(span > 0, span, 1), 0.0)
    return normalised.masked_fill(~real, 0.0)


def _soft(
    model: nn.Module,
    inputs: TokenInputs,
    scores: Tensor,
    target: Target,
    *,
    sufficiency: bool,
    samples: int,
    normalise: bool,
    layer: str | None,
    batch_size: int,
    generator: torch.Generator | None,
    output: OutputSpec,
) -> MetricResult:
    if not is_tokens(inputs):
        raise TokenInputError(
            "soft comprehensiveness and sufficiency perturb token embeddings: pass token ids "
            "(B, T) or a mapping with 'input_ids'"
        )
    batch_size = int(check_batch_size(batch_size) or 1)
    check_count(samples, "samples")
    tokens = TokenInput.parse(inputs)
    scores = torch.as_tensor(scores).detach()
    if tuple(scores.shape) != tuple(tokens.ids.shape):
        raise ValueError(
            f"scores must have the token ids' shape {tuple(tokens.ids.shape)} (B, T), got "
            f"{tuple(scores.shape)}"
        )
    real = tokens.real.to(tokens.ids.device)
    keep = _keep_probabilities(scores.to(real.device), real)
    keep = keep if sufficiency else (1 - keep).masked_fill(~real, 0.0)
    batch = tokens.batch_size
    with _untouched(model):
        name = layer if layer is not None else embedding_layer(model, tokens)
        classes = _classes_of(model, tokens.model_input, target, output, batch_size)
        seed = seed_from(generator)
        # rows: the clean input, the null input (every real token zeroed), then the samples
        per = samples + 2
        probability = torch.empty(batch * per, dtype=torch.float64)
        current: dict[str, Tensor] = {}

        def edit(_: str, __: nn.Module, embeddings: Tensor) -> Tensor:
            index = current["index"]
            sample, row = index // per, index % per
            draws = per_job_draws(seed, index, embeddings.shape[1:], torch.rand)
            kept = draws.to(embeddings.device) < keep[sample][:, :, None].to(embeddings.device)
            kept = kept | (row[:, None, None] == 0).to(embeddings.device)  # the clean input
            kept = kept & ~((row[:, None, None] == 1) & real[sample][:, :, None])  # the null
            kept = kept | ~real[sample][:, :, None].to(embeddings.device)  # padding stays
            return embeddings * kept.to(embeddings.dtype)

        with replace_outputs(model, {name: edit}):
            for part in chunks(batch * per, batch_size):
                index = torch.arange(part.start, part.stop)
                current["index"] = index
                args, kwargs = tokens.model_input.take(index // per).bind()
                logits = select_output(model(*args, **kwargs), output)
                probability[part] = _score(logits, classes[index // per], "probability").cpu()
    p = probability.view(batch, per)
    clean, null, perturbed = p[:, 0], p[:, 1], p[:, 2:].mean(dim=1)
    drop = (clean - perturbed).clamp(min=0)
    null_drop = (clean - null).clamp(min=0)  # = 1 - Soft-S(x0)
    if sufficiency:
        value = 1 - drop
        numerator = value - (1 - null_drop)
    else:
        value = numerator = drop
    if normalise:
        value = torch.where(null_drop > 0, numerator / null_drop.clamp(min=1e-300), torch.nan)
    return MetricResult(scores=value.clone(), classes=classes.cpu().clone())


@entry_point
def soft_comprehensiveness(
    model: nn.Module,
    inputs: TokenInputs,
    attributions: Tensor,
    target: Target = None,
    *,
    samples: int = 1,
    normalise: bool = True,
    layer: str | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> MetricResult:
    """Soft (normalised) comprehensiveness (Zhao & Aletras, ACL 2023).

    With ``x'`` the input whose token embeddings are kept element-wise with probability
    ``1 - s_i`` (module docstring; ``s`` the normalised scores), ``p`` the target's softmax
    probability averaged over ``samples`` draws, and ``x0`` the input with every real
    token's embedding zeroed::

        Soft-C      = max(0, p(y | x) - p(y | x'))
        Soft-NC     = Soft-C / max(0, p(y | x) - p(y | x0))      (normalise=True)

    Higher is better: dropping the important tokens' information should lower the
    prediction. NaN where ``p(y | x0) >= p(y | x)`` (nothing to normalise by).

    Args:
        model: the text classifier; not changed.
        inputs: token ids ``(B, T)`` or a mapping with ``"input_ids"`` (and
            ``"attention_mask"``), as :func:`gradlens.token_attributions` takes them.
        attributions: ``(B, T)`` token scores, larger more important.
        target: the class explained; ``None`` is the top class.
        samples: Bernoulli draws averaged per sample.
        normalise: divide by the null input's comprehensiveness (Soft-NC).
        layer: the embedding layer (default: found as by :func:`gradlens.token_attributions`).
        batch_size: sequences per forward; ``B * (samples + 2)`` are evaluated.
        generator: draws the Bernoulli masks.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)``.

    Raises:
        ValueError: scores not shaped like the ids, ``samples`` or ``batch_size`` < 1.
        TokenInputError: inputs that are not token ids.
        TargetError: a target that is not one class per sample.
        LayerNotFoundError: no embedding layer found.
    """
    return _soft(
        model, inputs, attributions, target, sufficiency=False, samples=samples,
        normalise=normalise, layer=layer, batch_size=batch_size, generator=generator,
        output=output,
    )  # fmt: skip


@entry_point
def soft_sufficiency(
    model: nn.Module,
    inputs: TokenInputs,
    attributions: Tensor,
    target: Target = None,
    *,
    samples: int = 1,
    normalise: bool = True,
    layer: str | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> MetricResult:
    """Soft (normalised) sufficiency (Zhao & Aletras, ACL 2023).

    With ``x'`` the input whose token embeddings are kept element-wise with probability
    ``s_i`` (module docstring) and ``x0`` as in :func:`soft_comprehensiveness`::

        Soft-S      = 1 - max(0, p(y | x) - p(y | x'))
        Soft-NS     = (Soft-S(x') - Soft-S(x0)) / (1 - Soft-S(x0))      (normalise=True)

    Higher is better: the important tokens' information alone should keep the prediction.
    NaN where ``p(y | x0) >= p(y | x)``.

    Args:
        model, inputs, attributions, target: as for :func:`soft_comprehensiveness`.
        samples: Bernoulli draws averaged per sample.
        normalise: normalise by the null input (Soft-NS).
        layer: the embedding layer (default: found automatically).
        batch_size: sequences per forward; ``B * (samples + 2)`` are evaluated.
        generator: draws the Bernoulli masks.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)``.

    Raises:
        ValueError, TokenInputError, TargetError, LayerNotFoundError: as for
            :func:`soft_comprehensiveness`.
    """
    return _soft(
        model, inputs, attributions, target, sufficiency=True, samples=samples,
        normalise=normalise, layer=layer, batch_size=batch_size, generator=generator,
        output=output,
    )  # fmt: skip
