"""The faithfulness metrics on cases whose values the papers' formulas give exactly.

Most cases use a linear classifier without bias on one 2 x 2 one-channel image of ones,
``f(x) = 4 x_0 + 3 x_1 + 2 x_2 + 1 x_3`` (class 0; class 1 is all zeros), scored by its
logit with a zero fill: removing pixel ``p`` lowers the score by exactly its weight, so
gradient x input (the map ``[[4, 3], [2, 1]]``) is a perfect explanation.
"""

from __future__ import annotations

import pytest
import torch

from gradlens import metrics
from gradlens.errors import TokenInputError

from . import zoo

WEIGHTS = torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
EXACT = {"target": 0, "fill": "zero", "score": "logit"}


@pytest.fixture
def linear() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """``(model, image (1, 1, 2, 2) of ones, gradient x input map (1, 2, 2))``."""
    model = zoo.linear_classifier(WEIGHTS)
    return model, torch.ones(1, 1, 2, 2, dtype=torch.float64), WEIGHTS[0].view(1, 2, 2)


def test_pixel_flipping_removes_the_most_relevant_pixel_first(linear) -> None:
    model, image, attr = linear
    result = metrics.pixel_flipping(model, image, attr, steps=4, **EXACT)
    assert result.curve.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]
    assert result.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.scores.tolist() == [pytest.approx(3.75)]  # 0.25 * (10/2 + 6 + 3 + 1 + 0/2)


def test_region_perturbation_lerf_removes_the_least_relevant_region_first(linear) -> None:
    model, image, attr = linear
    result = metrics.region_perturbation(model, image, attr, patch_size=1, order="lerf", **EXACT)
    assert result.curve.tolist() == [[10.0, 9.0, 7.0, 4.0, 0.0]]


def test_region_perturbation_ranks_squares_by_their_attribution_sum() -> None:
    weight = torch.zeros(2, 16, dtype=torch.float64)
    weight[0] = torch.arange(16, dtype=torch.float64)
    model = zoo.linear_classifier(weight)
    attr = weight[0].view(1, 4, 4)
    result = metrics.region_perturbation(
        model, torch.ones(1, 1, 4, 4, dtype=torch.float64), attr, patch_size=2, regions=2, **EXACT
    )
    # squares (row-major): 0+1+4+5=10, 2+3+6+7=18, 8+9+12+13=42, 10+11+14+15=50; total 120
    assert result.curve.tolist() == [[120.0, 70.0, 28.0]]
    assert result.fractions.tolist() == [0.0, 0.25, 0.5]


def test_selectivity_removes_every_region_most_relevant_first(linear) -> None:
    model, image, attr = linear
    result = metrics.selectivity(model, image, attr, patch_size=1, **EXACT)
    assert result.curve.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]


def test_irof_is_the_area_over_the_normalised_curve_of_segments(linear) -> None:
    model, image, attr = linear
    per_pixel = metrics.irof(model, image, attr, patch_size=1, **EXACT)
    assert per_pixel.curve.tolist()[0] == pytest.approx([1.0, 0.6, 0.3, 0.1, 0.0])
    assert per_pixel.scores.item() == pytest.approx(0.625)  # 1 - 0.25 * (0.5 + 0.6 + 0.3 + 0.1)
    rows = torch.tensor([[[0, 0], [1, 1]]])  # segment means 3.5 then 1.5
    by_rows = metrics.irof(model, image, attr, segments=rows, **EXACT)
    assert by_rows.curve.tolist()[0] == pytest.approx([1.0, 0.3, 0.0])
    assert by_rows.scores.item() == pytest.approx(0.6)  # 1 - 0.5 * (0.5 + 0.3)


def test_faithfulness_estimate_is_one_for_a_perfect_map(linear) -> None:
    model, image, attr = linear
    result = metrics.faithfulness_estimate(model, image, attr, steps=4, **EXACT)
    assert result.scores.item() == pytest.approx(1.0, abs=1e-12)


def test_faithfulness_correlation_is_one_for_a_perfect_map_and_minus_one_reversed(linear) -> None:
    model, image, attr = linear
    g = torch.Generator().manual_seed(0)
    perfect = metrics.faithfulness_correlation(
        model, image, attr, subset_size=2, runs=10, generator=g, **EXACT
    )
    reversed_map = 5 - attr  # a pair's sum is 10 minus its true drop
    reverse = metrics.faithfulness_correlation(
        model, image, reversed_map, subset_size=2, runs=10, generator=g, **EXACT
    )
    assert perfect.scores.item() == pytest.approx(1.0, abs=1e-12)
    assert reverse.scores.item() == pytest.approx(-1.0, abs=1e-12)


