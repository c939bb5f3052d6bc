"""Equivalence with Captum, pytorch-grad-cam and torchcam on the same inputs.

Peers run on deep copies of the model (pytorch-grad-cam calls ``backward()`` and fills
``param.grad``; both it and torchcam hook the model). The layers compared are not
modified in place downstream (``layer4`` feeds ``avgpool``; ``layer3`` feeds convolutions),
where the peers' hooks see the true values. Maps are compared before resizing: raw maps at
the layer's resolution (``upsample=False, normalize=False``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import gradlens.cam as C

from . import zoo

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TARGETS = [3, 5]
LAYERS = ["layer4", "layer3"]
SMALL_LAYERS = ["block", "head"]


class SmallCNN(torch.nn.Module):
    """A few ReLU convolutions: cheap enough for the perturbation methods' many forwards."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(24, 32, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.head(self.block(self.stem(x)))).flatten(1))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return zoo.torchvision_cnn("resnet18")


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def x32() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def ours(method, model, x, layer, **options):
    return C.METHODS[method](model, x, layer, TARGETS, upsample=False, normalize=False, **options)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = (
        a.flatten(1) - a.flatten(1).mean(1, keepdim=True),
        b.flatten(1) - b.flatten(1).mean(1, keepdim=True),
    )
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).min())


# -- Captum -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, layer",
    [("resnet18", "layer4"), ("densenet121", "features"), ("mobilenet_v3_small", "features")],
)
def test_gradcam_equals_captum_layergradcam(arch, layer):
    captum_attr = pytest.importorskip("captum.attr")
    model = zoo.torchvision_cnn(arch)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    peer = copy.deepcopy(model)
    module = dict(peer.named_modules())[layer]
    theirs = captum_attr.LayerGradCam(peer, module).attribute(x, TARGETS, relu_attributions=True)
    theirs = theirs[:, 0].detach()
    mine = ours("gradcam", model, x, layer)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    # random-init MobileNet's features are ~1e-8, so also compare relative to the maps' scale
    scale = theirs.abs().max()
    assert scale > 0
    torch.testing.assert_close(mine / scale, theirs / scale, atol=1e-5, rtol=0)


# -- pytorch-grad-cam ---------------------------------------------------------------------


def pgc_raw(cls, model, x, layer, **attributes):
    """pytorch-grad-cam's map before its resizing (``get_cam_image``, then its ReLU), with
    the activations and gradients its own hooks recorded; also returns them."""
    peer = copy.deepcopy(model)
    module = dict(peer.named_modules())[layer]
    targets = [ClassifierOutputTarget(t) for t in TARGETS]
    with cls(peer, [module]) as cam:
        for key, value in attributes.items():
            setattr(cam, key, value)
        if cam.uses_gradients:
            cam(x, targets=targets)
        else:  # only the hooked forward; get_cam_image computes the weights
            cam.activations_and_grads(x)
        records = cam.activations_and_grads
        a = records.activations[0].numpy()
        g = records.gradients[0].numpy() if records.gradients else None
        raw = np.maximum(cam.get_cam_image(x, module, targets, a, g, False), 0)
    return torch.from_numpy(raw), torch.from_numpy(a), None if g is None else torch.from_numpy(g)


