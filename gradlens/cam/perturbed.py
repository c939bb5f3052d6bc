"""What Score-CAM and Ablation-CAM share: the clean pass, and evaluations of modified copies.

Both run one clean forward (:func:`clean_layers`: the layers' activations, the target
fixed to the top class of the clean input, its scores), then evaluate the model on many
modified copies of each sample -- masked inputs for Score-CAM
(:mod:`gradlens.cam.score_cam`), ablated activations for Ablation-CAM
(:mod:`gradlens.cam.ablation_cam`) -- under :func:`torch.inference_mode` in batches of
``batch_size`` rows. Several targets per sample (a ``(B, K)`` target) cost nothing extra:
every target's score is read from the same evaluations. The channel weights then go
through the usual ``ReLU(sum_c w_c A_c)``, upsampling and normalisation
(:mod:`gradlens.cam.base`).

Callable targets are evaluated on batches of modified copies, so they must work for any
batch size (``gradlens.targets.segmentation`` with a per-sample mask does not).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..core.inputs import ModelInput
from ..core.output_selection import OutputSpec
from ..passes import CleanPass, clean_pass
from ..targets.scoring import Target
from .base import weighted_sum

__all__ = ["clean_layers", "row_target", "channel_maps"]


def clean_layers(
    model: nn.Module,
    inputs: ModelInput,
    names: list[str],
    target: Target,
    output: OutputSpec,
    select: OutputSpec | Mapping[str, OutputSpec],
) -> CleanPass:
    """The clean pass (:func:`gradlens.passes.clean_pass`) recording the layers ``names``;
    its scores are float32 ``(B,)`` or ``(B, K)``."""
    clean = clean_pass(model, inputs, target, output=output, layers=names, select=select)
    clean.scores = clean.scores.float()
    return clean


def row_target(target: Target, rows: Tensor) -> Target:
    """The fixed target for modified copies of the samples ``rows``: per-sample classes
    are indexed, a callable (or ``None`` for one output per sample) is kept."""
    return target[rows.to(target.device)] if isinstance(target, Tensor) else target


def channel_maps(weights: Tensor, A: Tensor, multi: bool) -> Tensor:
    """``(B, C)`` or ``(B, C, K)`` channel weights and ``(B, C, h, w)`` activations ->
    ``(B, h, w)`` or ``(B, K, h, w)`` maps (before ReLU)."""
    if multi:
        return weighted_sum(weights.movedim(2, 1), A[:, None])
    return weighted_sum(weights, A)
