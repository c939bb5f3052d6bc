"""Faithfulness metrics: does the model's output change where the attributions say it should?

Every metric takes ``(model, inputs, attributions, target=None, *, ...)``:

* ``inputs``: images ``(B, C, H, W)``, or token ids ``(B, T)`` (an integer tensor, called as
  ``model(ids)``) or a mapping with ``"input_ids"`` and ``"attention_mask"`` (called as
  ``model(**inputs)``), as :func:`gradlens.token_attributions` takes them.
* ``attributions``: for images ``(B, H, W)`` maps or input-shaped ``(B, C, H, W)``
  attributions, reduced to one value per pixel by :func:`gradlens.maps.to_2d` (the sum of
  ``|.|`` over channels; pass ``attr.sum(1)`` to keep signs) and resized to the images
  (:func:`gradlens.maps.resize`); for tokens ``(B, T)``.
* Features are pixels (all channels of a pixel are perturbed together) or real tokens
  (padding is never perturbed, ranked or counted).
* ``fill``: what a removed feature becomes. Images: ``"zero"``, ``"min"`` (the sample's
  smallest value, Quantus' ``"black"``), ``"mean"`` (per-channel mean), ``"blur"``,
  ``"uniform"`` (random, from ``generator``) or a tensor; ``None`` is ``"min"``. Tokens:
  ``"pad"``, ``"mask"``, ``"unk"`` (from ``model.config``) or a token id; ``None`` is
  ``"mask"``.
* ``score``: ``"probability"`` (softmax of the logits) or ``"logit"``, the target class's.
* ``target``: as for every metric (:func:`gradlens.targets.scores`): ``None`` the top class
  on the clean input, an int, or one class per sample.
* Randomness only from ``generator`` (a CPU :class:`torch.Generator`), or explicit
  ``subsets``/``perturbations``: the same generator state gives the same result, whatever
  ``batch_size``.
* Everything is normalised per sample, never per batch.
* Perturbed copies go through the model in chunks of ``batch_size`` under
  ``torch.inference_mode()``; the model is not changed (buffers of a model left in training
  mode are restored).

Curves (:class:`~gradlens.metrics.CurveResult`) have ``curve (B, S + 1)`` starting at the
unperturbed input and ``scores`` their trapezoid area over ``fractions``; the other metrics
return a :class:`~gradlens.metrics.MetricResult` with ``scores (B,)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.chunks import chunks
from ..core.output_selection import OutputSpec
from ..targets.scoring import Target
from ..text.inputs import TokenInputs
from ._common import MetricResult, _untouched
from ._explain import private_generator
from .curves import CurveResult
from .imputation import noisy_linear_imputation
from .perturbation import (
    Features,
    ImageFill,
    Score,
    TokenFill,
    _check_score,
    check_count,
    check_subsets,
    features,
    is_tokens,
    not_for_tokens,
    ordered_curve,
    pearson,
    per_job_draws,
    random_subsets,
    region_grid,
    seed_from,
)
from .sanity import spearman

__all__ = [
    "pixel_flipping",
    "region_perturbation",
    "selectivity",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "monotonicity",
    "monotonicity_correlation",
    "irof",
    "road",
    "infidelity",
    "sensitivity_n",
]

Inputs = Tensor | TokenInputs
AnyFill = ImageFill | TokenFill | None


def _curve_result(feats: Features, curve: Tensor, fractions: Tensor) -> CurveResult:
    curve = curve.cpu().clone()
    fractions = fractions.double().cpu().clone()
    return CurveResult(
        fractions=fractions,
        curve=curve,
        auc=torch.trapezoid(curve, fractions, dim=1),
        classes=feats.classes.cpu().clone(),
    )


def _result(feats: Features, scores: Tensor) -> MetricResult:
    return MetricResult(scores=scores.double().cpu().clone(), classes=feats.classes.cpu().clone())


@entry_point
def pixel_flipping(
    model: nn.Module,
    inputs: Inputs,
    attributions: Tensor,
    target: Target = None,
    *,
    steps: int = 32,
    fill: AnyFill = None,
    score: Score = "probability",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> CurveResult:
    """Pixel flipping (Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier
    Decisions by Layer-Wise Relevance Propagation", PLOS ONE 2015).

    Features are removed cumulatively, most relevant first (ties in feature order); after
    step ``k = 0..S`` the ``round(k n / S)`` top features of a sample with ``n`` features
    are replaced by ``fill`` and the target's score ``f(x^(k))`` is the curve's point ``k``.
    ``scores`` is the trapezoid area under the curve over ``fractions = k / S``: *lower* is
    better (the score falls fast when the relevant features go first). With ``S = n /
    features_in_step`` this is Quantus' ``PixelFlipping`` curve (which leaves out ``k = 0``).

    Args:
        model: the classifier; not changed (module docstring).
        inputs: images ``(B, C, H, W)``, or token ids ``(B, T)`` / a mapping (module
            docstring).
        attributions: ``(B, H, W)`` or ``(B, C, H, W)`` for images, ``(B, T)`` for tokens.
        target: the class explained; ``None`` is the top class.
        steps: ``S``, the curve has ``S + 1`` points.
        fill: what a removed feature becomes (module docstring); ``None``: ``"min"`` for
            images, ``"mask"`` for tokens.
        score: ``"probability"`` or ``"logit"``.
        batch_size: perturbed inputs per forward; ``B * (S + 1)`` are evaluated.
        generator: draws a ``"uniform"`` fill.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`CurveResult`: ``fractions (S + 1,)``, ``curve (B, S + 1)``, ``auc`` and
        ``scores (B,)``, ``classes (B,)``; float64 on the CPU.

    Raises:
        ValueError: bad shapes, ``steps`` or ``batch_size`` < 1, an unknown ``fill`` or
            ``score``.
        TargetError: a target that is not one class per sample.
        TokenInputError: a token ``fill`` the model's config does not define.
    """
    check_count(steps, "steps")
    _check_score(score)
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill=fill,
                         batch_size=batch_size, output=output, generator=generator)  # fmt: skip
        curve = ordered_curve(feats, steps, score, descending=True, insert=False)
    fractions = torch.arange(steps + 1, dtype=torch.float64) / steps
    return _curve_result(feats, curve, fractions)


def _regions(feats: Features, patch_size: int, segments: Tensor | None = None) -> Tensor:
    """``(B, F)`` int64: each pixel's region, numbered ``0..R_b - 1`` per sample."""
    if segments is None:
        grid = region_grid(feats.height, feats.width, patch_size, feats.device)
        return grid.expand(feats.batch, -1)
    segments = torch.as_tensor(segments).to(feats.device)
    if tuple(segments.shape) != (feats.batch, feats.height, feats.width):
        raise ValueError(
            f"segments must have shape (B, H, W) = {(feats.batch, feats.height, feats.width)}, "
            f"got {tuple(segments.shape)}"
        )
    if segments.is_floating_point():
        raise ValueError("segments must hold integer labels")
    flat = segments.reshape(feats.batch, -1)
    return torch.stack([torch.unique(row, return_inverse=True)[1] for row in flat])


def _region_order(
    feats: Features, regions: Tensor, order: str, generator: torch.Generator | None, mean: bool
) -> tuple[Tensor, Tensor]:
    """``(region_rank (B, R), region_counts (B,))``: each region's position in the order
    (padding regions, for samples with fewer, last)."""
    count = int(regions.max()) + 1
    sums = torch.zeros(feats.batch, count, dtype=torch.float64, device=feats.device)
    sums.scatter_add_(1, regions, feats.values)
    sizes = torch.zeros_like(sums).scatter_add_(1, regions, torch.ones_like(feats.values))
    present = sizes > 0
    value = sums / sizes.clamp(min=1) if mean else sums
    if order == "random":
        value = torch.rand(
            value.shape, generator=private_generator(generator), dtype=torch.float64
        ).to(value.device)
    elif order == "lerf":
        value = -value
    elif order != "morf":
        raise ValueError(f'order must be "morf", "lerf" or "random", got {order!r}')
    value = value.masked_fill(~present, -torch.inf)
    sort = torch.argsort(value, dim=1, descending=True, stable=True)
    positions = torch.arange(count, device=feats.device).expand_as(sort)
    rank = torch.empty_like(sort).scatter_(1, sort, positions)
    return rank, present.sum(dim=1)


def _region_curve(
    feats: Features, regions: Tensor, region_rank: Tensor, removed_counts: Tensor, score: str
) -> Tensor:
    """``(B, K)``: scores with the first ``removed_counts[b, k]`` regions removed."""
    pixel_rank = region_rank.gather(1, regions)  # (B, F)
    per = removed_counts.shape[1]

    def jobs(part: Tensor) -> tuple[Tensor, Tensor]:
        sample, step = part // per, part % per
        return sample, pixel_rank[sample] < removed_counts[sample, step][:, None]

    return feats.scores(feats.batch * per, jobs, score).view(feats.batch, per)


@entry_point
def region_perturbation(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    patch_size: int = 8,
    regions: int | None = None,
    order: Literal["morf", "lerf", "random"] = "morf",
    fill: ImageFill | None = None,
    score: Score = "probability",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> CurveResult:
    """Region perturbation (Samek et al., "Evaluating the Visualization of What a Deep
    Neural Network Has Learned", IEEE TNNLS 2017).

    The image is cut into ``patch_size x patch_size`` squares (a grid from the top-left
    corner; the last row and column may be narrower), ranked by the sum of their
    attributions: most relevant first (``"morf"``), least relevant first (``"lerf"``) or
    at random (``"random"``, from ``generator``). Regions are removed cumulatively; point
    ``k = 0..K`` of the curve is the score ``f(x^(k))`` with ``k`` regions removed.
    Samek's area over the perturbation curve is
    ``AOPC = mean_k (f(x^(0)) - f(x^(k)))`` = ``(curve[:, :1] - curve).mean(1)`` (higher is
    better for MoRF); ``scores`` is the trapezoid area under the curve over ``fractions =
    k / R``. Quantus' ``RegionPerturbation`` returns ``f(x^(0)) - f(x^(k))`` for ``k >= 1``.

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping` (images only).
        patch_size: the side of a region in pixels.
        regions: ``K``, how many regions to remove (default all, ``R``).
        order: ``"morf"``, ``"lerf"`` or ``"random"``.
        fill: an image fill (module docstring); ``None`` is ``"min"``.
        score: ``"probability"`` or ``"logit"``.
        batch_size: perturbed images per forward; ``B * (K + 1)`` are evaluated.
        generator: draws the random order and a ``"uniform"`` fill.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`CurveResult` with ``fractions (K + 1,)`` (the fraction of regions
        removed), ``curve (B, K + 1)`` and ``scores (B,)``.

    Raises:
        ValueError: bad shapes, ``patch_size``, ``regions`` or ``batch_size`` < 1, an
            unknown ``order``, ``fill`` or ``score``.
        TargetError: a target that is not one class per sample.
        TokenInputError: token inputs (regions are image squares).
    """
    not_for_tokens(inputs, "region_perturbation", "its regions are squares of pixels")
    check_count(patch_size, "patch_size")
    _check_score(score)
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill=fill,
                         batch_size=batch_size, output=output, generator=generator)  # fmt: skip
        grid = _regions(feats, patch_size)
        rank, present = _region_order(feats, grid, order, generator, mean=False)
        total = int(present[0])
        k = total if regions is None else min(check_count(regions, "regions"), total)
        counts = torch.arange(k + 1, device=feats.device).expand(feats.batch, -1)
        curve = _region_curve(feats, grid, rank, counts, score)
    return _curve_result(feats, curve, torch.arange(k + 1, dtype=torch.float64) / total)


@entry_point
def selectivity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    patch_size: int = 8,
    fill: ImageFill | None = None,
    score: Score = "probability",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> CurveResult:
    """Selectivity (Montavon et al., "Methods for Interpreting and Understanding Deep Neural
    Networks", Digital Signal Processing 2018).

    The ``patch_size`` squares of :func:`region_perturbation` are removed one after the
    other, most relevant first, until none is left; the curve is the score ``f(x^(k))``
    for ``k = 0..R`` and ``scores`` its trapezoid area over ``k / R``. *Lower* is better: a
    selective explanation makes the score fall fast. Quantus' ``Selectivity`` curve is
    ``curve[:, 1:]``.

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping` (images only).
        patch_size: the side of a region in pixels.
        fill: an image fill (module docstring); ``None`` is ``"min"``.
        score: ``"probability"`` or ``"logit"``.
        batch_size: perturbed images per forward; ``B * (R + 1)`` are evaluated.
        generator: draws a ``"uniform"`` fill.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`CurveResult` with ``fractions (R + 1,)``, ``curve (B, R + 1)`` and
        ``scores (B,)``.

    Raises:
        ValueError, TargetError, TokenInputError: as for :func:`region_perturbation`.
    """
    not_for_tokens(inputs, "selectivity", "its regions are squares of pixels")
    check_count(patch_size, "patch_size")
    _check_score(score)
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill=fill,
                         batch_size=batch_size, output=output, generator=generator)  # fmt: skip
        grid = _regions(feats, patch_size)
        rank, present = _region_order(feats, grid, "morf", None, mean=False)
        total = int(present[0])
        counts = torch.arange(total + 1, device=feats.device).expand(feats.batch, -1)
        curve = _region_curve(feats, grid, rank, counts, score)
    return _curve_result(feats, curve, torch.arange(total + 1, dtype=torch.float64) / total)