EXACT = {
    "gradcam": "GradCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("method", sorted(EXACT))
def test_equals_pytorch_grad_cam(method, layer, model, x):
    theirs, _, _ = pgc_raw(getattr(pgc, EXACT[method]), model, x, layer, batch_size=64)
    torch.testing.assert_close(ours(method, model, x, layer), theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", SMALL_LAYERS)
def test_ablationcam_equals_pytorch_grad_cam(layer, cnn, x32):
    theirs, _, _ = pgc_raw(pgc.AblationCAM, cnn, x32, layer)
    torch.testing.assert_close(ours("ablationcam", cnn, x32, layer), theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", SMALL_LAYERS)
def test_scorecam_reproduces_pytorch_grad_cam_with_its_weighting_and_masks(layer, cnn, x32):
    theirs, _, _ = pgc_raw(pgc.ScoreCAM, cnn, x32, layer, batch_size=64)
    mine = ours("scorecam", cnn, x32, layer, score="channel_softmax", masks="align_corners")
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", LAYERS)
def test_gradcampp_agrees_with_pytorch_grad_cam_up_to_its_epsilon(layer, model, x):
    theirs, _, _ = pgc_raw(pgc.GradCAMPlusPlus, model, x, layer)
    assert correlation(ours("gradcampp", model, x, layer), theirs) > 0.999

    def with_their_epsilon(A, G):  # pytorch-grad-cam adds 1e-6 to alpha's denominator
        g2 = G**2
        alpha = torch.where(
            G != 0, g2 / (2 * g2 + A.sum((2, 3), keepdim=True) * g2 * G + 1e-6), 0.0
        )
        return (alpha * G.clamp(min=0)).sum((2, 3))

    exact = C.cam(
        model, x, layer, TARGETS, weights=with_their_epsilon, upsample=False, normalize=False
    )
    torch.testing.assert_close(exact, theirs, atol=1e-5, rtol=1e-4)


def _their_sign_fixed(raw_projection: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's projection with gradlens' sign convention (positive correlation
    with the channel mean of ``values``), then ReLU."""
    mean = values.mean(1).flatten(1)
    agreement = (raw_projection.flatten(1) * (mean - mean.mean(1, keepdim=True))).sum(1)
    return (raw_projection * torch.where(agreement < 0, -1.0, 1.0)[:, None, None]).clamp(min=0)


@pytest.mark.parametrize("layer", LAYERS)
def test_eigencam_equals_pytorch_grad_cams_projection_with_the_sign_fixed(layer, model, x):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    _, a, _ = pgc_raw(pgc.EigenCAM, model, x, layer)
    expected = _their_sign_fixed(torch.from_numpy(get_2d_projection(a.numpy())), a)
    torch.testing.assert_close(ours("eigencam", model, x, layer), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layer", LAYERS)
def test_eigengradcam_equals_pytorch_grad_cams_projection_with_the_sign_fixed(layer, model, x):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    _, a, g = pgc_raw(pgc.EigenGradCAM, model, x, layer)
    expected = _their_sign_fixed(torch.from_numpy(get_2d_projection((g * a).numpy())), g * a)
    torch.testing.assert_close(
        ours("eigengradcam", model, x, layer), expected, atol=1e-5, rtol=1e-4
    )


# -- torchcam -----------------------------------------------------------------------------


def torchcam_raw(name, model, x, layer, **options):
    methods = pytest.importorskip("torchcam.methods")
    peer = copy.deepcopy(model)
    with getattr(methods, name)(peer, layer, **options) as extractor:
        scores = peer(x)
        return extractor(class_idx=TARGETS, scores=scores, normalized=False)[0].detach()


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize(
    "method, name", [("gradcam", "GradCAM"), ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")]
)
def test_equals_torchcam(method, name, layer, model, x):
    torch.testing.assert_close(
        ours(method, model, x, layer), torchcam_raw(name, model, x, layer), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("layer", SMALL_LAYERS)
def test_scorecam_reproduces_torchcam_with_its_weighting_and_masks(layer, cnn, x32):
    theirs = torchcam_raw("ScoreCAM", cnn, x32, layer, batch_size=64)
    mine = ours("scorecam", cnn, x32, layer, score="channel_softmax", masks="normalize_first")
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_torchcam_gradcampp_is_not_the_papers_closed_form(model, x):
    # documented in gradcampp's docstring: its alpha stays G^2 (an in-place division of a copy)
    theirs = torchcam_raw("GradCAMpp", model, x, "layer4")
    g2_relu_g = C.cam(
        model,
        x,
        "layer4",
        TARGETS,
        weights=lambda A, G: (G**2 * G.clamp(min=0)).sum((2, 3)),
        upsample=False,
        normalize=False,
    )
    torch.testing.assert_close(theirs, g2_relu_g, atol=1e-6, rtol=1e-4)
