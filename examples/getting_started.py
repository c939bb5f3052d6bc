"""Getting started: a first Grad-CAM in ten lines, and a first look at the Recorder.

Trains the tiny CNN of ``gradlens.demos.training`` on synthetic shapes
(``train_demo_model(quick=True)``; ``--quick`` trains even less), explains four held-out
images with Grad-CAM and writes ``first_gradcam.png``.

Run: ``python examples/getting_started.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import parse_args, save_figure, shapes_model

# --8<-- [start:imports]
import gradlens
import gradlens.viz
from gradlens.cam import gradcam
from gradlens.demos.training import train_demo_model

# --8<-- [end:imports]


def first_gradcam(out: Path, train_demo_model=train_demo_model) -> tuple:
    # --8<-- [start:first-gradcam]
    model, test, accuracy = train_demo_model(quick=True)  # a tiny CNN on synthetic shapes
    images = test.images[:4]  # (4, 3, 64, 64)
    maps = gradcam(model, images)  # (4, 64, 64), in [0, 1]
    fig = gradlens.viz.show(images, {"Grad-CAM": maps}, boxes=test.boxes[:4], ncols=4)
    fig.savefig(out / "first_gradcam.png")
    # --8<-- [end:first-gradcam]
    return maps, model, test


def first_record(model: torch.nn.Module, images: torch.Tensor) -> dict[str, tuple[int, ...]]:
    # --8<-- [start:first-record]
    print(gradlens.layers(model, images))  # names, types, output shapes

    with gradlens.record(model, ["features.2", "features.3"]) as rec:
        logits = model(images)
        rec.grad(logits[:, 0])  # d logit 0 / d activation, per image
    activation = rec["features.3"]  # (4, 64, 8, 8)
    gradient = rec.gradients["features.3"]  # same shape

    features = gradlens.extract(model, images, "features.1")  # no autograd tape; stops early
    # --8<-- [end:first-record]
    assert activation.shape == (4, 64, 8, 8), "update the comments above: the tiny CNN changed"
    return {
        "activation": tuple(activation.shape),
        "gradient": tuple(gradient.shape),
        "features.1": tuple(features["features.1"].shape),
    }


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    trainer = (lambda quick: shapes_model(True)) if args.quick else train_demo_model
    maps, model, test = first_gradcam(args.out, trainer)
    # keep the committed figure small (the snippet shows the plain savefig)
    fig = gradlens.viz.show(
        test.images[:4], {"Grad-CAM": maps}, boxes=test.boxes[:4], ncols=4, panel_size=1.6
    )
    save_figure(fig, args.out / "first_gradcam.png")
    shapes = first_record(model, test.images[:4])
    report = args.out / "getting_started.txt"
    report.write_text(f"maps: {tuple(maps.shape)}\n{shapes}\n")
    return [args.out / "first_gradcam.png", report]


if __name__ == "__main__":
    main()