def _subset_correlation(
    feats: Features,
    subsets: Tensor,
    score: str,
) -> Tensor:
    """``(B,)``: per-sample Pearson correlation, over the subsets ``S``, between the
    attribution of ``S`` and the score's drop when ``S`` is removed."""
    runs = subsets.shape[1]
    clean = feats.clean_scores(score)

    def jobs(part: Tensor) -> tuple[Tensor, Tensor]:
        sample, run = part // runs, part % runs
        member = torch.zeros(len(part), feats.size, dtype=torch.bool, device=feats.device)
        return sample, member.scatter_(1, subsets[sample, run], True)

    perturbed = feats.scores(feats.batch * runs, jobs, score).view(feats.batch, runs)
    # a subset's attribution: each distinct real feature once (given subsets may repeat)
    sums = torch.empty(feats.batch, runs, dtype=torch.float64, device=feats.device)
    for b in range(feats.batch):  # one (runs, F) membership mask at a time
        member = torch.zeros(runs, feats.size, dtype=torch.bool, device=feats.device)
        member.scatter_(1, subsets[b], True)
        sums[b] = (feats.values[b] * (member & feats.real[b])).sum(dim=1)
    return pearson(sums, clean[:, None] - perturbed)


@entry_point
def faithfulness_correlation(
    model: nn.Module,
    inputs: Inputs,
    attributions: Tensor,
    target: Target = None,
    *,
    subset_size: int = 224,
    runs: int = 100,
    subsets: Tensor | None = None,
    fill: AnyFill = None,
    score: Score = "probability",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> MetricResult:
    """Faithfulness correlation (Bhatt et al., "Evaluating and Aggregating Feature-based
    Model Explanations", IJCAI 2020).

    For ``runs`` random subsets ``S`` of ``subset_size`` features (drawn per sample from
    ``generator``, or given as ``subsets``), with ``x_S`` the input with ``S`` replaced by
    ``fill`` and ``a`` the attributions::

        score_b = pearson_S( sum_{i in S} a_i ,  f(x) - f(x_S) )

    Higher is better (in [-1, 1]); NaN where either side is constant.

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping`.
        subset_size: ``|S|``, in features (pixels or tokens); at most the fewest features
            of a sample.
        runs: the number of subsets per sample.
        subsets: explicit subsets ``(B, runs, |S|)`` of feature indices (row-major pixel
            ``h * W + w``, or token positions); then ``subset_size``, ``runs`` and
            ``generator`` are not used.
        fill: what a removed feature becomes (module docstring).
        score: ``"probability"`` or ``"logit"``.
        batch_size: perturbed inputs per forward; ``B * (runs + 1)`` are evaluated.
        generator: draws the subsets and a ``"uniform"`` fill.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)``.

    Raises:
        ValueError: bad shapes, a ``subset_size`` larger than a sample's features, ``runs``
            or ``batch_size`` < 1, an unknown ``fill`` or ``score``.
        TargetError: a target that is not one class per sample.
    """
    _check_score(score)
    if subsets is None:
        check_count(subset_size, "subset_size")
        check_count(runs, "runs", 2)
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill=fill,
                         batch_size=batch_size, output=output, generator=generator)  # fmt: skip
        if subsets is None:
            chosen = random_subsets(feats, subset_size, runs, generator)
        else:
            chosen = check_subsets(feats, subsets)
        scores = _subset_correlation(feats, chosen, score)
    return _result(feats, scores)


