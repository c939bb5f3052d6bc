"""DeepLIFT, DeepLiftShap and GradientSHAP: summation-to-delta, exact values on models whose
attributions the maths gives, reused modules, reproducible draws and clear errors.
(The comparisons with Captum are in ``test_attribution_peers.py``.)"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradlens.attribution import deeplift, deeplift_shap, gradient_shap

from . import zoo


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(activation: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), activation(), nn.Linear(16, 16), activation(), nn.Linear(16, 3)
    ).eval()


ROWS = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
STARTS = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Sigmoid, nn.Tanh])
def test_deeplift_attributions_sum_to_the_output_difference(activation):
    model = _mlp(activation)
    attributions, delta = deeplift(model, ROWS, 2, baselines=STARTS, return_delta=True)
    with torch.no_grad():
        difference = model(ROWS)[:, 2] - model(STARTS)[:, 2]
    torch.testing.assert_close(attributions.sum(1), difference, rtol=0, atol=1e-5)
    torch.testing.assert_close(delta, torch.zeros(4), rtol=0, atol=1e-5)


def test_deeplift_on_a_linear_model_is_the_difference_times_the_weights():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).eval()
    expected = (ROWS - STARTS) * model.weight[1].detach()
    torch.testing.assert_close(deeplift(model, ROWS, 1, baselines=STARTS), expected)


class _SummedActivation(nn.Module):
    """``f(x) = Σ_i w_i g(x_i)``: one elementwise nonlinearity, then fixed weights."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation
        self.register_buffer("weights", torch.linspace(-1, 2, 6))

    def forward(self, x: Tensor) -> Tensor:
        return (self.activation(x) * self.weights).sum(1, keepdim=True)


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.Tanh(), nn.ELU()])
def test_the_rescale_rule_credits_each_input_its_own_output_difference(activation):
    model = _SummedActivation(activation).eval()
    x = ROWS.clone()
    x[:, 0] = STARTS[:, 0]  # Δx = 0: the multiplier falls back to the derivative
    result = deeplift(model, x, 0, baselines=STARTS)
    expected = model.weights * (activation(x) - activation(STARTS))
    torch.testing.assert_close(result, expected)
    assert (result[:, 0] == 0).all()


def test_overlapping_max_pooling_keeps_summation_to_delta():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows, as in ResNet's stem
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    _, delta = deeplift(model, x, 0, baselines=0.2, return_delta=True)
    torch.testing.assert_close(delta, torch.zeros(2), rtol=0, atol=1e-5)


class _ReusedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 8), nn.Linear(8, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.second(self.relu(self.first(x))))


class _TwoReLUs(nn.Module):
    def __init__(self, reused: _ReusedReLU) -> None:
        super().__init__()
        self.first, self.second = copy.deepcopy(reused.first), copy.deepcopy(reused.second)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu2(self.second(self.relu1(self.first(x))))


def test_a_module_called_twice_gets_the_reference_of_each_call():
    torch.manual_seed(0)
    reused = _ReusedReLU().eval()
    ours = deeplift(reused, ROWS, 1, baselines=STARTS)
    separate = deeplift(_TwoReLUs(reused).eval(), ROWS, 1, baselines=STARTS)
    torch.testing.assert_close(ours, separate)


def test_summation_to_delta_holds_on_torchvision_resnet18(resnet18, image_batch):
    # each BasicBlock calls its one in-place nn.ReLU twice; the stem's max pooling overlaps
    targets = torch.tensor([[3, 7], [1, 0]])
    _, delta = deeplift(resnet18, image_batch, targets, baselines=0.1, return_delta=True)
    with torch.no_grad():
        scale = resnet18(image_batch).abs().max()
    torch.testing.assert_close(delta / scale, torch.zeros(2, 2), rtol=0, atol=1e-5)


def test_k_targets_give_the_single_target_maps():
    model = zoo.feedforward_cnn()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    both = deeplift(model, x, torch.tensor([[0, 3], [4, 1]]))
    torch.testing.assert_close(both[:, 1], deeplift(model, x, torch.tensor([3, 1])))


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(F.relu(self.first(x)))


