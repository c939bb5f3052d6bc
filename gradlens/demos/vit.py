"""The vision-transformer demo (``gradlens demo --vit``): attention explanations of a tiny ViT
trained here, scored against ground truth beside Grad-CAM.

On a fresh machine, with nothing downloaded: train a :class:`~gradlens.demos.tiny_vit.TinyViT` on
the synthetic shapes (:func:`~gradlens.demos.tiny_vit.train_vit_model`), then for held-out images
run attention rollout, gradient-weighted attention rollout, AttnLRP (:func:`attnlrp_map`:
the relevance of the layer-normalised patch pixels, signed) and Grad-CAM at the last
block's first LayerNorm, and score each with the pointing game against the object's mask and the
deletion and insertion AUCs (:mod:`gradlens.metrics`), as the CNN demo does
(:func:`gradlens.demos.image.score_maps`). Writes ``vit_demo.png`` and
``vit_metrics.csv`` and prints the table (:func:`gradlens.demos.runner.run`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch import Tensor

from .. import viz
from ..attention.methods import attention_rollout, gradient_attention_rollout
from ..cam.gradient import gradcam
from ..relevance.attention_lrp import attnlrp
from .image import score_maps
from .runner import Plan, Trained, run
from .shapes import ShapesData
from .tiny_vit import QUICK_VIT_RECIPE, VIT_RECIPE, TinyViT, train_vit_model

__all__ = ["ViTDemoRow", "ViTDemoResult", "attnlrp_map", "run_vit_demo", "vit_methods"]


@dataclass
class ViTDemoRow:
    """One method's scores: higher pointing game and insertion AUC, lower deletion AUC are
    better."""

    method: str
    pointing_game: float
    deletion_auc: float
    insertion_auc: float
    ms_per_image: float


@dataclass
class ViTDemoResult:
    """What the ViT demo produced: the held-out accuracy, the training wall time (s), the
    table rows and the files written."""

    accuracy: float
    train_seconds: float
    rows: list[ViTDemoRow]
    figure: Path
    table: Path


def attnlrp_map(model: TinyViT, images: Tensor) -> Tensor:
    """AttnLRP's map of the top class on the tiny ViT: the relevance of the pixels as the
    model's first layer hands them on, layer-normalised per patch
    (``model.pixel_layer_name``), put back in place and summed over the channels with its
    sign.

    Why not the relevance of the raw pixels: the first operation of
    :class:`~gradlens.demos.tiny_vit.TinyViT` subtracts each patch's mean (a LayerNorm over
    its ``3 x 8 x 8`` values), and LRP's rule for that linear map, ``c = x − mean(x)``,
    hands pixel ``i`` the relevance ``x_i (h_i − mean(h))`` with ``h = R_c / c``: the
    patch's brightness (0.3-0.6 on the grey background) times a pattern that sums to zero,
    large on flat background patches (``h`` grows as ``1/σ``). Those patches' absolute
    relevance is about 70 times their net relevance, so neither the absolute values
    (:func:`gradlens.maps.to_2d`) nor the signed sum of the raw pixels' relevance points at
    the object (the page "Relevance propagation" has the measurements). The relevance is
    signed (it sums to the part of the logit that reaches the pixels), as in the authors'
    heat maps.

    Args:
        model: the trained tiny ViT.
        images: ``(B, 3, H, W)``.

    Returns:
        ``(B, H, W)`` maps, positive where the pixels speak for the class.
    """
    relevance = attnlrp(model, images, layer=model.pixel_layer_name)
    assert isinstance(relevance, Tensor)
    height, width = images.shape[-2:]
    return model.patch_embed.fold(relevance, height, width).sum(1)


def vit_methods(model: TinyViT) -> dict[str, Callable[[Tensor], Tensor]]:
    """The explanations the demo compares, as ``images (B, 3, H, W) -> maps (B, H, W)``
    functions of a trained :class:`~gradlens.demos.tiny_vit.TinyViT` (top class); AttnLRP's
    map is :func:`attnlrp_map`."""
    return {
        "attention_rollout": lambda x: attention_rollout(model, x),
        "gradient_attention_rollout": lambda x: gradient_attention_rollout(model, x),
        "attnlrp": lambda x: attnlrp_map(model, x),
        f"gradcam ({model.cam_layer_name})": lambda x: gradcam(model, x, model.cam_layer_name),
    }


def _plan(trained: Trained[TinyViT, ShapesData], *, quick: bool) -> Plan[ViTDemoRow, Tensor]:
    """The ViT demo's methods (:func:`vit_methods`), how each is scored
    (:func:`~gradlens.demos.image.score_maps`), and the figure (four held-out images, their
    boxes and each method's maps)."""
    model, test = trained.model, trained.test
    n_eval = min(48, len(test)) if quick else len(test)
    images, masks = test.images[:n_eval], test.masks[:n_eval]

    def score(name: str, explain: Callable[[Tensor], Tensor]) -> tuple[ViTDemoRow, Tensor]:
        scored = score_maps(model, images, masks, explain)
        row = ViTDemoRow(
            name,
            scored.pointing_game,
            scored.deletion_auc,
            scored.insertion_auc,
            scored.ms_per_image,
        )
        return row, scored.maps[:4]

    return Plan(
        intro=(
            f"tiny ViT: held-out accuracy {trained.accuracy:.3f} after {trained.seconds:.0f} s "
            f"of training; scoring on {n_eval} images"
        ),
        methods={name: partial(score, name, f) for name, f in vit_methods(model).items()},
        draw=lambda shown: viz.show(test.images[:4], shown, boxes=test.boxes[:4]),
    )


def run_vit_demo(
    out: str | Path = "gradlens-demo",
    *,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
) -> ViTDemoResult:
    """Train the tiny ViT on synthetic shapes and score the attention methods and Grad-CAM.

    Args:
        out: output folder (created): ``vit_demo.png`` (images x methods, ground-truth box
            drawn) and ``vit_metrics.csv``.
        seed: seeds the data and the training.
        quick: the quick recipe (:data:`~gradlens.demos.tiny_vit.QUICK_VIT_RECIPE`) and fewer
            held-out images.
        progress: show the training progress bar (when stderr is a terminal).

    Returns:
        A :class:`ViTDemoResult`; the table is also printed.
    """
    recipe = QUICK_VIT_RECIPE if quick else VIT_RECIPE
    report = run(
        out,
        train=lambda: train_vit_model(recipe, seed=seed, progress=progress),
        plan=partial(_plan, quick=quick),
        figure_name="vit_demo.png",
        table_name="vit_metrics.csv",
    )
    trained = report.trained
    return ViTDemoResult(
        trained.accuracy, trained.seconds, report.rows, report.figure, report.table
    )
