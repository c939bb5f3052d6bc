"""Which registered methods the bench runs on a task, and with which options.

The choice reads only :data:`gradlens.registry.INFO` (kind, ``needs_layer``,
``transformers``, ``quick_options``), so a newly registered method joins the leaderboard
without a change here:

* an image task with a CNN (``shapes-cnn``): every method but the attention ones;
* an image task with a transformer (``shapes-vit``): the attention methods, the CAMs (at
  the task's default layer) and the attributions, those registered with
  ``transformers=True`` (the LRP composites for CNNs are not);
* a text task: the attributions that need no layer of their own and explain transformers,
  run through :func:`gradlens.token_attributions`.

A method that the registry admits but that refuses the task's model (guided
backpropagation on a model without ``nn.ReLU`` modules) is reported as not applicable by
the scoring loop, with the method's own error message.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from ..registry import INFO, MethodInfo
from .tasks import TASKS, Task

__all__ = ["applies", "plan", "method_options", "check_names", "IMAGE_ONLY_OPTIONS"]

IMAGE_ONLY_OPTIONS = ("window", "stride")
"""Quick options that describe image windows (occlusion's): left out on tokens, where
:func:`gradlens.token_attributions` occludes one token at a time."""


def applies(task: Task, info: MethodInfo) -> bool:
    """Whether the method described by ``info`` belongs on ``task`` (the rules above)."""
    if task.modality == "text":
        return info.kind == "attribution" and not info.needs_layer and info.transformers
    if not task.transformer:
        return info.kind != "attention"
    return info.transformers


def _unknown(kind: str, names: Sequence[str], valid: Sequence[str]) -> ValueError:
    first = names[0]
    hints = difflib.get_close_matches(first, list(valid), n=3)
    return ValueError(
        f"unknown {kind} {', '.join(map(repr, names))}"
        + (f"; did you mean {', '.join(map(repr, hints))}?" if hints else "")
        + f" Valid {kind}s: {', '.join(valid)}"
    )


def check_names(tasks: Sequence[str], methods: Sequence[str] | None) -> None:
    """Raise before any training if a task or a method is unknown, or if a method named
    applies to none of the tasks.

    Raises:
        ValueError: the message lists the valid names.
    """
    if not tasks:
        raise ValueError(f"no task given; valid tasks: {', '.join(TASKS)}")
    unknown = [name for name in tasks if name not in TASKS]
    if unknown:
        raise _unknown("task", unknown, list(TASKS))
    if methods is None:
        return
    if not methods:
        raise ValueError(f"no method given; registered methods: {', '.join(INFO)}")
    unknown = [name for name in methods if name not in INFO]
    if unknown:
        raise _unknown("method", unknown, list(INFO))
    idle = [m for m in methods if not any(applies(TASKS[t], INFO[m]) for t in tasks)]
    if idle:
        raise ValueError(
            f"{', '.join(map(repr, idle))} applies to none of the tasks {', '.join(tasks)}; "
            + "; ".join(
                f"{t}: {', '.join(m for m in INFO if applies(TASKS[t], INFO[m]))}" for t in tasks
            )
        )


def plan(tasks: Sequence[str], methods: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The methods the bench runs on each task, in registration order.

    Args:
        tasks: task names (:data:`gradlens.bench.tasks.TASKS`).
        methods: only these registered methods (each where it applies); ``None``: every
            registered method that applies.

    Returns:
        ``{task: [method, ...]}`` in the order of ``tasks``.

    Raises:
        ValueError: an unknown task or method, or a method that applies to none of the
            tasks (see :func:`check_names`).
    """
    check_names(tasks, methods)
    chosen = set(INFO if methods is None else methods)
    return {
        task: [name for name, info in INFO.items() if name in chosen and applies(TASKS[task], info)]
        for task in tasks
    }


def method_options(
    info: MethodInfo, task: Task, layer: str | None, *, quick: bool
) -> dict[str, Any]:
    """A method's options on a task: its registered quick options in a quick run (none in
    a full run: the method's defaults), and the task's layer for a method that takes one;
    on text, without :data:`IMAGE_ONLY_OPTIONS`."""
    options: dict[str, Any] = dict(info.quick_options) if quick else {}
    if task.modality == "text":
        options = {k: v for k, v in options.items() if k not in IMAGE_ONLY_OPTIONS}
    if info.needs_layer and layer is not None:
        options["layer"] = layer
    return options
