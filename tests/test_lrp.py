"""Layer-wise relevance propagation (``gradlens.lrp`` and the ``lrp_*`` methods): equal to
zennit's composites and Captum's ``LRP``, conserving where the rules conserve, and clear
errors before any hook."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import gradlens
from gradlens.errors import LayerNotFoundError, RelevanceRuleError
from gradlens.registry import INFO, METHODS
from gradlens.relevance import canonizers, rules
from gradlens.relevance.canonizers import batchnorm_pairs

from . import zoo
from .contract_support import assert_unchanged, snapshot

Epsilon, ZPlus, Flat, Pass = (
    gradlens.lrp.Epsilon,
    gradlens.lrp.ZPlus,
    gradlens.lrp.Flat,
    gradlens.lrp.Pass,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


def _relative(ours: Tensor, reference: Tensor) -> float:
    return float(((ours - reference).abs().max() / reference.abs().max()).detach())


# -- zennit ---------------------------------------------------------------------------------
# zennit's merged BatchNorm keeps its eps, so the "identity" it leaves divides by
# sqrt(1 + eps): its canonized model is not the model. With eps = 0 both explain the same
# function (a 5e-6 relative difference otherwise).

TARGETS = torch.tensor([[1, 3], [7, 0]])


@pytest.fixture(scope="module")
def resnet18_64() -> nn.Module:
    model = zoo.torchvision_cnn("resnet18")
    return zoo.with_batchnorm_statistics(model, eps=0.0).double()


@pytest.fixture(scope="module")
def vgg16_bn_64() -> nn.Module:
    model = zoo.torchvision_cnn("vgg16_bn")
    return zoo.with_batchnorm_statistics(model, eps=0.0).double()


def _zennit(model: nn.Module, x: Tensor, targets: Tensor, composite: str) -> Tensor:
    """zennit's relevance for each column of ``targets``, ``(B, K, ...)``, times the score
    (zennit starts from one-hot, gradlens from the score)."""
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    canonizers = [ResNetCanonizer() if hasattr(model, "layer1") else SequentialMergeBatchNorm()]
    made = {
        "epsilon_plus_flat": lambda: EpsilonPlusFlat(canonizers=canonizers),
        "epsilon_gamma_box": lambda: EpsilonGammaBox(low=-3.0, high=3.0, canonizers=canonizers),
        "epsilon_alpha2_beta1": lambda: EpsilonAlpha2Beta1(canonizers=canonizers),
    }
    maps = []
    for k in range(targets.shape[1]):
        one_hot = torch.eye(10, dtype=x.dtype)[targets[:, k]]
        with Gradient(model=model, composite=made[composite]()) as attributor:
            output, relevance = attributor(x, one_hot)
        score = output.detach().gather(1, targets[:, k : k + 1])
        maps.append(relevance * score.view(-1, 1, 1, 1))
    return torch.stack(maps, 1)


ZENNIT_COMPOSITES = ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"]


def _options(composite: str) -> dict[str, Any]:
    return {"low": -3.0, "high": 3.0} if composite == "epsilon_gamma_box" else {}


@pytest.mark.parametrize("composite", ZENNIT_COMPOSITES)
def test_resnet18_equals_zennit_with_the_resnet_canonizer(resnet18_64, composite):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).double()
    ours = gradlens.lrp(resnet18_64, x, TARGETS, composite=composite, **_options(composite))
    assert _relative(ours, _zennit(resnet18_64, x, TARGETS, composite)) < 1e-5


@pytest.mark.parametrize("composite", ZENNIT_COMPOSITES)
def test_vgg16_bn_equals_zennit_with_merged_batchnorm(vgg16_bn_64, composite):
    # one image (VGG is the slow one), two targets
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).double()
    targets = TARGETS[:1]
    ours = gradlens.lrp(vgg16_bn_64, x, targets, composite=composite, **_options(composite))
    assert _relative(ours, _zennit(vgg16_bn_64, x, targets, composite)) < 1e-5


def test_the_registered_composites_equal_zennit_in_float32():
    model = zoo.with_batchnorm_statistics(zoo.torchvision_cnn("resnet18"), eps=0.0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ours = METHODS["lrp_epsilon_plus_flat"](model, x, TARGETS)
    assert _relative(ours, _zennit(model, x, TARGETS, "epsilon_plus_flat")) < 1e-3


# -- Captum ---------------------------------------------------------------------------------


def _captum_rules() -> dict[Any, rules.Rule]:
    """Captum's rules for its supported layers: ε = 1e-9 on convolutions, linear layers and
    pooling, relevance passed through ReLU."""
    eps = Epsilon(1e-9)
    return {nn.Conv2d: eps, nn.Linear: eps, nn.MaxPool2d: eps, nn.AdaptiveAvgPool2d: eps,
            nn.ReLU: Pass()}  # fmt: skip


def test_a_user_composite_of_captums_rules_equals_captums_lrp():
    from captum.attr import LRP

    model = zoo.captum_cnn().double()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3)).double()
    target = torch.tensor([0, 4, 2])
    reference = LRP(copy.deepcopy(model)).attribute(x, target=target)
    ours = gradlens.lrp(model, x, target, composite=_captum_rules())
    assert _relative(ours, reference) < 1e-5


def test_a_layers_relevance_equals_captums_layer_lrp():
    from captum.attr import LayerLRP

    model = zoo.captum_cnn().double()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4)).double()
    target = torch.tensor([1, 1, 3])
    twin = copy.deepcopy(model)
    reference = LayerLRP(twin, twin.conv2).attribute(x, target=target)
    ours = gradlens.lrp(model, x, target, composite=_captum_rules(), layer="conv2")
    assert ours.shape == reference.shape == (3, 6, 4, 4)
    assert _relative(ours, reference) < 1e-5


# -- conservation ---------------------------------------------------------------------------

TINY = 1e-12
CONSERVING = {
    "epsilon": Epsilon(TINY),
    "zplus": ZPlus(TINY),
    "gamma": rules.Gamma(0.25, TINY),
    "flat": Flat(TINY),
    "wsquare": rules.WSquare(TINY),
}


def _lrp_with_tiny_stabilizers(model: nn.Module, x: Tensor, target: Any, **options: Any) -> Tensor:
    """LRP with ε → 0 in average pooling's and the residual sums' Norm rule too (1e-6
    otherwise, zennit's)."""
    if any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules()):
        options["composite"] = {nn.AdaptiveAvgPool2d: rules.Norm(TINY), **options["composite"]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(canonizers, "STABILIZER", TINY)
        return gradlens.lrp(model, x, target, **options)


def _conserved(model: nn.Module, x: Tensor, composite: Any) -> None:
    target = torch.tensor([0, 3])
    scores = model(x).gather(1, target[:, None]).squeeze(1).detach()
    relevance = _lrp_with_tiny_stabilizers(model, x, target, composite=composite)
    sums = relevance.flatten(1).sum(1)
    torch.testing.assert_close(sums, scores, rtol=1e-4, atol=0)


# conv2 feeds the residual sum with no ReLU between: its outputs can be negative with no
# positive contribution, whose relevance z⁺ cannot pass on; the ε rule there conserves.
AROUND = {"conv2": Epsilon(TINY), nn.Linear: Epsilon(TINY)}


@pytest.mark.parametrize("name", sorted(CONSERVING))
def test_a_conserving_rule_keeps_the_logit_through_residuals_and_concatenations(name):
    model = zoo.bias_free_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)).double()
    composite = {nn.Conv2d: CONSERVING[name], **AROUND}
    _conserved(model, x, composite)


