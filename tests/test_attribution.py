"""Gradient attributions: shapes, exact values on models where the maths is known, targets,
tuple and keyword inputs, batching, reproducibility, and no side effects."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradlens import LayerNotExecutedError, LayerNotFoundError, OutputSelectionError, TargetError
from gradlens.attribution import (
    RULES,
    guided_backprop,
    guided_gradcam,
    input_x_gradient,
    integrated_gradients,
    layer_gradient_x_activation,
    layer_integrated_gradients,
    noise_scale,
    occlusion,
    quadrature,
    saliency,
    smoothgrad,
    vargrad,
    window_positions,
)
from gradlens.registry import ATTRIBUTION_METHODS, INFO, METHODS

from .contract_support import assert_unchanged, snapshot
from .models import residual_pair


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # small models on a shared 2-core machine: a second intra-op thread mostly waits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- small models ------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """conv-bn-relu(in place)-conv-relu-pool-dropout-linear: buffers, in-place ops, dropout."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu(self.bn(self.conv1(x)))))
        return self.fc(self.drop(self.pool(x).flatten(1)))


class TextNet(nn.Module):
    """Token ids -> embedding -> per-token MLP -> mean over tokens -> logits."""

    def __init__(self, vocab: int = 20, dim: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, num_classes)

    def embedded(self, e: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(e)).mean(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedded(self.embedding(ids))


class OnEmbeddings(nn.Module):
    """The part of a TextNet after its embedding: takes (B, T, E) embeddings."""

    def __init__(self, text: TextNet) -> None:
        super().__init__()
        self.text = text

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.text.embedded(e)


class TwoInputs(nn.Module):
    """model(image, ids, scale=...) -> logits: a float input, an integer input, a keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = TinyCNN(num_classes=4)
        self.embedding = nn.Embedding(10, 4)

    def forward(
        self, image: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = self.cnn(image) + self.embedding(ids).mean(1)
        return logits * scale[:, None] if scale is not None else logits


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.5)
    return module.eval()


@pytest.fixture(scope="module")
def cnn() -> TinyCNN:
    model = seeded(TinyCNN())
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    return seeded(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)))


@pytest.fixture(scope="module")
def text() -> TextNet:
    return seeded(TextNet())


IMAGES = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
ROWS = torch.randn(2, 10, generator=torch.Generator().manual_seed(2))
IDS = torch.tensor([[1, 5, 7, 2, 9], [3, 3, 8, 0, 4]])

# Methods that need no spatial layer also work on tabular rows and embeddings.
LAYERLESS = sorted(name for name in ATTRIBUTION_METHODS if not INFO[name].needs_layer)


def run(name: str, model: nn.Module, x, target=None, **options):
    """The method with its registered quick options (few samples, steps or windows)."""
    return METHODS[name](model, x, target, **{**INFO[name].quick_options, **options})


def test_every_attribution_method_is_registered():
    assert set(ATTRIBUTION_METHODS) == {
        "saliency",
        "input_x_gradient",
        "smoothgrad",
        "vargrad",
        "integrated_gradients",
        "guided_backprop",
        "guided_gradcam",
        "occlusion",
        "deeplift",
        "deeplift_shap",
        "gradient_shap",
        "lrp_epsilon",
        "lrp_epsilon_plus",
        "lrp_epsilon_plus_flat",
        "lrp_epsilon_gamma_box",
        "lrp_epsilon_alpha2_beta1",
        "attnlrp",
    }
    assert all(METHODS[name] is f for name, f in ATTRIBUTION_METHODS.items())


# -- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ATTRIBUTION_METHODS))
def test_image_attributions_are_shaped_like_the_input(cnn, name):
    result = run(name, cnn, IMAGES)
    assert result.shape == IMAGES.shape and result.dtype == torch.float32


@pytest.mark.parametrize("name", LAYERLESS)
def test_tabular_attributions_are_shaped_like_the_input(mlp, name):
    assert run(name, mlp, ROWS).shape == ROWS.shape


@pytest.mark.parametrize("name", LAYERLESS)
def test_embedding_attributions_are_shaped_like_the_embeddings(text, name):
    embeddings = text.embedding(IDS).detach()
    result = run(name, OnEmbeddings(text), embeddings, 1)
    assert result.shape == embeddings.shape == (2, 5, 8)


@pytest.mark.parametrize("name", sorted(ATTRIBUTION_METHODS))
def test_k_targets_per_sample_equal_k_single_calls(cnn, name):
    targets = torch.tensor([[0, 3], [4, 1]])
    both = run(name, cnn, IMAGES, targets)
    assert both.shape == (2, 2, *IMAGES.shape[1:])
    for k in range(2):
        single = run(name, cnn, IMAGES, targets[:, k])
        torch.testing.assert_close(both[:, k], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LAYERLESS)
def test_tuple_inputs_give_a_tuple_with_none_for_integer_inputs(name):
    model = seeded(TwoInputs())
    ids = torch.tensor([[1, 2], [3, 4]])
    image_part, ids_part = run(name, model, (IMAGES, ids), 2)
    assert image_part.shape == IMAGES.shape and ids_part is None


class _IgnoresSecond(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(10, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.lin(a)


@pytest.mark.parametrize(
    "name", ["saliency", "input_x_gradient", "integrated_gradients", "occlusion"]
)
def test_a_float_input_the_scores_do_not_depend_on_gets_zeros(name):
    model = seeded(_IgnoresSecond())
    single, multi = (
        run(name, model, (ROWS, ROWS), 1),
        run(name, model, (ROWS, ROWS), [[0, 1], [2, 0]]),
    )
    assert torch.equal(single[1], torch.zeros(2, 10)) and torch.equal(
        multi[1], torch.zeros(2, 2, 10)
    )


def test_guided_gradcam_takes_tuple_inputs():
    model = seeded(TwoInputs())
    ids = torch.tensor([[1, 2], [3, 4]])
    image_part, ids_part = guided_gradcam(model, (IMAGES, ids), 2, layer="cnn.conv2")
    assert image_part.shape == IMAGES.shape and ids_part is None


@pytest.mark.parametrize("name", LAYERLESS)
def test_forward_kwargs_are_passed_and_repeated_for_stacked_copies(name):
    model = seeded(TwoInputs())
    ids = torch.tensor([[1, 2], [3, 4]])
    scale = torch.tensor([1.0, 2.0])
    plain = run(name, model, (IMAGES, ids), 2)[0]
    scaled = run(name, model, (IMAGES, ids), 2, forward_kwargs={"scale": scale})[0]
    # every method here is linear in the score (vargrad: quadratic) for a positive scale
    power = 2 if name == "vargrad" else 1
    torch.testing.assert_close(
        scaled, plain * scale.view(2, 1, 1, 1) ** power, rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("name", sorted(ATTRIBUTION_METHODS))
def test_output_picks_the_scores_of_a_structured_output(cnn, name):
    wrapped = _DictOutput(cnn, "scores")
    with pytest.raises(OutputSelectionError):
        run(name, wrapped, IMAGES, 1)
    torch.testing.assert_close(
        run(name, wrapped, IMAGES, 1, output="scores"), run(name, cnn, IMAGES, 1)
    )


@pytest.mark.parametrize("name", sorted(ATTRIBUTION_METHODS))
def test_a_logits_entry_is_found_without_output(cnn, name):
    torch.testing.assert_close(
        run(name, _DictOutput(cnn, "logits"), IMAGES, 1), run(name, cnn, IMAGES, 1)
    )


class _DictOutput(nn.Module):
    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> dict:
        return {self.key: self.model(x)}


# -- no side effects ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "train", "no_grad", "inference_mode", "frozen"])
@pytest.mark.parametrize("name", sorted(ATTRIBUTION_METHODS))
def test_no_side_effects(name, mode):
    model = seeded(TinyCNN())
    if mode == "train":
        model.train()
    if mode == "frozen":
        model.requires_grad_(False)
    for p in model.parameters():  # an existing .grad must stay as it is
        p.grad = torch.ones_like(p) if p.requires_grad else None
    x = IMAGES.clone()
    before = snapshot(model)
    if mode == "no_grad":
        with torch.no_grad():
            result = run(name, model, x, 1)
    elif mode == "inference_mode":
        with torch.inference_mode():
            result = run(name, model, x, 1)
    else:
        result = run(name, model, x, 1)
    assert_unchanged(before, snapshot(model))
    assert torch.equal(x, IMAGES) and not x.requires_grad
    assert result.shape == IMAGES.shape and torch.isfinite(result).all()


@pytest.mark.parametrize("name", sorted(ATTRIBUTION_METHODS))
def test_inputs_created_in_inference_mode_are_accepted(cnn, name):
    with torch.inference_mode():
        x = IMAGES.clone()
    torch.testing.assert_close(run(name, cnn, x, 2), run(name, cnn, IMAGES, 2))


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ATTRIBUTION_METHODS))
def test_bad_targets_raise_clear_errors(cnn, name):
    with pytest.raises(TargetError, match=r"0\.\.4"):
        run(name, cnn, IMAGES, 7)
    with pytest.raises(TargetError, match=r"\(2,\)"):
        run(name, cnn, IMAGES, [0, 1, 2])
    with pytest.raises(TargetError, match="callable target"):
        run(name, cnn, IMAGES, lambda out: out[:1, 0])
    with pytest.raises(TargetError):
        run(name, cnn, IMAGES, [[0, 1], [2]])


def test_token_ids_alone_cannot_be_attributed_to(text):
    with pytest.raises(TypeError, match="embedding layer"):
        saliency(text, IDS)


# -- saliency and input x gradient: exact on a linear model -------------------------------


@pytest.fixture(scope="module")
def linear() -> nn.Linear:
    return seeded(nn.Linear(10, 3))


def test_saliency_of_a_linear_model_is_the_absolute_weight_row(linear):
    result = saliency(linear, ROWS, 1)
    torch.testing.assert_close(result, linear.weight[1].abs().expand(2, 10).detach())
    torch.testing.assert_close(
        saliency(linear, ROWS, 1, abs=False), linear.weight[1].expand(2, 10).detach()
    )


def test_input_x_gradient_of_a_linear_model_is_input_times_weight(linear):
    torch.testing.assert_close(
        input_x_gradient(linear, ROWS, [0, 2]), ROWS * linear.weight[[0, 2]].detach()
    )


# -- integrated gradients ------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_quadrature_weights_sum_to_one_and_nodes_lie_in_the_unit_interval(rule):
    nodes, weights = quadrature(rule, 7)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert 0 <= nodes.min() and nodes.max() <= 1


def test_riemann_nodes_are_the_left_right_middle_and_trapezoid_points():
    assert quadrature("riemann_left", 4)[0].tolist() == [0, 0.25, 0.5, 0.75]
    assert quadrature("riemann_right", 4)[0].tolist() == [0.25, 0.5, 0.75, 1]
    assert quadrature("riemann_middle", 4)[0].tolist() == [0.125, 0.375, 0.625, 0.875]
    nodes, weights = quadrature("riemann_trapezoid", 5)
    assert nodes.tolist() == [0, 0.25, 0.5, 0.75, 1] and weights.tolist() == [
        0.125,
        0.25,
        0.25,
        0.25,
        0.125,
    ]


def test_gauss_legendre_is_exact_for_polynomials_of_degree_2n_minus_1():
    nodes, weights = quadrature("gausslegendre", 3)
    assert (weights * nodes**5).sum().item() == pytest.approx(1 / 6, abs=1e-12)


def test_bad_rules_and_step_counts_are_refused():
    with pytest.raises(ValueError, match="gausslegendre"):
        quadrature("simpson", 8)
    with pytest.raises(ValueError, match="at least 2"):
        quadrature("riemann_trapezoid", 1)


@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_of_a_linear_model_is_input_minus_baseline_times_weight(linear, rule):
    baseline = torch.full((10,), 0.5)
    result, delta = integrated_gradients(
        linear, ROWS, 1, baselines=baseline, steps=4, rule=rule, return_delta=True
    )
    torch.testing.assert_close(result, (ROWS - 0.5) * linear.weight[1].detach())
    torch.testing.assert_close(delta, torch.zeros(2), atol=1e-5, rtol=0)


def test_integrated_gradients_of_a_square_is_exact_with_two_gauss_legendre_steps():
    # f(x) = sum x^2: IG_i = (x_i - 0) * int_0^1 2 a x_i da = x_i^2, a polynomial of degree 1 in a
    model = _Square()
    result = integrated_gradients(model, ROWS, None, steps=1)
    torch.testing.assert_close(result, ROWS**2)


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x**2).sum(1)


def test_integrated_gradients_is_complete_on_resnet18(resnet18, image_batch):
    baseline = torch.zeros_like(image_batch)
    _, delta = integrated_gradients(resnet18, image_batch, [1, 4], steps=64, return_delta=True)
    with torch.no_grad():
        logits = resnet18(torch.cat([image_batch, baseline]))
    change = logits[:2, [1, 4]].diagonal() - logits[2:, [1, 4]].diagonal()
    assert (delta.abs() < 1e-2 * change.abs()).all()


def test_integrated_gradients_does_not_depend_on_the_batch_size(cnn):
    reference = integrated_gradients(cnn, IMAGES, 2, steps=7, batch_size=None)
    for batch_size in (1, 2, 6):
        torch.testing.assert_close(
            integrated_gradients(cnn, IMAGES, 2, steps=7, batch_size=batch_size), reference
        )


def test_baselines_can_be_numbers_tensors_and_callables(linear):
    reference = integrated_gradients(linear, ROWS, 0, baselines=ROWS.mean(0, keepdim=True))
    torch.testing.assert_close(
        integrated_gradients(linear, ROWS, 0, baselines=ROWS.mean(0)), reference
    )
    torch.testing.assert_close(
        integrated_gradients(linear, ROWS, 0, baselines=lambda x: x.mean(0, keepdim=True)),
        reference,
    )
    torch.testing.assert_close(
        integrated_gradients(linear, ROWS, 0, baselines=0.3),
        (ROWS - 0.3) * linear.weight[0].detach(),
    )
    with pytest.raises(ValueError, match="does not fit"):
        integrated_gradients(linear, ROWS, 0, baselines=torch.zeros(3))


def test_delta_has_one_entry_per_sample_and_target(cnn):
    result, delta = integrated_gradients(cnn, IMAGES, [[0, 1], [2, 3]], steps=4, return_delta=True)
    assert result.shape == (2, 2, 3, 12, 12) and delta.shape == (2, 2)


def test_no_target_explains_the_top_class_of_the_clean_input(cnn):
    top = cnn(IMAGES).argmax(1)
    torch.testing.assert_close(
        integrated_gradients(cnn, IMAGES, steps=4), integrated_gradients(cnn, IMAGES, top, steps=4)
    )


# -- layer variants ------------------------------------------------------------------------


def test_layer_integrated_gradients_on_embeddings_is_integrated_gradients_on_the_embedded_input(
    text,
):
    baseline_ids = torch.zeros_like(IDS)
    embedded, baseline = text.embedding(IDS).detach(), text.embedding(baseline_ids).detach()
    ours = layer_integrated_gradients(text, IDS, "embedding", [0, 2], steps=8)
    reference = integrated_gradients(
        OnEmbeddings(text), embedded, [0, 2], baselines=baseline, steps=8
    )
    torch.testing.assert_close(ours, reference)


def test_layer_integrated_gradients_completeness(text):
    # the ReLUs make the integrand piecewise smooth: the error shrinks like 1 / steps
    result, delta = layer_integrated_gradients(
        text,
        IDS,
        text.embedding,
        None,
        steps=1000,
        rule="riemann_middle",
        batch_size=None,
        return_delta=True,
    )
    assert result.shape == (2, 5, 8) and delta.abs().max() < 1e-3


def test_layer_integrated_gradients_takes_k_targets(text):
    both = layer_integrated_gradients(text, IDS, "embedding", [[0, 1], [2, 0]], steps=4)
    single = layer_integrated_gradients(text, IDS, "embedding", [1, 0], steps=4)
    torch.testing.assert_close(both[:, 1], single)


class _UnusedEmbedding(TextNet):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(8, 8)


@pytest.mark.parametrize("method", [layer_gradient_x_activation, layer_integrated_gradients])
@pytest.mark.parametrize("target", [None, 1])
def test_layer_attributions_name_a_layer_that_never_runs(method, target):
    with pytest.raises(LayerNotExecutedError, match="'unused'.*did not run"):
        method(seeded(_UnusedEmbedding()), IDS, "unused", target)


def test_layer_integrated_gradients_refuses_a_layer_that_runs_twice():
    model = seeded(_Twice())
    with pytest.raises(ValueError, match="more than once"):
        layer_integrated_gradients(model, ROWS, "lin", 0, steps=2)


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.lin(x))[:, :3]


def test_layer_gradient_x_activation_on_embeddings_is_input_x_gradient_of_the_embedded_input(text):
    embedded = text.embedding(IDS).detach()
    torch.testing.assert_close(
        layer_gradient_x_activation(text, IDS, "embedding", [1, 2]),
        input_x_gradient(OnEmbeddings(text), embedded, [1, 2]),
    )


def test_layer_variants_need_exactly_one_layer(cnn):
    with pytest.raises(ValueError, match="exactly one"):
        layer_gradient_x_activation(cnn, IMAGES, nn.Conv2d)
    with pytest.raises(LayerNotFoundError):
        layer_integrated_gradients(cnn, IMAGES, "conv9")


# -- smoothgrad and vargrad -----------------------------------------------------------------


def test_noise_scale_is_sigma_times_each_samples_value_range():
    x = torch.stack([torch.linspace(-1, 1, 10), torch.linspace(0, 4, 10)])
    assert noise_scale(x, 0.1).tolist() == pytest.approx([0.2, 0.4])


def test_smoothgrad_of_a_linear_model_is_its_constant_saliency_and_vargrad_is_zero(linear):
    torch.testing.assert_close(
        smoothgrad(linear, ROWS, 2, n=5, seed=0), linear.weight[2].abs().expand(2, 10).detach()
    )
    torch.testing.assert_close(
        vargrad(linear, ROWS, 2, n=5, seed=0), torch.zeros(2, 10), atol=1e-7, rtol=0
    )


def test_smoothgrad_without_noise_is_the_method_itself(cnn):
    torch.testing.assert_close(smoothgrad(cnn, IMAGES, 1, sigma=0.0, n=3), saliency(cnn, IMAGES, 1))


def test_smoothgrad_averages_the_method_over_the_seeded_noise(cnn):
    std = noise_scale(IMAGES, 0.2).view(2, 1, 1, 1)
    noise = torch.randn((2 * 3, 3, 12, 12), generator=torch.Generator().manual_seed(4)).view(
        2, 3, 3, 12, 12
    )
    expected = torch.stack(
        [input_x_gradient(cnn, IMAGES + std * noise[:, j], 1) for j in range(3)]
    ).mean(0)
    ours = smoothgrad(
        cnn, IMAGES, 1, method="input_x_gradient", n=3, sigma=0.2, seed=4, batch_size=6
    )
    torch.testing.assert_close(ours, expected)


def test_smoothgrad_is_reproducible_with_a_seed_or_generator(cnn):
    first = smoothgrad(cnn, IMAGES, 1, n=4, seed=3)
    assert torch.equal(first, smoothgrad(cnn, IMAGES, 1, n=4, seed=3))
    assert torch.equal(
        first, smoothgrad(cnn, IMAGES, 1, n=4, generator=torch.Generator().manual_seed(3))
    )
    assert not torch.equal(first, smoothgrad(cnn, IMAGES, 1, n=4, seed=4))


def test_smoothgrad_passes_options_to_the_method(linear):
    torch.testing.assert_close(
        smoothgrad(linear, ROWS, 2, n=3, seed=0, abs=False), linear.weight[2].expand(2, 10).detach()
    )
    result = smoothgrad(linear, ROWS, 2, method=integrated_gradients, n=3, sigma=0.0, steps=4)
    torch.testing.assert_close(result, ROWS * linear.weight[2].detach())


def test_smoothgrad_passes_the_integration_rule_through_to_integrated_gradients(mlp):
    # without noise every copy is the input itself: SmoothGrad of IG is IG with that rule
    rule = {"steps": 3, "rule": "riemann_left"}
    smoothed = smoothgrad(mlp, ROWS, 1, method="integrated_gradients", n=1, sigma=0.0, **rule)
    torch.testing.assert_close(smoothed, integrated_gradients(mlp, ROWS, 1, **rule))
    assert not torch.allclose(smoothed, integrated_gradients(mlp, ROWS, 1, steps=3))


def test_method_is_a_deprecated_alias_of_the_integration_rule(mlp, text):
    with pytest.warns(DeprecationWarning, match="rule="):
        old = integrated_gradients(mlp, ROWS, 1, steps=3, method="riemann_left")
    torch.testing.assert_close(
        old, integrated_gradients(mlp, ROWS, 1, steps=3, rule="riemann_left")
    )
    with pytest.warns(DeprecationWarning, match="rule="):
        old = layer_integrated_gradients(text, IDS, "embedding", 1, steps=3, method="riemann_left")
    torch.testing.assert_close(
        old, layer_integrated_gradients(text, IDS, "embedding", 1, steps=3, rule="riemann_left")
    )
    with pytest.raises(TypeError, match="rule="):
        integrated_gradients(mlp, ROWS, 1, rule="riemann_left", method="riemann_right")


def test_smoothgrad_refuses_unknown_methods_and_bad_settings(cnn):
    with pytest.raises(ValueError, match="saliency"):
        smoothgrad(cnn, IMAGES, method="nope")
    with pytest.raises(ValueError, match="n must"):
        smoothgrad(cnn, IMAGES, n=0)
    with pytest.raises(ValueError, match="negative"):
        vargrad(cnn, IMAGES, sigma=-1.0)


# -- guided backprop -------------------------------------------------------------------------


def test_guided_backprop_passes_only_positive_gradients_through_relus():
    # y = w2 . relu(W1 x): guided gradient = W1^T [W1 x > 0] max(w2, 0)
    model = seeded(nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 1)))
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()[0]
    active = (ROWS @ w1.T + model[0].bias.detach()) > 0
    expected = (active * w2.clamp(min=0)) @ w1
    torch.testing.assert_close(guided_backprop(model, ROWS, 0), expected)


def test_guided_backprop_leaves_relu_modules_and_their_hooks_as_they_were():
    model, _ = residual_pair()  # in-place ReLUs, each reused twice per block
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handle = relus[0].register_forward_hook(lambda *args: None)
    try:
        hooks = [list(m._forward_hooks.items()) for m in relus]
        before = snapshot(model)
        guided_backprop(model, IMAGES, 3)
        assert [m.inplace for m in relus] == [True] * len(relus)
        assert [list(m._forward_hooks.items()) for m in relus] == hooks
        assert_unchanged(before, snapshot(model))
    finally:
        handle.remove()


def test_guided_backprop_works_on_in_place_reused_relus():
    inplace, plain = residual_pair()
    torch.testing.assert_close(
        guided_backprop(inplace, IMAGES, [1, 4]), guided_backprop(plain, IMAGES, [1, 4])
    )


def test_functional_relus_are_not_guided():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(10, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.lin(x))

    with pytest.raises(LayerNotFoundError, match="F.relu"):
        guided_backprop(seeded(Functional()), ROWS, 0)


def test_guided_gradcam_is_guided_backprop_times_the_upsampled_raw_gradcam(cnn):
    guided = guided_backprop(cnn, IMAGES, 2)
    with torch.no_grad():
        features = cnn.relu2(cnn.conv2(cnn.relu(cnn.bn(cnn.conv1(IMAGES)))))
    grads = torch.autograd.grad(
        cnn.fc(cnn.pool(features.requires_grad_()).flatten(1))[:, 2].sum(), features
    )[0]
    cam = (grads.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True).clamp(min=0).detach()
    for mode in ("bilinear", "nearest"):
        options = {"align_corners": False} if mode == "bilinear" else {}
        expected = guided * F.interpolate(cam, size=(12, 12), mode=mode, **options)
        torch.testing.assert_close(
            guided_gradcam(cnn, IMAGES, 2, layer="relu2", interpolation=mode), expected
        )


def test_guided_gradcam_picks_the_default_cam_layer(cnn):
    torch.testing.assert_close(
        guided_gradcam(cnn, IMAGES, 1), guided_gradcam(cnn, IMAGES, 1, layer="relu2")
    )


# -- occlusion ------------------------------------------------------------------------------------


def test_occlusion_of_single_features_of_a_linear_model_is_input_times_weight(linear):
    torch.testing.assert_close(
        occlusion(linear, ROWS, 1, window=1, stride=1), ROWS * linear.weight[1].detach()
    )


def test_occlusion_averages_the_score_drop_over_overlapping_windows(linear):
    # windows of 2 with stride 1 over 10 features: element i is covered by windows i-1 and i
    drops = [(ROWS[:, s : s + 2] * linear.weight[1, s : s + 2].detach()).sum(1) for s in range(9)]
    expected = torch.zeros(2, 10)
    for i in range(10):
        covering = [drops[s] for s in (i - 1, i) if 0 <= s < 9]
        expected[:, i] = sum(covering) / len(covering)
    torch.testing.assert_close(occlusion(linear, ROWS, 1, window=2, stride=1), expected)


def test_occlusion_uses_the_baseline_value(linear):
    torch.testing.assert_close(
        occlusion(linear, ROWS, 0, window=1, stride=1, baseline=1.0),
        (ROWS - 1) * linear.weight[0].detach(),
    )


def test_window_positions_clip_the_last_window_to_the_input():
    assert window_positions((10,), (3,), (4,)) == [(slice(0, 3),), (slice(4, 7),), (slice(8, 10),)]
    assert len(window_positions((3, 64, 64), (3, 16, 16), (3, 8, 8))) == 49


def test_occlusion_window_conventions(cnn):
    full = occlusion(cnn, IMAGES, 1, window=(3, 4, 4), stride=(3, 2, 2))
    torch.testing.assert_close(occlusion(cnn, IMAGES, 1, window=4, stride=2), full)
    torch.testing.assert_close(occlusion(cnn, IMAGES, 1, window=(4, 4), stride=(2, 2)), full)
    # the default: ceil(12 / 14) = 1 pixel windows, stride 1
    torch.testing.assert_close(
        occlusion(cnn, IMAGES, 1), occlusion(cnn, IMAGES, 1, window=1, stride=1)
    )


def test_occlusion_does_not_depend_on_the_batch_size(cnn):
    reference = occlusion(cnn, IMAGES, 1, window=4, stride=2, batch_size=None)
    for batch_size in (1, 2, 10):
        torch.testing.assert_close(
            occlusion(cnn, IMAGES, 1, window=4, stride=2, batch_size=batch_size), reference
        )


def test_occlusion_refuses_windows_and_strides_that_do_not_fit(cnn):
    with pytest.raises(ValueError, match="does not fit"):
        occlusion(cnn, IMAGES, 1, window=13)
    with pytest.raises(ValueError, match="stride"):
        occlusion(cnn, IMAGES, 1, window=2, stride=3)


# -- GPU ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(ATTRIBUTION_METHODS))
def test_gpu_results_match_cpu_results(cnn, name):
    on_gpu = copy.deepcopy(cnn).cuda()
    result = run(name, on_gpu, IMAGES.cuda(), [1, 3])
    assert result.device.type == "cuda"
    if name not in ("smoothgrad", "vargrad"):  # the noise comes from the GPU's generator
        torch.testing.assert_close(
            result.cpu(), run(name, cnn, IMAGES, [1, 3]), rtol=1e-3, atol=1e-4
        )
