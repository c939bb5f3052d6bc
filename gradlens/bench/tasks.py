"""The three ground-truth tasks of ``gradlens bench``: how each trains its model, which
samples it explains and what the truth is.

* ``shapes-cnn``: the tiny CNN (:class:`~gradlens.demos.training.TinyCNN`) on the synthetic
  shapes (:mod:`gradlens.demos.shapes`); the truth is each object's mask ``(B, H, W)``.
* ``shapes-vit``: the tiny ViT (:class:`~gradlens.demos.tiny_vit.TinyViT`) on the same
  images and masks.
* ``text``: the tiny text transformer (:class:`~gradlens.demos.text_task.TinyTextClassifier`)
  on the synthetic trigger-token task (:mod:`gradlens.demos.text_task`); the truth is the
  trigger positions ``(B, T)``.

Each task trains from ``seed`` (data, initialisation and shuffling), so a task's model is
the same in every run with the same seed; the full run trains with the demos' recipes, the
quick run with :data:`QUICK_RECIPES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..demos.shapes import make_shapes
from ..demos.text_task import TinyTextClassifier, make_text_task
from ..demos.tiny_vit import VIT_RECIPE, TinyViT
from ..demos.training import (
    FULL_RECIPE,
    TEXT_RECIPE,
    Recipe,
    TinyCNN,
    accuracy,
    seeded,
    train_with_recipe,
)
from ..layering.discovery import default_layer

__all__ = [
    "Modality",
    "Prepared",
    "Task",
    "TASKS",
    "FULL_RECIPES",
    "QUICK_RECIPES",
    "SAMPLES",
]

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class Prepared:
    """A task's trained model and the held-out samples the bench explains.

    Attributes:
        model: the trained model, in eval mode.
        inputs: images ``(B, 3, H, W)`` or token ids ``(B, T)``.
        classes: ``(B,)`` the explained classes: the model's top class on each sample.
        truth: the ground truth: object masks ``(B, H, W)`` bool, or trigger positions
            ``(B, T)`` bool.
        attention_mask: ``(B, T)`` 1 on real tokens (text), else ``None``.
        layer: the layer of the methods that take one (:func:`gradlens.default_layer`),
            ``None`` for text.
        accuracy: the held-out accuracy of the model on its whole test set, in [0, 1].
    """

    model: nn.Module
    inputs: Tensor
    classes: Tensor
    truth: Tensor
    attention_mask: Tensor | None
    layer: str | None
    accuracy: float


@dataclass(frozen=True)
class Task:
    """One ground-truth task.

    Attributes:
        name: the name ``--tasks`` takes.
        modality: ``"image"`` (maps against masks) or ``"text"`` (token scores against
            triggers).
        transformer: the model is a transformer (the attention methods apply, and only the
            methods registered with ``transformers=True``).
        description: one line for the leaderboard.
        prepare: ``(quick, seed, progress) -> Prepared``: train and pick the samples.
    """

    name: str
    modality: Modality
    transformer: bool
    description: str
    prepare: Callable[[bool, int, bool], Prepared]


FULL_RECIPES: dict[str, Recipe] = {
    "shapes-cnn": FULL_RECIPE,
    "shapes-vit": VIT_RECIPE,
    "text": TEXT_RECIPE,
}
"""The full run's training: the demos' recipes."""

QUICK_RECIPES: dict[str, Recipe] = {
    "shapes-cnn": Recipe(n_train=1200, n_test=64, epochs=3, batch_size=32, lr=1e-2),
    "shapes-vit": Recipe(n_train=1200, n_test=64, epochs=3, batch_size=32, lr=3e-3),
    "text": Recipe(n_train=1200, n_test=64, epochs=2, batch_size=32, lr=3e-3),
}
"""``--quick``: a few seconds of training per task (the models are weaker, the table is a
smoke test, not a verdict)."""

SAMPLES = {False: 32, True: 4}
"""Held-out samples explained per task: full run, quick run."""


def _top_classes(model: nn.Module, inputs: Tensor, attention_mask: Tensor | None) -> Tensor:
    with torch.inference_mode():
        if attention_mask is None:
            logits: Tensor = model(inputs)
        else:
            logits = model(inputs, attention_mask=attention_mask)
    return logits.argmax(1).clone()  # an ordinary tensor, usable as a target under autograd


def _shapes(build: Callable[[int], nn.Module], task: str) -> Callable[[bool, int, bool], Prepared]:
    def prepare(quick: bool, seed: int, progress: bool) -> Prepared:
        recipe = (QUICK_RECIPES if quick else FULL_RECIPES)[task]
        train_data = make_shapes(recipe.n_train, seed=seed)
        test_data = make_shapes(recipe.n_test, seed=seed + 1)
        model = seeded(lambda: build(len(train_data.class_names)), seed)
        train_with_recipe(model, train_data, recipe, seed=seed, progress=progress)
        held_out = accuracy(model, test_data.images, test_data.labels)
        test = test_data[: SAMPLES[quick]]
        return Prepared(
            model=model,
            inputs=test.images,
            classes=_top_classes(model, test.images, None),
            truth=test.masks,
            attention_mask=None,
            layer=default_layer(model, test.images[:1]),
            accuracy=held_out,
        )

    return prepare


def _text(quick: bool, seed: int, progress: bool) -> Prepared:
    recipe = (QUICK_RECIPES if quick else FULL_RECIPES)["text"]
    train_data = make_text_task(recipe.n_train, seed=seed)
    test_data = make_text_task(recipe.n_test, seed=seed + 1)
    model = seeded(TinyTextClassifier, seed)
    train_with_recipe(model, train_data, recipe, seed=seed, progress=progress)
    held_out = accuracy(model, test_data.inputs, test_data.labels)
    test = test_data[: SAMPLES[quick]]
    return Prepared(
        model=model,
        inputs=test.input_ids,
        classes=_top_classes(model, test.input_ids, test.attention_mask),
        truth=test.triggers,
        attention_mask=test.attention_mask,
        layer=None,
        accuracy=held_out,
    )


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "shapes-cnn",
            "image",
            False,
            "tiny CNN on synthetic shapes, object masks as truth",
            _shapes(lambda n: TinyCNN(num_classes=n), "shapes-cnn"),
        ),
        Task(
            "shapes-vit",
            "image",
            True,
            "tiny ViT on synthetic shapes, object masks as truth",
            _shapes(lambda n: TinyViT(num_classes=n), "shapes-vit"),
        ),
        Task(
            "text",
            "text",
            True,
            "tiny text transformer on trigger tokens, trigger positions as truth",
            _text,
        ),
    )
}
"""Every task, by name, in the leaderboard's order."""
