"""The metrics of each task, their settings and their directions.

Every metric of a task scores every method's attributions on the same held-out samples
(:attr:`gradlens.bench.tasks.Prepared.inputs`), explaining the model's top class; the
table holds each metric's mean over the samples (samples where it is undefined, ``NaN``
such as a correlation with a constant side, left out). All settings are in
:data:`SETTINGS` (full run and ``--quick``), all randomness comes from generators seeded
with the run's seed.

Image tasks (maps against the object masks):

=========================  ==============  ===========================================
column                     better          :mod:`gradlens.metrics` call
=========================  ==============  ===========================================
pointing_game              higher          :func:`~gradlens.metrics.pointing_game`
attribution_localisation   higher          :func:`~gradlens.metrics.attribution_localisation`
top_k_intersection         higher          :func:`~gradlens.metrics.top_k_intersection`
relevance_rank_accuracy    higher          :func:`~gradlens.metrics.relevance_rank_accuracy`
relevance_mass_accuracy    higher          :func:`~gradlens.metrics.relevance_mass_accuracy`
auc                        higher          :func:`~gradlens.metrics.auc`
pixel_flipping             lower           :func:`~gradlens.metrics.pixel_flipping` (area)
region_perturbation        lower           :func:`~gradlens.metrics.region_perturbation` (MoRF area)
faithfulness_correlation   higher          :func:`~gradlens.metrics.faithfulness_correlation`
road                       lower           :func:`~gradlens.metrics.road` (MoRF area)
mprt                       lower           :func:`~gradlens.metrics.model_parameter_randomisation`
random_logit               lower           :func:`~gradlens.metrics.random_logit` (SSIM)
max_sensitivity            lower           :func:`~gradlens.metrics.max_sensitivity`
sparseness                 higher          :func:`~gradlens.metrics.sparseness`
complexity                 lower           :func:`~gradlens.metrics.complexity`
=========================  ==============  ===========================================

The text task (token scores against the trigger positions): ``token_localization``
(higher), ``comprehensiveness`` (higher) and ``sufficiency`` (lower) of ERASER,
``soft_comprehensiveness`` (higher) and ``soft_sufficiency`` (lower), ``pixel_flipping``
(tokens, lower) and ``faithfulness_correlation`` (tokens, higher), and ``mprt`` (lower):
the Spearman correlation over each sequence's real tokens between the trained and the
fully re-initialised model's absolute scores. ROAD, region perturbation, the random-logit
SSIM, the robustness metrics (they add noise to the input, and token ids are not
continuous), sparseness and complexity read images only, so the text task has none of
them.

``mprt`` re-initialises the whole model in one step (``layers=[""]``): the state the
cascade of Adebayo et al. ends in, which is the only one the table shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import metrics
from ..maps import resize, to_2d
from .tasks import Modality, Prepared

__all__ = [
    "Settings",
    "SETTINGS",
    "Metric",
    "Context",
    "suite",
    "mean",
    "FAMILIES",
    "IMAGE_SUITE",
    "TEXT_SUITE",
]


@dataclass(frozen=True)
class Settings:
    """The metric settings of one kind of run (see :data:`SETTINGS`).

    Attributes:
        steps: pixel flipping's steps.
        patch_size: region perturbation's square side (pixels).
        regions: region perturbation's squares removed.
        road_steps: ROAD's steps (MoRF).
        subset_size: faithfulness correlation's pixels per random subset.
        token_subset_size: the same for tokens.
        runs: faithfulness correlation's random subsets.
        sensitivity_samples: max-sensitivity's perturbed inputs per sample.
        radius: max-sensitivity's noise radius (relative to each input's range).
        top_k: top-k intersection's ``k`` (pixels).
        soft_samples: the soft ERASER metrics' draws per sample.
        batch_size: the metrics' ``batch_size``.
    """

    steps: int
    patch_size: int
    regions: int
    road_steps: int
    subset_size: int
    token_subset_size: int
    runs: int
    sensitivity_samples: int
    radius: float
    top_k: int
    soft_samples: int
    batch_size: int


SETTINGS: dict[bool, Settings] = {
    False: Settings(
        steps=16,
        patch_size=8,
        regions=16,
        road_steps=8,
        subset_size=64,
        token_subset_size=3,
        runs=20,
        sensitivity_samples=8,
        radius=0.1,
        top_k=100,
        soft_samples=4,
        batch_size=64,
    ),
    True: Settings(
        steps=8,
        patch_size=8,
        regions=8,
        road_steps=4,
        subset_size=64,
        token_subset_size=3,
        runs=8,
        sensitivity_samples=2,
        radius=0.1,
        top_k=100,
        soft_samples=1,
        batch_size=64,
    ),
}
"""The metric settings: ``SETTINGS[quick]``."""

FAMILIES = ("localisation", "faithfulness", "randomisation", "robustness", "complexity")
"""The metric families, in the table's order."""