def test_a_functional_nonlinearity_keeps_its_gradient_and_the_delta_shows_it():
    torch.manual_seed(0)
    model = _Functional().eval()
    result, delta = deeplift(model, ROWS, 0, baselines=STARTS, return_delta=True)
    x = ROWS.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    torch.testing.assert_close(result, (ROWS - STARTS) * gradient)
    assert delta.abs().max() > 1e-3


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear, self.relu = nn.Linear(6, 6), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.linear(x))
        if x.abs().sum() > 1:
            h = self.relu(self.linear(h))
        return h


def test_calls_that_differ_between_the_passes_are_an_error():
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="ran 2 times on the input but 1 times on the baseline"):
        deeplift(_DataDependent().eval(), ROWS, 0)


# -- DeepLiftShap --------------------------------------------------------------------------

DISTRIBUTION = torch.randn(5, 6, generator=torch.Generator().manual_seed(5))


def test_deeplift_shap_is_the_mean_of_deeplift_over_the_baselines():
    model = _mlp(nn.ReLU)
    result, delta = deeplift_shap(model, ROWS, 1, baselines=DISTRIBUTION, return_delta=True)
    each = [deeplift(model, ROWS, 1, baselines=start) for start in DISTRIBUTION]
    torch.testing.assert_close(result, torch.stack(each).mean(0))
    with torch.no_grad():
        expected = model(ROWS)[:, 1] - model(DISTRIBUTION)[:, 1].mean()
    torch.testing.assert_close(result.sum(1), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(delta, torch.zeros(4), rtol=0, atol=1e-5)


def test_deeplift_shap_does_not_depend_on_the_batch_size():
    model = _mlp(nn.Tanh)
    all_at_once = deeplift_shap(model, ROWS, 0, baselines=DISTRIBUTION, batch_size=None)
    two_at_a_time = deeplift_shap(model, ROWS, 0, baselines=DISTRIBUTION, batch_size=8)
    torch.testing.assert_close(all_at_once, two_at_a_time)


# -- GradientSHAP --------------------------------------------------------------------------


def test_gradient_shap_on_a_linear_model_is_the_difference_times_the_weights():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).eval()
    start = DISTRIBUTION[:1]
    result = gradient_shap(model, ROWS, 2, baselines=start, n=3)
    torch.testing.assert_close(result, (ROWS - start) * model.weight[2].detach())


def test_gradient_shap_on_a_linear_model_converges_to_the_expected_baseline():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).eval()
    result = gradient_shap(
        model, ROWS, 2, baselines=DISTRIBUTION, n=4000, stdevs=0.5, batch_size=None, seed=0
    )
    expected = (ROWS - DISTRIBUTION.mean(0)) * model.weight[2].detach()
    # each term has a standard deviation of at most |w| * (std of the baselines + 0.5) < 2;
    # over 4000 draws the mean is within 5 standard errors, 5 * 2 / sqrt(4000) < 0.16
    torch.testing.assert_close(result, expected, rtol=0, atol=0.16)


def test_gradient_shap_is_reproducible_with_a_seed_or_a_generator():
    model = _mlp(nn.Tanh)
    options = dict(baselines=DISTRIBUTION, n=6, stdevs=0.3)
    first = gradient_shap(model, ROWS, 0, seed=7, **options)
    torch.testing.assert_close(gradient_shap(model, ROWS, 0, seed=7, **options), first)
    generator = torch.Generator().manual_seed(7)
    torch.testing.assert_close(gradient_shap(model, ROWS, 0, generator=generator, **options), first)
    assert not torch.equal(gradient_shap(model, ROWS, 0, seed=8, **options), first)


def test_gradient_shap_delta_is_measured_against_the_mean_baseline_score():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).eval()
    result, delta = gradient_shap(
        model, ROWS, 1, baselines=DISTRIBUTION, n=5, seed=0, return_delta=True
    )
    with torch.no_grad():
        expected = result.sum(1) - (model(ROWS)[:, 1] - model(DISTRIBUTION)[:, 1].mean())
    torch.testing.assert_close(delta, expected)


