"""gradlens.metrics on hand-built models whose answers are known exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradlens.demos.training import TinyCNN
from gradlens.errors import LayerNotFoundError, TargetError
from gradlens.metrics import (
    average_drop,
    deletion,
    gaussian_blur,
    increase_in_confidence,
    insertion,
    pointing_game,
    randomization_test,
    spearman,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from more threads, and on a busy machine a thread that is
    not scheduled stalls every parallel op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class WeightedSum(nn.Module):
    """Two logits: ``[sum over pixels of weight * (sum over channels of x), 0]``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone().float())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = (x.sum(1) * self.weight).flatten(1).sum(1)
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def region(size: int = 4, corner: int = 2) -> torch.Tensor:
    """``(size, size)`` with ones in the top-left ``corner x corner`` square."""
    mask = torch.zeros(size, size)
    mask[:corner, :corner] = 1
    return mask


@pytest.fixture
def region_model() -> WeightedSum:
    """Logit 0 = the sum of the top-left 2 x 2 pixels of a 4 x 4 one-channel image."""
    return WeightedSum(region())


ONES = torch.ones(1, 1, 4, 4)  # the clean image: logit 0 is 4
PERFECT = region()[None]  # highlights exactly the region
INVERTED = 1 - PERFECT


# ----------------------------------------------------------------------------- deletion / insertion


def test_deletion_of_a_perfect_map_drops_the_logit_at_the_first_step(region_model):
    result = deletion(region_model, ONES, PERFECT, steps=4, score="logit")
    assert result.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.curve.tolist() == [[4.0, 0.0, 0.0, 0.0, 0.0]]
    assert result.auc.tolist() == [0.5]


def test_deletion_of_an_inverted_map_keeps_the_logit_until_the_end(region_model):
    result = deletion(region_model, ONES, INVERTED, steps=4, score="logit")
    assert result.curve.tolist() == [[4.0, 4.0, 4.0, 4.0, 0.0]]
    assert result.auc.tolist() == [3.5]


def test_insertion_of_a_perfect_map_restores_the_logit_at_the_first_step(region_model):
    perfect = insertion(region_model, ONES, PERFECT, steps=4, fill="zero", score="logit")
    inverted = insertion(region_model, ONES, INVERTED, steps=4, fill="zero", score="logit")
    assert perfect.curve.tolist() == [[0.0, 4.0, 4.0, 4.0, 4.0]]
    assert inverted.curve.tolist() == [[0.0, 0.0, 0.0, 0.0, 4.0]]
    assert perfect.auc.tolist() == [3.5]
    assert inverted.auc.tolist() == [0.5]


def test_ties_are_removed_in_row_major_order(region_model):
    # A flat map removes row 0 first (two region pixels), then row 1 (the other two).
    result = deletion(region_model, ONES, torch.zeros(1, 4, 4), steps=4, score="logit")
    assert result.curve.tolist() == [[4.0, 2.0, 0.0, 0.0, 0.0]]


def test_probability_score_is_the_softmax_of_the_target_class(region_model):
    result = deletion(region_model, ONES, PERFECT, steps=4)  # softmax([s, 0])[0] = sigmoid(s)
    expected = [1 / (1 + math.exp(-4)), 0.5, 0.5, 0.5, 0.5]
    assert result.curve[0].tolist() == pytest.approx(expected, abs=1e-12)


def test_random_maps_score_between_the_perfect_and_the_inverted_map():
    model = WeightedSum(region(8, 3))
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    random_maps = torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(1))
    perfect_maps = region(8, 3).expand(6, 8, 8)
    aucs = {
        name: deletion(model, images, maps, steps=16, score="logit", fill="zero").auc
        for name, maps in {
            "perfect": perfect_maps,
            "random": random_maps,
            "inverted": 1 - perfect_maps,
        }.items()
    }
    assert (aucs["perfect"] < aucs["random"]).all()
    assert (aucs["random"] < aucs["inverted"]).all()


def test_target_selects_the_class_whose_score_is_tracked(region_model):
    result = deletion(region_model, ONES, PERFECT, target=1, steps=4, score="logit")
    assert result.classes.tolist() == [1]
    assert result.curve.tolist() == [[0.0] * 5]  # logit 1 is always 0


