"""The tiny CNN of the shapes benchmark and how it is trained: :class:`TinyCNN`, :func:`train`,
:func:`accuracy` and :func:`train_demo_model` (the model of the demo, the tutorials and the
figures).

The trained :class:`TinyCNN` reaches >= 95 % held-out accuracy on
:func:`gradlens.demos.shapes.make_shapes` images, and its last conv block (``model.features[-1]``,
named ``"features.3"``) keeps an 8 x 8 map at 64 x 64 input whose units see 37 x 37 pixels
-- a whole object -- so Grad-CAM on it lands on the object (the pointing game figures are
on the documentation's Performance page).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..dataset.run import show_progress
from .shapes import ShapesData, make_shapes
from .text_task import TextTaskData, TinyTextClassifier, make_text_task

__all__ = [
    "TinyCNN",
    "train",
    "accuracy",
    "Recipe",
    "FULL_RECIPE",
    "QUICK_RECIPE",
    "train_demo_model",
    "TEXT_RECIPE",
    "QUICK_TEXT_RECIPE",
    "train_text_model",
]


class TinyCNN(nn.Module):
    """A small conv net for the shapes images: conv blocks, global average pooling, linear.

    Modules (with the defaults, at 64 x 64 input):

    ======================  =====================================  ============
    name                    module                                 output
    ======================  =====================================  ============
    ``features.0``          conv 3x3 stride 2, BN, ReLU            16 x 32 x 32
    ``features.1``          conv 3x3, BN, ReLU, max-pool 2         32 x 16 x 16
    ``features.2``          conv 3x3, BN, ReLU, max-pool 2         64 x 8 x 8
    ``features.3``          conv 3x3, BN, ReLU                     64 x 8 x 8
    ``pool``                global average pooling                 64 x 1 x 1
    ``classifier``          linear                                 num_classes
    ======================  =====================================  ============

    Each block is an ``nn.Sequential`` of ``conv`` (index 0), ``bn`` (1), ``relu`` (2)
    and, in blocks 1 and 2, ``pool`` (3), so ``features.3.0`` is the last convolution. The
    natural CAM layer is the last block, ``model.features[-1]``, whose name is
    ``model.cam_layer_name`` (``"features.3"``): an 8 x 8 map (``H / 8`` x ``W / 8``) with a
    37 px receptive field. ReLUs are not in-place, so full backward hooks work on every
    module.

    Args:
        num_classes: size of the output.
        width: channels of the first block; the others have ``2 x`` and ``4 x`` that.
        in_channels: channels of the input image.

    Input ``(B, in_channels, H, W)`` (``H``, ``W`` >= 8), output logits ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int = 9, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int = 1, pool: bool = False) -> nn.Sequential:
            layers: list[nn.Module] = [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return nn.Sequential(*layers)

        self.features = nn.Sequential(
            block(in_channels, w, stride=2),
            block(w, 2 * w, pool=True),
            block(2 * w, 4 * w, pool=True),
            block(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    @property
    def cam_layer_name(self) -> str:
        """Name of the last conv block, the natural Grad-CAM layer (``"features.3"``)."""
        return f"features.{len(self.features) - 1}"

    @property
    def last_conv(self) -> nn.Module:
        """The last conv block, ``self.features[-1]``."""
        return self.features[-1]

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.pool(self.features(x)).flatten(1))
        return logits


Inputs = Tensor | Mapping[str, Tensor]
"""A model input: a tensor (``model(x)``) or keyword tensors (``model(**x)``)."""


def _tensors(data: ShapesData | TextTaskData | tuple[Inputs, Tensor]) -> tuple[Inputs, Tensor]:
    if isinstance(data, ShapesData):
        return data.images, data.labels
    if isinstance(data, TextTaskData):
        return data.inputs, data.labels
    inputs, labels = data
    return inputs, labels


def _logits(model: nn.Module, inputs: Inputs, index: Any, device: torch.device) -> Tensor:
    """The logits of the rows ``index`` of ``inputs``; a structured output (a Hugging Face
    ``ModelOutput``, a dict) gives its ``"logits"`` entry."""
    if isinstance(inputs, Mapping):
        output = model(**{key: value[index].to(device) for key, value in inputs.items()})
    else:
        output = model(inputs[index].to(device))
    logits: Tensor = output if isinstance(output, Tensor) else output["logits"]
    return logits


def train(
    model: nn.Module,
    data: ShapesData | TextTaskData | tuple[Inputs, Tensor],
    *,
    epochs: int = 6,
    batch_size: int = 32,
    lr: float = 5e-3,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` with Adam and cross-entropy under a one-cycle learning-rate schedule.

    The schedule (:class:`torch.optim.lr_scheduler.OneCycleLR`) warms the learning rate up
    to ``lr`` over the first 20 % of the steps, then anneals it to nearly zero (cosine);
    the warm-up is what lets the :class:`TinyCNN` learn the shapes in a couple hundred steps.

    Training runs on the device of the model's parameters. The batch order is drawn from
    a private generator seeded with ``seed``; the global RNG is not touched.

    Args:
        model: a classifier ``(B, ...) -> (B, num_classes)``, trained in place. It may
            return a structured output with a ``"logits"`` entry (a Hugging Face
            ``ModelOutput``).
        data: a :class:`ShapesData`, a :class:`~gradlens.demos.text_task.TextTaskData` (the model
            is called as ``model(input_ids=..., attention_mask=...)``), or an
            ``(inputs, labels (N,))`` pair whose inputs are a tensor ``(N, ...)`` or a
            mapping of keyword tensors ``(N, ...)``.
        epochs: passes over the data.
        batch_size: samples per step (the last, smaller batch of an epoch is kept).
        lr: the peak learning rate.
        seed: seed of the shuffling.
        progress: show a tqdm bar with the running loss and accuracy on stderr, when stderr
            is a terminal (in a log file its carriage-return updates would pile up as lines).

    Returns:
        The same ``model``, in eval mode.

    Raises:
        ValueError: no data, or ``epochs`` / ``batch_size`` below 1.
    """
    inputs, labels = _tensors(data)
    if len(labels) == 0 or epochs < 1 or batch_size < 1:
        raise ValueError(
            f"need data, epochs >= 1 and batch_size >= 1; got {len(labels)} samples, "
            f"epochs={epochs}, batch_size={batch_size}"
        )
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(labels) // batch_size)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    model.train()
    bar = tqdm(
        total=epochs * steps_per_epoch,
        disable=not show_progress(progress),
        desc="train",
        unit="step",
    )
    with bar:
        for epoch in range(epochs):
            order = torch.randperm(len(labels), generator=generator)
            correct = seen = 0
            total_loss = 0.0
            for start in range(0, len(labels), batch_size):
                index = order[start : start + batch_size]
                y = labels[index].to(device)
                logits = _logits(model, inputs, index, device)
                loss = F.cross_entropy(logits, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total_loss += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=total_loss / seen, acc=correct / seen)
    optimiser.zero_grad(set_to_none=True)
    return model.eval()


def accuracy(model: nn.Module, images: Inputs, labels: Tensor, *, batch_size: int = 256) -> float:
    """Fraction of ``images (N, C, H, W)`` whose top class is ``labels (N,)``.

    ``images`` may also be a mapping of keyword tensors ``(N, ...)`` (``model(**x)``, e.g.
    :attr:`gradlens.demos.text_task.TextTaskData.inputs`), and the model may return a structured
    output with a ``"logits"`` entry. Runs under ``torch.inference_mode()`` in the model's
    current mode (call ``eval()`` first for a model with BatchNorm or dropout). Returns a
    float in [0, 1] (``nan`` for no images).
    """
    if len(labels) == 0:
        return float("nan")
    device = next(model.parameters()).device
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            rows = slice(start, start + batch_size)
            y = labels[rows].to(device)
            correct += int((_logits(model, images, rows, device).argmax(1) == y).sum())
    return correct / len(labels)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How :func:`train_demo_model`, :func:`train_text_model` and
    :func:`gradlens.demos.tiny_vit.train_vit_model` build their data and train.

    Attributes:
        n_train: training samples (``make_shapes(n_train, seed=seed)``, or
            ``make_text_task``).
        n_test: held-out samples (``make_shapes(n_test, seed=seed + 1)``, or
            ``make_text_task``).
        epochs, batch_size, lr: passed to :func:`train`.
    """

    n_train: int
    n_test: int
    epochs: int
    batch_size: int
    lr: float


FULL_RECIPE = Recipe(n_train=4000, n_test=1000, epochs=5, batch_size=32, lr=1e-2)
"""The full benchmark: 625 steps.

Both recipes use a peak learning rate of ``1e-2``: with ``5e-3`` the model classifies as
well, but for some seeds it learns to recognise large squares by their outside edges, and
Grad-CAM's maximum then lands just outside them (the documentation's Performance page
has the figures)."""

QUICK_RECIPE = Recipe(n_train=2400, n_test=500, epochs=4, batch_size=32, lr=1e-2)
"""For demos and tests: 300 steps; the model still reaches >= 95 % held-out accuracy."""


M = TypeVar("M")


def seeded(build: Callable[[], M], seed: int) -> M:
    """``build()`` with the global RNG seeded to ``seed`` inside a fork, so that the caller's
    random state is left as it was (a model's initialisation from a seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def train_with_recipe(
    model: nn.Module,
    train_data: ShapesData | TextTaskData,
    recipe: Recipe,
    *,
    seed: int,
    progress: bool,
) -> None:
    """:func:`train` with the epochs, batch size and learning rate of ``recipe``."""
    train(
        model,
        train_data,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=seed,
        progress=progress,
    )


def train_demo_model(
    *, quick: bool = False, seed: int = 0, progress: bool = True
) -> tuple[TinyCNN, ShapesData, float]:
    """Generate shapes data, train a :class:`TinyCNN` on it and measure it on held-out data.

    Args:
        quick: use :data:`QUICK_RECIPE` instead of :data:`FULL_RECIPE`.
        seed: seeds the data (train ``seed``, test ``seed + 1``), the model's
            initialisation (inside a forked RNG; the global RNG is left as it was) and the
            shuffling.
        progress: show the training progress bar (when stderr is a terminal).

    Returns:
        ``(model, test_data, test_accuracy)`` with the model in eval mode on the CPU.
    """
    recipe = QUICK_RECIPE if quick else FULL_RECIPE
    train_data = make_shapes(recipe.n_train, seed=seed)
    test_data = make_shapes(recipe.n_test, seed=seed + 1)
    model = seeded(lambda: TinyCNN(num_classes=len(train_data.class_names)), seed)
    # oneDNN runs these small convolutions faster channels-last on CPU (docs/performance.md);
    # inputs may stay in either layout.
    model = model.to(memory_format=torch.channels_last)
    train_with_recipe(model, train_data, recipe, seed=seed, progress=progress)
    return model, test_data, accuracy(model, test_data.images, test_data.labels)


TEXT_RECIPE = Recipe(n_train=3000, n_test=1000, epochs=3, batch_size=32, lr=3e-3)
"""The synthetic text task (:func:`gradlens.demos.text_task.make_text_task`) for
:func:`train_text_model`: 282 steps of batch 32."""

QUICK_TEXT_RECIPE = Recipe(n_train=2000, n_test=500, epochs=3, batch_size=32, lr=3e-3)
"""For demos and tests: 189 steps."""


def train_text_model(
    recipe: Recipe = TEXT_RECIPE,
    *,
    model: nn.Module | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[nn.Module, TextTaskData, float]:
    """Generate the synthetic text task, train a classifier on it and measure it on held-out
    data.

    Args:
        recipe: the data sizes and training options (:data:`TEXT_RECIPE`,
            :data:`QUICK_TEXT_RECIPE` or your own :class:`Recipe`).
        model: the classifier to train in place: any model called as
            ``model(input_ids=..., attention_mask=...)`` that returns ``(B, 4)`` logits or
            a structured output with ``logits`` (e.g. a Hugging Face
            ``BertForSequenceClassification`` built from a config with ``vocab_size=64``
            and ``num_labels=4``). ``None``: a new
            :class:`~gradlens.demos.text_task.TinyTextClassifier`, initialised from ``seed``
            inside a forked RNG (the global RNG is left as it was).
        seed: seeds the data (train ``seed``, test ``seed + 1``), the new model's
            initialisation and the shuffling.
        progress: show the training progress bar (when stderr is a terminal).

    Returns:
        ``(model, test_data, test_accuracy)`` with the model in eval mode.
    """
    train_data = make_text_task(recipe.n_train, seed=seed)
    test_data = make_text_task(recipe.n_test, seed=seed + 1)
    if model is None:
        model = seeded(TinyTextClassifier, seed)
    train_with_recipe(model, train_data, recipe, seed=seed, progress=progress)
    return model, test_data, accuracy(model, test_data.inputs, test_data.labels)
