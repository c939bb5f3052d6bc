"""The faithfulness metrics equal Quantus 0.6 where both work, to 1e-6 in float64.

Quantus feeds its model ``torch.Tensor(x)`` (float32), so every model here is wrapped to
compute in float64 from its input, and the images hold float32-representable values (so
both libraries see exactly the same numbers). Attributions are one map per pixel, given to
Quantus as ``(B, 1, H, W)`` (which it broadcasts over the channels) and to gradlens as
``(B, H, W)``; with distinct map values Quantus' per-element ranking then removes whole
pixels, and ``features_in_step = C * H * W / steps`` matches our ``steps``. Where Quantus
0.6 is broken (see docs/evaluation.md) the metric is tested against the paper's formula in
test_metrics_faithfulness.py instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import quantus  # the test extra's reference: pip install --no-deps quantus==0.6.0
import torch
from torch import nn

from gradlens import metrics

from . import zoo

SIZE = 32
BATCH = 2


class Float64(nn.Module):
    """``model`` in float64, called on inputs of any floating dtype."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.double())


def _resnet() -> nn.Module:
    return zoo.torchvision_cnn("resnet18")


def _vit() -> nn.Module:
    return zoo.torchvision_vit(head_seed=0)


def _shapes() -> nn.Module:
    return zoo.shapes_cnn()


MODELS: dict[str, Callable[[], nn.Module]] = {"resnet18": _resnet, "vit": _vit, "shapes": _shapes}


@pytest.fixture(scope="module", params=list(MODELS))
def case(
    request: pytest.FixtureRequest,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, np.ndarray]:
    """``(model, images, maps, classes)``: float64 model, float32-exact images and maps."""
    model = Float64(MODELS[request.param]()).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=g).double()
    maps = torch.randn(BATCH, SIZE, SIZE, generator=g).double()  # distinct values
    with torch.no_grad():
        classes = model(images).argmax(1).numpy()
    return model, images, maps, classes


def _q(metric: object, model: nn.Module, images: torch.Tensor, maps: torch.Tensor, y: np.ndarray,
       softmax: bool) -> np.ndarray:  # fmt: skip
    result = metric(  # type: ignore[operator]
        model=model, x_batch=images.numpy(), y_batch=y, a_batch=maps[:, None].numpy(),
        channel_first=True, softmax=softmax, device="cpu", batch_size=BATCH,
    )  # fmt: skip
    return np.asarray(result, dtype=np.float64)


