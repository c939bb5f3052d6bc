"""``gradlens bench``: every registered method that applies, on three ground-truth tasks,
scored by the metrics of :mod:`gradlens.metrics`, as a leaderboard.

One module per job:

* ``tasks``: the tasks (``shapes-cnn``, ``shapes-vit``, ``text``): how each trains its
  model and which samples and ground truth it scores on (:data:`TASKS`);
* ``methods``: which registered methods run on a task, read from the registry's
  :data:`~gradlens.registry.INFO` only (:func:`plan`), and their options;
* ``suites``: each task's metrics with their direction and settings (:data:`SETTINGS`);
* ``scoring``: the loop that explains (timed) and scores (:class:`BenchRow`);
* ``writers``: ``leaderboard.csv``, ``leaderboard.md`` (the ranking rule) and the heat map;
* ``api``: :func:`run`.
"""

from __future__ import annotations

from .api import BenchResult, run
from .methods import applies, plan
from .scoring import BenchRow
from .suites import SETTINGS, Metric, Settings, suite
from .tasks import TASKS, Prepared, Task

__all__ = [
    "run",
    "BenchResult",
    "BenchRow",
    "plan",
    "applies",
    "suite",
    "Metric",
    "Settings",
    "SETTINGS",
    "TASKS",
    "Task",
    "Prepared",
]
