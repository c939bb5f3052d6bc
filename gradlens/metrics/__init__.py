"""Evaluating explanations: deletion/insertion, pointing game, average drop, sanity checks,
patching metrics, and token-level scores for text.

One module per part; every public name is importable from ``gradlens.metrics``:

* ``curves``: :func:`deletion`, :func:`insertion` (:class:`CurveResult`) and
  :func:`gaussian_blur`;
* ``pointing``: :func:`pointing_game`;
* ``confidence``: :func:`average_drop`, :func:`increase_in_confidence`;
* ``robustness``: :func:`max_sensitivity`, :func:`avg_sensitivity`,
  :func:`local_lipschitz_estimate`, :func:`relative_input_stability`,
  :func:`relative_output_stability` (the method explains perturbed inputs again);
* ``randomisation``: :func:`model_parameter_randomisation`
  (:class:`ParameterRandomisationResult`), :func:`random_logit` and
  :func:`randomization_test` (:class:`RandomizationResult`); ``sanity``: :func:`spearman`;
* ``complexity_metrics``: :func:`sparseness`, :func:`complexity`, :func:`effective_complexity`;
* ``localisation``: :func:`attribution_localisation`, :func:`top_k_intersection`,
  :func:`relevance_rank_accuracy`, :func:`relevance_mass_accuracy`, :func:`auc` (with
  ground-truth ``masks``);
* ``logits``: :func:`logit_difference` and :func:`normalized`, for activation patching;
* ``text``: :func:`token_localization`, :func:`comprehensiveness` and :func:`sufficiency`,
  for per-token attributions ``(B, T)`` of a text classifier.
* ``faithfulness``: :func:`pixel_flipping`, :func:`region_perturbation`,
  :func:`selectivity`, :func:`faithfulness_correlation`, :func:`faithfulness_estimate`,
  :func:`monotonicity`, :func:`monotonicity_correlation`, :func:`irof`, :func:`road`,
  :func:`infidelity`, :func:`sensitivity_n` (images, and tokens where the metric
  applies), on the machinery of ``perturbation`` and ``imputation``
  (:func:`noisy_linear_imputation`); results are :class:`CurveResult` or
  :class:`MetricResult`;
* ``text_faithfulness``: :func:`soft_comprehensiveness`, :func:`soft_sufficiency`.

Conventions shared by the image metrics:

* ``maps`` are ``(B, H, W)``, or ``(B, C, H, W)`` which are reduced to ``(B, H, W)`` by
  summing ``|.|`` over channels (:func:`gradlens.maps.to_2d`: per-channel gradients become
  one importance per pixel; a ``(B, 1, H, W)`` map becomes its absolute value). Maps whose
  ``(H, W)`` differ from the images' are resized bilinearly to the image size
  (:func:`gradlens.maps.resize`).
* ``images`` are ``(B, C, H, W)``, already preprocessed the way the model expects.
* ``target`` is read by :func:`gradlens.targets.scores`: ``None`` is the model's top class
  on the clean image, an int one class for all, a sequence or tensor one class per sample.
  These metrics need exactly one class per sample, so ``(B, K)`` and callable targets
  raise :class:`~gradlens.errors.TargetError`.
* ``output`` picks the logits out of a structured model output (see
  :func:`gradlens.targets.select_output`).
* The model is not changed: forwards run under ``torch.inference_mode()`` in chunks of
  ``batch_size`` samples, with the model in whatever mode it is in (call ``model.eval()``
  first). A model left in training mode triggers a warning, and its buffers (BatchNorm
  running statistics) are restored afterwards.

The robustness, randomisation, complexity and localisation metrics share one signature,
``metric(model, inputs, attributions, target=None, *, ...)``, and return a result whose
``.scores`` is ``(B,)`` float64 (:class:`MetricResult`): maps are reduced and resized as
above but kept in float64, normalised per sample where a metric normalises, randomness
comes only from ``generator=`` (or explicit draws), and the explanation method, where one is
needed, is ``method=`` -- a registered name or a callable ``method(model, x, target=...)``.

The text metrics follow the same rules with token ids ``(B, T)`` and an ``attention_mask``
in place of images (see :mod:`gradlens.metrics.text`).
"""

from __future__ import annotations

from ._common import MetricResult
from .complexity_metrics import complexity, effective_complexity, sparseness
from .confidence import average_drop, increase_in_confidence
from .curves import CurveResult, deletion, gaussian_blur, insertion
from .faithfulness import (
    faithfulness_correlation,
    faithfulness_estimate,
    infidelity,
    irof,
    monotonicity,
    monotonicity_correlation,
    pixel_flipping,
    region_perturbation,
    road,
    selectivity,
    sensitivity_n,
)
from .imputation import noisy_linear_imputation
from .localisation import (
    attribution_localisation,
    auc,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from .logits import logit_difference, normalized
from .pointing import pointing_game
from .randomisation import (
    ParameterRandomisationResult,
    RandomizationResult,
    model_parameter_randomisation,
    random_logit,
    randomization_test,
)
from .robustness import (
    avg_sensitivity,
    local_lipschitz_estimate,
    max_sensitivity,
    relative_input_stability,
    relative_output_stability,
)
from .sanity import spearman
from .text import ERASER_FRACTIONS, comprehensiveness, sufficiency, token_localization
from .text_faithfulness import soft_comprehensiveness, soft_sufficiency

__all__ = [
    "CurveResult",
    "deletion",
    "insertion",
    "pointing_game",
    "average_drop",
    "increase_in_confidence",
    "RandomizationResult",
    "randomization_test",
    "spearman",
    "gaussian_blur",
    "logit_difference",
    "normalized",
    "token_localization",
    "comprehensiveness",
    "sufficiency",
    "ERASER_FRACTIONS",
    "MetricResult",
    "max_sensitivity",
    "avg_sensitivity",
    "local_lipschitz_estimate",
    "relative_input_stability",
    "relative_output_stability",
    "sparseness",
    "complexity",
    "effective_complexity",
    "attribution_localisation",
    "top_k_intersection",
    "relevance_rank_accuracy",
    "relevance_mass_accuracy",
    "auc",
    "ParameterRandomisationResult",
    "model_parameter_randomisation",
    "random_logit",
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
    "noisy_linear_imputation",
    "soft_comprehensiveness",
    "soft_sufficiency",
]
