"""top_features: the cached windows where a latent fires most, from an activation cache in
the layout of gradlens.cache_activations; and its table in gradlens.viz."""

from __future__ import annotations

import datasets
import pytest
import torch
from torch import Tensor

from gradlens.errors import LayerNotFoundError, SAEError
from gradlens.sae import SparseAutoencoder, top_features
from gradlens.viz import top_features_table

from . import zoo

HOOK = "transformer.h.0.mlp"
WINDOWS, CONTEXT, WIDTH = 10, 6, 8


@pytest.fixture(scope="module")
def activations() -> Tensor:
    return torch.randn(WINDOWS, CONTEXT, WIDTH, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cache(activations) -> datasets.Dataset:
    """A cache as cache_activations writes it: int32 token ids and one Array2D column per
    hook point, named by the hook point."""
    features = datasets.Features(
        {
            "token_ids": datasets.Sequence(datasets.Value("int32"), length=CONTEXT),
            HOOK: datasets.Array2D((CONTEXT, WIDTH), "float32"),
        }
    )
    ids = torch.arange(WINDOWS * CONTEXT, dtype=torch.int32).reshape(WINDOWS, CONTEXT)
    return datasets.Dataset.from_dict(
        {"token_ids": ids.numpy(), HOOK: activations.numpy()}, features=features
    )


@pytest.fixture(scope="module")
def sae() -> SparseAutoencoder:
    return zoo.sparse_autoencoder(WIDTH, 12)


def _latent(sae, activations, latent):
    with torch.no_grad():
        return sae.encode(activations)[..., latent]


def test_the_windows_with_the_largest_peak_come_first(cache, activations, sae):
    top = top_features(cache, sae, HOOK, latent=3, k=4, batch_size=3)
    peak, where = _latent(sae, activations, 3).max(dim=1)
    expected = peak.topk(4)
    torch.testing.assert_close(top.values, expected.values)
    assert top.windows.tolist() == expected.indices.tolist()
    assert top.positions.tolist() == where[expected.indices].tolist()


def test_each_window_comes_with_its_tokens_and_the_latent_at_every_position(
    cache, activations, sae
):
    top = top_features(cache, sae, HOOK, latent=3, k=2)
    rows = top.windows
    assert top.token_ids.tolist() == [list(range(r * CONTEXT, (r + 1) * CONTEXT)) for r in rows]
    torch.testing.assert_close(top.activations, _latent(sae, activations[rows], 3))
    assert top.windows_read == WINDOWS


def test_the_batch_size_does_not_change_the_result(cache, sae):
    one = top_features(cache, sae, HOOK, latent=7, k=5, batch_size=1)
    all_at_once = top_features(cache, sae, HOOK, latent=7, k=5, batch_size=WINDOWS)
    assert one.windows.tolist() == all_at_once.windows.tolist()
    torch.testing.assert_close(one.values, all_at_once.values)


def test_a_saved_cache_is_read_from_its_directory(cache, sae, tmp_path):
    cache.save_to_disk(str(tmp_path / "cache"))
    from_disk = top_features(tmp_path / "cache", sae, HOOK, latent=3, k=3)
    in_memory = top_features(cache, sae, HOOK, latent=3, k=3)
    assert from_disk.windows.tolist() == in_memory.windows.tolist()


def test_k_larger_than_the_cache_gives_every_window(cache, sae):
    assert len(top_features(cache, sae, HOOK, latent=3, k=50).windows) == WINDOWS


def test_a_missing_hook_point_column_is_named_with_suggestions(cache, sae):
    with pytest.raises(LayerNotFoundError, match="did you mean 'transformer.h.0.mlp'"):
        top_features(cache, sae, "transformer.h.0.mpl", latent=0)


def test_an_sae_of_another_width_and_a_latent_out_of_range_are_refused(cache, sae):
    with pytest.raises(SAEError, match="width 4.*width 8"):
        top_features(cache, SparseAutoencoder(4, 3), HOOK, latent=0)
    with pytest.raises(SAEError, match="latent 12 is out of range"):
        top_features(cache, sae, HOOK, latent=12)
    with pytest.raises(SAEError, match="an int >= 0"):
        top_features(cache, sae, HOOK, latent=-1)


def test_the_html_table_highlights_the_peak_token(cache, sae):
    top = top_features(cache, sae, HOOK, latent=3, k=2)
    vocabulary = [f"<t{i}>" for i in range(WINDOWS * CONTEXT)]
    table = top_features_table(top, vocabulary, context=1)
    peak = int(top.windows[0]) * CONTEXT + int(top.positions[0])
    assert f"latent 3 of {HOOK}" in table and table.count("<tr>") == 3
    assert f'outline: 2px solid #000000" title="{float(top.values[0]):.3g}">&lt;t{peak}&gt;' in (
        table
    )


def test_the_markdown_table_puts_the_peak_in_bold_and_escapes_tokens(cache, sae):
    top = top_features(cache, sae, HOOK, latent=3, k=1)
    table = top_features_table(top, lambda i: f"a|{i}", format="markdown", context=0)
    peak = int(top.windows[0]) * CONTEXT + int(top.positions[0])
    assert table.splitlines()[-1].endswith(f"| **[[a\\|{peak}]]** |")


def test_the_table_refuses_an_unknown_format(cache, sae):
    top = top_features(cache, sae, HOOK, latent=3, k=1)
    with pytest.raises(ValueError, match="format must be"):
        top_features_table(top, format="latex")  # type: ignore[arg-type]
