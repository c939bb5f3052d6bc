"""The robustness, randomisation, complexity and localisation metrics equal Quantus 0.6 where
both work: same model, inputs, attributions and settings, in float64, to 1e-6.

Models: torchvision ResNet-18 and a small torchvision ViT (random init) and the shapes CNN,
on shapes images of 32 px (their object masks are the ground truth of the localisation
metrics). Where the two libraries differ by design (gradlens normalises per sample, Quantus
by the batch maximum; sparseness adds 1e-7 in Quantus), the comparison gives Quantus
inputs for which the difference vanishes or corrects for it exactly. Random draws are
shared: the noise of the robustness metrics is passed to both, and the layer seeds of the
randomisation test are replayed into Quantus' ``torch.manual_seed`` calls.

Values are quantised to multiples of 1/1024 (inputs, noise) or to float32 (maps), because
Quantus runs its own forwards in float32: so its casts are exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gradlens.attribution import saliency
from gradlens.demos.shapes import make_shapes
from gradlens.demos.training import TinyCNN
from gradlens.maps import to_2d
from gradlens.metrics import (
    attribution_localisation,
    auc,
    avg_sensitivity,
    complexity,
    effective_complexity,
    local_lipschitz_estimate,
    max_sensitivity,
    model_parameter_randomisation,
    random_logit,
    relative_input_stability,
    relative_output_stability,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    sparseness,
    top_k_intersection,
)

from . import zoo

quantus = pytest.importorskip("quantus")

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH, SIZE, DRAWS = 2, 32, 3


def _as_float64(model: nn.Module) -> nn.Module:
    return model.double().eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: _as_float64(zoo.torchvision_cnn("resnet18")),
    "vit": lambda: _as_float64(zoo.torchvision_vit(head_seed=0)),
    "shapes_cnn": lambda: _as_float64(TinyCNN()),
}


class Float64Input(nn.Module):
    """What Quantus gets: the model, fed float64 (Quantus casts its inputs to float32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.as_tensor(x).double())


def _case(name: str) -> dict[str, Any]:
    model = MODELS[name]()
    shapes = make_shapes(BATCH, size=SIZE, seed=3)
    x = torch.round(shapes.images.double() * 1024) / 1024
    y = torch.tensor([1, 2])
    maps = _explain_maps(model, x, y).float().double()
    return {"model": model, "x": x, "y": y, "maps": maps, "masks": shapes.masks}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _case(request.param)


@pytest.fixture(scope="module", params=["vit", "shapes_cnn"])
def small_case(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The models with few layers, for the slower variants of the randomisation test
    (ResNet-18 has 62 layers to randomise)."""
    return _case(request.param)


def method(model: nn.Module, x: torch.Tensor, target: Any = None) -> torch.Tensor:
    return saliency(model, x, target=target, abs=False)


def _explain_maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return to_2d(method(model, x, y)).detach()


def quantus_explain(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
    """Quantus' ``explain_func``: the same maps as ``method``, as ``(B, 1, H, W)``."""
    x = torch.as_tensor(inputs, dtype=torch.float64)
    return _explain_maps(model, x, torch.as_tensor(targets))[:, None].numpy()


def run_quantus(metric: Any, c: dict[str, Any], maps: torch.Tensor | None = None) -> np.ndarray:
    maps = c["maps"] if maps is None else maps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=Float64Input(c["model"]).eval(),
            x_batch=c["x"].numpy().copy(),
            y_batch=c["y"].numpy(),
            a_batch=maps[:, None].numpy().copy(),  # Quantus edits it in place
            s_batch=c["masks"][:, None].numpy().astype(np.float64),
            explain_func=quantus_explain,
            device="cpu",
        )
    return np.asarray(scores, dtype=np.float64)


def assert_equal(ours: torch.Tensor, theirs: np.ndarray) -> None:
    torch.testing.assert_close(ours, torch.as_tensor(theirs), rtol=1e-6, atol=1e-6)


def per_sample_max(maps: torch.Tensor) -> torch.Tensor:
    return maps / maps.abs().flatten(1).amax(1).view(-1, 1, 1)


# --- complexity -----------------------------------------------------------------------------


def test_sparseness_is_quantus_without_its_1e_7_offset(case: dict[str, Any]) -> None:
    ours = sparseness(case["model"], case["x"], case["maps"]).scores
    theirs = run_quantus(quantus.Sparseness(normalise=False, disable_warnings=True), case)
    # Quantus adds 1e-7 to every value: the Gini index becomes G * S / (S + n 1e-7)
    total = case["maps"].abs().flatten(1).sum(1)
    n = SIZE * SIZE
    assert_equal(ours * total / (total + n * 1e-7), theirs)


