"""targets.token and targets.sequence: scores of (B, T, vocabulary) logits, exact values."""

from __future__ import annotations

import pytest
import torch

from gradlens import targets
from gradlens.errors import TargetError

LOGITS = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))


def test_token_is_the_logit_of_a_class_at_the_last_position_by_default() -> None:
    assert torch.equal(targets.token(3)(LOGITS), LOGITS[:, -1, 3])


def test_token_takes_one_class_per_sample_and_any_position() -> None:
    scores = targets.token([1, 6], position=1)(LOGITS)
    assert torch.equal(scores, torch.stack([LOGITS[0, 1, 1], LOGITS[1, 1, 6]]))


def test_token_takes_k_classes_per_sample() -> None:
    scores = targets.token([[1, 2], [3, 4]])(LOGITS)
    assert torch.equal(scores, torch.stack([LOGITS[0, -1, [1, 2]], LOGITS[1, -1, [3, 4]]]))


def test_token_repeats_per_sample_classes_for_stacked_copies_of_the_batch() -> None:
    stacked = torch.cat([LOGITS, 2 * LOGITS])
    scores = targets.token([1, 6])(stacked)
    expected = torch.stack([LOGITS[0, -1, 1], LOGITS[1, -1, 6]])
    assert torch.equal(scores, torch.cat([expected, 2 * expected]))


def test_token_refuses_a_position_or_class_out_of_range() -> None:
    with pytest.raises(TargetError, match="position 5 is out of range"):
        targets.token(0, position=5)(LOGITS)
    with pytest.raises(TargetError, match="class index 7 is out of range"):
        targets.token(7)(LOGITS)


def test_token_needs_sequence_logits() -> None:
    with pytest.raises(TargetError, match=r"\(B, T, vocabulary\)"):
        targets.token(0)(LOGITS[:, 0])


def test_sequence_per_token_is_the_log_probability_of_each_continuation_token() -> None:
    continuation = torch.tensor([[1, 2], [3, 4]])
    scores = targets.sequence(continuation, per_token=True)(LOGITS)
    log_probs = LOGITS.log_softmax(-1)
    # 5 positions, K = 2: tokens at positions 3 and 4, predicted at positions 2 and 3
    expected = torch.tensor(
        [[log_probs[0, 2, 1], log_probs[0, 3, 2]], [log_probs[1, 2, 3], log_probs[1, 3, 4]]]
    )
    torch.testing.assert_close(scores, expected, atol=0, rtol=0)


def test_sequence_sums_the_log_probabilities_per_sample() -> None:
    continuation = torch.tensor([[1, 2], [3, 4]])
    total = targets.sequence(continuation)(LOGITS)
    per_token = targets.sequence(continuation, per_token=True)(LOGITS)
    torch.testing.assert_close(total, per_token.sum(1), atol=0, rtol=0)
    assert total.shape == (2,)


def test_a_one_dimensional_continuation_is_shared_by_every_sample() -> None:
    shared = targets.sequence([5, 0], per_token=True)(LOGITS)
    given = targets.sequence([[5, 0], [5, 0]], per_token=True)(LOGITS)
    assert torch.equal(shared, given)


def test_sequence_repeats_the_continuation_for_stacked_copies_of_the_batch() -> None:
    continuation = torch.tensor([[1, 2], [3, 4]])
    stacked = targets.sequence(continuation, per_token=True)(torch.cat([LOGITS, LOGITS]))
    single = targets.sequence(continuation, per_token=True)(LOGITS)
    assert torch.equal(stacked, torch.cat([single, single]))


def test_sequence_needs_a_prompt_before_the_continuation() -> None:
    with pytest.raises(TargetError, match="needs at least 6"):
        targets.sequence(torch.zeros(2, 5, dtype=torch.long))(LOGITS)


def test_sequence_refuses_a_batch_that_does_not_fit() -> None:
    with pytest.raises(TargetError, match="3 samples, but the model output holds 2 rows"):
        targets.sequence(torch.zeros(3, 2, dtype=torch.long))(LOGITS)


def test_sequence_refuses_ids_that_are_not_integers() -> None:
    with pytest.raises(TargetError, match="integer ids"):
        targets.sequence(torch.rand(2, 2))
