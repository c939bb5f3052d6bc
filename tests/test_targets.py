"""Targets: every accepted form, and the errors for the rest."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from gradlens import OutputSelectionError, TargetError, targets

LOGITS = torch.tensor([[0.0, 3.0, 1.0], [5.0, 1.0, 2.0]])


def test_none_picks_the_top_class():
    scores, classes = targets.scores(LOGITS, None, 2)
    assert classes.tolist() == [1, 0] and scores.tolist() == [3.0, 5.0]


def test_int_sequence_and_tensor_targets():
    assert targets.scores(LOGITS, 2, 2)[0].tolist() == [1.0, 2.0]
    assert targets.scores(LOGITS, [2, 1], 2)[0].tolist() == [1.0, 1.0]
    assert targets.scores(LOGITS, torch.tensor([0, 2]), 2)[0].tolist() == [0.0, 2.0]


def test_k_targets_per_sample():
    scores, classes = targets.scores(LOGITS, [[0, 1], [2, 0]], 2)
    assert scores.tolist() == [[0.0, 3.0], [2.0, 5.0]] and classes.shape == (2, 2)


def test_callable_targets_get_the_raw_output():
    scores, classes = targets.scores(LOGITS, lambda out: out.sum(1), 2)
    assert scores.tolist() == [4.0, 8.0] and classes is None


def test_out_of_range_class_names_the_valid_range():
    with pytest.raises(TargetError, match=r"0\.\.2"):
        targets.scores(LOGITS, 3, 2)
    with pytest.raises(TargetError, match="out of range"):
        targets.scores(LOGITS, [0, -1], 2)


def test_target_lists_must_match_the_batch():
    with pytest.raises(TargetError, match=r"\(2,\)"):
        targets.scores(LOGITS, [0, 1, 2], 2)
    with pytest.raises(TargetError, match=r"\(2,\)"):
        targets.scores(LOGITS, [0], 2)


def test_ragged_lists_and_float_tensors_are_refused():
    with pytest.raises(TargetError, match="same number"):
        targets.scores(LOGITS, [[0, 1], [2]], 2)
    with pytest.raises(TargetError, match="integer"):
        targets.scores(LOGITS, torch.tensor([0.5, 1.0]), 2)


def test_callable_returning_the_wrong_shape():
    with pytest.raises(TargetError, match=r"shape \(2,\)"):
        targets.scores(LOGITS, lambda out: out[:1, 0], 2)
    with pytest.raises(TargetError, match=r"shape \(2,\)"):
        targets.scores(LOGITS, lambda out: out[:, :, None], 2)
    with pytest.raises(TargetError, match=r"shape \(2,\)"):
        targets.scores(LOGITS, lambda out: out.sum(), 2)


@dataclass
class Out:
    logits: torch.Tensor
    aux: torch.Tensor


def test_structured_outputs_need_output_selection():
    out = Out(LOGITS, LOGITS * 0)
    with pytest.raises(OutputSelectionError, match="fields: logits, aux"):
        targets.scores(out, None, 2)
    assert targets.scores(out, None, 2, "logits")[1].tolist() == [1, 0]
    assert targets.scores((LOGITS, 0), 1, 2, 0)[0].tolist() == [3.0, 1.0]
    assert targets.scores({"out": LOGITS}, None, 2, "out")[1].tolist() == [1, 0]
    assert targets.scores({"out": LOGITS}, None, 2, lambda o: o["out"])[1].tolist() == [1, 0]
    with pytest.raises(OutputSelectionError, match="keys: 'out'"):
        targets.scores({"out": LOGITS}, None, 2, "logits")


def test_one_output_per_sample_is_explained_as_is():
    scores, classes = targets.scores(torch.tensor([1.5, -2.0]), None, 2)
    assert scores.tolist() == [1.5, -2.0] and classes is None


def test_helper_targets():
    probs = torch.softmax(LOGITS, 1)
    torch.testing.assert_close(targets.probability(1)(LOGITS), probs[:, 1])
    seg = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    mask = torch.tensor([[True, False], [False, True]])
    assert targets.segmentation(1, mask)(seg).tolist() == [4.0 + 7.0, 16.0 + 19.0]
    assert targets.regression(0)(LOGITS).tolist() == [0.0, 5.0]


def test_class_tensors_made_under_inference_mode_are_accepted():
    with torch.inference_mode():
        classes = torch.tensor([1, 2])
    scores, _ = targets.scores(LOGITS.clone().requires_grad_(True), classes, 2)
    assert scores.requires_grad and scores.tolist() == [3.0, 2.0]