def test_alpha_beta_keeps_the_logit_where_both_parts_exist():
    """αβ conserves at an output with both positive and negative contributions; after a
    ReLU some outputs have one part only (then α or −β times their relevance goes down),
    so the rule is checked on the input layer, whose inputs have both signs."""
    model = zoo.bias_free_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)).double()
    alpha_beta = rules.AlphaBeta(2.0, 1.0, TINY)
    _conserved(model, x, {"stem": alpha_beta, nn.Conv2d: ZPlus(TINY), **AROUND})


def test_the_box_rule_on_the_input_layer_keeps_the_logit():
    model = zoo.bias_free_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6)).double()
    box = rules.ZBox(low=x.min() - 1, high=torch.full((3,), float(x.max()) + 1), stabilizer=TINY)
    _conserved(model, x, {"stem": box, nn.Conv2d: ZPlus(TINY), **AROUND})


def test_a_layers_relevance_sums_to_the_logit():
    model = zoo.bias_free_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7)).double()
    composite = {nn.Conv2d: ZPlus(TINY), **AROUND}
    relevance = _lrp_with_tiny_stabilizers(model, x, 2, composite=composite, layer="pool")
    assert relevance.shape == (2, 4, 4, 4)
    torch.testing.assert_close(
        relevance.flatten(1).sum(1), model(x)[:, 2].detach(), rtol=1e-4, atol=0
    )


