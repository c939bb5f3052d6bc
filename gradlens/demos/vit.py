"""The vision-transformer demo (``gradlens demo --vit``): attention explanations of a tiny ViT
trained here, scored against ground truth beside Grad-CAM.

On a fresh machine, with nothing downloaded: train a :class:`~gradlens.demos.tiny_vit.TinyViT` on
the synthetic shapes (:func:`~gradlens.demos.tiny_vit.train_vit_model`), then for held-out images
run attention rollout, gradient-weighted attention rollout and Grad-CAM at the last block's
first LayerNorm, and score each with the pointing game against the object's mask and the
deletion and insertion AUCs (:mod:`gradlens.metrics`), as the CNN demo does
(:func:`gradlens.demos.image.score_maps`). Writes ``vit_demo.png`` and
``vit_metrics.csv`` and prints the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from .. import viz
from ..attention.methods import attention_rollout, gradient_attention_rollout
from ..cam.gradient import gradcam
from .image import print_table, score_maps, write_table
from .tiny_vit import QUICK_VIT_RECIPE, VIT_RECIPE, TinyViT, train_vit_model

__all__ = ["ViTDemoRow", "ViTDemoResult", "run_vit_demo", "vit_methods"]


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


def vit_methods(model: TinyViT) -> dict[str, Callable[[Tensor], Tensor]]:
    """The explanations the demo compares, as ``images (B, 3, H, W) -> maps (B, H, W)``
    functions of a trained :class:`~gradlens.demos.tiny_vit.TinyViT` (top class)."""
    return {
        "attention_rollout": lambda x: attention_rollout(model, x),
        "gradient_attention_rollout": lambda x: gradient_attention_rollout(model, x),
        f"gradcam ({model.cam_layer_name})": lambda x: gradcam(model, x, model.cam_layer_name),
    }


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
        progress: show the training progress bar.

    Returns:
        A :class:`ViTDemoResult`; the table is also printed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    recipe = QUICK_VIT_RECIPE if quick else VIT_RECIPE
    model, test, acc = train_vit_model(recipe, seed=seed, progress=progress)
    train_seconds = time.perf_counter() - start
    n_eval = min(48, len(test)) if quick else len(test)
    images, masks = test.images[:n_eval], test.masks[:n_eval]
    print(
        f"tiny ViT: held-out accuracy {acc:.3f} after {train_seconds:.0f} s of training; "
        f"scoring on {n_eval} images"
    )
    rows, shown = [], {}
    for name, explain in vit_methods(model).items():
        scored = score_maps(model, images, masks, explain)
        rows.append(
            ViTDemoRow(
                name,
                scored.pointing_game,
                scored.deletion_auc,
                scored.insertion_auc,
                scored.ms_per_image,
            )
        )
        shown[name] = scored.maps[:4]
    figure = viz.show(test.images[:4], shown, boxes=test.boxes[:4])
    figure_path = viz.save(figure, out / "vit_demo.png", dpi=80)
    table_path = write_table(out / "vit_metrics.csv", rows)
    print_table(rows)
    print(f"wrote {figure_path} and {table_path}")
    return ViTDemoResult(acc, train_seconds, rows, figure_path, table_path)
