"""The one skeleton of the three ``gradlens demo`` runs: make the output folder, train, score
every method with a timer, draw the figure, write the CSV and print the table.

Each demo (:mod:`~gradlens.demos.image`, :mod:`~gradlens.demos.vit`,
:mod:`~gradlens.demos.text`) supplies only what differs: how its model is trained, and a
:class:`Plan` (the methods, how one is scored, the figure) built from the trained model;
:func:`run` does the rest, and :func:`timed` is the timer every scoring function uses.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from time import perf_counter
from typing import Any, Generic, TypeVar

from matplotlib.figure import Figure
from torch import nn

from .. import viz

__all__ = [
    "Trained",
    "Plan",
    "Report",
    "run",
    "timed",
    "write_table",
    "print_table",
    "HEADINGS",
]

ModelT = TypeVar("ModelT", bound=nn.Module)
DataT = TypeVar("DataT")
RowT = TypeVar("RowT")
ShownT = TypeVar("ShownT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Trained(Generic[ModelT, DataT]):
    """A demo's model after training.

    Attributes:
        model: the trained model, in eval mode.
        test: the held-out data the demo scores on.
        accuracy: the held-out accuracy, in [0, 1].
        seconds: the wall time of the training (data generation and accuracy included).
    """

    model: ModelT
    test: DataT
    accuracy: float
    seconds: float


@dataclass(frozen=True)
class Plan(Generic[RowT, ShownT]):
    """What a demo does with its trained model.

    Attributes:
        intro: the line printed before the methods are scored.
        methods: method name -> a call that scores that method and returns its table row
            (a dataclass whose first field is ``method``, the others numbers: see
            :func:`write_table`) and what the figure shows of it; called in order, once.
        draw: the figure of ``{method name: what is shown}``, in the methods' order.
    """

    intro: str
    methods: Mapping[str, Callable[[], tuple[RowT, ShownT]]]
    draw: Callable[[dict[str, ShownT]], Figure]


@dataclass(frozen=True)
class Report(Generic[ModelT, DataT, RowT]):
    """What :func:`run` produced: the trained model, the table rows (one per method, in
    order) and the two files written."""

    trained: Trained[ModelT, DataT]
    rows: list[RowT]
    figure: Path
    table: Path


def timed(call: Callable[[], ResultT], n: int) -> tuple[ResultT, float]:
    """Run ``call()`` once and return its result and the wall time per sample in
    milliseconds (the time divided by ``n``, the number of samples it explained)."""
    start = perf_counter()
    result = call()
    return result, (perf_counter() - start) * 1e3 / n


def run(
    out: str | Path,
    *,
    train: Callable[[], tuple[ModelT, DataT, float]],
    plan: Callable[[Trained[ModelT, DataT]], Plan[RowT, ShownT]],
    figure_name: str,
    table_name: str,
) -> Report[ModelT, DataT, RowT]:
    """Run one demo: make ``out``, train, score every method, save the figure, write the
    CSV, print the table.

    Args:
        out: the output folder, created with its parents if missing (before training, so
            that a folder that cannot be made fails fast).
        train: ``() -> (model, test data, held-out accuracy)``; timed.
        plan: the demo's :class:`Plan` for the trained model.
        figure_name: the figure's file name in ``out`` (``.png``: 80 dpi).
        table_name: the CSV's file name in ``out``.

    Returns:
        A :class:`Report`. Prints the plan's intro line, the table and the paths written.

    Raises:
        OSError: ``out`` cannot be created or written to.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    start = perf_counter()
    model, test, accuracy = train()
    trained = Trained(model, test, accuracy, perf_counter() - start)
    steps = plan(trained)
    print(steps.intro)
    rows, shown = [], {}
    for name, score in steps.methods.items():
        row, shown[name] = score()
        rows.append(row)
    figure = viz.save(steps.draw(shown), folder / figure_name, dpi=80)
    table = write_table(folder / table_name, rows)
    print_table(rows)
    print(f"wrote {figure} and {table}")
    return Report(trained, rows, figure, table)


def write_table(path: Path, rows: Sequence[Any]) -> Path:
    """Write demo rows (dataclasses whose first field is the method name, the rest numbers)
    as CSV with a header of their field names, numbers to 4 decimals; returns ``path``."""
    columns = [field.name for field in fields(rows[0])]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.method] + [f"{getattr(row, c):.4f}" for c in columns[1:]])
    return path


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
