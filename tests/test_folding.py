"""The BatchNorm-folded inference copy that Score-CAM's masked forwards run on."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradlens
import gradlens.cam.score_cam as score_cam
from gradlens.core.folding import folded_copy

from . import zoo
from .contract_support import assert_unchanged, snapshot


def conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    with torch.no_grad():  # running statistics far from the defaults, so folding matters
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


class Branchy(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = conv_bn_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) if x.sum() > 0 else -self.net(x)


def test_folded_copy_has_no_batchnorm_and_computes_the_same_function():
    model, x = conv_bn_net(), torch.randn(4, 3, 16, 16)
    folded = folded_copy(model)
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)


def test_folded_copy_leaves_the_model_untouched():
    model = zoo.torchvision_cnn("resnet18")
    before = snapshot(model)
    assert folded_copy(model) is not None
    assert_unchanged(before, snapshot(model))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20


def test_no_folded_copy_in_train_mode():
    assert folded_copy(conv_bn_net().train()) is None


def test_no_folded_copy_when_a_module_has_a_forward_hook():
    model = conv_bn_net()
    model[3].register_forward_hook(lambda module, args, output: output * 2)
    assert folded_copy(model) is None


def test_no_folded_copy_without_batchnorm():
    assert folded_copy(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()) is None


def test_no_folded_copy_for_an_untraceable_model():
    assert folded_copy(Branchy().eval()) is None


def test_scorecam_on_the_folded_copy_matches_the_model_up_to_rounding():
    model, x = conv_bn_net(), torch.randn(2, 3, 16, 16)
    options = dict(upsample=False, normalize=False)
    torch.testing.assert_close(
        gradlens.scorecam(model, x, "5", **options),
        gradlens.scorecam(model, x, "5", fold_batchnorm=False, **options),
        atol=1e-6,
        rtol=1e-4,
    )


def test_scorecam_ignores_a_folded_copy_whose_scores_disagree_with_the_model(monkeypatch):
    model, x = conv_bn_net(), torch.randn(2, 3, 16, 16)

    def wrong_copy(m: nn.Module) -> nn.Module:
        broken = copy.deepcopy(m)
        with torch.no_grad():
            broken[-1].bias += 1.0
        return broken

    monkeypatch.setattr(score_cam, "folded_copy", wrong_copy)
    options = dict(upsample=False, normalize=False)
    torch.testing.assert_close(
        gradlens.scorecam(model, x, "5", **options),
        gradlens.scorecam(model, x, "5", fold_batchnorm=False, **options),
    )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_scorecam_with_folding_leaves_the_model_as_it_was(mode):
    model = conv_bn_net().train(mode == "train")
    before = snapshot(model)
    gradlens.scorecam(model, torch.randn(2, 3, 16, 16), "5")
    assert_unchanged(before, snapshot(model))
