"""The complexity, localisation, robustness and randomisation metrics on maps and models whose
answers follow from the formulas by hand."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from gradlens.attribution import saliency
from gradlens.errors import LayerNotFoundError, TargetError
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
    spearman,
    top_k_intersection,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = nn.Identity()  # complexity and localisation read only the maps
X = torch.ones(1, 1, 4, 4)
MASK = torch.zeros(1, 4, 4, dtype=torch.bool)
MASK[0, :2, :2] = True  # the top-left 2 x 2 pixels


class Linear(nn.Module):
    """Logits ``(x.flatten(1) @ weight.T)``: saliency is ``weight[class]`` whatever ``x``."""

    def __init__(self, classes: int = 3, pixels: int = 16, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, pixels, generator=generator))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def identity(model: nn.Module, x: torch.Tensor, target: Any = None) -> torch.Tensor:
    """An 'explanation' that is the input itself (one channel: its map is ``|x|``)."""
    return x


def one_hot(pixel: int, n: int = 16) -> torch.Tensor:
    return torch.eye(n)[pixel].view(1, 4, 4)


# --- complexity -----------------------------------------------------------------------------


def test_sparseness_is_the_gini_index():
    assert sparseness(MODEL, X, one_hot(5)).scores.tolist() == [15 / 16]  # (n - 1) / n
    assert sparseness(MODEL, X, torch.ones(1, 4, 4)).scores.tolist() == [0.0]
    # sorted |a| = 0 x 14, 1, 3: (2*15 - 17) * 1 + (2*16 - 17) * 3 = 58, over 16 * 4
    two = torch.zeros(1, 16)
    two[0, 3], two[0, 9] = 1, -3
    assert sparseness(MODEL, X, two.view(1, 4, 4)).scores.tolist() == [58 / 64]


def test_complexity_is_the_entropy_of_the_shares():
    assert complexity(MODEL, X, torch.ones(1, 4, 4)).scores.item() == pytest.approx(math.log(16))
    assert complexity(MODEL, X, one_hot(2)).scores.tolist() == [0.0]
    assert math.isnan(complexity(MODEL, X, torch.zeros(1, 4, 4)).scores.item())


def test_effective_complexity_counts_pixels_above_eps_of_each_maps_own_maximum():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, :3] = torch.tensor([1.0, 0.5, 1e-6])
    maps[1] = maps[0] * 1000  # another scale: the same count (normalised per sample)
    assert effective_complexity(MODEL, X.expand(2, 1, 4, 4), maps, eps=1e-3).scores.tolist() == [
        2.0,
        2.0,
    ]


def test_input_shaped_attributions_are_summed_over_channels_as_absolute_values():
    attributions = torch.zeros(1, 3, 4, 4)
    attributions[0, :, 1, 1] = torch.tensor([1.0, -2.0, 3.0])
    x = torch.ones(1, 3, 4, 4)
    assert effective_complexity(MODEL, x, attributions).scores.tolist() == [1.0]
    assert sparseness(MODEL, x, attributions).scores.tolist() == [15 / 16]


def test_maps_are_resized_to_the_inputs():
    small = torch.ones(1, 2, 2)
    assert complexity(MODEL, torch.ones(1, 1, 8, 8), small).scores.item() == pytest.approx(
        math.log(64)
    )


# --- localisation ---------------------------------------------------------------------------


def localisation_map() -> torch.Tensor:
    """3 of the 4 positive units in the mask, a negative value outside it."""
    a = torch.zeros(1, 4, 4)
    a[0, 0, 0], a[0, 1, 1], a[0, 3, 3], a[0, 3, 0] = 2.0, 1.0, 1.0, -5.0
    return a


def test_attribution_localisation_is_the_positive_share_in_the_mask():
    a = localisation_map()
    assert attribution_localisation(MODEL, X, a, masks=MASK).scores.tolist() == [0.75]
    weighted = attribution_localisation(MODEL, X, a, masks=MASK, weighted=True)
    assert weighted.scores.tolist() == [0.75 * 16 / 4]


def test_top_k_intersection_counts_the_k_highest_pixels_in_the_mask():
    a = localisation_map()  # highest: (0, 0) in, then (1, 1) and (3, 3) tied at 1: row-major
    assert top_k_intersection(MODEL, X, a, masks=MASK, k=1).scores.tolist() == [1.0]
    assert top_k_intersection(MODEL, X, a, masks=MASK, k=3).scores.tolist() == [2 / 3]
    influence = top_k_intersection(MODEL, X, a, masks=MASK, k=3, concept_influence=True)
    assert influence.scores.tolist() == [2 / 3 * 16 / 4]


def test_relevance_rank_accuracy_uses_as_many_top_pixels_as_the_mask_has():
    # top 4: (0, 0), (1, 1), (3, 3), then a 0 in row-major order: (0, 1), in the mask
    assert relevance_rank_accuracy(MODEL, X, localisation_map(), masks=MASK).scores.tolist() == [
        0.75
    ]


def test_relevance_mass_accuracy_is_the_signed_share_in_the_mask():
    # (2 + 1) / (2 + 1 + 1 - 5)
    scores = relevance_mass_accuracy(MODEL, X, localisation_map(), masks=MASK).scores
    assert scores.tolist() == [-3.0]


def test_auc_is_one_for_a_map_that_separates_the_mask_and_half_for_a_flat_map():
    perfect = MASK.double() + 0.0
    assert auc(MODEL, X, perfect, masks=MASK).scores.tolist() == [1.0]
    assert auc(MODEL, X, 1 - perfect, masks=MASK).scores.tolist() == [0.0]
    assert auc(MODEL, X, torch.ones(1, 4, 4), masks=MASK).scores.tolist() == [0.5]


@pytest.mark.parametrize(
    "metric",
    [
        attribution_localisation,
        top_k_intersection,
        relevance_rank_accuracy,
        relevance_mass_accuracy,
        auc,
    ],
)
def test_an_empty_mask_scores_nan(metric):
    options = {"k": 2} if metric is top_k_intersection else {}
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert math.isnan(metric(MODEL, X, localisation_map(), masks=empty, **options).scores.item())


def test_masks_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="masks must have shape"):
        auc(MODEL, X, localisation_map(), masks=torch.ones(1, 2, 2, dtype=torch.bool))


def test_maps_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="attributions must be shaped like the input"):
        sparseness(MODEL, X, torch.ones(1, 16))
    with pytest.raises(ValueError, match="2 maps for 1 images"):
        sparseness(MODEL, X, torch.ones(2, 4, 4))


def test_token_ids_are_refused():
    ids = torch.ones(2, 7, dtype=torch.long)
    with pytest.raises(ValueError, match="does not apply to token ids"):
        complexity(MODEL, ids, torch.ones(2, 7))


def test_k_beyond_the_pixels_is_refused():
    with pytest.raises(ValueError, match="k must be between 1 and H"):
        top_k_intersection(MODEL, X, localisation_map(), masks=MASK, k=17)


# --- robustness -----------------------------------------------------------------------------

POSITIVE = 1 + torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
NOISE = 0.1 * torch.randn(3, 2, 1, 4, 4, generator=torch.Generator().manual_seed(4))


def norm(t: torch.Tensor) -> torch.Tensor:
    return t.double().flatten(1).norm(dim=1)


def test_a_method_that_ignores_the_input_has_zero_sensitivity():
    model = Linear()
    maps = model.weight[model(POSITIVE).argmax(1)].view(2, 4, 4).abs()
    for metric in (max_sensitivity, avg_sensitivity, local_lipschitz_estimate):
        result = metric(model, POSITIVE, maps, method="saliency", perturbations=NOISE)
        assert result.scores.tolist() == [0.0, 0.0]


def test_max_and_avg_sensitivity_of_the_identity_are_the_noise_over_the_map():
    # positive inputs and small noise: |x + delta| - |x| = delta
    args = (Linear(), POSITIVE, POSITIVE[:, 0])
    ratios = torch.stack([norm(NOISE[j]) / norm(POSITIVE) for j in range(3)])
    got_max = max_sensitivity(*args, method=identity, perturbations=NOISE).scores
    got_avg = avg_sensitivity(*args, method=identity, perturbations=NOISE).scores
    torch.testing.assert_close(got_max, ratios.amax(0))
    torch.testing.assert_close(got_avg, ratios.mean(0))
    absolute = max_sensitivity(*args, method=identity, perturbations=NOISE, relative=False)
    torch.testing.assert_close(absolute.scores, torch.stack([norm(n) for n in NOISE]).amax(0))


def test_the_local_lipschitz_estimate_of_the_identity_is_one():
    result = local_lipschitz_estimate(
        Linear(), POSITIVE, POSITIVE[:, 0], method=identity, perturbations=NOISE
    )
    torch.testing.assert_close(result.scores, torch.ones(2, dtype=torch.float64))


def test_relative_input_stability_of_the_identity_is_one():
    # (e_x - e_x') / e_x = (x - x') / x for the identity on positive inputs (float64: the
    # map of x + delta is computed in the inputs' dtype)
    x = POSITIVE.double()
    result = relative_input_stability(
        Linear().double(), x, x[:, 0], method=identity, perturbations=NOISE, skip_changed=False
    )
    torch.testing.assert_close(result.scores, torch.ones(2, dtype=torch.float64))


def test_relative_output_stability_divides_by_the_change_of_the_logits():
    model = Linear()
    result = relative_output_stability(
        model, POSITIVE, POSITIVE[:, 0], method=identity, perturbations=NOISE, skip_changed=False
    )
    with torch.no_grad():
        logits = model(POSITIVE).double()
        ratios = torch.stack(
            [
                norm(NOISE[j] / POSITIVE) / norm(model(POSITIVE + NOISE[j]).double() - logits)
                for j in range(3)
            ]
        )
    torch.testing.assert_close(result.scores, ratios.amax(0))


def test_draws_that_change_the_prediction_are_left_out():
    model = Linear(classes=2)
    x = torch.zeros(1, 1, 4, 4)
    flip = torch.zeros(2, 1, 1, 4, 4)
    flip[0] = 0.01 * model.weight[0].view(1, 4, 4).sign()  # raises class 0
    flip[1] = 0.05 * model.weight[1].view(1, 4, 4).sign()  # raises class 1, moves more
    clean = int(model(x).argmax())
    kept = flip[clean].view(1, 1, 1, 4, 4)
    maps = torch.zeros(1, 4, 4)  # the identity's map of x; absolute change: |delta|
    both = max_sensitivity(
        model, x, maps, method=identity, perturbations=flip, skip_changed=True, relative=False
    )
    alone = max_sensitivity(model, x, maps, method=identity, perturbations=kept, relative=False)
    kept_all = max_sensitivity(model, x, maps, method=identity, perturbations=flip, relative=False)
    assert both.scores.tolist() == alone.scores.tolist() != kept_all.scores.tolist()


def test_drawn_noise_is_reproducible_and_does_not_depend_on_batch_size():
    def run(batch_size: int) -> torch.Tensor:
        return max_sensitivity(
            Linear(), POSITIVE, POSITIVE[:, 0], method=identity, nr_samples=5,
            generator=torch.Generator().manual_seed(1), batch_size=batch_size,
        ).scores  # fmt: skip

    assert torch.equal(run(1), run(64))
    default = [
        max_sensitivity(Linear(), POSITIVE, POSITIVE[:, 0], method=identity, nr_samples=2)
        for _ in range(2)
    ]
    assert torch.equal(default[0].scores, default[1].scores)


def test_the_method_is_looked_up_by_name_and_its_options_checked():
    with pytest.raises(ValueError, match="unknown method 'saliencyy'"):
        max_sensitivity(Linear(), POSITIVE, POSITIVE[:, 0], method="saliencyy")
    with pytest.raises(TypeError, match="does not take"):
        max_sensitivity(
            Linear(), POSITIVE, POSITIVE[:, 0], method="saliency", method_options={"steps": 3}
        )


@pytest.mark.parametrize("metric", [max_sensitivity, relative_output_stability])
def test_batch_size_below_one_is_refused(metric):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        metric(Linear(), POSITIVE, POSITIVE[:, 0], method=identity, batch_size=0)


def test_perturbations_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="perturbations must have shape"):
        max_sensitivity(
            Linear(), POSITIVE, POSITIVE[:, 0], method=identity, perturbations=NOISE[:, :1]
        )


# --- randomisation --------------------------------------------------------------------------


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(16, 8)
        self.second = nn.Linear(8, 3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x.flatten(1))))


def test_a_method_that_ignores_the_model_passes_as_fully_correlated():
    result = model_parameter_randomisation(TwoLayers(), POSITIVE, POSITIVE[:, 0], method=identity)
    assert result.layer_names == ["second", "first"]  # top down
    assert result.correlations.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert result.scores.tolist() == [1.0, 1.0]
    efficient = model_parameter_randomisation(
        TwoLayers(), POSITIVE, POSITIVE[:, 0], method=identity, efficient=True
    )
    assert efficient.scores.tolist() == [1.0, 1.0]


def test_independent_mode_randomises_each_layer_alone_from_the_trained_weights():
    model = TwoLayers()
    reference = saliency(model, POSITIVE, target=[0, 1], abs=False).abs()[:, 0]
    result = model_parameter_randomisation(
        model, POSITIVE, reference, [0, 1], method="saliency", layers=["second", "first"],
        mode="independent", generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    seeds = torch.randint(2**62, (2,), generator=torch.Generator().manual_seed(3)).tolist()
    alone = copy.deepcopy(model)
    torch.manual_seed(seeds[1])
    alone.first.reset_parameters()  # and "second" keeps its trained weights
    maps = saliency(alone, POSITIVE, target=[0, 1], abs=False).abs()[:, 0]
    torch.testing.assert_close(result.correlations[:, 1], spearman(reference, maps))


def test_smooth_variant_explains_noisy_copies_drawn_after_the_layer_seeds():
    seen: list[torch.Tensor] = []

    def recording(model: nn.Module, x: torch.Tensor, target: Any = None) -> torch.Tensor:
        seen.append(x.clone())
        return x

    model_parameter_randomisation(
        TwoLayers(), POSITIVE, POSITIVE[:, 0], method=recording, layers=["first"],
        smooth_samples=3, smooth_magnitude=0.2, generator=torch.Generator().manual_seed(9),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(9)
    torch.randint(2**62, (1,), generator=generator)  # the layer seed
    span = (POSITIVE.flatten(1).amax(1) - POSITIVE.flatten(1).amin(1)).view(1, 2, 1, 1, 1)
    noise = torch.randn(3, 2, 1, 4, 4, generator=generator) * 0.2 * span
    expected = (POSITIVE[None] + noise).flatten(0, 1)
    assert len(seen) == 2  # the unchanged model, then the randomised one: same noise
    torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(seen[1], expected)


def test_an_unknown_layer_is_refused():
    with pytest.raises(LayerNotFoundError, match="no module named 'third'"):
        model_parameter_randomisation(
            TwoLayers(), POSITIVE, POSITIVE[:, 0], method=identity, layers=["third"]
        )


def test_random_logit_of_a_class_blind_method_is_one():
    result = random_logit(TwoLayers(), POSITIVE, POSITIVE[:, 0], method=identity, win_size=3)
    torch.testing.assert_close(result.scores, torch.ones(2, dtype=torch.float64))


def test_random_logit_explains_another_class():
    targets: list[torch.Tensor] = []

    def recording(model: nn.Module, x: torch.Tensor, target: Any = None) -> torch.Tensor:
        targets.append(target.clone())
        return x

    model = TwoLayers()
    random_logit(model, POSITIVE, POSITIVE[:, 0], target=[0, 2], method=recording, win_size=3)
    assert (targets[0] != torch.tensor([0, 2])).all()
    with pytest.raises(TargetError, match="other than the explained ones"):
        random_logit(
            model,
            POSITIVE,
            POSITIVE[:, 0],
            target=[0, 2],
            method=identity,
            off_target=[1, 2],
            win_size=3,
        )


def test_a_window_larger_than_the_map_is_refused():
    with pytest.raises(ValueError, match="win_size must be odd"):
        random_logit(TwoLayers(), POSITIVE, POSITIVE[:, 0], method=identity)  # 7 > 4
