"""The scoring loop: explain a task's samples with each method (timed), then score the
attributions with every metric of the task's suite."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..demos.runner import timed
from ..errors import GradlensError
from ..registry import INFO, get
from ..text.tokens import token_attributions
from .methods import method_options
from .suites import SETTINGS, Context, mean, suite
from .tasks import Prepared, Task

__all__ = ["BenchRow", "score_method", "token_method"]


@dataclass(frozen=True)
class BenchRow:
    """One method on one task: a row of ``leaderboard.csv``.

    Attributes:
        task: the task's name.
        method: the registered method's name.
        scores: metric name -> the mean over the samples (``nan`` where the method did not
            run, or the metric was undefined on every sample).
        seconds_per_sample: the wall time of the method's explanation of the samples,
            divided by their number (the only value that differs between runs with the same
            seed).
        note: why the method did not run on the task (its error message), else ``""``.
    """

    task: str
    method: str
    scores: dict[str, float] = field(default_factory=dict)
    seconds_per_sample: float = math.nan
    note: str = ""


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The global RNG seeded with ``seed`` inside a fork (methods that draw from it, e.g.
    SmoothGrad without a ``seed`` option, draw the same noise in every run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def token_method(
    name: str, options: dict[str, Any], attention_mask: Tensor
) -> Callable[..., Tensor]:
    """``method(model, input_ids, target=None) -> (B, T)``: the registered method ``name``
    through :func:`gradlens.token_attributions`, on sequences with ``attention_mask``."""

    def explain(model: nn.Module, input_ids: Tensor, target: Any = None) -> Tensor:
        if len(input_ids) != len(attention_mask):
            raise ValueError(f"{len(input_ids)} sequences for {len(attention_mask)} masks")
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        scores: Tensor = token_attributions(model, inputs, target, method=name, **options)
        return scores

    return explain


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def score_method(task: Task, prepared: Prepared, name: str, *, quick: bool, seed: int) -> BenchRow:
    """Explain ``prepared``'s samples with the method ``name`` and score them.

    The method's own errors (:class:`~gradlens.errors.GradlensError`: it does not apply to
    this model) make a row of ``nan`` with the message as its ``note``; any other error
    propagates.
    """
    options = method_options(INFO[name], task, prepared.layer, quick=quick)
    method: str | Callable[..., Tensor] = name
    if task.modality == "text":
        assert prepared.attention_mask is not None
        method = token_method(name, options, prepared.attention_mask)
        explain: Callable[[], Tensor] = lambda: method(  # noqa: E731
            prepared.model, prepared.inputs, target=prepared.classes
        )
        options = {}  # already bound in the callable
    else:
        function = get(name)
        explain = lambda: function(  # noqa: E731
            prepared.model, prepared.inputs, target=prepared.classes, **options
        )
    metrics = suite(task.modality, quick=quick)
    try:
        with _seeded(seed):
            attributions, milliseconds = timed(lambda: explain().detach(), len(prepared.inputs))
        seconds = milliseconds / 1e3
    except GradlensError as exc:
        return BenchRow(
            task.name, name, {m.name: math.nan for m in metrics}, math.nan, _one_line(exc)
        )
    context = Context(prepared, method, options, SETTINGS[quick], seed)
    scores = {}
    for metric in metrics:
        with _seeded(seed):
            scores[metric.name] = mean(metric.compute(context, attributions))
    return BenchRow(task.name, name, scores, seconds)
