"""Shared by the example scripts: their command-line options and a trained shapes model.

Every example accepts ``--quick`` (a fast smoke run: small inputs, a barely trained model;
the test suite runs every example this way) and ``--out DIR`` (where figures and reports
go). The figures in ``docs/figures`` are made with ``python examples/NAME.py --out docs/figures``.
"""

from __future__ import annotations

import argparse
import functools
import io
from pathlib import Path

import torch
from PIL import Image

from gradlens.demos import shapes, training


def parse_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    """``--quick`` and ``--out`` (created if missing) for an example script."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (as in the tests)")
    parser.add_argument("--out", type=Path, default=Path("example-output"), help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


@functools.lru_cache(maxsize=2)
def shapes_model(quick: bool) -> tuple[training.TinyCNN, shapes.ShapesData, float]:
    """A :class:`~gradlens.demos.training.TinyCNN` trained on synthetic shapes, its held-out data
    and accuracy.

    The full run is ``gradlens.demos.training.train_demo_model()`` (>= 95 % held-out accuracy in
    about a minute); ``quick`` trains one short epoch, enough to exercise the code paths.
    Cached, so that several examples run in one process train only once.
    """
    if not quick:
        return training.train_demo_model(seed=0, progress=False)
    train_data, test_data = shapes.make_shapes(256, seed=0), shapes.make_shapes(64, seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = training.TinyCNN(num_classes=len(train_data.class_names))
    training.train(model, train_data, epochs=1, progress=False)
    return model, test_data, training.accuracy(model, test_data.images, test_data.labels)


def save_figure(fig, path: Path, *, dpi: int = 80, colours: int = 128) -> Path:
    """Save a matplotlib figure as a palette PNG (a few tens of KB, small enough to commit)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    image = (
        Image.open(buffer).convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    )
    image.save(path, optimize=True)
    return path
