"""CAMs across architectures and calling contexts: transformers (token and channels-last
layouts), train mode, no_grad / inference_mode, frozen models, low precision,
channels-last memory, several and keyword inputs, structured outputs, GPU."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import gradlens
import gradlens.cam as C
from gradlens.registry import CAM_METHODS

from . import zoo
from .contract_support import assert_unchanged, snapshot

VIT_LAYER = "encoder.layers.encoder_layer_1.ln_1"


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    # 32x32 images, 8x8 patches: 16 tokens + a class token, width 32; a random head (not
    # torchvision's zeros, which make every score 0)
    return zoo.torchvision_vit(head_seed=0)


@pytest.fixture(scope="module")
def vit_x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    return zoo.torchvision_swin()


@pytest.fixture(scope="module")
def swin_x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = (
        a.flatten(1) - a.flatten(1).mean(1, keepdim=True),
        b.flatten(1) - b.flatten(1).mean(1, keepdim=True),
    )
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).min())


# -- transformers -------------------------------------------------------------------------


def test_vit_tokens_become_a_grid_without_the_class_token(vit, vit_x):
    def by_hand(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    auto = C.gradcam(vit, vit_x, VIT_LAYER, upsample=False, normalize=False)
    assert auto.shape == (2, 4, 4) and (auto.flatten(1).amax(1) > 0).all()
    torch.testing.assert_close(
        auto, C.gradcam(vit, vit_x, VIT_LAYER, reshape=by_hand, upsample=False, normalize=False)
    )
    assert C.gradcam(vit, vit_x, VIT_LAYER).shape == (2, 32, 32)


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_every_method_works_on_vit_tokens(method, vit, vit_x):
    maps = (
        CAM_METHODS[method](vit, vit_x, "encoder.layers.encoder_layer_1", batch_size=16)
        if method in ("scorecam", "ablationcam")
        else CAM_METHODS[method](vit, vit_x, "encoder.layers.encoder_layer_1")
    )
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


def test_ablationcam_with_a_custom_layout_ablates_only_the_mapped_elements(vit, vit_x):
    def patches_only(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    # the next layer's attention mixes patches into the class token
    layer = "encoder.layers.encoder_layer_0"
    options = dict(reshape=patches_only, upsample=False, normalize=False)
    custom = C.ablationcam(vit, vit_x, layer, **options)
    torch.testing.assert_close(
        custom,
        C.ablationcam(vit, vit_x, layer, reuse_upstream=False, **options),
        atol=1e-5,
        rtol=1e-4,
    )
    # the automatic layout ablates the class token's channel too, so the maps differ
    assert not torch.allclose(
        custom, C.ablationcam(vit, vit_x, layer, upsample=False, normalize=False)
    )


def test_a_token_count_that_is_not_a_grid_suggests_reshape(vit):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="reshape="):
        C.gradcam(vit, x, "encoder.layers.encoder_layer_1", reshape=lambda t: t[:, 1:])


def test_swin_channels_last_outputs_are_recognised(swin, swin_x):
    # 'norm' returns (B, 8, 8, 48); 'permute' returns the same values as (B, 48, 8, 8)
    nhwc = C.gradcam(swin, swin_x, "norm", 1)
    torch.testing.assert_close(nhwc, C.gradcam(swin, swin_x, "permute", 1))
    torch.testing.assert_close(nhwc, C.gradcam(swin, swin_x, "norm", 1, reshape="nhwc"))
    assert nhwc.shape == (2, 64, 64)


def test_swin_inner_block_and_default_layer(swin, swin_x):
    assert gradlens.default_layer(swin, swin_x) == "permute"
    assert C.layercam(swin, swin_x, "features.1", upsample=False).shape == (2, 16, 16)


# -- other CNNs ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["densenet121", "mobilenet_v3_small"])
@pytest.mark.parametrize("method", ["gradcampp", "layercam", "eigencam"])
def test_densenet_and_mobilenet(arch, method):
    model = zoo.torchvision_cnn(arch)
    x = torch.randn(2, 3, 64, 64)
    before = snapshot(model)
    maps = CAM_METHODS[method](model, x, "features")
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
    assert_unchanged(before, snapshot(model))


# -- modes and contexts -------------------------------------------------------------------


def test_train_mode_keeps_mode_and_batchnorm_statistics(resnet18, image_batch):
    model = copy.deepcopy(resnet18).train()
    before = snapshot(model)
    maps = C.gradcam(model, image_batch, "layer4")
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
    assert model.training and all(m.training for m in model.modules())
    assert_unchanged(before, snapshot(model))


def test_inside_no_grad(resnet18, image_batch):
    expected = C.gradcam(resnet18, image_batch, "layer4")
    with torch.no_grad():
        torch.testing.assert_close(C.gradcam(resnet18, image_batch, "layer4"), expected)


def test_inside_inference_mode_and_with_inference_tensors(resnet18, image_batch):
    expected = C.gradcam(resnet18, image_batch, "layer4")
    with torch.inference_mode():
        inference_x = image_batch.clone()
        torch.testing.assert_close(C.gradcam(resnet18, inference_x, "layer4"), expected)
    torch.testing.assert_close(C.gradcam(resnet18, inference_x, "layer4"), expected)


def test_frozen_model(resnet18, image_batch):
    frozen = copy.deepcopy(resnet18).requires_grad_(False)
    torch.testing.assert_close(
        C.gradcam(frozen, image_batch, "layer4"), C.gradcam(resnet18, image_batch, "layer4")
    )
    assert not any(p.requires_grad for p in frozen.parameters())


def test_an_input_requiring_grad_gets_no_gradient(resnet18, image_batch):
    x = image_batch.clone().requires_grad_(True)
    C.gradcam(resnet18, x, "layer4")
    assert x.grad is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models_give_float32_maps(dtype, resnet18, image_batch):
    model = copy.deepcopy(resnet18).to(dtype)
    try:
        maps = C.gradcam(model, image_batch.to(dtype), "layer3")
    except RuntimeError as exc:  # an operation without a CPU kernel for this dtype
        pytest.skip(f"{dtype} does not run on this CPU: {exc}")
    assert maps.dtype == torch.float32
    assert correlation(maps, C.gradcam(resnet18, image_batch, "layer3")) > 0.95


def test_channels_last_inputs_and_model(resnet18, image_batch):
    model = copy.deepcopy(resnet18).to(memory_format=torch.channels_last)
    x = image_batch.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        C.gradcam(model, x, "layer4"),
        C.gradcam(resnet18, image_batch, "layer4"),
        atol=1e-5,
        rtol=1e-4,
    )


# -- inputs and outputs -------------------------------------------------------------------


class TwoInputs(nn.Module):
    """``model(image, gain, *, shift=...)``: a second positional input and a keyword input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(
        self, image: torch.Tensor, gain: torch.Tensor, *, shift: torch.Tensor
    ) -> torch.Tensor:
        features = (
            torch.relu(self.conv(image)) * gain[:, None, None, None] + shift[:, None, None, None]
        )
        return self.fc(features.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_tuple_and_keyword_inputs(method):
    model, image = TwoInputs().eval(), torch.randn(2, 3, 8, 8)
    gain, shift = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.5])
    maps = CAM_METHODS[method](model, (image, gain), "conv", forward_kwargs={"shift": shift})
    assert maps.shape == (2, 8, 8)
    # each sample's map depends only on its own inputs
    single = CAM_METHODS[method](
        model, (image[1:], gain[1:]), "conv", forward_kwargs={"shift": shift[1:]}
    )
    torch.testing.assert_close(maps[1:], single, atol=1e-5, rtol=1e-4)


