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


@dataclass
class Features:
    hidden: torch.Tensor
    aux: torch.Tensor


def test_a_structured_output_with_logits_is_scored_on_them():
    assert targets.scores(Out(LOGITS, LOGITS * 0), 1, 2)[0].tolist() == [3.0, 1.0]
    assert targets.scores({"logits": LOGITS, "loss": None}, None, 2)[1].tolist() == [1, 0]


def test_structured_outputs_without_logits_need_output_selection():
    out = Features(LOGITS, LOGITS * 0)
    with pytest.raises(OutputSelectionError, match="fields: hidden, aux"):
        targets.scores(out, None, 2)
    assert targets.scores(out, None, 2, "hidden")[1].tolist() == [1, 0]
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


# -- language models: logits (B, T, vocabulary) ---------------------------------------------

SEQUENCE_LOGITS = torch.tensor(
    [[[9.0, 0.0, 0.0], [0.0, 1.0, 5.0]], [[0.0, 0.0, 9.0], [4.0, 2.0, 0.0]]]
)  # (B=2, T=2, V=3)


def test_class_targets_of_a_language_model_are_read_at_the_last_position():
    scores, classes = targets.scores(SEQUENCE_LOGITS, None, 2)
    assert classes.tolist() == [2, 0] and scores.tolist() == [5.0, 4.0]
    assert targets.scores(SEQUENCE_LOGITS, 1, 2)[0].tolist() == [1.0, 2.0]
    probs = torch.softmax(SEQUENCE_LOGITS[:, -1], dim=1)
    torch.testing.assert_close(targets.probability(1)(SEQUENCE_LOGITS), probs[:, 1])


# -- segmentation: torchvision's dict output ------------------------------------------------


def test_segmentation_reads_the_out_entry_of_a_torchvision_segmenter():
    seg = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    output = {"out": seg, "aux": -seg}
    assert targets.segmentation(1)(output).tolist() == [4.0 + 5 + 6 + 7, 16.0 + 17 + 18 + 19]


# -- detection -------------------------------------------------------------------------------


def detections(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "scores": torch.tensor(scores),
    }


PREDICTIONS = [
    detections(
        [[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10], [20, 20, 30, 30]],
        [1, 1, 2, 1],
        [0.5, 0.9, 0.8, 0.7],
    ),
    detections([[0, 0, 4, 4]], [3], [0.6]),
]


def test_detection_adds_the_score_of_the_best_overlapping_same_label_prediction():
    # image 0: the reference [0, 0, 10, 10] of class 1 overlaps prediction 0 exactly (IoU 1)
    # and prediction 1 with IoU 0.9; prediction 2 has the other label. Image 1: IoU 0.25.
    target = targets.detection(
        [torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 8, 8]])],
        [torch.tensor([1]), torch.tensor([3])],
    )
    assert target(PREDICTIONS).tolist() == pytest.approx([0.5, 0.0])


def test_detection_sums_over_reference_boxes_and_shares_one_reference_list():
    target = targets.detection(
        torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([2, 1]), iou=0.2
    )
    assert target(PREDICTIONS).tolist() == pytest.approx([0.8 + 0.7, 0.0])


def test_an_image_without_a_match_still_has_a_gradient_of_zero():
    scores = torch.tensor([0.4], requires_grad=True)
    prediction = {
        "boxes": torch.tensor([[0.0, 0, 1, 1]]),
        "labels": torch.tensor([1]),
        "scores": scores,
    }
    value = targets.detection(torch.tensor([[5.0, 5, 9, 9]]), torch.tensor([1]))([prediction])
    (gradient,) = torch.autograd.grad(value.sum(), scores)
    assert value.tolist() == [0.0] and gradient.tolist() == [0.0]


def test_detection_refuses_an_output_that_is_not_a_list_of_detection_dicts():
    target = targets.detection(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))
    with pytest.raises(TargetError, match="list of dicts with 'boxes', 'labels' and 'scores'"):
        target(LOGITS)
    with pytest.raises(TargetError, match="list of dicts"):
        target([{"boxes": torch.zeros(1, 4)}])


def test_detection_references_must_fit_the_images():
    with pytest.raises(TargetError, match="detections for 2 images"):
        targets.detection([torch.zeros(1, 4)], [torch.zeros(1, dtype=torch.long)])(PREDICTIONS)
    with pytest.raises(TargetError, match=r"expected \(M, 4\)"):
        targets.detection(torch.zeros(4), torch.zeros(1))(PREDICTIONS)
    with pytest.raises(ValueError, match=r"iou must be in \(0, 1\]"):
        targets.detection(torch.zeros(1, 4), torch.zeros(1), iou=0.0)