# -- clear errors, before the model runs -----------------------------------------------------


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = _mlp(nn.ReLU)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: deeplift(m, ROWS, baselines=torch.zeros(3, 6)), ValueError, "does not fit"),
        (
            lambda m: deeplift_shap(m, ROWS, baselines=torch.zeros(5, 4)),
            ValueError,
            r"not a set of N >= 1 baselines \(N, 6\)",
        ),
        (
            lambda m: deeplift_shap(m, ROWS, baselines=torch.zeros(0, 6)),
            ValueError,
            "N >= 1",
        ),
        (lambda m: gradient_shap(m, ROWS, n=0), ValueError, "n must be"),
        (lambda m: gradient_shap(m, ROWS, stdevs=-0.1), ValueError, "non-negative"),
        (lambda m: gradient_shap(m, ROWS, stdevs=(0.1, 0.2)), ValueError, "stdevs has 2"),
        (lambda m: gradient_shap(m, ROWS, baselines="zeros"), TypeError, "must be a tensor"),
        (lambda m: deeplift_shap(m, ROWS, batch_size=0), ValueError, "batch_size"),
    ],
)
def test_bad_options_are_refused_before_the_model_runs(call, error, message):
    model = _Counting()
    with pytest.raises(error, match=message):
        call(model)
    assert model.calls == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _Sum(_Counting):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(a + b)


def test_tuple_inputs_need_distributions_of_one_size():
    model = _Sum()
    with pytest.raises(ValueError, match="different sizes"):
        gradient_shap(model, (ROWS, ROWS), baselines=(torch.zeros(2, 6), torch.zeros(3, 6)))
    assert model.calls == 0


def test_an_input_with_one_baseline_is_paired_with_each_baseline_of_the_others():
    model = _Sum()
    ours = deeplift_shap(model, (ROWS, ROWS), 0, baselines=(DISTRIBUTION, torch.zeros(6)))
    each = [deeplift(model, (ROWS, ROWS), 0, baselines=(s, torch.zeros(6))) for s in DISTRIBUTION]
    for i in range(2):
        torch.testing.assert_close(ours[i], torch.stack([e[i] for e in each]).mean(0))


class _ConstantCall(nn.Module):
    """Calls its ReLU once on a buffer (nothing to differentiate) before the input's call."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 8), nn.Linear(8, 3)
        self.relu = nn.ReLU()
        self.register_buffer("offset", torch.linspace(-1, 1, 32).view(4, 8))

    def forward(self, x: Tensor) -> Tensor:
        bias = self.relu(self.offset)  # call 0, on both passes
        return self.second(self.relu(self.first(x)) + bias)


def test_calls_without_a_gradient_still_count_when_calls_are_paired():
    torch.manual_seed(0)
    model = _ConstantCall().eval()
    result, delta = deeplift(model, ROWS, 0, baselines=STARTS, return_delta=True)
    torch.testing.assert_close(delta, torch.zeros(4), rtol=0, atol=1e-5)
    hidden, start = model.first(ROWS).detach(), model.first(STARTS).detach()
    # the ReLU's multiplier on first(x): the secant slope (relu(h) - relu(h')) / (h - h')
    slope = (hidden.relu() - start.relu()) / (hidden - start)
    expected = (ROWS - STARTS) * ((model.second.weight[0].detach() * slope) @ model.first.weight)
    torch.testing.assert_close(result, expected.detach())


def test_a_distribution_per_sample_pairs_each_sample_with_its_own_baselines():
    model = _mlp(nn.Tanh)
    own = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(6))  # (B, N, D)
    result = deeplift_shap(model, ROWS, 0, baselines=own)
    for b in range(4):
        expected = deeplift_shap(model, ROWS[b : b + 1], 0, baselines=own[b])
        torch.testing.assert_close(result[b : b + 1], expected)
    draws = gradient_shap(model, ROWS, 0, baselines=own[:, :1], n=2, seed=0)
    single = torch.stack(
        [gradient_shap(model, ROWS, 0, baselines=own[b, 0], n=2, seed=0)[b] for b in range(4)]
    )
    torch.testing.assert_close(draws, single)