@dataclass
class Prediction:
    logits: torch.Tensor
    embedding: torch.Tensor


class DataclassOutput(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Prediction:
        logits = self.inner(x)
        return Prediction(logits=logits, embedding=logits.detach())


def test_structured_model_output_is_scored_on_its_logits(resnet18, image_batch):
    model = DataclassOutput(resnet18)
    expected = C.gradcam(resnet18, image_batch, "layer4")
    torch.testing.assert_close(C.gradcam(model, image_batch, "inner.layer4"), expected)
    torch.testing.assert_close(
        C.gradcam(model, image_batch, "inner.layer4", output="logits"), expected
    )
    with pytest.raises(gradlens.OutputSelectionError, match="output="):
        C.gradcam(model, image_batch, "inner.layer4", output="scores")


class TupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean()


class TupleLayerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = TupleBlock()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.block(x)
        return self.fc(torch.relu(y).mean(dim=(2, 3)))


def test_a_layer_with_a_structured_output_needs_select():
    model, x = TupleLayerNet().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(gradlens.OutputSelectionError, match="select="):
        C.gradcam(model, x, "block")
    torch.testing.assert_close(
        C.gradcam(model, x, "block", select=0), C.gradcam(model, x, "block.conv")
    )


def test_multi_target_on_a_transformer(vit, vit_x):
    maps = C.gradcam(vit, vit_x, VIT_LAYER, [[1, 2, 3], [4, 5, 6]])
    assert maps.shape == (2, 3, 32, 32)
    torch.testing.assert_close(
        maps[:, 2], C.gradcam(vit, vit_x, VIT_LAYER, [3, 6]), atol=1e-5, rtol=1e-4
    )


# -- GPU ----------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_gpu_maps_match_cpu_and_stay_on_the_gpu(method, resnet18, image_batch):
    model = copy.deepcopy(resnet18).cuda()
    maps = CAM_METHODS[method](model, image_batch.cuda(), "layer4")
    assert maps.device.type == "cuda" and maps.dtype == torch.float32
    assert correlation(maps.cpu(), CAM_METHODS[method](resnet18, image_batch, "layer4")) > 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_float16(resnet18, image_batch):
    model = copy.deepcopy(resnet18).cuda().half()
    maps = C.gradcam(model, image_batch.cuda().half(), "layer4")
    assert maps.dtype == torch.float32
    assert correlation(maps.cpu(), C.gradcam(resnet18, image_batch, "layer4")) > 0.99
