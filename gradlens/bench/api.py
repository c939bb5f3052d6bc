"""``gradlens.bench.run``: train the tasks, score every method that applies, write the
leaderboard."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

from tqdm.auto import tqdm

from ..dataset.run import show_progress
from ..viz.files import save
from .methods import plan
from .scoring import BenchRow, score_method
from .suites import suite
from .tasks import SAMPLES, TASKS, Prepared
from .writers import columns, draw_heatmap, write_csv, write_markdown

__all__ = ["BenchResult", "run"]


@dataclass(frozen=True)
class BenchResult:
    """What :func:`run` produced.

    Attributes:
        rows: one :class:`~gradlens.bench.scoring.BenchRow` per (task, method), in the
            order run (tasks as given, methods in registration order).
        accuracy: task -> the held-out accuracy of its trained model.
        csv: ``leaderboard.csv``.
        markdown: ``leaderboard.md``.
        figure: ``leaderboard.png``.
    """

    rows: list[BenchRow]
    accuracy: dict[str, float]
    csv: Path
    markdown: Path
    figure: Path


def _heading(name: str, prepared: Prepared, quick: bool, seed: int) -> str:
    task = TASKS[name]
    return (
        f"{task.description}; held-out accuracy {prepared.accuracy:.3f}; "
        f"{len(prepared.inputs)} samples, their top classes explained; "
        f"{'quick' if quick else 'full'} run, seed {seed}."
    )


def run(
    tasks: Sequence[str] = tuple(TASKS),
    methods: Sequence[str] | None = None,
    *,
    out: str | Path = "gradlens-bench",
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> BenchResult:
    """Score registered methods on the ground-truth tasks and write a leaderboard.

    For each task (:data:`gradlens.bench.tasks.TASKS`) a model is trained from ``seed``,
    every method that applies (:func:`gradlens.bench.methods.plan`, from the registry's
    :data:`~gradlens.registry.INFO`) explains the held-out samples' top classes, and the
    task's metrics (:mod:`gradlens.bench.suites`: localisation against the ground truth,
    faithfulness, randomisation, robustness, complexity) score the attributions.

    Args:
        tasks: task names, in the leaderboard's order (default: all three,
            ``"shapes-cnn"``, ``"shapes-vit"``, ``"text"``).
        methods: only these registered methods, each on the tasks where it applies
            (default: every method that applies).
        out: the output folder (created with its parents): ``leaderboard.csv``,
            ``leaderboard.md`` and ``leaderboard.png``.
        quick: a smoke run: a few seconds of training per task, 4 samples, the methods'
            registered quick options, cheap metric settings and no ROAD
            (:data:`~gradlens.bench.suites.SETTINGS`).
        seed: seeds the data, the training, the methods' and the metrics' draws: two runs
            with the same seed write the same tables but for ``seconds_per_sample``.
        progress: show progress bars (only when stderr is a terminal).

    Returns:
        A :class:`BenchResult`; a line per task (and where the files went) is printed.

    Raises:
        ValueError: an unknown task or method name, or a method that applies to none of the
            tasks (the message lists the valid names), before any training.
        OSError: ``out`` cannot be created or written to.
    """
    tasks = list(tasks)
    chosen = plan(tasks, None if methods is None else list(methods))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    bar = show_progress(progress)
    rows: list[BenchRow] = []
    accuracy: dict[str, float] = {}
    written = []
    for name in tasks:
        task = TASKS[name]
        start = perf_counter()
        prepared = task.prepare(quick, seed, bar)
        accuracy[name] = prepared.accuracy
        print(
            f"{name}: held-out accuracy {prepared.accuracy:.3f} after "
            f"{perf_counter() - start:.1f} s of training; scoring {len(chosen[name])} "
            f"methods on {SAMPLES[quick]} samples"
        )
        start = perf_counter()
        task_rows = []
        for method in tqdm(chosen[name], desc=name, disable=not bar, file=sys.stderr):
            task_rows.append(score_method(task, prepared, method, quick=quick, seed=seed))
        print(f"{name}: scored in {perf_counter() - start:.1f} s")
        rows += task_rows
        written.append((name, _heading(name, prepared, quick, seed), task_rows))
    suites = {name: suite(TASKS[name].modality, quick=quick) for name in tasks}
    csv_path = write_csv(folder / "leaderboard.csv", rows, columns(list(suites.values())))
    markdown = write_markdown(
        folder / "leaderboard.md", [(n, h, suites[n], r) for n, h, r in written]
    )
    figure = save(
        draw_heatmap([(n, suites[n], r) for n, _, r in written]),
        folder / "leaderboard.png",
        dpi=100,
    )
    print(f"wrote {csv_path}, {markdown} and {figure}")
    return BenchResult(rows, accuracy, csv_path, markdown, figure)
