"""The one class-id parser, gradlens.targets.parse."""

from __future__ import annotations

import pytest
import torch

from gradlens.errors import TargetError
from gradlens.targets.parse import (
    check_target,
    class_ids,
    class_tensor,
    in_range,
    per_row,
    per_sample,
    repeat_target,
    target_rows,
)

CPU = torch.device("cpu")


def test_class_ids_reads_ints_lists_and_integer_tensors_as_int64():
    assert class_ids(2).tolist() == 2 and class_ids(2).ndim == 0
    assert class_ids([0, 2]).tolist() == [0, 2]
    assert class_ids([[0, 1], [2, 0]]).shape == (2, 2)
    ids = class_ids(torch.tensor([1, 0], dtype=torch.int32))
    assert ids.dtype == torch.int64 and ids.tolist() == [1, 0]


def test_class_ids_returns_an_ordinary_copy():
    with torch.inference_mode():
        source = torch.tensor([1, 2])
    ids = class_ids(source)
    assert not ids.is_inference()
    ids[0] = 5
    assert source.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("value", "given"),
    [
        (2.0, "the float 2.0"),
        (1.5, "the float 1.5"),
        ([0, 1.5], "the list [0, 1.5]"),
        (torch.tensor([1.0]), "a torch.float32 tensor"),
        (torch.tensor([True]), "a torch.bool tensor"),
    ],
)
def test_class_ids_refuses_floats_and_says_what_it_got(value, given):
    with pytest.raises(TargetError, match="integers") as caught:
        class_ids(value)
    assert given in str(caught.value)


@pytest.mark.parametrize("value", [True, False, [0, True], [[1, 0], [False, 1]]])
def test_class_ids_refuses_bools_anywhere(value):
    with pytest.raises(TargetError, match="holds a bool"):
        class_ids(value)


def test_class_ids_names_the_argument():
    with pytest.raises(TargetError, match="continuation_ids must hold integer ids"):
        class_ids([1.5], "continuation_ids")


def test_class_ids_refuses_ragged_lists_and_other_shapes():
    with pytest.raises(TargetError, match="same number of targets"):
        class_ids([[0, 1], [2]])
    with pytest.raises(TargetError, match="as class indices"):
        class_ids([0, [1, 2]])
    with pytest.raises(TargetError, match=r"shape \(1, 1, 1\)"):
        class_ids([[[1]]])
    with pytest.raises(TargetError, match=r"shape \(0,\)"):
        class_ids([])


def test_per_sample_expands_one_id_and_checks_the_batch():
    assert per_sample(torch.tensor(3), 2).tolist() == [3, 3]
    assert per_sample(torch.tensor([[0, 1], [1, 0]]), 2).shape == (2, 2)
    with pytest.raises(TargetError, match=r"shape \(3,\); expected \(2,\)"):
        per_sample(torch.tensor([0, 1, 2]), 2)


def test_in_range_names_the_first_bad_class_and_the_valid_range():
    assert in_range(torch.tensor([0, 2]), 3).tolist() == [0, 2]
    with pytest.raises(TargetError, match=r"class index 3 is out of range.*0\.\.2"):
        in_range(torch.tensor([0, 3, -1]), 3)
    with pytest.raises(TargetError, match="correct: class index -1"):
        in_range(torch.tensor([-1]), 3, "correct")


def test_class_tensor_reads_shapes_and_checks_in_one_go():
    assert class_tensor(1, 3, 4, CPU).tolist() == [1, 1, 1]
    assert class_tensor([[0, 3], [1, 2]], 2, 4, CPU).tolist() == [[0, 3], [1, 2]]
    with pytest.raises(TargetError, match="out of range"):
        class_tensor([0, 4], 2, 4, CPU)


def test_per_row_repeats_the_samples_for_stacked_copies():
    rows = per_row(torch.tensor([1, 2]), 6, 3, CPU, "target")
    assert rows.tolist() == [1, 2, 1, 2, 1, 2]
    with pytest.raises(TargetError, match="2 samples, but the model output holds 3 rows"):
        per_row(torch.tensor([1, 2]), 3, 3, CPU, "target")


def test_check_target_passes_none_and_callables_and_reads_class_ids():
    def score(output):
        return output[:, 0]

    assert check_target(None, 2) is None
    assert check_target(score, 2) is score
    assert check_target(2, 2) == 2
    assert check_target(torch.tensor(2), 2) == 2
    checked = check_target([1, 0], 2)
    assert isinstance(checked, torch.Tensor) and checked.tolist() == [1, 0]
    with pytest.raises(TargetError, match=r"expected \(2,\)"):
        check_target([1, 0, 1], 2)
    with pytest.raises(TargetError, match="float 2.0"):
        check_target(2.0, 2)


def test_repeat_target_tiles_per_sample_targets_copy_major():
    assert repeat_target([1, 0], 2, 3).tolist() == [1, 0, 1, 0, 1, 0]
    assert repeat_target([[1, 2], [0, 1]], 2, 2).tolist() == [[1, 2], [0, 1], [1, 2], [0, 1]]
    assert repeat_target(4, 2, 3) == 4
    assert repeat_target(None, 2, 3) is None


def test_target_rows_slices_per_sample_targets_after_checking_the_whole():
    assert target_rows([3, 1, 2], 3, 1, 3).tolist() == [1, 2]
    assert target_rows(2, 3, 1, 3) == 2
    with pytest.raises(TargetError, match=r"shape \(2,\); expected \(3,\)"):
        target_rows([3, 1], 3, 0, 2)