def test_complexity(case: dict[str, Any]) -> None:
    ours = complexity(case["model"], case["x"], case["maps"]).scores
    assert_equal(
        ours, run_quantus(quantus.Complexity(normalise=False, disable_warnings=True), case)
    )


def test_effective_complexity(case: dict[str, Any]) -> None:
    ours = effective_complexity(case["model"], case["x"], case["maps"], eps=0.05).scores
    metric = quantus.EffectiveComplexity(eps=0.05, normalise=False, disable_warnings=True)
    # gradlens normalises each map by its own maximum; Quantus is given them so
    assert_equal(ours, run_quantus(metric, case, per_sample_max(case["maps"])))


# --- localisation ---------------------------------------------------------------------------


def test_attribution_localisation(case: dict[str, Any]) -> None:
    ours = attribution_localisation(case["model"], case["x"], case["maps"], masks=case["masks"])
    metric = quantus.AttributionLocalisation(normalise=False, disable_warnings=True)
    assert_equal(ours.scores, run_quantus(metric, case))


def test_top_k_intersection(case: dict[str, Any]) -> None:
    ours = top_k_intersection(case["model"], case["x"], case["maps"], masks=case["masks"], k=50)
    metric = quantus.TopKIntersection(k=50, normalise=False, disable_warnings=True)
    assert_equal(ours.scores, run_quantus(metric, case))


def test_relevance_rank_accuracy(case: dict[str, Any]) -> None:
    ours = relevance_rank_accuracy(case["model"], case["x"], case["maps"], masks=case["masks"])
    metric = quantus.RelevanceRankAccuracy(normalise=False, disable_warnings=True)
    assert_equal(ours.scores, run_quantus(metric, case))


def test_relevance_mass_accuracy(case: dict[str, Any]) -> None:
    ours = relevance_mass_accuracy(case["model"], case["x"], case["maps"], masks=case["masks"])
    metric = quantus.RelevanceMassAccuracy(normalise=False, disable_warnings=True)
    assert_equal(ours.scores, run_quantus(metric, case))


def test_auc(case: dict[str, Any]) -> None:
    ours = auc(case["model"], case["x"], case["maps"], masks=case["masks"])
    assert_equal(
        ours.scores, run_quantus(quantus.AUC(normalise=False, disable_warnings=True), case)
    )


