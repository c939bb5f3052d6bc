"""Targets: what an explanation is about -- the top class, given classes, several classes per
image, probabilities, a segmentation region, a regression output -- and the errors for targets
that do not fit.

Writes ``targets.txt`` (result shapes and error messages) for ``docs/targets.md``.

Run: ``python examples/targets.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import parse_args, shapes_model
from torch import Tensor, nn

import gradlens
from gradlens import targets
from gradlens.attribution import saliency
from gradlens.cam import gradcam


def class_targets(model: nn.Module, images: Tensor) -> dict[str, tuple[int, ...]]:
    # --8<-- [start:classes]
    top = gradcam(model, images)  # target=None: each image's top class
    red_circle = gradcam(model, images, target=0)  # class 0 for every image
    per_image = gradcam(
        model, images, target=[0, 4, 8, 2]
    )  # one class per image (a list or tensor)
    three_each = gradcam(model, images, target=[[0, 1, 2]] * 4)  # (B, K): K maps per image,
    #                                                            one forward, one batched backward
    # --8<-- [end:classes]
    return {
        "target=None": tuple(top.shape),
        "target=0": tuple(red_circle.shape),
        "target=[0, 4, 8, 2]": tuple(per_image.shape),
        "target=[[0, 1, 2]] * 4": tuple(three_each.shape),
    }


def helper_targets(model: nn.Module, images: Tensor) -> dict[str, tuple[int, ...]]:
    # --8<-- [start:helpers]
    probability = gradcam(model, images, target=targets.probability(3))  # softmax(logits)[:, 3]
    margin = saliency(
        model, images, target=lambda logits: logits[:, 3] - logits[:, 5]
    )  # any (B,) score
    # --8<-- [end:helpers]
    return {
        "targets.probability(3)": tuple(probability.shape),
        "lambda logits: ...": tuple(margin.shape),
    }


# --8<-- [start:segmentation-model]
class TinySegmenter(nn.Module):
    """(B, 3, H, W) -> {"out": (B, classes, H, W)}, like torchvision's segmentation models."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        )
        self.classifier = nn.Conv2d(16, classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.classifier(self.body(x))}


# --8<-- [end:segmentation-model]


def segmentation_target(images: Tensor) -> tuple[int, ...]:
    torch.manual_seed(0)
    segmenter = TinySegmenter().eval()
    # --8<-- [start:segmentation]
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[16:48, 16:48] = True  # the pixels whose class-2 logits we explain
    maps = gradcam(
        segmenter, images, "body", target=targets.segmentation(2, region, output_spec="out")
    )
    # --8<-- [end:segmentation]
    return tuple(maps.shape)


def regression_target() -> tuple[int, ...]:
    torch.manual_seed(0)
    # --8<-- [start:regression]
    regressor = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)).eval()  # 3 outputs
    rows = torch.randn(8, 10)
    attributions = saliency(regressor, rows, target=targets.regression(1), abs=False)  # output 1
    # --8<-- [end:regression]
    return tuple(attributions.shape)


def errors(model: nn.Module, images: Tensor) -> list[str]:
    messages = []
    # --8<-- [start:errors]
    for bad in (
        9,
        [0, 1],
        lambda logits: logits.sum(),
    ):  # out of range; 2 targets for 4 images; a scalar
        try:
            gradcam(model, images, target=bad)
        except gradlens.TargetError as error:
            messages.append(str(error))
    # --8<-- [end:errors]
    return messages


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    model, test, _ = shapes_model(args.quick)
    images = test.images[:4]
    lines = [f"{k}: {v}" for k, v in class_targets(model, images).items()]
    lines += [f"{k}: {v}" for k, v in helper_targets(model, images).items()]
    lines += [
        f"segmentation target: {segmentation_target(images)}",
        f"regression target: {regression_target()}",
    ]
    lines += ["", "TargetError messages:", *errors(model, images)]
    report = args.out / "targets.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [report]


if __name__ == "__main__":
    main()
