"""The text demo (``gradlens demo --text``): every per-token attribution method on a tiny
transformer trained here, scored against the ground truth of the synthetic text task.

On a fresh machine, with nothing downloaded: generate the synthetic text task
(:mod:`gradlens.demos.text_task`), train the :class:`~gradlens.demos.text_task.TinyTextClassifier`
(:func:`gradlens.demos.training.train_text_model`), then run every attribution method that
:func:`gradlens.token_attributions` can run (the registered attribution methods that need
no layer of their own, :func:`text_methods`), each with its registered quick options
(except occlusion's image windows: it occludes one token at a time), on
the held-out sequences, explaining the predicted class. Each is scored with
(:mod:`gradlens.metrics`):

* localisation: the share of sequences whose top-scoring token is a trigger
  (:func:`~gradlens.metrics.token_localization`; higher is better);
* ERASER comprehensiveness and sufficiency over ERASER's bins, tokens deleted
  (:func:`~gradlens.metrics.comprehensiveness`, higher is better;
  :func:`~gradlens.metrics.sufficiency`, lower is better);
* the model-parameter randomisation sanity check: the Spearman correlation over the real
  tokens between the absolute scores of the trained model and of the fully re-initialised
  one (:func:`~gradlens.metrics.randomization_test` with every layer re-initialised in one
  step; lower is better);
* the time per sequence.

Writes ``demo-text.png`` (the tokens of two held-out sequences coloured by each method's
scores, :func:`gradlens.viz.text`) and ``metrics-text.csv``, and prints the table
(:func:`gradlens.demos.runner.run`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from .. import metrics, registry, viz
from ..registry import INFO
from ..text.tokens import token_attributions
from .runner import Plan, Trained, run, timed
from .text_task import TextTaskData
from .training import QUICK_TEXT_RECIPE, TEXT_RECIPE, train_text_model

__all__ = ["TextDemoRow", "TextDemoResult", "run_text_demo", "text_methods"]


@dataclass
class TextDemoRow:
    """One method's scores (the columns of ``metrics-text.csv``): higher localisation and
    comprehensiveness, lower sufficiency and sanity correlation are better."""

    method: str
    localization: float
    comprehensiveness: float
    sufficiency: float
    sanity_spearman: float
    ms_per_sample: float


@dataclass
class TextDemoResult:
    """What the text demo produced: the held-out accuracy, the training wall time (s), the
    table rows and the files written."""

    accuracy: float
    train_seconds: float
    rows: list[TextDemoRow]
    figure: Path
    table: Path


def text_methods() -> list[str]:
    """The registered attribution methods :func:`gradlens.token_attributions` runs: those
    that need no layer of their own and explain transformers, in registration order."""
    return [
        name for name in registry.names("attribution", needs_layer=False) if INFO[name].transformers
    ]


def _explainer(name: str, attention_mask: Tensor) -> Callable[..., Tensor]:
    """``explain(model, input_ids, target) -> (B, 1, T)`` scores of method ``name`` with
    its quick options but image windows (one map row per sequence, the layout the
    randomisation test reads)."""
    # occlusion's quick windows are image windows; token_attributions occludes one whole
    # token at a time when given none
    options = {k: v for k, v in INFO[name].quick_options.items() if k not in ("window", "stride")}

    def explain(model: nn.Module, input_ids: Tensor, target: Any = None) -> Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask[: len(input_ids)]}
        scores: Tensor = token_attributions(model, inputs, target, method=name, **options)
        return scores[:, None, :]

    return explain


def _sanity(
    model: nn.Module,
    explain: Callable[..., Tensor],
    input_ids: Tensor,
    real: Tensor,
    classes: Tensor,
    seed: int,
) -> float:
    """The mean Spearman correlation, over each sequence's real tokens, of the absolute
    scores before and after re-initialising the whole model (``nan`` rows count as 0)."""
    # layers=[""] re-initialises the whole model at once: the cascade's last step
    result = metrics.randomization_test(
        model, input_ids, explain, classes, layers=[""], seed=seed, keep_maps=True
    )
    assert result.maps is not None
    before, after = result.original_maps[:, 0], result.maps[-1][:, 0]
    correlations = [
        metrics.spearman(before[b, real[b]].abs()[None], after[b, real[b]].abs()[None]).item()
        for b in range(len(input_ids))
    ]
    return sum(0.0 if math.isnan(c) else c for c in correlations) / len(correlations)


def _plan(
    trained: Trained[nn.Module, TextTaskData], *, quick: bool, seed: int
) -> Plan[TextDemoRow, Tensor]:
    """The text demo's methods (:func:`text_methods`), how each is scored, explaining the
    predicted class, and the figure (two held-out sequences, one row per method)."""
    model = trained.model
    n_eval, n_sanity = (96, 16) if quick else (len(trained.test), 64)
    data = trained.test[:n_eval]
    ids, mask, real = data.input_ids, data.attention_mask, data.attention_mask.bool()
    with torch.inference_mode():
        classes = model(ids, attention_mask=mask).argmax(1)
    classes = classes.clone()  # an ordinary tensor, usable as a target in autograd
    methods = text_methods()

    def score(name: str) -> tuple[TextDemoRow, Tensor]:
        explain = _explainer(name, mask)
        scores, ms = timed(lambda: explain(model, ids, classes)[:, 0], n_eval)
        eraser: dict[str, Any] = {"attention_mask": mask}
        row = TextDemoRow(
            name,
            metrics.token_localization(scores, data.triggers, mask).float().mean().item(),
            metrics.comprehensiveness(model, ids, scores, classes, **eraser).mean().item(),
            metrics.sufficiency(model, ids, scores, classes, **eraser).mean().item(),
            _sanity(model, explain, ids[:n_sanity], real[:n_sanity], classes[:n_sanity], seed),
            ms,
        )
        return row, scores[:2]

    def draw(shown: dict[str, Tensor]) -> Figure:
        shows = [(b, name) for b in range(2) for name in methods]
        words = [[data.vocabulary[i] for i in ids[b].tolist()] for b, _ in shows]  # with padding
        return viz.text(
            words,
            torch.stack([shown[name][b] for b, name in shows]),
            torch.stack([mask[b] for b, _ in shows]),
            titles=[f"{name}: sequence {b}, class {int(data.labels[b])}" for b, name in shows],
        )

    return Plan(
        intro=(
            f"tiny text classifier: held-out accuracy {trained.accuracy:.3f} after "
            f"{trained.seconds:.0f} s of training; scoring {len(methods)} methods on "
            f"{n_eval} sequences"
        ),
        methods={name: partial(score, name) for name in methods},
        draw=draw,
    )


def run_text_demo(
    out: str | Path = "gradlens-demo",
    *,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
) -> TextDemoResult:
    """Train the tiny text classifier on the synthetic text task and score every per-token
    attribution method.

    Args:
        out: output folder (created): ``demo-text.png`` (two sequences, one row per method)
            and ``metrics-text.csv``.
        seed: seeds the data, the training and the randomisation test.
        quick: the quick recipe (:data:`~gradlens.demos.training.QUICK_TEXT_RECIPE`) and fewer
            held-out sequences.
        progress: show the training progress bar (when stderr is a terminal).

    Returns:
        A :class:`TextDemoResult`; the table is also printed.
    """
    recipe = QUICK_TEXT_RECIPE if quick else TEXT_RECIPE
    report = run(
        out,
        train=lambda: train_text_model(recipe, seed=seed, progress=progress),
        plan=partial(_plan, quick=quick, seed=seed),
        figure_name="demo-text.png",
        table_name="metrics-text.csv",
    )
    trained = report.trained
    return TextDemoResult(
        trained.accuracy, trained.seconds, report.rows, report.figure, report.table
    )
