"""The CAM family on the synthetic-shapes model: every method of ``gradlens.cam.METHODS``.

Trains the tiny CNN of ``gradlens.demos.training`` (``--quick``: one short epoch), runs every
CAM method on held-out images, and writes ``cam_family.png`` (images x methods, ground-truth
box drawn) and ``cam_family.txt`` (shapes, and each method's pointing-game accuracy).

Run: ``python examples/cam_family.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import parse_args, save_figure, shapes_model
from torch import Tensor, nn

import gradlens.viz
from gradlens.cam import METHODS, cam, gradcam, scorecam
from gradlens.metrics import pointing_game


def every_method(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    # --8<-- [start:every-method]
    layer = "features.3"  # the last conv block of the tiny CNN (8 x 8 at 64 x 64)
    maps = {name: method(model, images, layer) for name, method in METHODS.items()}
    # each map: (B, 64, 64) float32 in [0, 1], upsampled to the input size
    # --8<-- [end:every-method]
    return maps


def options(model: nn.Module, images: Tensor) -> dict[str, tuple[int, ...]]:
    # --8<-- [start:options]
    maps = gradcam(model, images)  # layer=None: the default layer
    raw = gradcam(model, images, "features.3", upsample=False, normalize=False)  # (B, 8, 8)
    three = gradcam(model, images, "features.3", target=[[0, 4, 8]] * len(images))  # (B, 3, 64, 64)
    fused = gradcam(model, images, ["features.2", "features.3"])  # mean of the normalised maps
    each = gradcam(model, images, ["features.2", "features.3"], per_layer=True)  # {layer: maps}
    # --8<-- [end:options]
    assert raw.shape[1:] == (8, 8), "update the comments above: the tiny CNN changed"
    return {
        "gradcam(model, images)": tuple(maps.shape),
        "upsample=False, normalize=False": tuple(raw.shape),
        "target=[[0, 4, 8]] * B": tuple(three.shape),
        "two layers": tuple(fused.shape),
        "per_layer=True": {name: tuple(m.shape) for name, m in each.items()},
    }


def custom_variant(model: nn.Module, images: Tensor) -> float:
    # --8<-- [start:custom]
    def gradcam_weights(activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(dim=(2, 3))  # (B, C) channel weights

    def positive_gradient_map(activations: Tensor, gradients: Tensor) -> Tensor:
        return (gradients.clamp(min=0) * activations).sum(1)  # (B, h, w): a map (LayerCAM)

    mine = cam(model, images, "features.3", weights=gradcam_weights)
    assert torch.allclose(mine, gradcam(model, images, "features.3"), atol=1e-6)
    layercam_like = cam(model, images, "features.3", weights=positive_gradient_map)
    # --8<-- [end:custom]
    return float((layercam_like - METHODS["layercam"](model, images, "features.3")).abs().max())


def perturbation_options(model: nn.Module, images: Tensor) -> list[tuple[int, ...]]:
    # --8<-- [start:scorecam]
    maps = scorecam(model, images, "features.3", batch_size=128)  # 128 masked images per forward
    like_pytorch_grad_cam = scorecam(
        model, images, "features.3", score="channel_softmax", masks="align_corners"
    )
    # --8<-- [end:scorecam]
    return [tuple(maps.shape), tuple(like_pytorch_grad_cam.shape)]


def figure(images: Tensor, boxes: Tensor, maps: dict[str, Tensor], path: Path) -> None:
    # --8<-- [start:figure]
    fig = gradlens.viz.show(
        images, maps, boxes=boxes, panel_size=1.0
    )  # rows: images, columns: methods
    # --8<-- [end:figure]
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    model, test, accuracy = shapes_model(args.quick)
    shown = test[: 2 if args.quick else 5]
    maps = every_method(model, shown.images)
    figure(shown.images, shown.boxes, maps, args.out / "cam_family.png")

    scored = test[: 8 if args.quick else 200]
    lines = [
        f"TinyCNN held-out accuracy: {accuracy:.3f}",
        f"shapes: {options(model, scored.images[:2])}",
    ]
    difference = custom_variant(model, scored.images[:2])
    lines += [f"custom LayerCAM-like weights vs layercam, max |difference|: {difference:.1e}"]
    variants = perturbation_options(model, scored.images[:2])
    lines += [f"scorecam, default and as pytorch-grad-cam: {variants}"]
    lines += [
        f"pointing game on {len(scored)} held-out images (map peak within 4 px of the object):"
    ]
    for name, method in METHODS.items():
        hits = pointing_game(method(model, scored.images, "features.3"), scored.masks, tolerance=4)
        lines.append(f"  {name:<13} {hits.float().mean():.2f}")
    report = args.out / "cam_family.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [args.out / "cam_family.png", report]


if __name__ == "__main__":
    main()
