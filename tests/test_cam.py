"""The CAM family: exact maps on models where the answer is known, post-processing,
targets, layers, the generic ``cam``, the registry, side effects and errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
import gradlens.cam as C
from gradlens import LayerNotExecutedError, LayerNotFoundError, OutputSelectionError, TargetError
from gradlens.registry import CAM_METHODS, INFO, METHODS

from .contract_support import assert_unchanged, snapshot
from .models import residual_pair

ALL = sorted(CAM_METHODS)


class GapNet(nn.Module):
    """``features`` (the input itself) -> global average pool -> linear.

    The score of class ``t`` is ``sum_c W[t, c] mean(A_c) + b[t]``, so its gradient with
    respect to ``A_c`` is ``W[t, c] / (h w)`` everywhere: every CAM has a closed form.
    """

    def __init__(self, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def gap() -> GapNet:
    torch.manual_seed(0)
    return GapNet().eval()


@pytest.fixture(scope="module")
def activations() -> torch.Tensor:
    return torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def small() -> nn.Module:
    """A small residual CNN with in-place ops and BatchNorm (5 classes)."""
    inplace, _ = residual_pair()
    return inplace


@pytest.fixture(scope="module")
def small_x() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))


def raw(method, model, x, layer, target=None, **options):
    return method(model, x, layer, target, upsample=False, normalize=False, **options)


# -- exact maps -------------------------------------------------------------------------


def _gradient(gap: GapNet, t: int, hw: int) -> torch.Tensor:
    return gap.fc.weight[t].detach() / hw  # d score_t / d A_c, at every position


def test_gradcam_is_the_class_weighted_sum_of_channels(gap, activations):
    g = _gradient(gap, 1, 30)
    expected = torch.einsum("c,bchw->bhw", g, activations).clamp(min=0)
    torch.testing.assert_close(raw(C.gradcam, gap, activations, "features", 1), expected)


def test_hirescam_and_xgradcam_equal_gradcam_when_gradients_are_spatially_constant(
    gap, activations
):
    expected = raw(C.gradcam, gap, activations, "features", 1)
    torch.testing.assert_close(raw(C.hirescam, gap, activations, "features", 1), expected)
    torch.testing.assert_close(raw(C.xgradcam, gap, activations, "features", 1), expected)


def test_layercam_keeps_only_positive_gradients(gap, activations):
    g = _gradient(gap, 2, 30).clamp(min=0)
    expected = torch.einsum("c,bchw->bhw", g, activations).clamp(min=0)
    torch.testing.assert_close(raw(C.layercam, gap, activations, "features", 2), expected)


def test_gradcampp_closed_form(gap, activations):
    # alpha = g^2 / (2 g^2 + sum_ab A g^3) = 1 / (2 + g sum_ab A); w = sum_ij alpha ReLU(g)
    g = _gradient(gap, 0, 30)
    total = activations.sum(dim=(2, 3))  # (B, C)
    weights = 30 * g.clamp(min=0) / (2 + g * total)
    expected = torch.einsum("bc,bchw->bhw", weights, activations).clamp(min=0)
    torch.testing.assert_close(raw(C.gradcampp, gap, activations, "features", 0), expected)


def test_eigencam_of_rank_one_activations_is_the_centred_spatial_pattern(gap):
    u = torch.tensor([1.0, 2.0, 0.5, 3.0])  # channel loadings, positive mean
    s = torch.randn(5, 6, generator=torch.Generator().manual_seed(5))  # spatial pattern
    x = (u[:, None, None] * s)[None]
    expected = (u.norm() * (s - s.mean())).clamp(min=0)[None]
    torch.testing.assert_close(raw(C.eigencam, gap, x, "features"), expected, atol=1e-5, rtol=1e-5)


def test_eigencam_sign_follows_the_channel_mean(gap):
    u = -torch.tensor([1.0, 2.0, 0.5, 3.0])  # the channel mean is now -s (up to scale)
    s = torch.randn(5, 6, generator=torch.Generator().manual_seed(5))
    x = (u[:, None, None] * s)[None]
    expected = (u.norm() * (s.mean() - s)).clamp(min=0)[None]
    torch.testing.assert_close(raw(C.eigencam, gap, x, "features"), expected, atol=1e-5, rtol=1e-5)


def test_ablationcam_weights_are_the_relative_score_drops(gap, activations):
    # zeroing channel k removes W[t, k] mean(A_k) from the score y
    t = 1
    means = activations.mean(dim=(2, 3))
    y = gap(activations)[:, t].detach()
    weights = gap.fc.weight[t].detach() * means / y[:, None]
    expected = torch.einsum("bc,bchw->bhw", weights, activations).clamp(min=0)
    torch.testing.assert_close(raw(C.ablationcam, gap, activations, "features", t), expected)


def test_scorecam_weights_are_the_probabilities_of_the_masked_inputs(gap, activations):
    # the layer is the input itself, so each channel's mask needs no resizing
    t = 2
    x = activations[:1]
    lo = x.amin(dim=(2, 3), keepdim=True)
    masks = (x - lo) / (x.amax(dim=(2, 3), keepdim=True) - lo)  # (1, C, h, w)
    masked = x * masks[0][:, None]  # (C, C, h, w): input times mask k
    weights = torch.softmax(gap(masked), dim=1)[:, t].detach()
    expected = torch.einsum("c,bchw->bhw", weights, x).clamp(min=0)
    torch.testing.assert_close(raw(C.scorecam, gap, x, "features", t), expected)


def test_scorecam_channel_softmax_normalises_the_logits_over_channels(gap, activations):
    t = 2
    x = activations[:1]
    lo = x.amin(dim=(2, 3), keepdim=True)
    masks = (x - lo) / (x.amax(dim=(2, 3), keepdim=True) - lo)
    weights = torch.softmax(gap(x * masks[0][:, None])[:, t], dim=0).detach()
    expected = torch.einsum("c,bchw->bhw", weights, x).clamp(min=0)
    torch.testing.assert_close(
        raw(C.scorecam, gap, x, "features", t, score="channel_softmax"), expected
    )


# -- the in-place case --------------------------------------------------------------------


def test_gradcam_of_a_layer_modified_in_place_downstream_is_correct(resnet18, image_batch):
    # layer4.1.bn2's output is modified in place by 'out += identity' and the ReLU;
    # reference: keep the true output, hand a clone downstream, differentiate by hand
    reference = copy.deepcopy(resnet18)
    kept = {}

    def keep(module, args, output):
        kept["A"] = output
        return output.clone()

    reference.layer4[1].bn2.register_forward_hook(keep)
    x = image_batch.clone().requires_grad_(True)
    score = reference(x)[:, 3].sum()
    (G,) = torch.autograd.grad(score, kept["A"])
    expected = (G.mean(dim=(2, 3), keepdim=True) * kept["A"]).sum(1).clamp(min=0).detach()
    ours = raw(C.gradcam, resnet18, image_batch, "layer4.1.bn2", 3)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


# -- post-processing ----------------------------------------------------------------------


def test_order_is_relu_then_bilinear_upsampling_then_min_max(resnet18, image_batch):
    raw_map = raw(C.gradcam, resnet18, image_batch, "layer3", 1)
    up = F.interpolate(raw_map[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    upsampled = C.gradcam(resnet18, image_batch, "layer3", 1, normalize=False)
    torch.testing.assert_close(upsampled, up)
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(C.gradcam(resnet18, image_batch, "layer3", 1), (up - lo) / (hi - lo))


def test_normalised_maps_span_zero_to_one(resnet18, image_batch):
    maps = C.gradcam(resnet18, image_batch, "layer3")
    assert torch.equal(maps.amin(dim=(1, 2)), torch.zeros(2))
    torch.testing.assert_close(maps.amax(dim=(1, 2)), torch.ones(2))


def test_a_constant_map_becomes_zeros_not_nan(gap, activations):
    maps = C.cam(
        gap, activations, "features", weights=lambda A, G: torch.ones(A.shape[0], *A.shape[2:])
    )
    assert torch.equal(maps, torch.zeros(2, 5, 6))
    dead = C.cam(gap, activations, "features", weights=lambda A, G: torch.zeros(A.shape[:2]))
    assert torch.equal(dead, torch.zeros(2, 5, 6))


@pytest.mark.parametrize("method", ALL)
def test_every_method_returns_float32_maps_of_the_input_size(method, small, small_x):
    maps = CAM_METHODS[method](small, small_x, "block2")
    assert maps.shape == (2, 16, 16) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_without_upsampling_maps_have_the_layers_size(resnet18, image_batch):
    assert C.gradcam(resnet18, image_batch, "layer3", upsample=False).shape == (2, 4, 4)


# -- targets ------------------------------------------------------------------------------


def test_target_none_explains_the_top_class(resnet18, image_batch):
    top = resnet18(image_batch).argmax(1)
    torch.testing.assert_close(
        C.gradcam(resnet18, image_batch, "layer4"), C.gradcam(resnet18, image_batch, "layer4", top)
    )


def test_an_int_target_applies_to_every_sample(resnet18, image_batch):
    torch.testing.assert_close(
        C.gradcam(resnet18, image_batch, "layer4", 7),
        C.gradcam(resnet18, image_batch, "layer4", [7, 7]),
    )


def test_a_callable_target_explains_any_score(resnet18, image_batch):
    torch.testing.assert_close(
        C.gradcam(resnet18, image_batch, "layer4", lambda out: out[:, 2] - out[:, 5]),
        C.cam(
            resnet18,
            image_batch,
            "layer4",
            lambda out: out[:, 2] - out[:, 5],
            weights=lambda A, G: G.mean((2, 3)),
        ),
    )


@pytest.mark.parametrize("method", ALL)
def test_k_targets_per_sample_equal_k_single_target_calls(method, small, small_x):
    f = CAM_METHODS[method]
    targets = torch.tensor([[0, 3, 1], [4, 4, 2]])
    both = f(small, small_x, "block2", targets)
    if not INFO[method].multi_target:  # class-agnostic (Eigen-CAM): one map per sample
        assert both.shape == (2, 16, 16)
        return
    assert both.shape == (2, 3, 16, 16)
    for k in range(3):
        torch.testing.assert_close(
            both[:, k], f(small, small_x, "block2", targets[:, k]), atol=1e-5, rtol=1e-4
        )


# -- layers -------------------------------------------------------------------------------


def test_layer_none_uses_the_default_layer(resnet18, image_batch):
    assert gradlens.default_layer(resnet18, image_batch) == "layer4"
    torch.testing.assert_close(
        C.gradcam(resnet18, image_batch), C.gradcam(resnet18, image_batch, "layer4")
    )


def test_several_layers_give_the_renormalised_mean_and_each_layers_map(resnet18, image_batch):
    each = C.gradcam(resnet18, image_batch, ["layer3", "layer4"], 1, per_layer=True)
    assert set(each) == {"layer3", "layer4"}
    torch.testing.assert_close(each["layer4"], C.gradcam(resnet18, image_batch, "layer4", 1))
    mean = (each["layer3"] + each["layer4"]) / 2
    lo, hi = mean.amin(dim=(1, 2), keepdim=True), mean.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(
        C.gradcam(resnet18, image_batch, ["layer3", "layer4"], 1), (mean - lo) / (hi - lo)
    )


def test_layers_of_different_sizes_cannot_be_averaged_without_upsampling(resnet18, image_batch):
    with pytest.raises(ValueError, match="per_layer=True"):
        C.gradcam(resnet18, image_batch, ["layer3", "layer4"], upsample=False)


def test_a_module_object_selects_the_layer(resnet18, image_batch):
    torch.testing.assert_close(
        C.gradcam(resnet18, image_batch, resnet18.layer3),
        C.gradcam(resnet18, image_batch, "layer3"),
    )


# -- the generic cam ----------------------------------------------------------------------


def test_generic_cam_with_channel_weights_equals_gradcam(resnet18, image_batch):
    torch.testing.assert_close(
        C.cam(resnet18, image_batch, "layer4", 2, weights=lambda A, G: G.mean(dim=(2, 3))),
        C.gradcam(resnet18, image_batch, "layer4", 2),
    )


def test_generic_cam_with_a_map_equals_hirescam(resnet18, image_batch):
    torch.testing.assert_close(
        C.cam(resnet18, image_batch, "layer4", 2, weights=lambda A, G: (A * G).sum(1)),
        C.hirescam(resnet18, image_batch, "layer4", 2),
    )


def test_generic_cam_rejects_weights_of_another_shape(resnet18, image_batch):
    with pytest.raises(
        ValueError, match=r"channel weights of shape \(2, 512\) or a map of shape \(2, 2, 2\)"
    ):
        C.cam(resnet18, image_batch, "layer4", weights=lambda A, G: G.mean(dim=(1, 2)))


# -- registry -----------------------------------------------------------------------------


def test_every_cam_method_is_registered():
    expected = {
        "gradcam",
        "gradcampp",
        "xgradcam",
        "layercam",
        "hirescam",
        "eigencam",
        "eigengradcam",
        "scorecam",
        "ablationcam",
    }
    assert expected <= set(C.METHODS)
    assert C.METHODS is CAM_METHODS
    assert all(METHODS[name] is C.METHODS[name] for name in expected)


# -- no side effects ----------------------------------------------------------------------


def _with_grads(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for i, p in enumerate(model.parameters()):
        if i % 2 == 0:
            p.grad = torch.full_like(p, 0.5)  # must stay as it is
    return model


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("method", ALL)
def test_no_side_effects(method, training, small, small_x):
    model = _with_grads(small).train(training)
    before = snapshot(model)
    CAM_METHODS[method](model, small_x, "block2", [[1, 2], [3, 0]])
    assert_unchanged(before, snapshot(model))


# -- Score-CAM and Ablation-CAM levers ----------------------------------------------------


class DeadChannelNet(nn.Module):
    """conv -> ReLU -> pool -> linear, where ReLU channels 0-1 are dead (all zero) and
    channel 2 is the constant 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 4)
        with torch.no_grad():
            self.conv.bias[:2] = -100.0
            self.conv.weight[2] = 0.0
            self.conv.bias[2] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("score", C.SCORES)
