"""gradlens.cache_activations: packing, the dataset layout, storage dtypes, resume, errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

import gradlens
from gradlens.dataset.packing import windows
from gradlens.dataset.shards import Shard, ShardWriter, shard_path
from gradlens.errors import (
    LayerNotFoundError,
    ManifestMismatchError,
    OutputSelectionError,
    TokenInputError,
)

from . import zoo

BOS = zoo.TEXT_VOCAB - 1  # hf_gpt2's begin/end token
BLOCKS = ["transformer.h.0", "transformer.h.1"]


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    return zoo.hf_gpt2()


def corpus(n: int = 30, seed: int = 0) -> list[list[int]]:
    """``n`` documents of 3 to 29 ids in 1..62 (never BOS)."""
    generator = np.random.default_rng(seed)
    return [
        generator.integers(1, BOS, size=int(length)).tolist()
        for length in generator.integers(3, 30, size=n)
    ]


def pack(docs, context_size=4, prepend_bos=True) -> list[list[int]]:
    return [w.tolist() for w in windows(map(np.asarray, docs), context_size, 0, prepend_bos)]


def table(out: Path) -> dict[str, np.ndarray]:
    """The whole cache in ``out`` as numpy arrays, read by ``datasets.load_from_disk``."""
    return datasets.load_from_disk(str(out)).with_format("numpy")[:]


def cache(model, out, tokens=None, **options):
    options = {"context_size": 8, "batch_size": 3, "shard_size": 4, "progress": False, **options}
    hooks = options.pop("hooks", BLOCKS)
    return gradlens.cache_activations(
        model, corpus() if tokens is None else tokens, hooks, out, **options
    )


# -- packing --------------------------------------------------------------------------------


def test_documents_are_joined_by_bos_and_each_window_starts_with_bos():
    assert pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]]) == [[0, 1, 2, 3], [0, 4, 5, 0], [0, 6, 7, 8]]


def test_the_partial_last_window_is_dropped():
    assert pack([[1, 2, 3, 4, 5]]) == [[0, 1, 2, 3]]


def test_without_prepend_bos_windows_cut_the_joined_stream():
    assert pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], prepend_bos=False) == [
        [1, 2, 3, 0],
        [4, 5, 0, 6],
    ]


def test_a_document_that_starts_with_bos_gets_no_second_bos():
    assert pack([[1, 2], [0, 3, 4, 5]]) == [[0, 1, 2, 0], [0, 3, 4, 5]]


def test_empty_documents_are_skipped():
    assert pack([[], [1, 2, 3], []]) == [[0, 1, 2, 3]]


# -- the dataset ----------------------------------------------------------------------------


def test_row_i_holds_window_i_with_its_token_ids_and_activations(gpt2, tmp_path):
    ds = cache(gpt2, tmp_path)
    rows = table(tmp_path)
    expected_ids = pack_with_bos(corpus(), 8)
    assert len(ds) == len(expected_ids)
    np.testing.assert_array_equal(rows["token_ids"], expected_ids)
    acts = gradlens.extract(gpt2, torch.tensor(expected_ids), BLOCKS)
    for name in BLOCKS:
        np.testing.assert_allclose(rows[name], acts[name].numpy(), atol=1e-5, rtol=0)


def pack_with_bos(docs, context_size):
    return [w.tolist() for w in windows(map(np.asarray, docs), context_size, BOS, True)]


def test_columns_are_one_array2d_per_hook_point_and_int32_token_ids(gpt2, tmp_path):
    ds = cache(gpt2, tmp_path)
    assert ds.column_names == [*BLOCKS, "token_ids"]
    for name in BLOCKS:
        assert ds.features[name] == datasets.Array2D(shape=(8, 32), dtype="float32")
    assert ds.features["token_ids"] == datasets.Sequence(datasets.Value("int32"), length=8)


def test_a_one_hook_cache_reads_the_way_saelens_use_cached_activations_reads_it(gpt2, tmp_path):
    cache(gpt2, tmp_path, hooks=["transformer.h.1"])
    # the steps of SAELens' ActivationsStore.load_cached_activation_dataset and its batches
    ds = datasets.load_from_disk(str(tmp_path))
    ds.set_format(type="torch", columns=["transformer.h.1", "token_ids"], dtype=torch.float32)
    assert ds.features["transformer.h.1"].shape == (8, 32)
    batch = ds[0:4]
    assert batch["transformer.h.1"].shape == (4, 8, 32)
    assert batch["token_ids"].shape == (4, 8)
    assert batch["token_ids"][0, 0] == BOS


def test_until_the_run_completes_the_directory_holds_only_shards_and_a_progress_record(
    gpt2, tmp_path
):
    with pytest.raises(RuntimeError, match="source broke"):
        cache(gpt2, tmp_path, tokens=breaking(corpus(), after=15))
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "shards"]
    with pytest.raises(FileNotFoundError):
        datasets.load_from_disk(str(tmp_path))
    with pytest.raises(ValueError, match="not complete"):
        gradlens.load_activations(tmp_path)


def test_a_complete_cache_is_returned_without_running_the_model(gpt2, tmp_path):
    cache(gpt2, tmp_path)
    with forwards(gpt2) as count:
        ds = cache(gpt2, tmp_path)
    assert count == [] and len(ds) == len(table(tmp_path)["token_ids"])


def test_a_module_with_a_tuple_output_is_read_with_output(gpt2, tmp_path):
    # GPT-2's attention returns (output, weights)
    cache(gpt2, tmp_path, hooks=["transformer.h.0.attn"], output=0)
    rows = table(tmp_path)
    ids = torch.as_tensor(rows["token_ids"][:2]).long()
    expected = gradlens.extract(gpt2, ids, "transformer.h.0.attn", select=0)
    np.testing.assert_allclose(
        rows["transformer.h.0.attn"][:2], expected["transformer.h.0.attn"], atol=1e-5, rtol=0
    )


def test_transformer_lens_hook_points_of_a_transformer_bridge(tmp_path):
    bridge = zoo.transformer_bridge()
    docs = [[i % 38 + 1 for i in range(k, k + 20)] for k in range(6)]
    cache(bridge, tmp_path, tokens=docs, hooks=["blocks.0.hook_out"], bos_token_id=0)
    rows = table(tmp_path)
    _, expected = bridge.run_with_cache(torch.as_tensor(rows["token_ids"]).long())
    np.testing.assert_allclose(
        rows["blocks.0.hook_out"], expected["blocks.0.hook_out"].numpy(), atol=1e-5, rtol=0
    )


def test_the_hook_names_run_with_cache_takes_name_the_columns_on_a_bridge(tmp_path):
    # an alias (blocks.0.hook_resid_pre is blocks.0.hook_in) and a hook that named_modules()
    # lists under another path (blocks.0._original_component.ln1.hook_normalized)
    bridge = zoo.transformer_bridge()
    docs = [[i % 38 + 1 for i in range(k, k + 20)] for k in range(6)]
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized", "blocks.1.hook_resid_post"]
    cache(bridge, tmp_path, tokens=docs, hooks=hooks, bos_token_id=0)
    rows = table(tmp_path)
    assert list(rows) == [*hooks, "token_ids"]
    ids = torch.as_tensor(rows["token_ids"]).long()
    _, expected = bridge.run_with_cache(ids, names_filter=hooks)
    for name in hooks:
        np.testing.assert_allclose(rows[name], expected[name].numpy(), atol=1e-5, rtol=0)


def test_the_writer_reuses_three_buffer_sets_and_each_shard_keeps_its_own_values(tmp_path):
    writer = ShardWriter(tmp_path, ["h"], "float32", "x")
    arrays = set()
    for k in range(8):
        buffers = writer.buffers()
        values = buffers.setdefault("h", np.empty((2, 4, 3), np.float32))
        values[:] = k
        arrays.add(id(values))
        writer.put(Shard(k, 2 * k, np.zeros((2, 4), np.int64), {"h": values}, buffers))
    writer.close()
    assert len(arrays) == 3
    for k in range(8):
        shard = datasets.load_from_disk(str(shard_path(tmp_path, k))).with_format("numpy")
        np.testing.assert_array_equal(shard["h"], np.full((2, 4, 3), k, np.float32))


# -- token sources --------------------------------------------------------------------------


def test_a_dataset_with_input_ids_gives_the_windows_of_its_rows(gpt2, tmp_path):
    docs = corpus()
    cache(gpt2, tmp_path / "list", tokens=docs)
    cache(gpt2, tmp_path / "ds", tokens=datasets.Dataset.from_dict({"input_ids": docs}))
    np.testing.assert_array_equal(
        table(tmp_path / "ds")["token_ids"], table(tmp_path / "list")["token_ids"]
    )


def test_an_iterable_dataset_gives_the_same_windows(gpt2, tmp_path):
    docs = corpus()
    cache(gpt2, tmp_path / "list", tokens=docs)
    stream = datasets.Dataset.from_dict({"input_ids": docs}).to_iterable_dataset()
    cache(gpt2, tmp_path / "stream", tokens=stream)
    np.testing.assert_array_equal(
        table(tmp_path / "stream")["token_ids"], table(tmp_path / "list")["token_ids"]
    )


@pytest.mark.parametrize("hf", [False, True], ids=["tokenizers", "transformers"])
def test_a_text_column_is_tokenized_without_special_tokens(gpt2, tmp_path, hf):
    docs = corpus()
    text = datasets.Dataset.from_dict({"text": [" ".join(f"w{i}" for i in d) for d in docs]})
    cache(gpt2, tmp_path / "ids", tokens=docs)
    cache(gpt2, tmp_path / "text", tokens=text, tokenizer=zoo.word_tokenizer(hf=hf))
    np.testing.assert_array_equal(
        table(tmp_path / "text")["token_ids"], table(tmp_path / "ids")["token_ids"]
    )


def test_the_bos_id_comes_from_bos_token_id_before_the_tokenizer_and_the_config(gpt2, tmp_path):
    cache(gpt2, tmp_path, bos_token_id=5, tokenizer=zoo.word_tokenizer(hf=True))
    assert (table(tmp_path)["token_ids"][:, 0] == 5).all()


def test_the_bos_id_comes_from_the_tokenizer_before_the_config(gpt2, tmp_path):
    tokenizer = zoo.word_tokenizer(hf=True)
    tokenizer.bos_token = "w5"
    cache(gpt2, tmp_path, tokenizer=tokenizer)
    assert (table(tmp_path)["token_ids"][:, 0] == 5).all()


def test_the_bos_id_comes_from_the_model_config_last(gpt2, tmp_path):
    cache(gpt2, tmp_path, tokenizer=zoo.word_tokenizer())  # a tokenizers.Tokenizer: no BOS
    assert (table(tmp_path)["token_ids"][:, 0] == BOS).all()


def test_without_a_bos_id_anywhere_it_says_where_to_give_one(tmp_path):
    with pytest.raises(TokenInputError, match="pass bos_token_id="):
        cache(zoo.transformer_bridge(), tmp_path, hooks="blocks.0.hook_out")
    assert not tmp_path.joinpath("manifest.json").exists()


# -- storage dtypes -------------------------------------------------------------------------


def test_float16_storage_holds_the_float32_values_rounded_to_float16(gpt2, tmp_path):
    cache(gpt2, tmp_path / "32")
    ds = cache(gpt2, tmp_path / "16", dtype=torch.float16)
    assert ds.features[BLOCKS[0]].dtype == "float16"
    full, half = table(tmp_path / "32"), table(tmp_path / "16")
    for name in BLOCKS:
        np.testing.assert_array_equal(half[name], full[name].astype(np.float16))


def test_bfloat16_storage_is_uint16_bits_that_load_activations_reads_as_bfloat16(gpt2, tmp_path):
    cache(gpt2, tmp_path / "32")
    ds = cache(gpt2, tmp_path / "bf16", dtype=torch.bfloat16)
    assert ds.features[BLOCKS[0]].dtype == "uint16"
    assert "bfloat16" in ds.info.description
    full = gradlens.load_activations(tmp_path / "32")
    bf16 = gradlens.load_activations(tmp_path / "bf16")
    rows = bf16[0:5]
    assert rows[BLOCKS[1]].dtype == torch.bfloat16
    torch.testing.assert_close(
        rows[BLOCKS[1]], full[0:5][BLOCKS[1]].to(torch.bfloat16), rtol=0, atol=0
    )
    torch.testing.assert_close(rows["token_ids"], full[0:5]["token_ids"])


# -- resume ---------------------------------------------------------------------------------


class breaking:
    """The documents of ``docs``, raising after ``after`` of them (a killed run)."""

    def __init__(self, docs, after):
        self.docs, self.after = docs, after

    def __iter__(self):
        for i, doc in enumerate(self.docs):
            if i == self.after:
                raise RuntimeError("source broke")
            yield doc


class killing:
    """The model raises from its ``after``-th forward on inside the block (a killed run)."""

    def __init__(self, model, after):
        self.model, self.after, self.calls = model, after, 0

    def hook(self, module, args):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("killed")

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(self.hook)

    def __exit__(self, *exc):
        self.handle.remove()


class forwards:
    """Counts the model's forward calls inside the block."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(lambda m, a: self.calls.append(1))
        return self.calls

    def __exit__(self, *exc):
        self.handle.remove()


