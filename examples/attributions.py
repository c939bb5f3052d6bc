"""Gradient attributions on the synthetic-shapes model: every method of ``gradlens.attribution``.

Trains the tiny CNN of ``gradlens.demos.training`` (``--quick``: one short epoch), computes
saliency, Input x Gradient, SmoothGrad, VarGrad, Integrated Gradients, Guided Backprop, Guided
Grad-CAM and Occlusion on held-out images, and writes ``attributions.png`` (images x methods)
and ``attributions.txt`` (Integrated Gradients' completeness error for each rule and number
of steps, and DeepLIFT's, DeepLiftShap's and GradientSHAP's summation-to-delta errors).

Run: ``python examples/attributions.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import parse_args, save_figure, shapes_model
from torch import Tensor, nn

import gradlens.viz
from gradlens.attribution import (
    RULES,
    deeplift,
    deeplift_shap,
    gradient_shap,
    guided_backprop,
    guided_gradcam,
    input_x_gradient,
    integrated_gradients,
    occlusion,
    saliency,
    smoothgrad,
    vargrad,
)
from gradlens.metrics import gaussian_blur


def every_method(model: nn.Module, images: Tensor, n: int, steps: int) -> dict[str, Tensor]:
    # --8<-- [start:methods]
    results = {
        "saliency": saliency(model, images),  # |d score / d x|, (B, 3, H, W)
        "input x grad": input_x_gradient(model, images),  # x * d score / d x
        "smoothgrad": smoothgrad(model, images, n=n, sigma=0.15, seed=0),
        "vargrad": vargrad(model, images, n=n, sigma=0.15, seed=0),
        "int. gradients": integrated_gradients(model, images, steps=steps),
        "guided BP": guided_backprop(model, images),
        "guided GradCAM": guided_gradcam(model, images, layer="features.3"),
        "occlusion": occlusion(model, images, window=8, stride=4),
    }
    # --8<-- [end:methods]
    return results


def options(model: nn.Module, images: Tensor) -> dict[str, object]:
    # --8<-- [start:options]
    signed = saliency(model, images, abs=False)  # keep the sign
    three_classes = saliency(model, images, target=[[0, 4, 8]] * len(images))  # (B, 3, 3, H, W)
    smooth_ig = smoothgrad(model, images, method=integrated_gradients, n=4, steps=8, seed=0)
    by_name = smoothgrad(model, images, method="input_x_gradient", n=4, seed=0)
    # --8<-- [end:options]
    return {
        "saliency(abs=False) has negative values": bool((signed < 0).any()),
        "3 targets per sample": tuple(three_classes.shape),
        "smoothgrad over integrated_gradients": tuple(smooth_ig.shape),
        "smoothgrad over 'input_x_gradient'": tuple(by_name.shape),
    }


def baselines(model: nn.Module, images: Tensor, steps: int) -> dict[str, float]:
    # --8<-- [start:baselines]
    black = integrated_gradients(model, images, steps=steps)  # zeros
    grey = integrated_gradients(model, images, baselines=0.5, steps=steps)  # a number
    blurred = integrated_gradients(  # a function of x
        model, images, baselines=lambda x: gaussian_blur(x, sigma=5.0), steps=steps
    )
    attributions, delta = integrated_gradients(model, images, steps=steps, return_delta=True)
    # delta = attributions.sum() - (f(x) - f(baseline)), per sample
    # --8<-- [end:baselines]
    assert torch.equal(attributions, black)
    return {
        "black": float(black.sum((1, 2, 3)).abs().mean()),
        "grey": float(grey.sum((1, 2, 3)).abs().mean()),
        "blurred": float(blurred.sum((1, 2, 3)).abs().mean()),
    }


def shapley_methods(model: nn.Module, images: Tensor, background: Tensor) -> dict[str, float]:
    """The largest |delta| / |f(x) - f(x')| of DeepLIFT, DeepLiftShap and GradientSHAP."""
    # --8<-- [start:deeplift]
    single, delta = deeplift(model, images, baselines=0.0, return_delta=True)  # (B, 3, H, W)
    # delta = attributions.sum() - (f(x) - f(baseline)): zero up to rounding
    averaged, shap_delta = deeplift_shap(  # over a distribution of N baselines (N, 3, H, W)
        model, images, baselines=background, return_delta=True
    )
    expected, mc_delta = gradient_shap(
        model, images, baselines=background, n=16, stdevs=0.1, seed=0, return_delta=True
    )
    # --8<-- [end:deeplift]
    with torch.inference_mode():
        logits = model(images)
        classes = logits.argmax(1)
        score = logits.gather(1, classes[:, None])[:, 0]
        at_zero = model(torch.zeros_like(images))[:, classes].diagonal()
        at_background = model(background)[:, classes].mean(0)
    return {
        "deeplift": float((delta.abs() / (score - at_zero).abs()).max()),
        "deeplift_shap": float((shap_delta.abs() / (score - at_background).abs()).max()),
        "gradient_shap (16 draws)": float((mc_delta.abs() / (score - at_background).abs()).max()),
    }


def completeness(model: nn.Module, images: Tensor, steps_list: list[int]) -> list[str]:
    """|delta| / |f(x) - f(x')| for each rule and number of steps (mean over images)."""
    with torch.inference_mode():
        logits = model(images)
        classes = logits.argmax(1)
        gap = (
            logits.gather(1, classes[:, None])[:, 0]
            - model(torch.zeros_like(images)).gather(1, classes[:, None])[:, 0]
        )
    lines = [f"{'rule':<18}" + "".join(f"{s:>10}" for s in steps_list)]
    for rule in RULES:
        row = []
        for steps in steps_list:
            _, delta = integrated_gradients(
                model, images, classes, steps=steps, rule=rule, return_delta=True
            )
            row.append(float((delta.abs() / gap.abs()).mean()))
        lines.append(f"{rule:<18}" + "".join(f"{r:>10.1e}" for r in row))
    return lines


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    model, test, accuracy = shapes_model(args.quick)
    shown = test[: 2 if args.quick else 5]
    n, steps = (4, 8) if args.quick else (50, 50)
    results = every_method(model, shown.images, n, steps)

    # --8<-- [start:figure]
    def per_pixel(a: Tensor, signed: bool) -> Tensor:
        """One value per pixel, clipped at the 99th percentile of |value| so that a few
        extreme pixels do not wash out the rest of the map."""
        m = a.sum(1) if signed else a.abs().sum(1)
        limit = m.abs().flatten(1).quantile(0.99, dim=1)[:, None, None]
        return torch.maximum(torch.minimum(m, limit), -limit)

    signed = {"input x grad", "int. gradients", "occlusion"}
    maps = {name: per_pixel(a, name in signed) for name, a in results.items()}
    fig = gradlens.viz.show(shown.images, maps, boxes=shown.boxes, panel_size=1.1)
    # signed maps (with negative values) get a diverging colour map centred at zero
    # --8<-- [end:figure]
    save_figure(fig, args.out / "attributions.png")

    lines = [
        f"TinyCNN held-out accuracy: {accuracy:.3f}",
        f"options: {options(model, shown.images[:2])}",
    ]
    lines += [
        f"mean |sum of IG attributions| per baseline: {baselines(model, shown.images[:2], steps)}"
    ]
    lines += ["Integrated Gradients, |delta| / |f(x) - f(0)|, by rule and steps:"]
    lines += completeness(
        model, test.images[: 2 if args.quick else 16], [4, 8] if args.quick else [4, 16, 64]
    )
    background = test.images[-8:]
    lines += [
        "DeepLIFT and SHAP, largest |delta| / |f(x) - f(x')|: "
        + str(shapley_methods(model, shown.images[:2], background))
    ]
    report = args.out / "attributions.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [args.out / "attributions.png", report]


if __name__ == "__main__":
    main()