def test_without_the_residual_rule_the_sum_would_double_count():
    """The plain gradient of ``out += x`` hands both summands the whole relevance: the
    residual canonizer is what conserves it."""
    model = zoo.bias_free_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)).double()
    composite = {nn.Conv2d: ZPlus(TINY), nn.Linear: Epsilon(TINY)}
    with_rule = gradlens.lrp(model, x, 0, composite=composite).flatten(1).sum(1)
    original = canonizers._ProportionalSumInPlace.backward
    canonizers._ProportionalSumInPlace.backward = staticmethod(lambda ctx, r: (r, r))  # type: ignore[method-assign]
    try:
        doubled = gradlens.lrp(model, x, 0, composite=composite).flatten(1).sum(1)
    finally:
        canonizers._ProportionalSumInPlace.backward = original  # type: ignore[method-assign]
    assert (doubled - with_rule).abs().min() > 1e-3 * with_rule.abs().max()


# -- composites -----------------------------------------------------------------------------


def test_the_rules_are_attributes_of_the_function():
    assert callable(gradlens.lrp)
    for name in (
        "Epsilon",
        "Gamma",
        "ZPlus",
        "AlphaBeta",
        "Flat",
        "WSquare",
        "ZBox",
        "Pass",
        "Norm",
    ):
        assert getattr(gradlens.lrp, name) is getattr(rules, name)


def test_the_five_composites_are_registered_attributions_for_cnns():
    names = ["lrp_epsilon", "lrp_epsilon_plus", "lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box",
             "lrp_epsilon_alpha2_beta1"]  # fmt: skip
    for name in names:
        assert INFO[name].kind == "attribution" and INFO[name].multi_target
        assert not INFO[name].transformers


def test_a_name_beats_a_type():
    model = zoo.captum_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(8)).double()
    by_type = {nn.Conv2d: ZPlus(), "conv1": Flat(), nn.Linear: Epsilon()}
    by_name = {"conv1": Flat(), "conv2": ZPlus(), nn.Linear: Epsilon()}
    plain = {nn.Conv2d: ZPlus(), nn.Linear: Epsilon()}
    ours = gradlens.lrp(model, x, 1, composite=by_type)
    torch.testing.assert_close(ours, gradlens.lrp(model, x, 1, composite=by_name))
    assert not torch.allclose(ours, gradlens.lrp(model, x, 1, composite=plain))


def test_the_named_composite_gives_the_first_layer_its_own_rule():
    """... and ReLU's own gradient (no hook) is the pass rule there."""
    model = zoo.captum_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9)).double()
    explicit = {"conv1": Flat(), nn.Conv2d: ZPlus(), nn.Linear: Epsilon(), nn.ReLU: Pass()}
    torch.testing.assert_close(
        gradlens.lrp(model, x, 1), gradlens.lrp(model, x, 1, composite=explicit)
    )


def test_a_box_bound_per_channel_equals_the_input_shaped_bound():
    model = zoo.captum_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(10)).double()
    low = torch.tensor([-4.0, -5.0, -6.0], dtype=torch.float64)
    per_channel = gradlens.lrp(model, x, 1, composite="epsilon_gamma_box", low=low, high=4.0)
    shaped = gradlens.lrp(
        model, x, 1, composite="epsilon_gamma_box", low=low.view(3, 1, 1).expand(3, 8, 8), high=4.0
    )
    torch.testing.assert_close(per_channel, shaped)


