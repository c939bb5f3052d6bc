"""``gradlens demo``: every CAM and attribution method on a model trained here, scored
against ground truth.

On a fresh machine, with nothing downloaded: generate the synthetic shapes
(:mod:`gradlens.demos.shapes`), train the tiny CNN (:mod:`gradlens.demos.training`), then
for a held-out set run every method in :data:`gradlens.METHODS` but the attention methods (a
CNN has no attention; see :mod:`gradlens.demos.vit`), each with its registered quick options
(:attr:`gradlens.registry.MethodInfo.quick_options`: fewer noise samples, integration
steps or occlusion windows than its defaults), and score it with the pointing game
(against the object's mask), deletion and insertion AUC, and the model-parameter
randomisation sanity check (:mod:`gradlens.metrics`) against the fully randomised model:
every layer re-initialised in one step, the state the cascade ends in, which is all the
table reports. Writes ``demo.png``, ``metrics.csv`` and prints the table
(:func:`gradlens.demos.runner.run`, the skeleton of the three demos).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import metrics, viz
from ..maps import to_2d
from ..registry import INFO, METHODS
from .runner import Plan, Trained, print_table, run, timed, write_table
from .shapes import ShapesData
from .training import TinyCNN, train_demo_model

__all__ = [
    "DemoRow",
    "DemoResult",
    "run_demo",
    "Scores",
    "score_maps",
    "write_table",
    "print_table",
]

COLUMNS = [
    "method",
    "pointing_game",
    "deletion_auc",
    "insertion_auc",
    "sanity_spearman",
    "ms_per_image",
]


@dataclass
class DemoRow:
    """One method's scores (see :data:`COLUMNS`); lower deletion AUC, higher insertion AUC
    and pointing game, and a low sanity correlation are better."""

    method: str
    pointing_game: float
    deletion_auc: float
    insertion_auc: float
    sanity_spearman: float
    ms_per_image: float


@dataclass
class DemoResult:
    """What the demo produced: the held-out accuracy, the table rows and the files written."""

    accuracy: float
    rows: list[DemoRow]
    figure: Path
    table: Path


def _options(name: str, layer: str) -> dict[str, Any]:
    """Per-method options from the registry: its quick options, and the CAM layer for
    methods that take one."""
    info = INFO[name]
    options: dict[str, Any] = dict(info.quick_options)
    if info.needs_layer:
        options["layer"] = layer
    return options


@dataclass
class Scores:
    """The ground-truth scores of one method's maps on one set of images (see
    :func:`score_maps`)."""

    maps: Tensor
    pointing_game: float
    deletion_auc: float
    insertion_auc: float
    ms_per_image: float


def score_maps(
    model: nn.Module, images: Tensor, masks: Tensor, explain: Callable[[Tensor], Tensor]
) -> Scores:
    """Time one explanation of ``images`` and score its maps against the objects.

    The scores of both image demos (this one and :mod:`gradlens.demos.vit`): the pointing
    game against ``masks`` (tolerance: the paper's 15 px at 224 px, scaled to the image
    side) and the mean deletion and insertion AUCs (16 steps) of :mod:`gradlens.metrics`.

    Args:
        model: the explained classifier (the deletion and insertion curves run it).
        images: ``(B, C, H, W)`` held-out images.
        masks: ``(B, H, W)`` boolean object masks.
        explain: ``images -> maps``, ``(B, H, W)`` or input-shaped ``(B, C, H, W)``
            (reduced with :func:`gradlens.maps.to_2d`); the call is timed
            (:func:`gradlens.demos.runner.timed`).

    Returns:
        :class:`Scores` with the ``(B, H, W)`` float maps and the mean scores.
    """
    maps, ms = timed(lambda: to_2d(explain(images).detach()).float(), len(images))
    tolerance = max(1, round(15 * images.shape[-1] / 224))
    hits = metrics.pointing_game(maps, masks=masks, tolerance=tolerance)
    deletion = metrics.deletion(model, images, maps, steps=16)
    insertion = metrics.insertion(model, images, maps, steps=16)
    return Scores(
        maps,
        hits.float().mean().item(),
        deletion.auc.mean().item(),
        insertion.auc.mean().item(),
        ms,
    )


def _plan(
    trained: Trained[TinyCNN, ShapesData], *, quick: bool, seed: int
) -> Plan[DemoRow, Tensor]:
    """The CNN demo's methods (every registered method but the attention ones), how each
    is scored, and the figure (four held-out images, their boxes and each method's maps)."""
    model, test = trained.model, trained.test
    layer = model.cam_layer_name
    n_eval, n_sanity = (24, 4) if quick else (96, 8)
    images, masks = test.images[:n_eval], test.masks[:n_eval]
    # a CNN has no attention: the attention methods are in the ViT demo (gradlens.demos.vit)
    methods = {name: f for name, f in METHODS.items() if INFO[name].kind != "attention"}

    def score(name: str, method: Callable[..., Tensor]) -> tuple[DemoRow, Tensor]:
        options = _options(name, layer)

        def explain(m: nn.Module, x: Tensor, target: Any = None) -> Tensor:
            explanation: Tensor = method(m, x, target=target, **options)
            return explanation

        scored = score_maps(model, images, masks, partial(explain, model))
        # layers=[""] re-initialises the whole model at once: the cascade's last step
        # without the eight intermediate ones, which the table does not show.
        sanity = metrics.randomization_test(
            model, images[:n_sanity], explain, layers=[""], seed=seed
        )
        row = DemoRow(
            name,
            scored.pointing_game,
            scored.deletion_auc,
            scored.insertion_auc,
            torch.nan_to_num(sanity.correlations[-1], nan=0.0).mean().item(),
            scored.ms_per_image,
        )
        return row, scored.maps[:4]

    return Plan(
        intro=(
            f"held-out accuracy {trained.accuracy:.3f}; "
            f"evaluating {len(methods)} methods on {n_eval} images"
        ),
        methods={name: partial(score, name, method) for name, method in methods.items()},
        draw=lambda shown: viz.show(test.images[:4], shown, boxes=test.boxes[:4]),
    )


def run_demo(
    out: str | Path = "gradlens-demo", *, seed: int = 0, quick: bool = False, progress: bool = True
) -> DemoResult:
    """Train the tiny CNN on synthetic shapes and score every CAM and attribution method.

    Args:
        out: output folder (created): ``demo.png`` (images x methods, ground-truth box
            drawn) and ``metrics.csv``.
        seed: seeds the data, the training and the randomisation test.
        quick: a smaller data set and fewer held-out images.
        progress: show the training progress bar (when stderr is a terminal).

    Returns:
        A :class:`DemoResult`; the table is also printed.
    """
    report = run(
        out,
        train=lambda: train_demo_model(quick=quick, seed=seed, progress=progress),
        plan=partial(_plan, quick=quick, seed=seed),
        figure_name="demo.png",
        table_name="metrics.csv",
    )
    return DemoResult(report.trained.accuracy, report.rows, report.figure, report.table)