def test_scorecam_skipping_constant_channels_changes_nothing(score):
    model, x = DeadChannelNet().eval(), torch.randn(2, 3, 8, 8)
    options = dict(score=score, upsample=False, normalize=False)
    torch.testing.assert_close(
        C.scorecam(model, x, "relu", **options),
        C.scorecam(model, x, "relu", skip_constant=False, **options),
    )


def test_ablationcam_skipping_dead_channels_changes_nothing():
    model, x = DeadChannelNet().eval(), torch.randn(2, 3, 8, 8)
    options = dict(upsample=False, normalize=False, reuse_upstream=False)
    torch.testing.assert_close(
        C.ablationcam(model, x, "relu", **options),
        C.ablationcam(model, x, "relu", skip_unchanged=False, **options),
    )


def test_scorecam_batch_size_changes_nothing(small, small_x):
    torch.testing.assert_close(
        C.scorecam(small, small_x, "block2", batch_size=3),
        C.scorecam(small, small_x, "block2", batch_size=64),
    )


class ViewNet(nn.Module):
    """Flattens a convolution's output with ``.view()``, which channels-last tensors refuse."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.shape[0], -1))


def test_scorecam_falls_back_to_contiguous_inputs_for_models_that_refuse_channels_last():
    model, x = ViewNet().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="view"):
        model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(
        C.scorecam(model, x, "conv"), C.scorecam(model, x, "conv", channels_last=False)
    )


def test_scorecam_channels_last_changes_only_rounding(small, small_x):
    options = dict(upsample=False, normalize=False)
    torch.testing.assert_close(
        C.scorecam(small, small_x, "block1", **options),
        C.scorecam(small, small_x, "block1", channels_last=False, **options),
        atol=1e-5,
        rtol=1e-4,
    )


@pytest.mark.parametrize("layer", ["block2", "block1.conv2", "stem"])
def test_ablationcam_reusing_the_upstream_part_changes_nothing(layer, small, small_x):
    options = dict(upsample=False, normalize=False)
    torch.testing.assert_close(
        C.ablationcam(small, small_x, layer, **options),
        C.ablationcam(small, small_x, layer, reuse_upstream=False, skip_unchanged=False, **options),
        atol=1e-5,
        rtol=1e-4,
    )


class ConcatNet(nn.Module):
    """A later layer concatenates an earlier tensor: it cannot broadcast over ablated copies."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.a(x))
        both = torch.cat([a, self.b(a)], dim=1)
        return self.fc(both.mean(dim=(2, 3)))