# --- robustness -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    """``(DRAWS, B, 3, H, W)`` uniform noise in [-0.2, 0.2], in steps of 1/1024."""
    steps = torch.randint(
        -204, 205, (DRAWS, BATCH, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(7)
    )
    return steps.double() / 1024


def replay(noise: torch.Tensor) -> Callable[..., np.ndarray]:
    """A Quantus ``perturb_func`` adding ``noise[0]``, ``noise[1]``, ... on its calls."""
    draws: Iterator[torch.Tensor] = iter(noise)

    def perturb(arr: np.ndarray, indices: Any, **_: Any) -> np.ndarray:
        return arr + next(draws).reshape(arr.shape[0], -1).numpy()

    return perturb


# Quantus' relative stabilities make a sample nan when any draw changes the prediction;
# gradlens leaves such draws out (skip_changed=True): both keep every draw here.
STABILITY = {"return_nan_when_prediction_changes": False}

ROBUSTNESS = {
    "max_sensitivity": (max_sensitivity, "MaxSensitivity", {}),
    "avg_sensitivity": (avg_sensitivity, "AvgSensitivity", {}),
    "local_lipschitz_estimate": (
        local_lipschitz_estimate,
        "LocalLipschitzEstimate",
        {"normalise": False},
    ),
    "relative_input_stability": (relative_input_stability, "RelativeInputStability", STABILITY),
    "relative_output_stability": (relative_output_stability, "RelativeOutputStability", STABILITY),
}


@pytest.mark.parametrize("name", list(ROBUSTNESS))
def test_robustness_with_the_same_noise(
    case: dict[str, Any], noise: torch.Tensor, name: str
) -> None:
    ours_metric, theirs_name, options = ROBUSTNESS[name]
    ours = ours_metric(
        case["model"],
        case["x"],
        case["maps"],
        case["y"],
        method=method,
        perturbations=noise,
        batch_size=4,
        skip_changed=False,
    )
    theirs = getattr(quantus, theirs_name)(
        nr_samples=DRAWS, perturb_func=replay(noise), disable_warnings=True, **options
    )
    assert_equal(ours.scores, run_quantus(theirs, case))


# --- randomisation --------------------------------------------------------------------------


def quantus_layers(model: nn.Module) -> list[str]:
    """The modules Quantus randomises: those with ``reset_parameters``, in module order."""
    return [name for name, module in model.named_modules() if hasattr(module, "reset_parameters")]


def replayed_seeds(count: int, seed: int) -> list[int]:
    """The layer seeds :func:`model_parameter_randomisation` draws from ``seed``."""
    return torch.randint(2**62, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def run_quantus_seeded(
    metric: Any, case: dict[str, Any], seeds: list[int], monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Quantus seeds ``torch.manual_seed(seed + 1)`` before each layer: give it ours instead."""
    order = iter(seeds)
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda seed: real(next(order)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(
                model=Float64Input(case["model"]).eval(),
                x_batch=case["x"].numpy().copy(),
                y_batch=case["y"].numpy(),
                a_batch=case["maps"][:, None].numpy().copy(),
                explain_func=quantus_explain,
                device="cpu",
            )
    finally:
        monkeypatch.setattr(torch, "manual_seed", real)


def test_mprt_cascading_from_the_top(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    check_mprt(case, monkeypatch, "cascading", "top_down", "top_down")


@pytest.mark.parametrize(
    ("mode", "order", "quantus_order"),
    [("cascading", "bottom_up", "bottom_up"), ("independent", "bottom_up", "independent")],
)
def test_mprt_other_orders(
    small_case: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    order: str,
    quantus_order: str,
) -> None:
    check_mprt(small_case, monkeypatch, mode, order, quantus_order)


def check_mprt(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch, mode: str, order: str, quantus_order: str
) -> None:
    """gradlens' correlations per layer are Quantus' (less its row for the unchanged model)."""
    layers = quantus_layers(case["model"])
    layers = layers[::-1] if order == "top_down" else layers
    ours = model_parameter_randomisation(
        case["model"],
        case["x"],
        case["maps"],
        case["y"],
        method=method,
        mode=mode,  # type: ignore[arg-type]
        layers=layers,
        generator=torch.Generator().manual_seed(5),
    )
    # normalise=False: dividing by the batch maximum can merge near-tied values, moving ranks
    metric = quantus.MPRT(layer_order=quantus_order, normalise=False, disable_warnings=True)
    theirs = run_quantus_seeded(metric, case, replayed_seeds(len(layers), 5), monkeypatch)
    per_layer = np.array([scores for name, scores in theirs.items() if name != "original"]).T
    assert_equal(ours.correlations, per_layer)
    assert_equal(ours.scores, per_layer[:, -1])


def test_efficient_mprt_is_quantus_plus_one(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    maps = _explain_maps(case["model"], case["x"], case["y"])  # Quantus recomputes its reference
    layers = quantus_layers(case["model"])  # Quantus' default order is bottom-up
    ours = model_parameter_randomisation(
        case["model"],
        case["x"],
        maps,
        case["y"],
        method=method,
        layers=layers,
        efficient=True,
        generator=torch.Generator().manual_seed(5),
    )
    metric = quantus.EfficientMPRT(disable_warnings=True)
    theirs = run_quantus_seeded(
        metric, {**case, "maps": maps}, replayed_seeds(len(layers), 5), monkeypatch
    )
    # Hedström et al.'s eMPRT is the ratio H(randomised) / H(original); Quantus returns ratio - 1
    assert_equal(ours.scores - 1, np.asarray(theirs))


def test_random_logit_is_the_2d_ssim_of_skimage(case: dict[str, Any]) -> None:
    """Quantus compares flattened maps with a 1-D SSIM; the paper's SSIM is 2-D: skimage."""
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    others = torch.tensor([4, 0])
    ours = random_logit(
        case["model"], case["x"], case["maps"], case["y"], method=method, off_target=others
    )
    a = per_sample_max(case["maps"]).numpy()
    b = per_sample_max(_explain_maps(case["model"], case["x"], others)).numpy()
    expected = [
        structural_similarity(p, q, data_range=float(max(p.max(), q.max()) - min(p.min(), q.min())))
        for p, q in zip(a, b)
    ]
    assert_equal(ours.scores, np.array(expected))