@entry_point
def sensitivity_n(
    model: nn.Module,
    inputs: Inputs,
    attributions: Tensor,
    target: Target = None,
    *,
    n: int,
    runs: int = 100,
    subsets: Tensor | None = None,
    fill: AnyFill = None,
    score: Score = "logit",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> MetricResult:
    """Sensitivity-n (Ancona et al., "Towards Better Understanding of Gradient-based
    Attribution Methods for Deep Neural Networks", ICLR 2018).

    For ``runs`` random subsets ``S`` of exactly ``n`` features, the per-sample Pearson
    correlation between ``sum_{i in S} a_i`` and ``f(x) - f(x_S)`` (``x_S``: ``S``
    replaced by ``fill``). An attribution method satisfies sensitivity-n when it is 1 (e.g.
    gradient x input for a linear model with a zero fill). Ancona et al. plot it against
    ``n``: call it once per ``n``. It is :func:`faithfulness_correlation` with
    ``subset_size=n`` (Ancona's default score is the logit). Quantus' ``SensitivityN``
    instead correlates over the batch, one value per ``n`` (see the evaluation docs).

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping`.
        n: the subset size in features.
        runs: the number of subsets per sample.
        subsets: explicit subsets ``(B, runs, n)`` of feature indices (as for
            :func:`faithfulness_correlation`).
        fill: what a removed feature becomes (module docstring).
        score: ``"logit"`` (default) or ``"probability"``.
        batch_size: perturbed inputs per forward; ``B * (runs + 1)`` are evaluated.
        generator: draws the subsets and a ``"uniform"`` fill.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)``.

    Raises:
        ValueError, TargetError: as for :func:`faithfulness_correlation`.
    """
    if subsets is None:
        check_count(n, "n")
    return faithfulness_correlation(
        model, inputs, attributions, target, subset_size=n, runs=runs, subsets=subsets,
        fill=fill, score=score, batch_size=batch_size, generator=generator, output=output,
    )  # fmt: skip


@entry_point
def faithfulness_estimate(
    model: nn.Module,
    inputs: Inputs,
    attributions: Tensor,
    target: Target = None,
    *,
    steps: int = 32,
    fill: AnyFill = None,
    score: Score = "probability",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> MetricResult:
    """Faithfulness estimate (Alvarez-Melis & Jaakkola, "Towards Robust Interpretability
    with Self-Explaining Neural Networks", NeurIPS 2018).

    The features, ranked most relevant first, are cut into ``S`` consecutive groups ``G_k``
    (group ``k`` holds ranks ``round((k-1) n / S) .. round(k n / S) - 1``). Each group alone
    is replaced by ``fill``::

        score_b = pearson_k( sum_{i in G_k} a_i ,  f(x) - f(x_{G_k}) )

    Higher is better; NaN where a side is constant. With ``S = n / features_in_step`` this
    is Quantus' ``FaithfulnessEstimate``.

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping`.
        steps: ``S``, the number of groups (at most the features of a sample).
        fill: what a removed feature becomes (module docstring).
        score: ``"probability"`` or ``"logit"``.
        batch_size: perturbed inputs per forward; ``B * (S + 1)`` are evaluated.
        generator: draws a ``"uniform"`` fill.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)``.

    Raises:
        ValueError, TargetError: as for :func:`pixel_flipping`.
    """
    check_count(steps, "steps", 2)
    _check_score(score)
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill=fill,
                         batch_size=batch_size, output=output, generator=generator)  # fmt: skip
        group, sums = feats.groups(steps, descending=True)
        clean = feats.clean_scores(score)

        def jobs(part: Tensor) -> tuple[Tensor, Tensor]:
            sample, k = part // steps, part % steps
            return sample, group[sample] == k[:, None]

        perturbed = feats.scores(feats.batch * steps, jobs, score).view(feats.batch, steps)
        scores = pearson(sums, clean[:, None] - perturbed)
    return _result(feats, scores)


@entry_point
def monotonicity(
    model: nn.Module,
    inputs: Inputs,
    attributions: Tensor,
    target: Target = None,
    *,
    steps: int = 32,
    fill: AnyFill = None,
    score: Score = "probability",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> MetricResult:
    """Monotonicity (Arya et al., "One Explanation Does Not Fit All: A Toolkit and Taxonomy
    of AI Explainability Techniques", 2019).

    Starting from the input with every feature replaced by ``fill``, the features are put
    back cumulatively, least relevant first, in ``S`` steps (step ``k`` restores
    ``round(k n / S)`` features); with ``f_k`` the score after step ``k``::

        score_b = 1  if  f_0 <= f_1 <= ... <= f_S  else 0

    Higher is better (the mean over a data set is the fraction of monotonic samples).
    Quantus 0.6's ``Monotonicity`` never puts a feature back (it replaces the baseline by
    the baseline), so it returns True for every input; this follows the paper.

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping`.
        steps: ``S``, the number of insertion steps.
        fill: the starting input's features (module docstring).
        score: ``"probability"`` or ``"logit"``.
        batch_size: perturbed inputs per forward; ``B * (S + 1)`` are evaluated.
        generator: draws a ``"uniform"`` fill.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` of 0.0 and 1.0.

    Raises:
        ValueError, TargetError: as for :func:`pixel_flipping`.
    """
    check_count(steps, "steps")
    _check_score(score)
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill=fill,
                         batch_size=batch_size, output=output, generator=generator)  # fmt: skip
        curve = ordered_curve(feats, steps, score, descending=False, insert=True)
    return _result(feats, (curve.diff(dim=1) >= 0).all(dim=1).double())


@entry_point
def monotonicity_correlation(
    model: nn.Module,
    inputs: Inputs,
    attributions: Tensor,
    target: Target = None,
    *,
    steps: int = 32,
    samples: int = 10,
    fill: AnyFill = "uniform",
    eps: float = 1e-5,
    score: Score = "probability",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> MetricResult:
    """Monotonicity correlation (Nguyen & Martínez, "On Quantitative Aspects of Model
    Interpretability", 2020).

    The features, ranked least relevant first, are cut into ``S`` groups ``G_k`` as in
    :func:`faithfulness_estimate`. Each group alone is replaced by ``fill`` ``samples``
    times (a random fill such as ``"uniform"`` is drawn anew each time), and::

        v_k = mean_s (f(x_{G_k, s}) - f(x))^2 / f(x)^2       (no division when |f(x)| < eps)
        score_b = spearman_k( sum_{i in G_k} a_i ,  v_k )

    Higher is better: the more relevant a group, the more the output varies without it.
    Spearman's correlation gives ties their average rank. With ``S = n /
    features_in_step`` this is Quantus' ``MonotonicityCorrelation``.

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping`.
        steps: ``S``, the number of groups.
        samples: perturbations per group.
        fill: what a removed feature becomes (module docstring); ``"uniform"`` (default)
            draws each sample's values; token inputs take a token (``None``: ``"mask"``).
        eps: the smallest ``|f(x)|`` divided by.
        score: ``"probability"`` or ``"logit"``.
        batch_size: perturbed inputs per forward; ``B * (S * samples + 1)`` are evaluated.
        generator: draws a random fill.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)``.

    Raises:
        ValueError, TargetError: as for :func:`pixel_flipping`.
    """
    check_count(steps, "steps", 2)
    check_count(samples, "samples")
    _check_score(score)
    if fill == "uniform" and not isinstance(fill, Tensor) and is_tokens(inputs):
        fill = None
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill=fill,
                         batch_size=batch_size, output=output, generator=generator)  # fmt: skip
        group, sums = feats.groups(steps, descending=False)
        clean = feats.clean_scores(score)
        per = steps * samples

        def jobs(part: Tensor) -> tuple[Tensor, Tensor]:
            sample, k = part // per, (part % per) // samples
            return sample, group[sample] == k[:, None]

        perturbed = feats.scores(feats.batch * per, jobs, score).view(feats.batch, steps, samples)
        weight = torch.where(clean.abs() >= eps, 1 / clean.abs().clamp(min=eps), 1.0) ** 2
        variation = (perturbed - clean[:, None, None]).square().mean(dim=2) * weight[:, None]
        scores = spearman(sums, variation)
    return _result(feats, scores)


@entry_point
def irof(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    segments: Tensor | None = None,
    patch_size: int = 8,
    steps: int | None = None,
    fill: ImageFill | None = "mean",
    score: Score = "probability",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> CurveResult:
    """Iterative removal of features, IROF (Rieger & Hansen, "IROF: a low resource
    evaluation metric for explanation methods", ICLR 2020 workshop).

    The image is split into segments (``segments``, e.g. SLIC superpixels from
    ``skimage.segmentation.slic``; by default the ``patch_size`` squares of
    :func:`region_perturbation`), ranked by their *mean* attribution, most relevant first,
    and removed cumulatively. Point ``k = 0..S`` of the curve is the score with the first
    ``round(k n_b / S)`` of the sample's ``n_b`` segments removed, divided by the clean
    score (so it starts at 1)::

        IROF_b = 1 - trapezoid(curve_b, k / S)           (the area over the curve)

    ``scores`` (and ``auc``) hold this area over the curve: *higher* is better. Quantus
    0.6's ``IROF`` fails under NumPy 2 (``np.trapz``) and leaves out the point ``k = 0``.

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping` (images only).
        segments: ``(B, H, W)`` integer segment labels (any values), or ``None`` for the
            grid of ``patch_size`` squares.
        patch_size: the side of a grid square (without ``segments``).
        steps: ``S`` (default: the largest number of segments of a sample, one segment
            per step).
        fill: an image fill (module docstring), by default each image's per-channel mean.
        score: ``"probability"`` or ``"logit"``.
        batch_size: perturbed images per forward; ``B * (S + 1)`` are evaluated.
        generator: draws a ``"uniform"`` fill.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`CurveResult` with ``fractions (S + 1,)``, the normalised ``curve (B, S +
        1)`` and ``scores`` = ``auc`` ``(B,)``, the area over it.

    Raises:
        ValueError: bad shapes (also of ``segments``), ``patch_size``, ``steps`` or
            ``batch_size`` < 1, an unknown ``fill`` or ``score``.
        TargetError: a target that is not one class per sample.
        TokenInputError: token inputs (segments are image regions).
    """
    not_for_tokens(inputs, "irof", "its segments are regions of the image")
    check_count(patch_size, "patch_size")
    _check_score(score)
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill=fill,
                         batch_size=batch_size, output=output, generator=generator)  # fmt: skip
        labels = _regions(feats, patch_size, segments)
        rank, present = _region_order(feats, labels, "morf", None, mean=True)
        s = int(present.max()) if steps is None else check_count(steps, "steps")
        k = torch.arange(s + 1, device=feats.device, dtype=torch.float64)
        counts = torch.round(k[None] * present[:, None].double() / s).long()
        clean = feats.clean_scores(score)
        curve = _region_curve(feats, labels, rank, counts, score) / clean[:, None]
    fractions = torch.arange(s + 1, dtype=torch.float64) / s
    result = _curve_result(feats, curve, fractions)
    result.auc = 1 - result.auc
    return result


@entry_point
def road(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    steps: int = 10,
    order: Literal["morf", "lerf"] = "morf",
    noise: float = 0.01,
    score: Literal["probability", "logit", "accuracy"] = "probability",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> CurveResult:
    """ROAD, RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy
    for Attribution Methods", ICML 2022).

    The ``round(k n / S)`` most relevant pixels (``"morf"``) or least relevant ones
    (``"lerf"``), ``k = 0..S``, are removed and filled by noisy linear imputation
    (:func:`gradlens.metrics.noisy_linear_imputation`: each removed pixel the weighted
    mean of its 8 neighbours, 1/6 direct and 1/12 diagonal, solved as one linear system,
    plus ``noise * N(0, 1)`` from ``generator``), which leaks no information about the
    removed pixels' positions. Point ``k`` of the curve is the target's score (or, with
    ``score="accuracy"``, 1.0 where the model's top class is still the target, Rong's and
    Quantus' measure); ``scores`` is the trapezoid area over ``k / S``. MoRF: *lower* is
    better; LeRF: *higher* is better. Quantus 0.6's ``ROAD`` raises on multi-channel
    images with one attribution per pixel; on one channel, with ``percentages`` ``100 k /
    S``, it gives the accuracy curve ``curve[:, 1:]``.

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping` (images only).
        steps: ``S``, the curve has ``S + 1`` points.
        order: ``"morf"`` or ``"lerf"``.
        noise: the imputation noise's standard deviation.
        score: ``"probability"``, ``"logit"`` or ``"accuracy"``.
        batch_size: images imputed and evaluated at once; ``B * (S + 1)`` are evaluated.
        generator: draws the noise.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`CurveResult` with ``fractions (S + 1,)``, ``curve (B, S + 1)`` and
        ``scores (B,)``.

    Raises:
        ValueError: bad shapes, ``steps`` or ``batch_size`` < 1, an unknown ``order`` or
            ``score``.
        TargetError: a target that is not one class per sample.
        TokenInputError: token inputs (the imputation interpolates neighbouring pixels).
    """
    not_for_tokens(inputs, "road", "its imputation interpolates neighbouring pixels")
    check_count(steps, "steps")
    _check_score(score, ("probability", "logit", "accuracy"))
    if order not in ("morf", "lerf"):
        raise ValueError(f'order must be "morf" or "lerf", got {order!r}')
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill="zero",
                         batch_size=batch_size, output=output)  # fmt: skip
        rank = feats.rank(descending=order == "morf")
        counts = feats.step_counts(steps)
        per = steps + 1
        images = feats.images
        assert images is not None
        seed = seed_from(generator)

        def impute(sample: Tensor, removed: Tensor, index: Tensor) -> Tensor:
            filled = noisy_linear_imputation(images[sample], removed, noise=0.0).double()
            draws = per_job_draws(seed, index, images.shape[1:], torch.randn).to(images.device)
            return (filled + noise * draws * removed[:, None]).to(images.dtype)

        feats.perturb = impute

        def jobs(part: Tensor) -> tuple[Tensor, Tensor]:
            sample, step = part // per, part % per
            return sample, rank[sample] < counts[sample, step][:, None]

        curve = feats.scores(feats.batch * per, jobs, score).view(feats.batch, per)
    return _curve_result(feats, curve, torch.arange(per, dtype=torch.float64) / steps)


@entry_point
def infidelity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    perturbation: Literal["square", "noise"] = "square",
    samples: int = 32,
    patch_size: int = 4,
    noise: float = 0.1,
    fill: ImageFill | None = None,
    perturbations: Tensor | None = None,
    scale: bool = False,
    score: Score = "logit",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    output: OutputSpec = None,
) -> MetricResult:
    """Infidelity (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations",
    NeurIPS 2019).

    For perturbations ``I`` (``(C, H, W)``, the input becomes ``x - I``) and the attribution
    map ``a`` (one value per pixel, shared by its channels)::

        INFD_b = mean_I ( sum_{c,h,w} I_chw a_hw  -  (f(x) - f(x - I)) )^2

    Lower is better. ``I`` is drawn from ``generator``: ``"square"``, a ``patch_size``
    square at a uniformly random position replaced by ``fill`` (``I = x - fill`` there, 0
    elsewhere); ``"noise"``, ``I ~ N(0, noise^2)`` on every value; or given as
    ``perturbations``. With ``scale=True`` the attributions are first multiplied by Yeh et
    al.'s optimal per-sample factor ``beta = sum_I (I.a) d_I / sum_I (I.a)^2`` (``d_I`` the
    output change), which makes the score independent of the attributions' scale.
    Quantus' ``Infidelity`` removes the squares of a grid cumulatively, in raster order,
    always the same; pass those ``perturbations`` to reproduce it.

    Args:
        model, inputs, attributions, target: as for :func:`pixel_flipping` (images only).
        perturbation: ``"square"`` or ``"noise"`` (without ``perturbations``).
        samples: the number of perturbations per sample.
        patch_size: the side of a ``"square"``.
        noise: the standard deviation of ``"noise"``.
        fill: the square's fill (module docstring); ``None`` is ``"min"``.
        perturbations: explicit ``I``, ``(B, N, C, H, W)``; then ``perturbation``,
            ``samples`` and ``generator`` are not used.
        scale: rescale the attributions by the optimal ``beta`` of each sample.
        score: ``"logit"`` (default) or ``"probability"``.
        batch_size: perturbed images per forward; ``B * (N + 1)`` are evaluated.
        generator: draws the perturbations (and a ``"uniform"`` fill).
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)``.

    Raises:
        ValueError: bad shapes (also of ``perturbations``), ``samples``, ``patch_size`` or
            ``batch_size`` < 1, an unknown ``perturbation``, ``fill`` or ``score``.
        TargetError: a target that is not one class per sample.
        TokenInputError: token inputs (the perturbations are continuous).
    """
    not_for_tokens(inputs, "infidelity", "its perturbations are continuous changes of the input")
    _check_score(score)
    if perturbation not in ("square", "noise"):
        raise ValueError(f'perturbation must be "square" or "noise", got {perturbation!r}')
    if perturbations is None:
        check_count(samples, "samples")
        check_count(patch_size, "patch_size")
    with _untouched(model):
        feats = features(model, inputs, attributions, target, fill=fill,
                         batch_size=batch_size, output=output, generator=generator)  # fmt: skip
        images = feats.images
        assert images is not None
        shape = tuple(images.shape[1:])
        if perturbations is not None:
            given = torch.as_tensor(perturbations).to(images.device)
            if given.ndim != 5 or given.shape[0] != feats.batch or tuple(given.shape[2:]) != shape:
                raise ValueError(
                    f"perturbations must have shape (B, N, C, H, W) with B = {feats.batch} and "
                    f"(C, H, W) = {shape}, got {tuple(given.shape)}"
                )
            samples = int(given.shape[1])
        seed = seed_from(generator)
        height, width = feats.height, feats.width
        side = min(patch_size, height, width)

        def perturbation_of(index: Tensor) -> Tensor:
            sample, n = index // samples, index % samples
            if perturbations is not None:
                return given[sample, n].double()
            if perturbation == "noise":
                return noise * per_job_draws(seed, index, shape, torch.randn).to(images.device)
            corner = per_job_draws(seed, index, (2,), torch.rand).to(images.device)
            top = (corner[:, 0] * (height - side + 1)).long().clamp(max=height - side)
            left = (corner[:, 1] * (width - side + 1)).long().clamp(max=width - side)
            rows = torch.arange(height, device=images.device)
            cols = torch.arange(width, device=images.device)
            inside_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side)
            inside_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side)
            square = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]
            x = images[sample].double()
            baseline = feats._fill(sample, index).double()
            return torch.where(square, x - baseline, 0.0)

        def perturb(sample: Tensor, removed: Tensor, index: Tensor) -> Tensor:
            return (images[sample].double() - perturbation_of(index)).to(images.dtype)

        clean = feats.clean_scores(score)
        feats.perturb = perturb
        n_jobs = feats.batch * samples

        def jobs(part: Tensor) -> tuple[Tensor, Tensor]:
            none = torch.zeros(len(part), feats.size, dtype=torch.bool, device=feats.device)
            return part // samples, none

        change = clean[:, None] - feats.scores(n_jobs, jobs, score).view(feats.batch, samples)
        dots = torch.empty(n_jobs, dtype=torch.float64, device=feats.device)
        for part in chunks(n_jobs, feats.batch_size):
            index = torch.arange(part.start, part.stop, device=feats.device)
            values = perturbation_of(index).sum(dim=1).flatten(1)  # channels share a value
            dots[part] = (values * feats.values[index // samples]).sum(dim=1)
        dots = dots.view(feats.batch, samples)
        if scale:
            beta = (dots * change).sum(1) / (dots.square().sum(1))
            dots = dots * torch.nan_to_num(beta, nan=0.0, posinf=0.0, neginf=0.0)[:, None]
        scores = (dots - change).square().mean(dim=1)
    return _result(feats, scores)