def test_a_killed_run_resumes_after_the_last_complete_shard_and_gives_the_same_cache(
    gpt2, tmp_path
):
    # 16-token documents fill one 16-token window each: 24 windows, 6 shards of 4
    docs = [[(7 * i + j) % 60 + 1 for j in range(15)] for i in range(24)]
    options = {"context_size": 16, "batch_size": 2, "shard_size": 4}
    cache(gpt2, tmp_path / "whole", tokens=docs, **options)
    with pytest.raises(RuntimeError, match="source broke"):
        cache(gpt2, tmp_path / "resumed", tokens=breaking(docs, after=10), **options)
    assert sorted(os.listdir(tmp_path / "resumed" / "shards")) == ["shard_00000", "shard_00001"]
    with forwards(gpt2) as calls:
        cache(gpt2, tmp_path / "resumed", tokens=docs, **options)
    assert len(calls) == 8  # shards 2..5, two batches each
    whole, resumed = table(tmp_path / "whole"), table(tmp_path / "resumed")
    for name in [*BLOCKS, "token_ids"]:
        np.testing.assert_array_equal(resumed[name], whole[name])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"context_size": 6}, "context_size"),
        ({"hooks": ["transformer.h.0"]}, "layers"),
        ({"dtype": torch.float16}, "dtype"),
        ({"model": "other"}, "fingerprint"),
        ({"tokens": "dataset"}, "tokens"),
    ],
)
def test_a_changed_call_refuses_to_resume_naming_what_changed(gpt2, tmp_path, change, named):
    source = datasets.Dataset.from_dict({"input_ids": corpus()})
    with pytest.raises(RuntimeError, match="killed"), killing(gpt2, after=3):
        cache(gpt2, tmp_path, tokens=source)
    change = dict(change)
    model = zoo.hf_gpt2(seed=1) if change.pop("model", None) else gpt2
    if change.pop("tokens", None):
        source = datasets.Dataset.from_dict({"input_ids": corpus(seed=1)})
    with pytest.raises(ManifestMismatchError, match=named):
        cache(model, tmp_path, tokens=source, **change)


