"""gradlens attributions against Captum on the same models and inputs (atol 1e-5).

Models: a random-init torchvision resnet18 (in-place, reused ReLUs) on 64x64 images,
a small MLP on tabular rows, a text model whose embedding layer is attributed to, and for
DeepLIFT :func:`zoo.feedforward_cnn` (nonlinearity modules that each run once).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from gradlens.attribution import (
    RULES,
    deeplift,
    deeplift_shap,
    gradient_shap,
    guided_backprop,
    guided_gradcam,
    input_x_gradient,
    integrated_gradients,
    layer_gradient_x_activation,
    layer_integrated_gradients,
    noise_scale,
    occlusion,
    saliency,
    smoothgrad,
    vargrad,
)

from . import zoo

captum_attr = pytest.importorskip("captum.attr")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ATOL = 1e-5
TARGETS = [3, 7]


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # small models on a shared 2-core machine: a second intra-op thread mostly waits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    ).eval()


@pytest.fixture(scope="module")
def rows() -> torch.Tensor:
    return torch.randn(2, 10, generator=torch.Generator().manual_seed(3))


class TextNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(30, 12)
        self.conv = nn.Conv1d(12, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.conv(self.embedding(ids).transpose(1, 2)))
        return self.head(hidden.mean(2))


@pytest.fixture(scope="module")
def text() -> TextNet:
    torch.manual_seed(0)
    return TextNet().eval()


IDS = torch.tensor([[4, 8, 15, 16, 23, 29], [1, 2, 3, 5, 8, 13]])


@pytest.fixture(scope="module")
def unit_range_images() -> torch.Tensor:
    """Each sample scaled to [0, 1]: one value range for the batch, as Captum's noise needs."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    low, high = x.flatten(1).amin(1).view(2, 1, 1, 1), x.flatten(1).amax(1).view(2, 1, 1, 1)
    return (x - low) / (high - low)


