"""Many processes (torch.distributed with gloo on CPU) and many machines (shards + merge_shards)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

import gradlens
from gradlens.dataset import (
    attribute_dataset,
    extract_dataset,
    load_features,
    merge_shards,
    shard_range,
)
from gradlens.errors import ManifestMismatchError

from .test_dataset import BATCH, N, activation_x_gradient, loader, make_model


@given(n=st.integers(0, 500), count=st.integers(1, 40))
def test_shard_ranges_cover_every_row_exactly_once_without_padding(n, count):
    ranges = [shard_range(n, k, count) for k in range(count)]
    assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_rank_ranges_for_37_samples_and_2_ranks():
    assert [shard_range(37, r, 2) for r in range(2)] == [(0, 18), (18, 37)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, fail_after: int | None) -> None:
    """One rank: extract features and maps into shared directories; report the rows it computed."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    rows_seen = []

    def counting_input(batch):
        if fail_after is not None and rank == 1 and len(rows_seen) == fail_after:
            raise RuntimeError("simulated crash of rank 1")
        rows_seen.append(len(batch[0]))
        return batch[0]

    try:
        model = make_model()
        extract_dataset(
            model,
            loader(),
            ["conv1", "fc"],
            Path(out) / "features",
            input_fn=counting_input,
            flush_every=1,
            progress=False,
        )
        features_rows = sum(rows_seen)
        attribute_dataset(
            activation_x_gradient,
            model,
            loader(),
            Path(out) / "maps",
            target="label",
            progress=False,
        )
        (Path(out) / f"rank{rank}.json").write_text(json.dumps({"rows": features_rows}))
    finally:
        dist.destroy_process_group()


def _launch(out: Path, fail_after: int | None = None) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(out), fail_after), nprocs=2, join=True)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    model = make_model()
    extract_dataset(model, loader(), ["conv1", "fc"], out / "features", progress=False)
    attribute_dataset(
        activation_x_gradient, model, loader(), out / "maps", target="label", progress=False
    )
    return out


def assert_same_results(out: Path, reference: Path) -> None:
    for kind in ["features", "maps"]:
        arrays, manifest = load_features(out / kind)
        expected, expected_manifest = load_features(reference / kind)
        assert manifest == expected_manifest
        for name in expected:
            np.testing.assert_allclose(arrays[name], expected[name], atol=1e-6, rtol=0)


def test_two_gloo_processes_write_the_same_files_as_one(tmp_path, single_process):
    _launch(tmp_path)
    assert_same_results(tmp_path, single_process)
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text())["rows"] for r in range(2)]
    assert rows == [18, 19]  # [0, 18) and [18, 37): no padding, nothing twice


def test_each_rank_resumes_its_own_rows_after_a_crash(tmp_path, single_process):
    # rank 1 fails; spawn reports its error, or rank 0's when its barrier loses the peer first
    with pytest.raises(mp.ProcessRaisedException):
        _launch(tmp_path, fail_after=2)
    _, partial = load_features(tmp_path / "features", allow_partial=True)
    assert not partial.complete
    assert _rank1_part(partial.completed) == [[18, 26]]  # two batches, recorded before the crash
    _launch(tmp_path)
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text())["rows"] for r in range(2)]
    assert sum(rows) == N - partial.rows_done  # only what was missing was computed
    assert_same_results(tmp_path, single_process)


def _rank1_part(completed: list[list[int]]) -> list[list[int]]:
    """Rank 1's part [18, 37) of the completed ranges."""
    return [[max(a, 18), min(b, 37)] for a, b in completed if min(b, 37) > max(a, 18)]


def test_shards_written_separately_and_merged_equal_one_run(tmp_path, single_process):
    model = make_model()
    shards = [tmp_path / f"shard{k}" for k in range(3)]
    for k, shard in enumerate(shards):
        manifest = extract_dataset(
            model, loader(), ["conv1", "fc"], shard, shard=(k, 3), progress=False
        )
        assert (manifest.row_offset, manifest.n_samples) == (
            k * N // 3,
            (k + 1) * N // 3 - k * N // 3,
        )
    merged = merge_shards(shards[::-1], tmp_path / "merged")
    arrays, _ = load_features(tmp_path / "merged")
    expected, expected_manifest = load_features(single_process / "features")
    assert merged == expected_manifest
    for name in expected:
        np.testing.assert_allclose(arrays[name], expected[name], atol=1e-6, rtol=0)


def test_merge_refuses_shards_that_do_not_cover_the_dataset(tmp_path):
    model = make_model()
    for k in range(2):
        extract_dataset(
            model, loader(), ["fc"], tmp_path / f"shard{k}", shard=(k, 3), progress=False
        )
    with pytest.raises(ValueError, match="cover every row exactly once"):
        merge_shards([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged")


def test_merge_refuses_shards_of_different_models(tmp_path):
    extract_dataset(
        make_model(0), loader(), ["fc"], tmp_path / "shard0", shard=(0, 2), progress=False
    )
    extract_dataset(
        make_model(1), loader(), ["fc"], tmp_path / "shard1", shard=(1, 2), progress=False
    )
    with pytest.raises(ManifestMismatchError, match="fingerprint"):
        merge_shards([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged")


def test_a_shard_must_be_one_of_count_parts(tmp_path):
    with pytest.raises(ValueError, match=r"part index 3 must be in 0\.\.2"):
        extract_dataset(make_model(), loader(), ["fc"], tmp_path, shard=(3, 3), progress=False)


assert BATCH == 4  # the rank ranges above assume batches of 4 from the shared test data


# -- the activation cache -------------------------------------------------------------------


def _cache_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a cache_activations run; reports how many forwards it ran."""
    from . import zoo
    from .test_cache import BLOCKS, corpus

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = zoo.hf_gpt2()
        calls: list[int] = []
        handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
        gradlens.cache_activations(
            model,
            corpus(),
            BLOCKS,
            Path(out) / "cache",
            context_size=8,
            batch_size=3,
            shard_size=4,
            progress=False,
        )
        handle.remove()
        (Path(out) / f"rank{rank}.json").write_text(json.dumps({"forwards": len(calls)}))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_cache_the_same_dataset_as_one(tmp_path):
    import datasets

    from . import zoo
    from .test_cache import BLOCKS, corpus

    one = gradlens.cache_activations(
        zoo.hf_gpt2(),
        corpus(),
        BLOCKS,
        tmp_path / "one",
        context_size=8,
        batch_size=3,
        shard_size=4,
        progress=False,
    )
    mp.spawn(_cache_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    two = datasets.load_from_disk(str(tmp_path / "cache"))
    assert len(two) == len(one) == 75  # 19 shards of 4 windows (the last holds 3)
    expected, got = one.with_format("numpy")[:], two.with_format("numpy")[:]
    for name in [*BLOCKS, "token_ids"]:
        np.testing.assert_array_equal(got[name], expected[name])
    forwards = [json.loads((tmp_path / f"rank{r}.json").read_text())["forwards"] for r in range(2)]
    assert forwards == [19, 18]  # shards 0, 2, ..., 18 and 1, 3, ..., 17: 2 batches of 3 each
    # (the last shard's 3 windows: one batch)