def test_changed_tokens_of_an_iterable_refuse_to_resume(gpt2, tmp_path):
    with pytest.raises(RuntimeError, match="source broke"):
        cache(gpt2, tmp_path, tokens=breaking(corpus(), after=15))
    with pytest.raises(ManifestMismatchError, match="token source changed"):
        cache(gpt2, tmp_path, tokens=corpus(seed=1))


def test_resume_false_refuses_an_existing_cache_unless_overwrite(gpt2, tmp_path):
    cache(gpt2, tmp_path)
    with pytest.raises(FileExistsError, match="resume=False"):
        cache(gpt2, tmp_path, resume=False)
    with forwards(gpt2) as calls:
        cache(gpt2, tmp_path, resume=False, overwrite=True)
    assert calls


def test_a_directory_with_other_files_is_refused(gpt2, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        cache(gpt2, tmp_path)


def test_a_model_in_train_mode_warns(tmp_path):
    model = zoo.hf_gpt2().train()
    with pytest.warns(UserWarning, match="train mode"):
        cache(model, tmp_path)


def test_an_eval_model_does_not_warn(gpt2, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache(gpt2, tmp_path)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"hooks": ["transformer.h.9"]}, LayerNotFoundError, "transformer.h.9"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
        ({"context_size": 1}, ValueError, "context_size must be an int >= 2"),
        ({"shard_size": 0}, ValueError, "shard_size must be an int >= 1"),
        ({"dtype": torch.int8}, ValueError, "dtype must be"),
        ({"tokens": [[1, 2]]}, TokenInputError, "no full window"),
        ({"tokens": [[[1, 2]]]}, TokenInputError, "1-D sequence of integer"),
        (
            {"tokens": datasets.Dataset.from_dict({"text": ["w1 w2"]})},
            TokenInputError,
            "pass tokenizer=",
        ),
        (
            {"tokens": datasets.Dataset.from_dict({"words": ["w1 w2"]})},
            TokenInputError,
            "no 'input_ids' column",
        ),
    ],
)
def test_bad_input_is_refused_before_any_hook_or_file(gpt2, tmp_path, options, error, match):
    with pytest.raises(error, match=match):
        cache(gpt2, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
    assert not gpt2._forward_hooks and not gpt2._forward_pre_hooks


def test_a_hook_point_without_a_token_axis_is_refused(tmp_path):
    eager = zoo.hf_gpt2(attn_implementation="eager")
    with pytest.raises(ValueError, match="must give \\(batch, tokens, ...\\)"):
        # the attention weights (B, heads, T, T)
        cache(eager, tmp_path, hooks=["transformer.h.0.attn"], output=1)


def test_a_structured_output_without_output_is_refused(gpt2, tmp_path):
    with pytest.raises(OutputSelectionError, match="output="):
        cache(gpt2, tmp_path, hooks=["transformer.h.0.attn"])