def without_inplace(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return plain


# -- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("absolute", [True, False])
def test_saliency(resnet18, image_batch, mlp, rows, absolute):
    close(
        saliency(resnet18, image_batch, TARGETS, abs=absolute),
        captum_attr.Saliency(resnet18).attribute(image_batch, target=TARGETS, abs=absolute),
    )
    close(
        saliency(mlp, rows, 1, abs=absolute),
        captum_attr.Saliency(mlp).attribute(rows, target=1, abs=absolute),
    )


def test_input_x_gradient(resnet18, image_batch, mlp, rows):
    close(
        input_x_gradient(resnet18, image_batch, TARGETS),
        captum_attr.InputXGradient(resnet18).attribute(image_batch, target=TARGETS),
    )
    close(input_x_gradient(mlp, rows, 2), captum_attr.InputXGradient(mlp).attribute(rows, target=2))


# -- integrated gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("rule", [r for r in RULES if r != "riemann_trapezoid"])
def test_integrated_gradients_each_rule(resnet18, image_batch, rule):
    ours = integrated_gradients(resnet18, image_batch, TARGETS, steps=5, rule=rule, batch_size=6)
    theirs = captum_attr.IntegratedGradients(resnet18).attribute(
        image_batch, target=TARGETS, n_steps=5, method=rule, internal_batch_size=6
    )
    close(ours, theirs)


def test_captum_trapezoid_weights_sum_to_n_minus_1_over_n(resnet18, image_batch):
    # Captum's riemann_trapezoid keeps weights 1/n (halved at the ends) on n nodes that
    # include both ends; the trapezoid rule's weights are 1/(n - 1). Hence the factor.
    ours = integrated_gradients(resnet18, image_batch, TARGETS, steps=5, rule="riemann_trapezoid")
    theirs = captum_attr.IntegratedGradients(resnet18).attribute(
        image_batch, target=TARGETS, n_steps=5, method="riemann_trapezoid"
    )
    close(ours * 4 / 5, theirs)


def test_integrated_gradients_with_baselines_and_delta_on_tabular_data(mlp, rows):
    baseline = rows.mean(0, keepdim=True)
    ours, delta = integrated_gradients(
        mlp, rows, [0, 3], baselines=baseline, steps=20, return_delta=True
    )
    theirs, their_delta = captum_attr.IntegratedGradients(mlp).attribute(
        rows, baselines=baseline, target=[0, 3], n_steps=20, return_convergence_delta=True
    )
    close(ours, theirs)
    close(delta, their_delta)


# -- layer variants ------------------------------------------------------------------------------


def test_layer_integrated_gradients_on_an_embedding_layer(text):
    baseline_ids = torch.zeros_like(IDS)
    ours, delta = layer_integrated_gradients(
        text,
        IDS,
        "embedding",
        [0, 2],
        baselines=baseline_ids,
        steps=16,
        batch_size=8,
        return_delta=True,
    )
    theirs, their_delta = captum_attr.LayerIntegratedGradients(text, text.embedding).attribute(
        IDS,
        baselines=baseline_ids,
        target=[0, 2],
        n_steps=16,
        internal_batch_size=8,
        return_convergence_delta=True,
    )
    close(ours, theirs)
    close(delta, their_delta)


def test_layer_gradient_x_activation(resnet18, image_batch, text):
    close(
        layer_gradient_x_activation(resnet18, image_batch, "layer3", TARGETS),
        captum_attr.LayerGradientXActivation(resnet18, resnet18.layer3).attribute(
            image_batch, target=TARGETS
        ),
    )
    close(
        layer_gradient_x_activation(text, IDS, "embedding", 1),
        captum_attr.LayerGradientXActivation(text, text.embedding).attribute(IDS, target=1),
    )


# -- guided backprop and guided grad-cam ---------------------------------------------------------


def test_guided_backprop(resnet18, image_batch, mlp, rows):
    # gradlens runs on the original model (in-place ReLUs, reused in each block); Captum
    # is checked on both the original and a copy without in-place ReLUs
    ours = guided_backprop(resnet18, image_batch, TARGETS)
    close(ours, captum_attr.GuidedBackprop(resnet18).attribute(image_batch, target=TARGETS))
    close(
        ours,
        captum_attr.GuidedBackprop(without_inplace(resnet18)).attribute(
            image_batch, target=TARGETS
        ),
    )
    close(guided_backprop(mlp, rows, 1), captum_attr.GuidedBackprop(mlp).attribute(rows, target=1))


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_guided_gradcam_with_nearest_upsampling(resnet18, image_batch, layer):
    ours = guided_gradcam(resnet18, image_batch, TARGETS, layer=layer, interpolation="nearest")
    theirs = captum_attr.GuidedGradCam(resnet18, resnet18.get_submodule(layer)).attribute(
        image_batch, target=TARGETS
    )
    close(ours, theirs)


# -- occlusion -------------------------------------------------------------------------------------


def test_occlusion(resnet18, image_batch):
    image_batch = image_batch[:, :, :32, :32]  # 9 window positions keep the test quick
    ours = occlusion(
        resnet18, image_batch, TARGETS, window=(3, 16, 16), stride=(3, 8, 8), batch_size=16
    )
    theirs = captum_attr.Occlusion(resnet18).attribute(
        image_batch,
        target=TARGETS,
        sliding_window_shapes=(3, 16, 16),
        strides=(3, 8, 8),
        perturbations_per_eval=8,
    )
    close(ours, theirs)


def test_occlusion_with_clipped_windows_and_a_baseline(resnet18, image_batch):
    # (40 - 10) / 7 and (40 - 12) / 5 are not whole: the last windows stick out and are clipped
    image_batch = image_batch[:, :, :40, :40]
    ours = occlusion(
        resnet18, image_batch, TARGETS, window=(3, 10, 12), stride=(3, 7, 5), baseline=0.5
    )
    theirs = captum_attr.Occlusion(resnet18).attribute(
        image_batch,
        target=TARGETS,
        sliding_window_shapes=(3, 10, 12),
        strides=(3, 7, 5),
        baselines=0.5,
        perturbations_per_eval=32,
    )
    close(ours, theirs)


def test_occlusion_on_tabular_data(mlp, rows):
    ours = occlusion(mlp, rows, 2, window=3, stride=2)
    theirs = captum_attr.Occlusion(mlp).attribute(
        rows, target=2, sliding_window_shapes=(3,), strides=(2,)
    )
    close(ours, theirs)


# -- noise tunnel ----------------------------------------------------------------------------


@pytest.mark.parametrize(("ours", "nt_type"), [(smoothgrad, "smoothgrad"), (vargrad, "vargrad")])
def test_noise_tunnel_with_the_same_seed(resnet18, unit_range_images, ours, nt_type):
    # Captum's stdevs is absolute: sigma * (max - min), the same for both samples here
    sigma, k = 0.15, 3
    stdevs = float(noise_scale(unit_range_images, sigma)[0])
    torch.manual_seed(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = captum_attr.NoiseTunnel(captum_attr.Saliency(resnet18)).attribute(
            unit_range_images,
            target=TARGETS,
            nt_type=nt_type,
            nt_samples=7,
            stdevs=stdevs,
            nt_samples_batch_size=k,
        )
    result = ours(resnet18, unit_range_images, TARGETS, n=7, sigma=sigma, batch_size=k * 2, seed=11)
    close(result, theirs)


def test_noise_tunnel_over_integrated_gradients_on_tabular_data(mlp):
    x = torch.rand(2, 10, generator=torch.Generator().manual_seed(5))
    x[:, 0], x[:, 1] = 0.0, 1.0  # both rows range over [0, 1]
    torch.manual_seed(2)
    theirs = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(mlp)).attribute(
        x,
        target=1,
        nt_type="smoothgrad",
        nt_samples=4,
        stdevs=0.1,
        nt_samples_batch_size=4,
        n_steps=8,
    )
    close(
        smoothgrad(
            mlp, x, 1, method=integrated_gradients, n=4, sigma=0.1, batch_size=8, seed=2, steps=8
        ),
        theirs,
    )


# -- DeepLIFT and SHAP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feedforward_cnn() -> nn.Module:
    return zoo.feedforward_cnn()


SMALL_IMAGES = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(6))
SMALL_STARTS = 0.3 * torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("target", [2, [0, 4, 1]])
def test_deeplift_on_a_cnn(feedforward_cnn, target):
    ours, delta = deeplift(
        feedforward_cnn, SMALL_IMAGES, target, baselines=SMALL_STARTS, return_delta=True
    )
    theirs, their_delta = captum_attr.DeepLift(feedforward_cnn).attribute(
        SMALL_IMAGES, SMALL_STARTS, target=target, return_convergence_delta=True
    )
    close(ours, theirs)
    close(delta, their_delta)