def test_ablationcam_falls_back_to_full_forwards_where_upstream_tensors_are_concatenated():
    torch.manual_seed(0)
    model = ConcatNet().eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(
        C.ablationcam(model, x, "b", normalize=False),
        C.ablationcam(model, x, "b", normalize=False, reuse_upstream=False),
    )


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL)
def test_an_unknown_layer_suggests_close_names(method, resnet18, image_batch):
    with pytest.raises(LayerNotFoundError, match="layer4"):
        CAM_METHODS[method](resnet18, image_batch, "layer_4")


@pytest.mark.parametrize("method", sorted(set(ALL) - {"eigencam"}))
def test_an_out_of_range_class_names_the_valid_range(method, small, small_x):
    with pytest.raises(TargetError, match=r"0\.\.4"):
        CAM_METHODS[method](small, small_x, "block2", 5)


@pytest.mark.parametrize("method", sorted(set(ALL) - {"eigencam"}))
def test_a_target_list_of_the_wrong_length_raises(method, small, small_x):
    with pytest.raises(TargetError, match=r"expected \(2,\)"):
        CAM_METHODS[method](small, small_x, "block2", [1, 2, 3])


@pytest.mark.parametrize("method", sorted(set(ALL) - {"eigencam"}))
def test_a_callable_target_of_the_wrong_shape_raises(method, small, small_x):
    with pytest.raises(TargetError, match=r"shape \(2,\)"):
        CAM_METHODS[method](small, small_x, "block2", lambda out: out.sum())


