"""Evaluating explanations: deletion/insertion, pointing game, average drop, sanity checks,
patching metrics, and token-level scores for text.

One module per part; every public name is importable from ``gradlens.metrics``:

* ``curves``: :func:`deletion`, :func:`insertion` (:class:`CurveResult`) and
  :func:`gaussian_blur`;
* ``pointing``: :func:`pointing_game`;
* ``confidence``: :func:`average_drop`, :func:`increase_in_confidence`;
* ``sanity``: :func:`randomization_test` (:class:`RandomizationResult`) and :func:`spearman`;
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

The text metrics follow the same rules with token ids ``(B, T)`` and an ``attention_mask``
in place of images (see :mod:`gradlens.metrics.text`).
"""

from __future__ import annotations

from ._common import MetricResult
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
from .logits import logit_difference, normalized
from .pointing import pointing_game
from .sanity import RandomizationResult, randomization_test, spearman
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