@pytest.fixture(autouse=True)
def _steps_in_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantus counts ``features_in_step`` in elements (``C * pixels``) but asserts that it
    divides ``H * W``; 3 channels of 32 x 32 pixels never pass, so the assertion is lifted
    (the steps themselves are whole pixels, ``C * H * W / features_in_step`` of them)."""
    from quantus.helpers import asserts

    monkeypatch.setattr(asserts, "assert_features_in_step", lambda **kwargs: None)


QUIET = {"abs": False, "normalise": False, "disable_warnings": True, "display_progressbar": False}


def test_pixel_flipping_equals_quantus(case) -> None:
    model, images, maps, y = case
    steps = 8
    ours = metrics.pixel_flipping(model, images, maps, torch.as_tensor(y), steps=steps, fill="min")
    theirs = _q(
        quantus.PixelFlipping(
            features_in_step=3 * SIZE * SIZE // steps, perturb_baseline="black", **QUIET
        ),  # fmt: skip
        model,
        images,
        maps,
        y,
        softmax=True,
    )
    np.testing.assert_allclose(ours.curve[:, 1:].numpy(), theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_equals_quantus(case, order: str) -> None:
    model, images, maps, y = case
    ours = metrics.region_perturbation(
        model, images, maps, torch.as_tensor(y), patch_size=8, regions=4, order=order, fill="min"
    )
    theirs = _q(
        quantus.RegionPerturbation(
            patch_size=8, regions_evaluation=4, order=order, perturb_baseline="black", **QUIET
        ),  # fmt: skip
        model,
        images,
        maps,
        y,
        softmax=True,
    )
    drops = (ours.curve[:, :1] - ours.curve[:, 1:]).numpy()
    np.testing.assert_allclose(drops, theirs, rtol=0, atol=1e-6)


def test_selectivity_equals_quantus(case) -> None:
    model, images, maps, y = case
    ours = metrics.selectivity(model, images, maps, torch.as_tensor(y), patch_size=16, fill="zero")
    theirs = _q(
        quantus.Selectivity(patch_size=16, perturb_baseline=0.0, **QUIET),
        model, images, maps, y, softmax=True,
    )  # fmt: skip
    np.testing.assert_allclose(ours.curve[:, 1:].numpy(), theirs, rtol=0, atol=1e-6)


def test_faithfulness_correlation_equals_quantus_on_the_same_subsets(case, monkeypatch) -> None:
    model, images, maps, y = case
    runs, size = 8, 40
    g = torch.Generator().manual_seed(5)
    subsets = torch.stack(
        [
            torch.stack([torch.randperm(SIZE * SIZE, generator=g)[:size] for _ in range(runs)])
            for _ in range(BATCH)
        ]  # fmt: skip
    )
    ours = metrics.faithfulness_correlation(
        model, images, maps, torch.as_tensor(y), subsets=subsets, fill="min"
    )
    # Quantus draws one subset of elements per run and sample (run-major) with
    # np.random.choice: hand it the same pixels, every channel of each.
    drawn = iter([subsets[b, r] for r in range(runs) for b in range(BATCH)])

    def choice(n: int, k: int, replace: bool = True) -> np.ndarray:
        pixels = next(drawn).numpy()
        return np.concatenate([pixels + c * SIZE * SIZE for c in range(3)])

    monkeypatch.setattr(np.random, "choice", choice)
    theirs = _q(
        quantus.FaithfulnessCorrelation(
            nr_runs=runs,
            subset_size=3 * size,
            perturb_baseline="black",
            return_aggregate=False,
            **QUIET,
        ),  # fmt: skip
        model,
        images,
        maps,
        y,
        softmax=True,
    )
    np.testing.assert_allclose(ours.scores.numpy(), theirs, rtol=0, atol=1e-6)


def test_faithfulness_estimate_equals_quantus(case) -> None:
    model, images, maps, y = case
    steps = 8
    ours = metrics.faithfulness_estimate(
        model, images, maps, torch.as_tensor(y), steps=steps, fill="min"
    )
    theirs = _q(
        quantus.FaithfulnessEstimate(
            features_in_step=3 * SIZE * SIZE // steps, perturb_baseline="black", **QUIET
        ),  # fmt: skip
        model,
        images,
        maps,
        y,
        softmax=True,
    )
    np.testing.assert_allclose(ours.scores.numpy(), theirs, rtol=0, atol=1e-6)


def test_monotonicity_correlation_equals_quantus_with_a_fixed_fill(case) -> None:
    model, images, maps, y = case
    steps = 8
    ours = metrics.monotonicity_correlation(
        model, images, maps, torch.as_tensor(y), steps=steps, samples=2, fill="min"
    )
    theirs = _q(
        quantus.MonotonicityCorrelation(
            features_in_step=3 * SIZE * SIZE // steps,
            nr_samples=2,
            perturb_baseline="black",
            **QUIET,
        ),  # fmt: skip
        model,
        images,
        maps,
        y,
        softmax=True,
    )
    np.testing.assert_allclose(ours.scores.numpy(), theirs, rtol=0, atol=1e-6)


def test_infidelity_equals_quantus_on_its_raster_square_removals(case) -> None:
    model, images, maps, y = case
    patch = 16
    # Quantus removes the grid's squares cumulatively, row by row: I_k = x - x_k
    low = images.flatten(1).amin(1).view(-1, 1, 1, 1)
    removed = torch.zeros(BATCH, 1, SIZE, SIZE, dtype=torch.bool)
    perturbations = []
    for top in range(0, SIZE, patch):
        for left in range(0, SIZE, patch):
            removed[..., top : top + patch, left : left + patch] = True
            perturbations.append(images - torch.where(removed, low, images))
    ours = metrics.infidelity(
        model, images, maps, torch.as_tensor(y), perturbations=torch.stack(perturbations, 1),
        score="logit",
    )  # fmt: skip
    theirs = _q(
        quantus.Infidelity(
            perturb_baseline="black", perturb_patch_sizes=[patch], n_perturb_samples=1, **QUIET
        ),  # fmt: skip
        model,
        images,
        maps,
        y,
        softmax=False,
    )
    np.testing.assert_allclose(ours.scores.numpy(), theirs, rtol=1e-9, atol=1e-6)


def test_road_equals_quantus_on_one_channel_images() -> None:
    model = Float64(zoo.shapes_cnn(in_channels=1)).eval()
    g = torch.Generator().manual_seed(4)
    images = torch.randn(4, 1, SIZE, SIZE, generator=g).double()
    maps = torch.randn(4, SIZE, SIZE, generator=g).double()
    y = model(images).argmax(1).detach().numpy()
    ours = metrics.road(model, images, maps, torch.as_tensor(y), steps=4, noise=0.0,
                        score="accuracy")  # fmt: skip
    metric = quantus.ROAD(percentages=[25, 50, 75], noise=0.0, **QUIET)
    metric(model=model, x_batch=images.numpy(), y_batch=y, a_batch=maps[:, None].numpy(),
           channel_first=True, device="cpu", batch_size=4)  # fmt: skip
    theirs = np.array([metric.evaluation_scores[p] for p in (25, 50, 75)])
    np.testing.assert_allclose(ours.curve[:, 1:4].mean(0).numpy(), theirs, rtol=0, atol=1e-12)


def test_noisy_linear_imputation_equals_quantus_on_three_channels() -> None:
    from quantus.functions.perturb_func import noisy_linear_imputation as theirs

    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 37, 29, generator=g, dtype=torch.float64)  # odd sides: coarse
    removed = torch.rand(2, 37, 29, generator=g) < 0.6  # grids of 19 x 15 and 10 x 8 too
    ours = metrics.noisy_linear_imputation(images, removed, noise=0.0)
    for b in range(2):
        pixels = removed[b].flatten().nonzero()[:, 0].numpy()
        expected = theirs(arr=images[b].numpy(), indices=pixels, noise=0.0)
        np.testing.assert_allclose(ours[b].numpy(), expected, rtol=0, atol=1e-8)