def test_default_target_is_the_top_class_on_the_clean_image():
    model = WeightedSum(-region())  # logit 0 = -4 < logit 1 = 0: class 1 wins
    assert deletion(model, ONES, PERFECT, steps=2).classes.tolist() == [1]


def test_batch_size_does_not_change_the_result():
    model = WeightedSum(region(8, 3))
    images = torch.rand(5, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(1))
    one = deletion(model, images, maps, steps=7, batch_size=1)
    many = deletion(model, images, maps, steps=7, batch_size=1000)
    assert torch.equal(one.curve, many.curve)


@pytest.mark.parametrize("fill", ["zero", "mean", "blur"])
def test_deletion_ends_at_the_fill_image_and_insertion_starts_there(fill):
    model = WeightedSum(region(8, 3))
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1))
    baseline = {
        "zero": torch.zeros_like(image),
        "mean": image.mean().expand_as(image),
        "blur": gaussian_blur(image, 0.8),
    }[fill]
    removed = deletion(model, image, maps, steps=4, fill=fill, score="logit")
    inserted = insertion(model, image, maps, steps=4, fill=fill, score="logit")
    with torch.no_grad():
        expected = float(model(baseline)[0, 0])
        clean = float(model(image)[0, 0])
    assert float(removed.curve[0, -1]) == pytest.approx(expected, abs=1e-5)
    assert float(inserted.curve[0, 0]) == pytest.approx(expected, abs=1e-5)
    assert float(removed.curve[0, 0]) == pytest.approx(clean, abs=1e-5)
    assert float(inserted.curve[0, -1]) == pytest.approx(clean, abs=1e-5)


def test_a_fill_tensor_replaces_the_removed_pixels(region_model):
    result = deletion(region_model, ONES, PERFECT, steps=1, fill=torch.tensor(3.0), score="logit")
    assert result.curve.tolist() == [[4.0, 12.0]]  # every pixel becomes 3: 4 * 3


def test_channel_maps_are_reduced_by_summing_absolute_values(region_model):
    per_channel = torch.stack([-PERFECT, PERFECT * 0.5], dim=1)  # |.| summed: 1.5 * PERFECT
    assert torch.equal(
        deletion(region_model, ONES, per_channel, steps=4).curve,
        deletion(region_model, ONES, PERFECT, steps=4).curve,
    )


