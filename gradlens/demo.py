"""``gradlens demo``: every CAM and attribution method on a model trained here, scored
against ground truth.

On a fresh machine, with nothing downloaded: generate the synthetic shapes
(:mod:`gradlens.data`), train the tiny CNN (:mod:`gradlens.training`), then for a held-out
set run every method in :data:`gradlens.METHODS` but the attention methods (a CNN has no
attention; see :mod:`gradlens.vit_demo`), each with its registered quick options
(:attr:`gradlens.registry.MethodInfo.quick_options`: fewer noise samples, integration
steps or occlusion windows than its defaults), and score it with the pointing game
(against the object's mask), deletion and insertion AUC, and the model-parameter
randomisation sanity check (:mod:`gradlens.metrics`) against the fully randomised model:
every layer re-initialised in one step, the state the cascade ends in, which is all the
table reports. Writes ``demo.png``, ``metrics.csv`` and prints the table.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import metrics, viz
from .maps import to_2d
from .registry import INFO, METHODS
from .training import train_demo_model

__all__ = ["DemoRow", "DemoResult", "run_demo"]

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


def _spatial(maps: Tensor) -> Tensor:
    """``(B, H, W)`` float maps (:func:`gradlens.maps.to_2d`)."""
    return to_2d(maps.detach()).float()


def run_demo(
    out: str | Path = "gradlens-demo", *, seed: int = 0, quick: bool = False, progress: bool = True
) -> DemoResult:
    """Train the tiny CNN on synthetic shapes and score every CAM and attribution method.

    Args:
        out: output folder (created): ``demo.png`` (images x methods, ground-truth box
            drawn) and ``metrics.csv``.
        seed: seeds the data, the training and the randomisation test.
        quick: a smaller data set and fewer held-out images.
        progress: show the training progress bar.

    Returns:
        A :class:`DemoResult`; the table is also printed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, test, acc = train_demo_model(quick=quick, seed=seed, progress=progress)
    layer = model.cam_layer_name
    n_eval, n_sanity = (24, 4) if quick else (96, 8)
    images, masks = test.images[:n_eval], test.masks[:n_eval]
    tolerance = max(1, round(15 * images.shape[-1] / 224))  # the paper's 15 px at 224 px
    # a CNN has no attention: the attention methods are in the ViT demo (gradlens.vit_demo)
    methods = {name: f for name, f in METHODS.items() if INFO[name].kind != "attention"}
    print(f"held-out accuracy {acc:.3f}; evaluating {len(methods)} methods on {n_eval} images")

    rows, shown = [], {}
    for name, method in methods.items():
        options = _options(name, layer)

        def explain(
            m: nn.Module,
            x: Tensor,
            target: Any = None,
            _f: Callable[..., Any] = method,
            _o: dict[str, Any] = options,
        ) -> Tensor:
            explanation: Tensor = _f(m, x, target=target, **_o)
            return explanation

        start = time.perf_counter()
        maps = _spatial(explain(model, images))
        ms = (time.perf_counter() - start) * 1e3 / len(images)
        hits = metrics.pointing_game(maps, masks=masks, tolerance=tolerance)
        deletion = metrics.deletion(model, images, maps, steps=16)
        insertion = metrics.insertion(model, images, maps, steps=16)
        # layers=[""] re-initialises the whole model at once: the cascade's last step
        # without the eight intermediate ones, which the table does not show.
        sanity = metrics.randomization_test(
            model, images[:n_sanity], explain, layers=[""], seed=seed
        )
        rows.append(
            DemoRow(
                name,
                hits.float().mean().item(),
                deletion.auc.mean().item(),
                insertion.auc.mean().item(),
                torch.nan_to_num(sanity.correlations[-1], nan=0.0).mean().item(),
                ms,
            )
        )
        shown[name] = maps[:4]
    figure = viz.show(test.images[:4], shown, boxes=test.boxes[:4])
    figure_path = viz.save(figure, out / "demo.png", dpi=80)
    table_path = out / "metrics.csv"
    with table_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row.method] + [f"{getattr(row, c):.4f}" for c in COLUMNS[1:]])
    _print_table(rows)
    print(f"wrote {figure_path} and {table_path}")
    return DemoResult(acc, rows, figure_path, table_path)


def _print_table(rows: list[DemoRow]) -> None:
    header = (
        f"{'method':<22}{'pointing':>9}{'deletion':>9}{'insertion':>10}{'sanity':>8}{'ms/img':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.method:<22}{r.pointing_game:>9.2f}{r.deletion_auc:>9.3f}{r.insertion_auc:>10.3f}"
            f"{r.sanity_spearman:>8.2f}{r.ms_per_image:>9.1f}"
        )
