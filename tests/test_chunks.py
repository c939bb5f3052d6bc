"""gradlens.core.chunks: the rows of each forward pass, and the one check of batch_size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradlens.core.chunks import check_batch_size, chunks, copies_per_chunk


def test_chunks_cover_the_rows_in_order_with_a_shorter_last_one():
    assert list(chunks(5, 2)) == [slice(0, 2), slice(2, 4), slice(4, 5)]


def test_chunks_of_an_exact_multiple_are_all_full():
    assert list(chunks(6, 3)) == [slice(0, 3), slice(3, 6)]


def test_a_size_above_the_total_gives_one_chunk():
    assert list(chunks(3, 10)) == [slice(0, 3)]


def test_no_size_gives_one_chunk_of_everything():
    assert list(chunks(7, None)) == [slice(0, 7)]


def test_no_rows_give_no_chunk():
    assert list(chunks(0, 4)) == []
    assert list(chunks(0, None)) == []


def test_chunks_slice_a_tensor_into_its_rows():
    rows = torch.arange(5)
    assert [rows[part].tolist() for part in chunks(5, 2)] == [[0, 1], [2, 3], [4]]


def test_copies_per_chunk_is_the_budget_over_one_batch():
    assert copies_per_chunk(64, 8, 50) == 8
    assert copies_per_chunk(63, 8, 50) == 7


def test_copies_per_chunk_never_exceeds_the_copies_there_are():
    assert copies_per_chunk(64, 8, 3) == 3


def test_a_budget_smaller_than_one_batch_still_runs_one_copy():
    assert copies_per_chunk(5, 8, 50) == 1


def test_no_budget_takes_every_copy_at_once():
    assert copies_per_chunk(None, 8, 50) == 50
    assert copies_per_chunk(None, 8, 0) == 1


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4"])
def test_a_batch_size_that_is_not_a_positive_int_is_refused(bad):
    with pytest.raises(ValueError, match=rf"batch_size must be a positive int .*got {bad!r}"):
        check_batch_size(bad)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        list(chunks(5, bad))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        copies_per_chunk(bad, 2, 5)


def test_none_is_a_batch_size_only_where_it_is_optional():
    assert check_batch_size(None, optional=True) is None
    with pytest.raises(ValueError, match=r"positive int \(model inputs per forward pass\), got"):
        check_batch_size(None)


def test_an_integer_of_another_type_is_a_python_int():
    value = check_batch_size(np.int64(4))
    assert value == 4 and type(value) is int