class DictOutput(nn.Module):
    def __init__(self, inner: nn.Module, key: str = "scores") -> None:
        super().__init__()
        self.inner, self.key = inner, key

    def forward(self, x: torch.Tensor) -> dict:
        return {self.key: self.inner(x), "aux": x.mean()}


@pytest.mark.parametrize("method", sorted(set(ALL) - {"eigencam"}))
def test_a_structured_output_needs_output(method, small, small_x):
    model = DictOutput(small)
    with pytest.raises(OutputSelectionError, match="output="):
        CAM_METHODS[method](model, small_x, "inner.block2")
    maps = CAM_METHODS[method](model, small_x, "inner.block2", output="scores")
    torch.testing.assert_close(maps, CAM_METHODS[method](small, small_x, "block2"))


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_a_logits_entry_is_found_without_output(method, small, small_x):
    maps = CAM_METHODS[method](DictOutput(small, "logits"), small_x, "inner.block2")
    torch.testing.assert_close(maps, CAM_METHODS[method](small, small_x, "block2"))


class WithUnusedLayer(nn.Module):
    """conv -> ReLU -> mean -> linear; ``unused`` is a submodule ``forward`` never calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.unused = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", sorted(name for name, info in INFO.items() if info.needs_layer))
def test_a_layer_that_never_runs_is_named(method):
    model, x = WithUnusedLayer().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(LayerNotExecutedError, match="'unused'.*did not run"):
        METHODS[method](model, x, layer="unused", **INFO[method].quick_options)


def test_a_non_spatial_layer_suggests_reshape(resnet18, image_batch):
    with pytest.raises(ValueError, match="reshape="):
        C.gradcam(resnet18, image_batch, "fc")


def test_unknown_scorecam_options_raise(small, small_x):
    with pytest.raises(ValueError, match="score="):
        C.scorecam(small, small_x, "block2", score="logit")
    with pytest.raises(ValueError, match="masks="):
        C.scorecam(small, small_x, "block2", masks="nearest")
    with pytest.raises(ValueError, match="batch_size"):
        C.scorecam(small, small_x, "block2", batch_size=0)


def test_default_layer_missing_raises_with_a_hint():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(LayerNotFoundError, match="pass layer="):
        C.gradcam(mlp, torch.randn(2, 3, 2, 2))