@dataclass(frozen=True)
class Context:
    """What a metric needs besides the attributions.

    Attributes:
        prepared: the task's model and samples.
        method: the method as the re-explaining metrics take it: a registered name, or a
            callable ``method(model, x, target=...)`` (text: token ids in, ``(B, T)`` out).
        options: the method's options (``method_options=`` of those metrics).
        settings: the metric settings.
        seed: seeds every generator.
    """

    prepared: Prepared
    method: str | Callable[..., Tensor]
    options: dict[str, Any]
    settings: Settings
    seed: int

    def generator(self) -> torch.Generator:
        """A new CPU generator seeded with the run's seed (each metric draws from its own)."""
        return torch.Generator().manual_seed(self.seed)

    @property
    def token_inputs(self) -> dict[str, Tensor]:
        """The text task's keyword inputs, ``input_ids`` and ``attention_mask``."""
        assert self.prepared.attention_mask is not None
        return {"input_ids": self.prepared.inputs, "attention_mask": self.prepared.attention_mask}


Compute = Callable[[Context, Tensor], Tensor]
"""``(context, attributions) -> (B,)`` per-sample scores."""


@dataclass(frozen=True)
class Metric:
    """One column of the leaderboard.

    Attributes:
        name: the column name.
        family: one of :data:`FAMILIES`.
        higher_is_better: the direction the ranking and the figure use.
        compute: ``(context, attributions) -> (B,)`` scores.
        quick: also in ``--quick`` runs (ROAD is not: its imputation solves a sparse
            linear system per image and step, seconds per method even at 64 px).
    """

    name: str
    family: str
    higher_is_better: bool
    compute: Compute
    quick: bool = True


def _maps(context: Context, attributions: Tensor) -> Tensor:
    return resize(to_2d(attributions.detach()).float(), tuple(context.prepared.inputs.shape[-2:]))


def _pointing(context: Context, attributions: Tensor) -> Tensor:
    side = context.prepared.inputs.shape[-1]
    tolerance = max(1, round(15 * side / 224))  # the paper's 15 px at 224 px
    hits = metrics.pointing_game(
        _maps(context, attributions), masks=context.prepared.truth, tolerance=tolerance
    )
    return hits.double()


def _masked(function: Callable[..., metrics.MetricResult], **options: Any) -> Compute:
    def compute(context: Context, attributions: Tensor) -> Tensor:
        p = context.prepared
        return function(p.model, p.inputs, attributions, p.classes, masks=p.truth, **options).scores

    return compute


def _top_k(context: Context, attributions: Tensor) -> Tensor:
    return _masked(metrics.top_k_intersection, k=context.settings.top_k)(context, attributions)


def _pixel_flipping(context: Context, attributions: Tensor) -> Tensor:
    p, s = context.prepared, context.settings
    text = p.attention_mask is not None
    return metrics.pixel_flipping(
        p.model,
        context.token_inputs if text else p.inputs,
        attributions,
        p.classes,
        steps=s.steps,
        fill="unk" if text else None,
        batch_size=s.batch_size,
        generator=context.generator(),
    ).scores


def _region_perturbation(context: Context, attributions: Tensor) -> Tensor:
    p, s = context.prepared, context.settings
    return metrics.region_perturbation(
        p.model,
        p.inputs,
        attributions,
        p.classes,
        patch_size=s.patch_size,
        regions=s.regions,
        batch_size=s.batch_size,
        generator=context.generator(),
    ).scores


def _faithfulness_correlation(context: Context, attributions: Tensor) -> Tensor:
    p, s = context.prepared, context.settings
    text = p.attention_mask is not None
    return metrics.faithfulness_correlation(
        p.model,
        context.token_inputs if text else p.inputs,
        attributions,
        p.classes,
        subset_size=s.token_subset_size if text else s.subset_size,
        runs=s.runs,
        fill="unk" if text else None,
        batch_size=s.batch_size,
        generator=context.generator(),
    ).scores


def _road(context: Context, attributions: Tensor) -> Tensor:
    p, s = context.prepared, context.settings
    return metrics.road(
        p.model,
        p.inputs,
        attributions,
        p.classes,
        steps=s.road_steps,
        batch_size=s.batch_size,
        generator=context.generator(),
    ).scores


def _mprt(context: Context, attributions: Tensor) -> Tensor:
    p = context.prepared
    return metrics.model_parameter_randomisation(
        p.model,
        p.inputs,
        attributions,
        p.classes,
        method=context.method,
        method_options=context.options,
        layers=[""],
        generator=context.generator(),
        batch_size=context.settings.batch_size,
    ).scores


def _random_logit(context: Context, attributions: Tensor) -> Tensor:
    p = context.prepared
    return metrics.random_logit(
        p.model,
        p.inputs,
        attributions,
        p.classes,
        method=context.method,
        method_options=context.options,
        generator=context.generator(),
        batch_size=context.settings.batch_size,
    ).scores


def _max_sensitivity(context: Context, attributions: Tensor) -> Tensor:
    p, s = context.prepared, context.settings
    return metrics.max_sensitivity(
        p.model,
        p.inputs,
        attributions,
        p.classes,
        method=context.method,
        method_options=context.options,
        nr_samples=s.sensitivity_samples,
        radius=s.radius,
        generator=context.generator(),
        batch_size=s.batch_size,
    ).scores