def test_default_covers_a_module_without_a_rule():
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    with pytest.raises(RelevanceRuleError, match=r"1 \(LayerNorm\)"):
        gradlens.lrp(model, x)
    assert _no_hooks(model)
    assert gradlens.lrp(model, x, default=Epsilon()).shape == (3, 4)


def test_a_module_the_relevance_never_reaches_needs_no_rule():
    """An embedding fed token ids is parametric but off the relevance's path."""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(5, 3)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor, ids: Tensor) -> Tensor:
            return self.fc(x + self.embedding(ids))

    relevance, none = gradlens.lrp(Mixed(), (torch.randn(2, 3), torch.tensor([1, 4])), 0)
    assert relevance.shape == (2, 3) and none is None


def test_an_in_place_sum_statement_keeps_the_models_forward():
    class Statement(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
            self.fc = nn.Linear(2 * 16, 5, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            out = self.conv(x)
            out.add_(x)  # a statement: the in-place result is what the model uses
            return self.fc(out.flatten(1))

    torch.manual_seed(0)
    model = Statement().double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    _conserved(model, x, {nn.Conv2d: Epsilon(TINY), nn.Linear: Epsilon(TINY)})


def test_a_constant_scaling_passes_the_relevance():
    class Scaled(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x) * 3.0

    inner = zoo.captum_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(11)).double()
    torch.testing.assert_close(gradlens.lrp(Scaled(inner), x, 2), 3.0 * gradlens.lrp(inner, x, 2))


def test_batchnorms_fold_into_the_layer_registered_before_them(resnet18_64):
    pairs = batchnorm_pairs(resnet18_64)
    assert pairs["bn1"] == "conv1" and pairs["layer1.0.bn2"] == "layer1.0.conv2"
    assert pairs["layer2.0.downsample.1"] == "layer2.0.downsample.0"
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in resnet18_64.modules())


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_folding_leaves_the_model_exactly_as_it_was(mode):
    model = zoo.with_batchnorm_statistics(zoo.torchvision_cnn("resnet18"))
    model.train(mode == "train")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    before = snapshot(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    relevance = gradlens.lrp(model, x, [1, 2])
    assert relevance.shape == x.shape and relevance.isfinite().all()
    assert_unchanged(before, snapshot(model, x))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# -- errors before any hook -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"composite": "epsilon_zplus"}, RelevanceRuleError, "unknown composite"),
        ({"composite": {nn.Conv2d: "epsilon"}}, RelevanceRuleError, "not an LRP rule"),
        ({"composite": {nn.Conv2d: Epsilon}}, RelevanceRuleError, r"give an instance: Epsilon\(\)"),
        ({"composite": {"conv9": Epsilon()}}, LayerNotFoundError, "composite's key 'conv9'"),
        ({"composite": {nn.Conv3d: Epsilon()}}, LayerNotFoundError, "Conv3d names no module"),
        ({"composite": {nn.ReLU: ZPlus()}}, RelevanceRuleError, "ZPlus needs a convolution"),
        ({"composite": {nn.Conv2d: Epsilon()}, "epsilon": 0.1}, RelevanceRuleError, "mapping"),
        ({"composite": "epsilon_plus", "gamma": 0.1}, RelevanceRuleError, "epsilon_gamma_box"),
        ({"composite": "epsilon_gamma_box", "low": torch.zeros(5), "high": 1.0}, ValueError,
         r"low of shape \(5,\) does not fit"),
        ({"composite": "epsilon_gamma_box", "low": 0.0, "high": torch.ones(2, 8, 8)}, ValueError,
         r"high of shape \(2, 8, 8\)"),
        ({"default": "epsilon"}, RelevanceRuleError, "default is not an LRP rule"),
    ],
)  # fmt: skip
def test_a_bad_composite_is_refused_before_any_hook(options, error, message):
    model = zoo.captum_cnn()
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(model, x)
    with pytest.raises(error, match=message):
        gradlens.lrp(model, x, 1, **options)
    assert_unchanged(before, snapshot(model, x))


def test_alpha_and_beta_must_conserve():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        rules.AlphaBeta(1.0, 1.0)
