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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import metrics, viz
from ..maps import to_2d
from ..registry import INFO, METHODS
from .training import train_demo_model

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

    The scores of both demos (this one and :mod:`gradlens.vit_demo`): the pointing game
    against ``masks`` (tolerance: the paper's 15 px at 224 px, scaled to the image side)
    and the mean deletion and insertion AUCs (16 steps) of :mod:`gradlens.metrics`.

    Args:
        model: the explained classifier (the deletion and insertion curves run it).
        images: ``(B, C, H, W)`` held-out images.
        masks: ``(B, H, W)`` boolean object masks.
        explain: ``images -> maps``, ``(B, H, W)`` or input-shaped ``(B, C, H, W)``
            (reduced with :func:`gradlens.maps.to_2d`); the call is timed.

    Returns:
        :class:`Scores` with the ``(B, H, W)`` float maps and the mean scores.
    """
    start = time.perf_counter()
    maps = to_2d(explain(images).detach()).float()
    ms = (time.perf_counter() - start) * 1e3 / len(images)
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


def write_table(path: Path, rows: Sequence[Any]) -> Path:
    """Write demo rows (dataclasses whose first field is the method name, the rest numbers)
    as CSV with a header of their field names; returns ``path``."""
    columns = [field.name for field in fields(rows[0])]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.method] + [f"{getattr(row, c):.4f}" for c in columns[1:]])
    return path


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

        scored = score_maps(model, images, masks, partial(explain, model))
        # layers=[""] re-initialises the whole model at once: the cascade's last step
        # without the eight intermediate ones, which the table does not show.
        sanity = metrics.randomization_test(
            model, images[:n_sanity], explain, layers=[""], seed=seed
        )
        rows.append(
            DemoRow(
                name,
                scored.pointing_game,
                scored.deletion_auc,
                scored.insertion_auc,
                torch.nan_to_num(sanity.correlations[-1], nan=0.0).mean().item(),
                scored.ms_per_image,
            )
        )
        shown[name] = scored.maps[:4]
    figure = viz.show(test.images[:4], shown, boxes=test.boxes[:4])
    figure_path = viz.save(figure, out / "demo.png", dpi=80)
    table_path = write_table(out / "metrics.csv", rows)
    print_table(rows)
    print(f"wrote {figure_path} and {table_path}")
    return DemoResult(acc, rows, figure_path, table_path)


HEADINGS = {
    "pointing_game": ("pointing", 9, ".2f"),
    "deletion_auc": ("deletion", 9, ".3f"),
    "insertion_auc": ("insertion", 10, ".3f"),
    "sanity_spearman": ("sanity", 8, ".2f"),
    "ms_per_image": ("ms/img", 9, ".1f"),
    "localization": ("localization", 13, ".3f"),
    "comprehensiveness": ("compr.", 8, ".3f"),
    "sufficiency": ("suff.", 8, ".3f"),
    "ms_per_sample": ("ms/seq", 8, ".2f"),
}
"""The printed table's column heading, width and number format of each score."""


def print_table(rows: Sequence[Any]) -> None:
    """Print demo rows (see :func:`write_table`) as an aligned table, one method a line."""
    columns = [field.name for field in fields(rows[0])][1:]
    name_width = max(22, 2 + max(len(row.method) for row in rows))
    header = f"{'method':<{name_width}}" + "".join(
        f"{HEADINGS[c][0]:>{HEADINGS[c][1]}}" for c in columns
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = (f"{getattr(row, c):>{HEADINGS[c][1]}{HEADINGS[c][2]}}" for c in columns)
        print(f"{row.method:<{name_width}}" + "".join(cells))