def test_smaller_maps_are_resized_to_the_image():
    model = WeightedSum(region(8, 4))
    small = region(2, 1)[None]  # the top-left quarter at 2 x 2
    result = deletion(model, torch.ones(1, 1, 8, 8), small, steps=4, score="logit")
    assert result.curve.tolist() == [[16.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    "target", [lambda out: out[:, 0], torch.tensor([[0, 1]])], ids=["callable", "two-per-sample"]
)
def test_curves_need_one_class_per_sample(region_model, target):
    with pytest.raises(TargetError):
        deletion(region_model, ONES, PERFECT, target=target)


def test_metrics_leave_the_model_untouched():
    torch.manual_seed(0)
    model = TinyCNN(num_classes=3, width=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    deletion(model, images, maps, steps=3)
    insertion(model, images, maps, steps=3)
    average_drop(model, images, maps)
    increase_in_confidence(model, images, maps)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_in_training_mode_warns_and_keeps_its_batchnorm_statistics():
    torch.manual_seed(0)
    model = TinyCNN(num_classes=3, width=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="training mode"):
        deletion(model, torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), steps=2)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gaussian_blur_keeps_constant_images_and_the_mass_of_an_impulse():
    flat = torch.full((1, 2, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1
    blurred = gaussian_blur(impulse, 1.5)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-6)
    assert blurred[0, 0].argmax() == 10 * 21 + 10


# ----------------------------------------------------------------------------- pointing game


def peak_at(y: int, x: int, size: int = 5) -> torch.Tensor:
    """A ``(1, size, size)`` map whose only maximum is at row ``y``, column ``x``."""
    maps = torch.zeros(1, size, size)
    maps[0, y, x] = 1
    return maps


def mask_of(*pixels: tuple[int, int], size: int = 5) -> torch.Tensor:
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    for y, x in pixels:
        mask[0, y, x] = True
    return mask


def test_pointing_game_hits_when_the_maximum_is_on_the_mask():
    assert pointing_game(peak_at(1, 3), masks=mask_of((1, 3))).tolist() == [True]
    assert pointing_game(peak_at(1, 3), masks=mask_of((3, 1))).tolist() == [False]


def test_pointing_game_tolerance_is_a_euclidean_distance_in_pixels():
    beside, diagonal = mask_of((2, 3)), mask_of((2, 4))  # 1 and sqrt(2) from (1, 3)
    assert pointing_game(peak_at(1, 3), masks=beside, tolerance=0).tolist() == [False]
    assert pointing_game(peak_at(1, 3), masks=beside, tolerance=1).tolist() == [True]
    assert pointing_game(peak_at(1, 3), masks=diagonal, tolerance=1).tolist() == [False]
    assert pointing_game(peak_at(1, 3), masks=diagonal, tolerance=1.5).tolist() == [True]


def test_pointing_game_takes_the_first_maximum_in_row_major_order():
    maps = peak_at(3, 0) + peak_at(1, 4)  # two tied maxima; (1, 4) comes first
    assert pointing_game(maps, masks=mask_of((1, 4))).tolist() == [True]
    assert pointing_game(maps, masks=mask_of((3, 0))).tolist() == [False]


def test_pointing_game_boxes_are_end_exclusive_and_x_first():
    box = torch.tensor([[1, 0, 3, 2]])  # columns 1..2, rows 0..1
    assert pointing_game(peak_at(1, 2), boxes=box).tolist() == [True]
    assert pointing_game(peak_at(2, 1), boxes=box).tolist() == [False]  # row 2 is outside
    assert pointing_game(peak_at(1, 3), boxes=box).tolist() == [False]  # column 3 is outside
    assert pointing_game(peak_at(1, 3), boxes=box, tolerance=1).tolist() == [True]


def test_pointing_game_is_batched_and_misses_on_an_empty_mask():
    maps = torch.cat([peak_at(0, 0), peak_at(4, 4), peak_at(2, 2)])
    masks = torch.cat([mask_of((0, 0)), mask_of((0, 0)), mask_of()])
    hits = pointing_game(maps, masks=masks, tolerance=2)
    assert hits.dtype == torch.bool
    assert hits.tolist() == [True, False, False]
    assert float(hits.float().mean()) == pytest.approx(1 / 3)


def test_pointing_game_needs_exactly_one_kind_of_ground_truth():
    with pytest.raises(ValueError, match="exactly one"):
        pointing_game(peak_at(0, 0))
    with pytest.raises(ValueError, match="exactly one"):
        pointing_game(peak_at(0, 0), masks=mask_of((0, 0)), boxes=torch.tensor([[0, 0, 1, 1]]))


# ----------------------------------------------------------------------------- average drop


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_average_drop_is_the_mean_relative_drop_in_probability(region_model):
    # Sample 0 keeps the region (no drop); sample 1 keeps everything but the region
    # (logit 4 -> 0, probability sigmoid(4) -> 1/2).
    images = ONES.expand(2, 1, 4, 4)
    maps = torch.cat([PERFECT, INVERTED])
    y = sigmoid(4)
    expected = 100 * (0 + (y - 0.5) / y) / 2
    assert average_drop(region_model, images, maps) == pytest.approx(expected, abs=1e-10)
    assert increase_in_confidence(region_model, images, maps) == 0.0


def test_the_explanation_uses_the_min_max_normalised_map(region_model):
    # Map values 2 (region) and 1 (elsewhere) normalise to 1 and 0: the same as PERFECT.
    assert average_drop(region_model, ONES, 1 + PERFECT) == pytest.approx(0.0, abs=1e-12)
    # A constant map normalises to zero: the explanation is a black image, logit 0.
    y = sigmoid(4)
    assert average_drop(region_model, ONES, torch.ones(1, 4, 4)) == pytest.approx(
        100 * (y - 0.5) / y
    )


def test_increase_in_confidence_counts_samples_whose_probability_rises():
    weight = region()
    weight[3, 3] = -1  # a pixel of counter-evidence outside the region
    model = WeightedSum(weight)
    images = ONES.expand(2, 1, 4, 4)
    # Keeping only the region removes the counter-evidence (logit 3 -> 4): a rise;
    # the inverted map keeps the counter-evidence and nothing else (logit 3 -> -1): a drop.
    maps = torch.cat([PERFECT, INVERTED])
    assert increase_in_confidence(model, images, maps) == 50.0
    assert increase_in_confidence(model, images[:1], maps[:1]) == 100.0
    y = sigmoid(3)
    assert average_drop(model, images, maps) == pytest.approx(100 * (0 + (y - sigmoid(-1)) / y) / 2)


# ----------------------------------------------------------------------------- spearman


def test_spearman_of_identical_and_reversed_rankings():
    a = torch.tensor([[0.1, 0.5, 0.2, 0.9]])
    assert spearman(a, a).tolist() == [1.0]
    assert spearman(a, -a).tolist() == [-1.0]


def test_spearman_only_sees_ranks():
    a = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(spearman(a, a**3 + 5), torch.ones(3, dtype=torch.float64))


def test_spearman_gives_ties_their_average_rank():
    # ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3): 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    a = torch.tensor([[1.0, 2.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert spearman(a, b).item() == pytest.approx(3 / math.sqrt(10), abs=1e-12)


def test_spearman_of_a_constant_sample_is_nan():
    assert spearman(torch.ones(1, 4), torch.arange(4.0)[None]).isnan().all()


# ----------------------------------------------------------------------------- randomisation


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def input_gradient(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
    """A plain saliency method: d score / d input, ``(B, C, H, W)``."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    logits.gather(1, target[:, None]).sum().backward()
    return x.grad


def test_randomisation_leaves_the_original_model_identical():
    model = TinyCNN(num_classes=3, width=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = randomization_test(model, torch.rand(2, 3, 8, 8), input_gradient)
    assert len(result.layer_names) == 9  # 4 x (conv, bn) + classifier
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_randomisation_goes_from_the_last_layer_to_the_first():
    result = randomization_test(small_mlp(), torch.rand(2, 1, 4, 4), input_gradient)
    assert result.layer_names == ["3", "1"]
    assert result.correlations.shape == (2, 2)
    assert result.original_maps.shape == (2, 4, 4)


def test_a_method_that_ignores_the_weights_keeps_correlation_one():
    def brightness(model, x, target=None):
        return x.sum(1)

    result = randomization_test(small_mlp(), torch.rand(3, 1, 4, 4), brightness)
    assert torch.equal(result.correlations, torch.ones(2, 3, dtype=torch.float64))


def test_a_linear_models_gradient_decorrelates_once_its_weights_are_redrawn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    result = randomization_test(model, torch.rand(4, 1, 8, 8), input_gradient, target=0)
    # The gradient is the weight row of class 0: a fresh draw is unrelated to the old one.
    assert result.correlations.abs().max() < 0.5


def test_every_step_explains_the_original_models_top_class():
    model = small_mlp()
    images = torch.rand(4, 1, 4, 4)
    seen = []

    def recording(model, x, target=None):
        seen.append(target.clone())
        return input_gradient(model, x, target)

    randomization_test(model, images, recording)
    expected = model(images).argmax(1)
    assert len(seen) == 3  # the original maps + two steps
    assert all(torch.equal(t, expected) for t in seen)


def test_randomisation_is_seeded_and_leaves_the_global_rng_alone():
    model, images = small_mlp(), torch.rand(2, 1, 4, 4)
    state = torch.random.get_rng_state()
    first = randomization_test(model, images, input_gradient, seed=3, keep_maps=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = randomization_test(model, images, input_gradient, seed=3, keep_maps=True)
    assert torch.equal(first.maps, second.maps)
    assert first.maps.shape == (2, 2, 4, 4)


def test_layers_chooses_what_is_randomised_and_in_which_order():
    result = randomization_test(small_mlp(), torch.rand(2, 1, 4, 4), input_gradient, layers=["1"])
    assert result.layer_names == ["1"]
    with pytest.raises(LayerNotFoundError, match="nope"):
        randomization_test(small_mlp(), torch.rand(2, 1, 4, 4), input_gradient, layers=["nope"])