def test_without_a_generator_the_draws_are_reproducible_and_leave_the_global_rng_alone(
    linear,
) -> None:
    model, image, attr = linear
    noisy = attr + torch.tensor([[[0.3, -0.2], [0.1, 0.4]]])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = metrics.faithfulness_correlation(model, image, noisy, subset_size=1, runs=6, **EXACT)
    assert torch.equal(torch.get_rng_state(), state)
    second = metrics.faithfulness_correlation(model, image, noisy, subset_size=1, runs=6, **EXACT)
    torch.testing.assert_close(first.scores, second.scores, equal_nan=True)


def test_sensitivity_n_holds_for_gradient_times_input_of_a_linear_model(linear) -> None:
    model, image, attr = linear
    for n in (1, 2, 3):
        result = metrics.sensitivity_n(
            model, image, attr, n=n, runs=8, generator=torch.Generator().manual_seed(n), **EXACT
        )
        assert result.scores.item() == pytest.approx(1.0, abs=1e-12)


def test_monotonicity_is_one_when_every_inserted_pixel_raises_the_score(linear) -> None:
    model, image, attr = linear
    assert metrics.monotonicity(model, image, attr, steps=4, **EXACT).scores.tolist() == [1.0]
    weights = torch.tensor([[4.0, 3.0, -2.0, 1.0], [0.0] * 4], dtype=torch.float64)
    negative = zoo.linear_classifier(weights)  # inserting pixel 2 lowers the score
    assert metrics.monotonicity(negative, image, attr, steps=4, **EXACT).scores.tolist() == [0.0]


def test_monotonicity_correlation_ranks_groups_by_the_output_variation(linear) -> None:
    model, image, attr = linear
    result = metrics.monotonicity_correlation(model, image, attr, steps=4, samples=1, **EXACT)
    assert result.scores.item() == pytest.approx(1.0, abs=1e-12)  # v_k = w_k^2 / 100


def test_infidelity_is_zero_for_gradient_times_input_of_a_linear_model(linear) -> None:
    model, image, attr = linear
    for perturbation in ("noise", "square"):
        result = metrics.infidelity(
            model, image, attr, target=0, perturbation=perturbation, samples=6, patch_size=1,
            fill="zero", generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        assert result.scores.item() == pytest.approx(0.0, abs=1e-20)


def test_infidelity_scale_removes_the_attributions_scale(linear) -> None:
    model, image, attr = linear
    options = {"target": 0, "perturbation": "noise", "samples": 6}
    plain = metrics.infidelity(model, image, 2 * attr, generator=torch.Generator().manual_seed(0),
                               **options)  # fmt: skip
    scaled = metrics.infidelity(model, image, 2 * attr, scale=True,
                                generator=torch.Generator().manual_seed(0), **options)  # fmt: skip
    assert plain.scores.item() > 0.1
    assert scaled.scores.item() == pytest.approx(0.0, abs=1e-20)


def test_infidelity_of_explicit_perturbations_is_the_mean_squared_error(linear) -> None:
    model, image, attr = linear
    perturbations = torch.zeros(1, 2, 1, 2, 2, dtype=torch.float64)
    perturbations[0, 0, 0, 0, 0] = 1.0  # I . a = 4, f(x) - f(x - I) = 4
    perturbations[0, 1, 0, 1, 1] = 2.0  # I . (a + 1) = 4, the change is 2
    result = metrics.infidelity(model, image, attr + torch.tensor([[[0.0, 0], [0, 1]]]),
                                target=0, perturbations=perturbations)  # fmt: skip
    assert result.scores.item() == pytest.approx((0.0 + 2.0**2) / 2)


def test_noisy_linear_imputation_restores_a_linear_ramp_inside_the_image() -> None:
    rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    ramp = (2 * rows - 3 * cols + 1).double().view(1, 1, 6, 7)
    removed = torch.zeros(1, 6, 7, dtype=torch.bool)
    removed[0, 1:5, 2:6] = True  # interior pixels: every neighbour inside the image
    filled = metrics.noisy_linear_imputation(ramp, removed, noise=0.0)
    torch.testing.assert_close(filled, ramp, rtol=0, atol=1e-9)


def test_road_curve_starts_at_the_clean_score_and_is_reproducible(linear) -> None:
    model, image, attr = linear
    runs = [
        metrics.road(
            model,
            image,
            attr,
            target=0,
            steps=4,
            score="logit",
            batch_size=size,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        for size in (1, 64)
    ]
    assert runs[0].curve[0, 0].item() == 10.0
    torch.testing.assert_close(runs[0].curve, runs[1].curve, rtol=0, atol=0)


def test_a_uniform_fill_does_not_depend_on_the_batch_size(linear) -> None:
    model, image, attr = linear
    curves = [
        metrics.pixel_flipping(model, image, attr, target=0, steps=4, fill="uniform",
                               batch_size=size, generator=torch.Generator().manual_seed(3)).curve
        for size in (1, 3, 64)
    ]  # fmt: skip
    assert curves[0].tolist() == curves[1].tolist() == curves[2].tolist()


# ---------------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    return zoo.hf_bert()


def _probability(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, y: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids[None], attention_mask=mask[None]).logits.double()
    return torch.softmax(logits, 1)[0, y].item()


def test_token_pixel_flipping_replaces_the_top_real_tokens_and_never_padding(bert) -> None:
    ids = zoo.token_ids(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.5, 0.2, 0.4], [0.8, 0.1, 0.6, 0.2, 9.0, 9.0]])
    result = metrics.pixel_flipping(
        bert, {"input_ids": ids, "attention_mask": mask}, scores, target=1, steps=2, fill=7
    )
    orders = [[1, 3, 5, 2, 4, 0], [0, 2, 3, 1]]  # padding (positions 4, 5) is never chosen
    for b in range(2):
        length = int(mask[b].sum())
        for k in range(3):
            changed = ids[b].clone()
            changed[orders[b][: round(k * length / 2)]] = 7
            expected = _probability(bert, changed, mask[b], 1)
            assert result.curve[b, k].item() == pytest.approx(expected, abs=1e-6)