def _unmasked(function: Callable[..., metrics.MetricResult]) -> Compute:
    def compute(context: Context, attributions: Tensor) -> Tensor:
        p = context.prepared
        return function(p.model, p.inputs, attributions, p.classes).scores

    return compute


def _token_localization(context: Context, attributions: Tensor) -> Tensor:
    p = context.prepared
    return metrics.token_localization(attributions, p.truth, p.attention_mask).double()


def _eraser(function: Callable[..., Tensor]) -> Compute:
    def compute(context: Context, attributions: Tensor) -> Tensor:
        p = context.prepared
        return function(
            p.model,
            p.inputs,
            attributions,
            p.classes,
            attention_mask=p.attention_mask,
            batch_size=context.settings.batch_size,
        ).double()

    return compute


def _soft(function: Callable[..., metrics.MetricResult]) -> Compute:
    def compute(context: Context, attributions: Tensor) -> Tensor:
        p, s = context.prepared, context.settings
        return function(
            p.model,
            context.token_inputs,
            attributions,
            p.classes,
            samples=s.soft_samples,
            batch_size=s.batch_size,
            generator=context.generator(),
        ).scores

    return compute


def _token_mprt(context: Context, attributions: Tensor) -> Tensor:
    """The Spearman correlation over each sequence's real tokens between the absolute
    scores of the trained and of the fully re-initialised model (``layers=[""]``)."""
    p = context.prepared
    assert p.attention_mask is not None and callable(context.method)
    explain = context.method

    def rows(model: nn.Module, input_ids: Tensor, target: Any = None) -> Tensor:
        scores: Tensor = explain(model, input_ids, target=target)
        return scores[:, None, :]  # one map row per sequence

    result = metrics.randomization_test(
        p.model, p.inputs, rows, p.classes, layers=[""], seed=context.seed, keep_maps=True
    )
    assert result.maps is not None
    before, after = result.original_maps[:, 0], result.maps[-1][:, 0]
    real = p.attention_mask.bool()
    return torch.stack(
        [
            metrics.spearman(before[b, real[b]].abs()[None], after[b, real[b]].abs()[None])[0]
            for b in range(len(real))
        ]
    ).double()


IMAGE_SUITE: tuple[Metric, ...] = (
    Metric("pointing_game", "localisation", True, _pointing),
    Metric(
        "attribution_localisation", "localisation", True, _masked(metrics.attribution_localisation)
    ),
    Metric("top_k_intersection", "localisation", True, _top_k),
    Metric(
        "relevance_rank_accuracy", "localisation", True, _masked(metrics.relevance_rank_accuracy)
    ),
    Metric(
        "relevance_mass_accuracy", "localisation", True, _masked(metrics.relevance_mass_accuracy)
    ),
    Metric("auc", "localisation", True, _masked(metrics.auc)),
    Metric("pixel_flipping", "faithfulness", False, _pixel_flipping),
    Metric("region_perturbation", "faithfulness", False, _region_perturbation),
    Metric("faithfulness_correlation", "faithfulness", True, _faithfulness_correlation),
    Metric("road", "faithfulness", False, _road, quick=False),
    Metric("mprt", "randomisation", False, _mprt),
    Metric("random_logit", "randomisation", False, _random_logit),
    Metric("max_sensitivity", "robustness", False, _max_sensitivity),
    Metric("sparseness", "complexity", True, _unmasked(metrics.sparseness)),
    Metric("complexity", "complexity", False, _unmasked(metrics.complexity)),
)
"""The image tasks' metrics, in the table's order."""

TEXT_SUITE: tuple[Metric, ...] = (
    Metric("token_localization", "localisation", True, _token_localization),
    Metric("comprehensiveness", "faithfulness", True, _eraser(metrics.comprehensiveness)),
    Metric("sufficiency", "faithfulness", False, _eraser(metrics.sufficiency)),
    Metric("soft_comprehensiveness", "faithfulness", True, _soft(metrics.soft_comprehensiveness)),
    Metric("soft_sufficiency", "faithfulness", False, _soft(metrics.soft_sufficiency)),
    Metric("pixel_flipping", "faithfulness", False, _pixel_flipping),
    Metric("faithfulness_correlation", "faithfulness", True, _faithfulness_correlation),
    Metric("mprt", "randomisation", False, _token_mprt),
)
"""The text task's metrics, in the table's order."""


def suite(modality: Modality, *, quick: bool = False) -> tuple[Metric, ...]:
    """The metrics of a task of this modality.

    Args:
        modality: ``"image"`` or ``"text"``.
        quick: only the metrics marked ``quick`` (see :class:`Metric`).

    Returns:
        The metrics, in the table's order.
    """
    metrics = TEXT_SUITE if modality == "text" else IMAGE_SUITE
    return tuple(m for m in metrics if m.quick or not quick)


def mean(scores: Tensor) -> float:
    """The mean of the finite per-sample scores (``nan`` when none is)."""
    values = scores.detach().double().flatten().cpu()
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan
