"""Migrating from torchextractor, pytorch-grad-cam and Captum: their common snippets beside
the gradlens equivalents, run on the same random-init ResNet-18 and compared.

Writes ``migrating.txt`` with the largest difference (or the correlation) of each pair.

Run: ``python examples/migrating.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from _common import parse_args
from torch import Tensor, nn

import gradlens
import gradlens.viz
from gradlens.attribution import (
    deeplift,
    deeplift_shap,
    gradient_shap,
    guided_backprop,
    integrated_gradients,
    layer_integrated_gradients,
    occlusion,
    saliency,
    smoothgrad,
)
from gradlens.cam import METHODS, gradcam


def largest(a, b) -> float:
    return float((torch.as_tensor(np.asarray(a)) - torch.as_tensor(np.asarray(b))).abs().max())


def correlation(a, b) -> float:
    a, b = (
        torch.as_tensor(np.asarray(a)).flatten().double(),
        torch.as_tensor(np.asarray(b)).flatten().double(),
    )
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


# -- torchextractor ----------------------------------------------------------------------------


def torchextractor_pairs(model: nn.Module, x: Tensor) -> dict[str, float]:
    # --8<-- [start:tx-theirs]
    import torchextractor as tx

    names = tx.list_module_names(model)
    extractor = tx.Extractor(model, ["layer1", "layer4"])
    output, features = extractor(x)
    # --8<-- [end:tx-theirs]
    del extractor
    # --8<-- [start:tx-ours]
    names = gradlens.layers(model).names()  # or print(gradlens.layers(model, x))
    extractor = gradlens.Extractor(model, ["layer1", "layer4"])
    output, features_gl = extractor(x)  # hooks only during the call

    features_gl = gradlens.extract(model, x, ["layer1", "layer4"])  # no tape, stops after layer4
    # --8<-- [end:tx-ours]
    assert "layer4.1.conv2" in names
    return {
        name: largest(features[name].detach(), features_gl[name]) for name in ["layer1", "layer4"]
    }


# -- pytorch-grad-cam -----------------------------------------------------------------------------


def grad_cam_pairs(model: nn.Module, x: Tensor, image: np.ndarray, quick: bool) -> dict[str, float]:
    # --8<-- [start:pgc-theirs]
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        grayscale_cam = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)] * len(x))
    visualization = show_cam_on_image(image, grayscale_cam[0], use_rgb=True)
    # --8<-- [end:pgc-theirs]
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward filled every param.grad
    # --8<-- [start:pgc-ours]
    maps = gradcam(model, x, "layer4.1", target=281)  # (B, H, W) in [0, 1], a tensor
    visualization = gradlens.viz.overlay(image, maps[0])  # (H, W, 3) uint8
    # --8<-- [end:pgc-ours]
    assert visualization.shape == (*image.shape[:2], 3)
    results = {"GradCAM": correlation(grayscale_cam, maps)}
    results.update(all_cams(model, x, quick))
    return results


def all_cams(model: nn.Module, x: Tensor, quick: bool) -> dict[str, float]:
    # --8<-- [start:pgc-all]
    import pytorch_grad_cam as pgc

    theirs = {
        "gradcam": pgc.GradCAM,
        "gradcampp": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM,
        "hirescam": pgc.HiResCAM,
        "eigencam": pgc.EigenCAM,
        "eigengradcam": pgc.EigenGradCAM,
        "scorecam": pgc.ScoreCAM,
        "ablationcam": pgc.AblationCAM,
    }
    # --8<-- [end:pgc-all]
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if quick:  # their Score-CAM and Ablation-CAM take a minute on this machine
        theirs = {name: theirs[name] for name in ["gradcampp", "layercam", "eigencam"]}
    results = {}
    for name, cls in theirs.items():
        with cls(model=model, target_layers=[model.layer4[-1]]) as cam:
            if hasattr(cam, "batch_size"):
                cam.batch_size = 64
            reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)] * len(x))
        model.zero_grad(set_to_none=True)
        # pytorch-grad-cam's Score-CAM: softmax over channels, masks upsampled with
        # align_corners=True
        options = (
            {"score": "channel_softmax", "masks": "align_corners"} if name == "scorecam" else {}
        )
        ours = METHODS[name](model, x, "layer4.1", target=281, **options)
        results[name] = correlation(reference, ours)
    return results


def vit_reshape() -> float:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=64,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    ).eval()
    torch.nn.init.normal_(
        vit.heads.head.weight, std=0.5
    )  # torchvision initialises the head to zeros
    x = torch.rand(2, 3, 64, 64)
    # --8<-- [start:pgc-vit-theirs]
    from pytorch_grad_cam import GradCAM

    def reshape_transform(tensor, height=8, width=8):
        result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    with GradCAM(
        model=vit, target_layers=[vit.encoder.layers[-1].ln_1], reshape_transform=reshape_transform
    ) as cam:
        grayscale_cam = cam(input_tensor=x, targets=None)
    # --8<-- [end:pgc-vit-theirs]
    # --8<-- [start:pgc-vit-ours]
    maps = gradcam(
        vit, x, "encoder.layers.encoder_layer_1.ln_1"
    )  # class token + 8 x 8 grid: automatic
    # --8<-- [end:pgc-vit-ours]
    return correlation(grayscale_cam, maps)


# -- Captum -----------------------------------------------------------------------------------


def captum_pairs(model: nn.Module, x: Tensor) -> dict[str, float]:
    results = {}
    # --8<-- [start:captum-gradcam]
    from captum.attr import LayerGradCam

    theirs = LayerGradCam(model, model.layer4).attribute(
        x, target=3, relu_attributions=True
    )  # (B, 1, h, w)
    ours = gradcam(model, x, "layer4", target=3, upsample=False, normalize=False)  # (B, h, w)
    # --8<-- [end:captum-gradcam]
    results["LayerGradCam"] = largest(theirs[:, 0].detach(), ours)

    # --8<-- [start:captum-ig]
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(model)
    theirs, delta = ig.attribute(
        x,
        baselines=torch.zeros_like(x),
        target=3,
        n_steps=50,
        method="gausslegendre",
        return_convergence_delta=True,
    )
    ours, our_delta = integrated_gradients(model, x, target=3, steps=50, return_delta=True)
    # --8<-- [end:captum-ig]
    results["IntegratedGradients"] = largest(theirs.detach(), ours)

    # --8<-- [start:captum-simple]
    from captum.attr import GuidedBackprop, Occlusion, Saliency

    pairs = {
        "Saliency": (Saliency(model).attribute(x, target=3), saliency(model, x, target=3)),
        "GuidedBackprop": (
            GuidedBackprop(model).attribute(x, target=3),
            guided_backprop(model, x, target=3),
        ),
        "Occlusion": (
            Occlusion(model).attribute(
                x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), target=3, baselines=0
            ),
            occlusion(model, x, target=3, window=(16, 16), stride=(8, 8), baseline=0),
        ),
    }
    # --8<-- [end:captum-simple]
    results.update({name: largest(a.detach(), b) for name, (a, b) in pairs.items()})

    # --8<-- [start:captum-noise]
    from captum.attr import NoiseTunnel

    sigma = 0.15  # gradlens: a fraction of each sample's range
    stdevs = sigma * float(x.max() - x.min())  # Captum: one absolute value
    torch.manual_seed(0)
    theirs = NoiseTunnel(Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=8, nt_samples_batch_size=4, stdevs=stdevs, target=3
    )
    torch.manual_seed(0)
    ours = smoothgrad(model, x, target=3, n=8, sigma=sigma, batch_size=4 * len(x))
    # --8<-- [end:captum-noise]
    results["NoiseTunnel (smoothgrad)"] = largest(theirs.detach(), ours)
    model.zero_grad(set_to_none=True)
    return results


def captum_text() -> float:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(5 * 8, 2)).eval()
    ids = torch.randint(1, 50, (2, 5))
    # --8<-- [start:captum-lig]
    from captum.attr import LayerIntegratedGradients

    lig = LayerIntegratedGradients(model, model[0])
    theirs = lig.attribute(ids, baselines=torch.zeros_like(ids), target=1)
    ours = layer_integrated_gradients(model, ids, "0", target=1)  # baseline: token id 0
    # --8<-- [end:captum-lig]
    return largest(theirs.detach(), ours)


def captum_deeplift() -> dict[str, float]:
    """DeepLift and DeepLiftShap on a CNN whose ReLUs each run once (Captum refuses the
    ResNet above: its blocks call one ReLU twice), and GradientShap on a linear model."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    ).eval()  # fmt: skip
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    background = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    linear = nn.Linear(3 * 16 * 16, 10).eval()
    rows, start = x.flatten(1), background[:1].flatten(1)
    # --8<-- [start:captum-deeplift]
    from captum.attr import DeepLift, DeepLiftShap, GradientShap

    pairs = {
        "DeepLift": (
            DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=3),
            deeplift(model, x, target=3),  # baseline: zeros
        ),
        "DeepLiftShap": (
            DeepLiftShap(model).attribute(x, baselines=background, target=3),
            deeplift_shap(model, x, target=3, baselines=background),  # (N, 3, H, W)
        ),
        "GradientShap (linear model, one baseline)": (
            GradientShap(linear).attribute(rows, baselines=start, target=3, n_samples=5),
            gradient_shap(linear, rows, target=3, baselines=start, n=5, seed=0),
        ),
    }
    # --8<-- [end:captum-deeplift]
    return {name: largest(a.detach(), b) for name, (a, b) in pairs.items()}


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    size = 64 if args.quick else 224
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, :2] = torch.tensor([0.0, 1.0])  # every sample spans exactly [0, 1]
    image = x[0].permute(1, 2, 0).numpy()  # an RGB image in [0, 1], (H, W, 3)

    lines = ["torchextractor vs gradlens, max |difference| of features:"]
    lines += [f"  {k}: {v:.1e}" for k, v in torchextractor_pairs(model, x).items()]
    lines += ["pytorch-grad-cam vs gradlens (layer4[-1] = 'layer4.1'), correlation of the maps:"]
    for name, value in grad_cam_pairs(model, x, image, args.quick).items():
        note = (
            "  (pytorch-grad-cam leaves the SVD's sign arbitrary)"
            if name.startswith("eigen")
            else ""
        )
        lines.append(f"  {name}: {value:.4f}{note}")
    lines += [f"  ViT with reshape_transform: {vit_reshape():.4f}"]
    lines += ["Captum vs gradlens, max |difference|:"]
    lines += [f"  {k}: {v:.1e}" for k, v in captum_pairs(model, x).items()]
    lines += [f"  LayerIntegratedGradients: {captum_text():.1e}"]
    lines += [f"  {k}: {v:.1e}" for k, v in captum_deeplift().items()]
    assert all(p.grad is None for p in model.parameters())
    report = args.out / "migrating.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [report]


if __name__ == "__main__":
    main()
