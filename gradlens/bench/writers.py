"""The leaderboard's files: ``leaderboard.csv``, ``leaderboard.md`` and the heat map.

Ranking rule (the Markdown tables and the figure's row order): for each metric, the methods
are ranked by their value in the metric's direction (1 = best; ties share the mean of
their ranks; a method without a value for that metric is left out of it), and methods are
ordered by their mean rank over the task's metrics (ties: by name). Methods that did not
run on a task are listed under its table with the reason.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .scoring import BenchRow
from .suites import Metric

__all__ = ["columns", "ranked", "write_csv", "write_markdown", "draw_heatmap", "normalised"]


CMAP = colormaps["viridis"].with_extremes(bad="lightgrey")
"""The heat map's colours: yellow the best, dark the worst, grey no value."""


def columns(suites: Sequence[Sequence[Metric]]) -> list[str]:
    """The CSV header: ``task``, ``method``, every metric of ``suites`` (first seen first)
    and ``seconds_per_sample``."""
    names: list[str] = []
    for metrics in suites:
        names += [m.name for m in metrics if m.name not in names]
    return ["task", "method", *names, "seconds_per_sample"]


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return "nan" if math.isnan(value) else f"{value:.4f}"


def write_csv(path: Path, rows: Sequence[BenchRow], header: Sequence[str]) -> Path:
    """One line per (task, method): scores to 4 decimals, ``nan`` for no value, an empty
    cell for a metric that is not in the task's suite."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            cells = [_cell(row.scores.get(name)) for name in header[2:-1]]
            writer.writerow([row.task, row.method, *cells, _cell(row.seconds_per_sample)])
    return path


def _ranks(values: list[float], higher_is_better: bool) -> list[float]:
    """1-based ranks of the finite values (ties: mean rank), ``nan`` for the others."""
    keyed = [(-v if higher_is_better else v) for v in values]
    finite = sorted(k for k in keyed if math.isfinite(k))
    ranks = []
    for k in keyed:
        if not math.isfinite(k):
            ranks.append(math.nan)
            continue
        first = finite.index(k)
        ranks.append(first + 1 + (finite.count(k) - 1) / 2)
    return ranks


def ranked(rows: Sequence[BenchRow], metrics: Sequence[Metric]) -> list[tuple[BenchRow, float]]:
    """The rows that ran, best first, each with its mean rank (the rule above)."""
    ran = [row for row in rows if not row.note]
    table = [_ranks([row.scores[m.name] for row in ran], m.higher_is_better) for m in metrics]
    means = []
    for i in range(len(ran)):
        mine = [ranks[i] for ranks in table if math.isfinite(ranks[i])]
        means.append(sum(mine) / len(mine) if mine else math.nan)
    order = sorted(
        range(len(ran)),
        key=lambda i: (math.inf if math.isnan(means[i]) else means[i], ran[i].method),
    )
    return [(ran[i], means[i]) for i in order]


def _best(values: list[float], higher_is_better: bool) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if higher_is_better else min(finite)


def write_markdown(
    path: Path,
    tasks: Sequence[tuple[str, str, Sequence[Metric], Sequence[BenchRow]]],
) -> Path:
    """One table per task: rank, method, mean rank, each metric (arrow: its direction;
    the best value in bold, ties included) and the seconds per sample; then the methods
    that did not run.

    Args:
        path: the file to write.
        tasks: ``(task name, heading line, metrics, rows)`` per task.
    """
    lines: list[str] = []
    for name, heading, metrics, rows in tasks:
        order = ranked(rows, metrics)
        lines += [f"## {name}", "", heading, ""]
        header = ["#", "method", "mean rank"]
        header += [f"{m.name} {'↑' if m.higher_is_better else '↓'}" for m in metrics]
        header.append("s/sample")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---:", ":---"] + ["---:"] * (len(header) - 2)) + "|")
        best = {
            m.name: _best([row.scores[m.name] for row, _ in order], m.higher_is_better)
            for m in metrics
        }
        for position, (row, mean_rank) in enumerate(order, start=1):
            cells = [str(position), row.method, f"{mean_rank:.2f}"]
            for m in metrics:
                text = _cell(row.scores[m.name])
                value = row.scores[m.name]
                is_best = best[m.name] is not None and math.isfinite(value)
                cells.append(
                    f"**{text}**" if is_best and f"{value:.4f}" == f"{best[m.name]:.4f}" else text
                )
            cells.append(f"{row.seconds_per_sample:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
        skipped = [row for row in rows if row.note]
        if skipped:
            lines += ["", "Did not run:", ""]
            lines += [f"- `{row.method}`: {row.note}" for row in skipped]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def normalised(values: list[float], higher_is_better: bool) -> list[float]:
    """Min-max normalised values with 1 the best and 0 the worst (direction-aware);
    ``nan`` stays ``nan``; a column with one distinct value is all 1."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [math.nan] * len(values)
    low, high = min(finite), max(finite)
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append(math.nan)
        elif high == low:
            out.append(1.0)
        else:
            share = (v - low) / (high - low)
            out.append(share if higher_is_better else 1 - share)
    return out


def draw_heatmap(
    tasks: Sequence[tuple[str, Sequence[Metric], Sequence[BenchRow]]],
) -> Figure:
    """Methods x metrics heat maps, one panel per task: each metric normalised over the
    task's methods by :func:`normalised` (1, yellow: the best; 0, dark: the worst; grey:
    no value); rows in ranking order."""
    heights = [max(1, len(ranked(rows, metrics))) for _, metrics, rows in tasks]
    figure = Figure(figsize=(10, 1.2 + 0.28 * sum(heights) + 1.3 * len(tasks)))
    axes = figure.subplots(len(tasks), 1, squeeze=False, height_ratios=[h + 4 for h in heights])
    for ax, (name, metrics, rows) in zip(axes[:, 0], tasks):
        order = [row for row, _ in ranked(rows, metrics)]
        grid = np.array(
            [normalised([row.scores[m.name] for row in order], m.higher_is_better) for m in metrics]
        ).T.reshape(len(order), len(metrics))
        ax.imshow(np.ma.masked_invalid(grid), cmap=CMAP, vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"{name} (1 = best of the methods, per metric)", fontsize=9)
        ax.set_yticks(range(len(order)), [row.method for row in order], fontsize=7)
        ax.set_xticks(
            range(len(metrics)),
            [f"{m.name} {'↑' if m.higher_is_better else '↓'}" for m in metrics],
            rotation=40,
            ha="right",
            fontsize=7,
        )
    figure.tight_layout()
    return figure