def test_deeplift_on_tabular_data_with_k_targets(mlp, rows):
    targets = torch.tensor([[0, 3], [2, 1]])
    ours = deeplift(mlp, rows, targets, baselines=rows.mean(0))
    for k in range(2):
        theirs = captum_attr.DeepLift(mlp).attribute(
            rows, rows.mean(0, keepdim=True), target=targets[:, k]
        )
        close(ours[:, k], theirs)


def test_deeplift_shap(feedforward_cnn, mlp, rows):
    distribution = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(8))
    ours = deeplift_shap(feedforward_cnn, SMALL_IMAGES, [1, 3, 0], baselines=distribution)
    theirs = captum_attr.DeepLiftShap(feedforward_cnn).attribute(
        SMALL_IMAGES, distribution, target=[1, 3, 0]
    )
    close(ours, theirs)
    table = torch.randn(6, 10, generator=torch.Generator().manual_seed(9))
    close(
        deeplift_shap(mlp, rows, 2, baselines=table, batch_size=4),
        captum_attr.DeepLiftShap(mlp).attribute(rows, table, target=2),
    )


def test_captum_deeplift_refuses_a_reused_relu_where_ours_sums_to_delta(resnet18, image_batch):
    # torchvision's BasicBlock calls one nn.ReLU twice; Captum keeps one input per module
    with pytest.raises(RuntimeError, match="used more than once"):
        captum_attr.DeepLift(resnet18).attribute(image_batch, target=TARGETS)
    _, delta = deeplift(resnet18, image_batch, TARGETS, return_delta=True)
    assert delta.abs().max() < 1e-5


def test_gradient_shap_on_a_linear_model_with_one_baseline():
    torch.manual_seed(0)
    model = nn.Linear(10, 4).eval()
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(10))
    start = torch.randn(1, 10, generator=torch.Generator().manual_seed(11))
    theirs = captum_attr.GradientShap(model).attribute(x, start, target=2, n_samples=7)
    close(gradient_shap(model, x, 2, baselines=start, n=7), theirs)


def test_gradient_shap_equals_captums_in_expectation(mlp, rows):
    # Captum draws from numpy's and torch's global generators, so the two are compared as
    # means of M independent single-draw estimates: each row of ``many`` is one copy of a
    # sample (one draw each). Per element, the difference of the two means has standard
    # error sqrt(var_ours / M + var_theirs / M), estimated from the draws; 5 standard
    # errors bound it (a false failure has probability below 1e-6 per element).
    m = 4000
    many = rows.repeat(m, 1)
    distribution = torch.randn(8, 10, generator=torch.Generator().manual_seed(12))
    ours = gradient_shap(
        mlp, many, 3, baselines=distribution, n=1, stdevs=0.5, batch_size=None, seed=0
    ).view(m, 2, 10)
    torch.manual_seed(0)
    np.random.seed(0)
    theirs = (
        captum_attr.GradientShap(mlp)
        .attribute(many, distribution, target=3, n_samples=1, stdevs=0.5)
        .view(m, 2, 10)
    )
    error = ((ours.var(0) + theirs.var(0)) / m).sqrt()
    assert ((ours.mean(0) - theirs.mean(0)).abs() <= 5 * error + 1e-7).all()