def _soft_expected(model, ids, mask, keep, y) -> tuple[float, float, float]:
    """``p(y|x), p(y|x'), p(y|x0)`` with the word embeddings multiplied by ``keep``."""
    out = []
    with torch.no_grad():
        embeddings = model.get_input_embeddings()(ids)
        for factor in (torch.ones_like(keep), keep, 1 - mask.double()):
            logits = model(inputs_embeds=embeddings * factor[..., None].float(),
                           attention_mask=mask).logits.double()  # fmt: skip
            out.append(torch.softmax(logits, 1)[:, y])
    return out[0], out[1], out[2]


def test_soft_metrics_with_binary_scores_keep_or_zero_whole_embeddings(bert) -> None:
    ids = zoo.token_ids(2, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    scores = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 5.0, 5.0]])
    inputs = {"input_ids": ids, "attention_mask": mask}
    important = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 1, 1]])  # padding is kept
    p, p_suff, p0 = _soft_expected(bert, ids, mask, important, 2)
    _, p_comp, _ = _soft_expected(bert, ids, mask, 1 - important + (1 - mask), 2)
    suff = metrics.soft_sufficiency(bert, inputs, scores, target=2, normalise=False)
    comp = metrics.soft_comprehensiveness(bert, inputs, scores, target=2, normalise=False)
    torch.testing.assert_close(suff.scores, 1 - (p - p_suff).clamp(min=0), rtol=0, atol=1e-6)
    torch.testing.assert_close(comp.scores, (p - p_comp).clamp(min=0), rtol=0, atol=1e-6)
    normalised = metrics.soft_comprehensiveness(bert, inputs, scores, target=2)
    expected = torch.where(p - p0 > 0, (p - p_comp).clamp(min=0) / (p - p0), torch.nan)
    torch.testing.assert_close(normalised.scores, expected, rtol=0, atol=1e-6, equal_nan=True)


# ---------------------------------------------------------------------------------- errors


def test_a_map_of_the_wrong_shape_is_a_clear_error(linear) -> None:
    model, image, attr = linear
    with pytest.raises(ValueError, match="2 attribution maps for 1 images"):
        metrics.pixel_flipping(model, image, attr.expand(2, -1, -1), **EXACT)
    with pytest.raises(ValueError, match=r"\(B, H, W\) maps or shaped like the images"):
        metrics.faithfulness_estimate(model, image, attr[0], **EXACT)


def test_token_attributions_must_have_the_ids_shape(bert) -> None:
    with pytest.raises(ValueError, match="token ids' shape"):
        metrics.pixel_flipping(bert, zoo.token_ids(2, 5), torch.ones(2, 4), fill=3)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_a_clear_error(linear, batch_size: int) -> None:
    model, image, attr = linear
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        metrics.monotonicity(model, image, attr, batch_size=batch_size, **EXACT)


@pytest.mark.parametrize(
    "name", ["region_perturbation", "selectivity", "irof", "road", "infidelity"]
)
def test_image_only_metrics_refuse_tokens(bert, name: str) -> None:
    with pytest.raises(TokenInputError, match="does not apply to token inputs"):
        getattr(metrics, name)(bert, zoo.token_ids(2, 5), torch.ones(2, 5))


def test_soft_metrics_refuse_images(linear) -> None:
    model, image, attr = linear
    with pytest.raises(TokenInputError, match="perturb token embeddings"):
        metrics.soft_sufficiency(model, image, attr)


def test_spearman_gives_ties_their_average_rank_as_scipy_does() -> None:
    from scipy.stats import spearmanr

    a = torch.tensor([[1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0], [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 2.0]])
    b = torch.tensor([[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0], [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0]])
    expected = [spearmanr(a[i].numpy(), b[i].numpy()).statistic for i in range(2)]
    torch.testing.assert_close(metrics.spearman(a, b), torch.tensor(expected, dtype=torch.float64))
