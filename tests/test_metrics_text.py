"""gradlens.metrics.text: token localisation and the ERASER scores, on tiny models whose
probabilities are known in closed form."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gradlens.errors import TargetError
from gradlens.metrics import (
    ERASER_FRACTIONS,
    comprehensiveness,
    sufficiency,
    token_localization,
)

from .contract_support import assert_unchanged, snapshot

MASK = 2


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class BagOfWords(nn.Module):
    """Two logits ``[sum of the real tokens' weights, 0]``: p(class 0) = sigmoid(sum).

    Token weights: id 3 -> +2, 4 -> +1, 5 -> 0, 6 -> -1; the others (pad 0, unk 1,
    mask 2) 0. Padding is masked out, so it adds nothing either way."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.0, 0.0, 0.0, 2.0, 1.0, 0.0, -1.0]))
        self.config = SimpleNamespace(pad_token_id=0, unk_token_id=1, mask_token_id=MASK)

    def forward(self, input_ids, attention_mask=None):
        weights = self.weight[input_ids]
        if attention_mask is not None:
            weights = weights * attention_mask
        total = weights.sum(1)
        return torch.stack([total, torch.zeros_like(total)], 1)


class FirstToken(nn.Module):
    """Reads only position 0: logits ``[w(first token), 0]`` with w as in BagOfWords."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.0, 0.0, 0.0, 2.0, 1.0, 0.0, -1.0]))

    def forward(self, input_ids, attention_mask=None):
        first = self.weight[input_ids[:, 0]]
        return torch.stack([first, torch.zeros_like(first)], 1)


IDS = torch.tensor([[3, 4, 5, 6], [6, 3, 0, 0]])
MASK_ = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
# sample 0 ranks 3 > 4 > 5 > 6; sample 1's padding has the largest scores, which must not count
SCORES = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 9.0, 9.0]])


def test_localization_takes_the_first_top_real_token():
    triggers = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]).bool()
    scores = torch.tensor([[0.0, 5.0, 5.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
    # sample 0: tie at 1 and 2, the first wins (a trigger); sample 1: tie, first wins;
    # sample 2: the padding's 9 is ignored, position 2 (a trigger) is the top real token
    assert token_localization(scores, triggers, mask).tolist() == [True, True, True]
    assert token_localization(scores, triggers).tolist() == [True, True, False]
    assert token_localization(-scores, triggers, mask).tolist() == [False, False, False]


def test_localization_of_a_sample_without_real_tokens_is_a_miss():
    hits = token_localization(torch.ones(1, 3), torch.ones(1, 3).bool(), torch.zeros(1, 3))
    assert hits.tolist() == [False]


def test_localization_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        token_localization(torch.ones(2, 3), torch.ones(2, 4).bool())


def test_comprehensiveness_and_sufficiency_by_deletion_on_a_bag_of_words():
    model = BagOfWords().eval()
    # class 0 for both (sample 0: sum 2 -> class 0; sample 1: sum 1 -> class 0)
    p0, p1 = sigmoid(2.0), sigmoid(1.0)
    # k = 0.5: sample 0 drops/keeps ids 3, 4 (2 of 4 tokens); sample 1: 1 of its 2 real
    # tokens, the 3 (score 2 beats 1; the padding's 9 does not count)
    comp = comprehensiveness(model, IDS, SCORES, attention_mask=MASK_, k=0.5)
    torch.testing.assert_close(
        comp, torch.tensor([p0 - sigmoid(-1.0), p1 - sigmoid(-1.0)], dtype=torch.float64)
    )
    suff = sufficiency(model, IDS, SCORES, attention_mask=MASK_, k=0.5)
    torch.testing.assert_close(
        suff, torch.tensor([p0 - sigmoid(3.0), p1 - sigmoid(2.0)], dtype=torch.float64)
    )


def test_a_list_of_fractions_is_averaged_and_each_takes_the_ceiling_of_its_share():
    model = BagOfWords().eval()
    # sample 0 has 4 tokens: 0.1 -> ceil(0.4) = 1 token (the 3), 0.5 -> 2, 1.0 -> all 4
    comp = comprehensiveness(model, IDS[:1], SCORES[:1], k=[0.1, 0.5, 1.0])
    expected = sigmoid(2.0) - (sigmoid(0.0) + sigmoid(-1.0) + sigmoid(0.0)) / 3
    assert comp.tolist() == pytest.approx([expected], abs=1e-12)
    default = comprehensiveness(model, IDS[:1], SCORES[:1])  # ERASER's bins
    ceilings = [math.ceil(4 * f) for f in ERASER_FRACTIONS]
    assert ceilings == [1, 1, 1, 1, 2]
    expected = sigmoid(2.0) - (4 * sigmoid(0.0) + sigmoid(-1.0)) / 5
    assert default.tolist() == pytest.approx([expected], abs=1e-12)


def test_replacement_puts_a_token_in_place_and_deletion_moves_the_rest_up():
    model = FirstToken().eval()
    ids, scores = IDS[:1], SCORES[:1]  # the first token (id 3, weight 2) is the top one
    p = sigmoid(2.0)
    # deleted: the 4 (weight 1) moves to the front; replaced: the mask token (weight 0)
    deleted = comprehensiveness(model, ids, scores, k=0.25, removal="delete")
    replaced = comprehensiveness(model, ids, scores, k=0.25, removal=MASK)
    by_id = comprehensiveness(model, ids, scores, k=0.25, removal=6)  # weight -1
    assert deleted.tolist() == pytest.approx([p - sigmoid(1.0)], abs=1e-12)
    assert replaced.tolist() == pytest.approx([p - 0.5], abs=1e-12)
    assert by_id.tolist() == pytest.approx([p - sigmoid(-1.0)], abs=1e-12)
    # keeping only the top token: unchanged with either removal
    assert sufficiency(model, ids, scores, k=0.25).tolist() == pytest.approx([0.0], abs=1e-12)
    kept = sufficiency(model, ids, scores, k=0.25, removal=1)
    assert kept.tolist() == pytest.approx([0.0], abs=1e-12)


def test_the_target_class_is_the_one_scored():
    model = BagOfWords().eval()
    comp = comprehensiveness(model, IDS, SCORES, target=1, attention_mask=MASK_, k=0.5)
    # p(class 1) = 1 - p(class 0), so the drop changes sign
    torch.testing.assert_close(
        comp, torch.tensor([sigmoid(-1.0) - sigmoid(2.0), sigmoid(-1.0) - sigmoid(1.0)],
                           dtype=torch.float64),
    )  # fmt: skip
    per_sample = comprehensiveness(model, IDS, SCORES, target=[0, 1], attention_mask=MASK_, k=0.5)
    assert per_sample[0] == pytest.approx(sigmoid(2.0) - sigmoid(-1.0))
    assert per_sample[1] == pytest.approx(comp[1].item())


def test_chunked_forwards_give_the_same_scores():
    model = BagOfWords().eval()
    whole = sufficiency(model, IDS, SCORES, attention_mask=MASK_)
    chunked = sufficiency(model, IDS, SCORES, attention_mask=MASK_, batch_size=3)
    torch.testing.assert_close(whole, chunked)


def test_the_model_is_left_untouched():
    model = BagOfWords().eval()
    model.weight.grad = torch.ones(7)
    before = snapshot(model)
    comprehensiveness(model, IDS, SCORES, attention_mask=MASK_)
    sufficiency(model, IDS, SCORES, attention_mask=MASK_, removal="mask")
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"k": 0.0}, ValueError, r"k must be a fraction in \(0, 1\]"),
        ({"k": [0.5, 1.5]}, ValueError, "k must be a fraction"),
        ({"removal": "zero"}, ValueError, 'removal must be "delete"'),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"target": [0, 1, 1]}, TargetError, r"target has shape \(3,\); expected \(2,\)"),
    ],
)
def test_bad_options_are_refused(options, error, message):
    with pytest.raises(error, match=message):
        comprehensiveness(BagOfWords().eval(), IDS, SCORES, attention_mask=MASK_, **options)


def test_a_named_removal_on_a_model_without_that_config_field_names_the_alternative():
    with pytest.raises(ValueError, match=r"model\.config\.mask_token_id.*token id itself instead"):
        sufficiency(FirstToken().eval(), IDS, SCORES, removal="mask")


def test_mismatched_scores_are_refused():
    with pytest.raises(ValueError, match=r"both have shape \(B, T\)"):
        comprehensiveness(BagOfWords().eval(), IDS, SCORES[:, :3])
