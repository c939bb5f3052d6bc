"""gradlens.tiny_vit and gradlens.vit_demo: the tiny ViT learns the shapes, and the gradient
rollout of the trained model points at the objects."""

from __future__ import annotations

import csv
import math

import pytest
import torch

import gradlens
from gradlens import metrics
from gradlens.tiny_vit import VIT_RECIPE, TinyViT, sincos_positions, train_vit_model


def test_the_tiny_vit_has_a_class_token_and_an_8_by_8_patch_grid():
    model = TinyViT().eval()
    x = torch.rand(2, 3, 64, 64)
    assert model(x).shape == (2, 9)
    probs = gradlens.attentions(model, x)
    assert list(probs) == [f"blocks.{i}.attn" for i in range(4)]
    assert all(p.shape == (2, 4, 65, 65) for p in probs.values())
    assert model.cam_layer_name == "blocks.3.norm1"
    # the CAM token rules read its blocks as 8 x 8 maps
    assert gradlens.gradcam(model, x, model.cam_layer_name, upsample=False).shape == (2, 8, 8)


def test_patches_are_embedded_in_row_major_order():
    model = TinyViT().eval()
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, 8:16, 40:48] = torch.rand(3, 8, 8)  # the patch in grid row 1, column 5
    changed = (model.patch_embed(x) - model.patch_embed(torch.zeros_like(x))).abs().sum(-1)
    assert changed[0].nonzero().flatten().tolist() == [1 * 8 + 5]


def test_sine_cosine_positions_of_the_first_cell_and_the_next_column():
    positions = sincos_positions(8, 8, 16)  # 4 features each: sin x, cos x, sin y, cos y
    assert positions.shape == (64, 16)
    assert torch.equal(positions[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    # one column to the right: x = 1 at frequencies 1, 1e-4 ** (1/3), 1e-4 ** (2/3), 1e-4
    frequencies = torch.tensor([10000 ** (-i / 3) for i in range(4)])
    torch.testing.assert_close(positions[1, :4], frequencies.sin())
    torch.testing.assert_close(positions[1, 8:], positions[0, 8:])  # same row


def test_a_grid_that_does_not_divide_the_image_is_refused():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        TinyViT(image_size=60)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: small models gain nothing from more on a busy machine, and the
    trained model is then the same everywhere (as in test_data.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_vit(one_thread):
    return train_vit_model(progress=False)


def test_the_recipe_reaches_97_percent_on_held_out_data(trained_vit):
    model, test_data, accuracy = trained_vit
    assert len(test_data) == VIT_RECIPE.n_test
    assert accuracy >= 0.97
    assert not model.training


def test_gradient_rollout_of_the_trained_vit_points_at_the_objects(trained_vit):
    model, test_data, _ = trained_vit
    maps = gradlens.gradient_attention_rollout(model, test_data.images)  # 500 images
    hits = metrics.pointing_game(maps, masks=test_data.masks, tolerance=4)  # 15 px at 224 px
    assert hits.float().mean() >= 0.85


def test_the_vit_demo_writes_its_figure_and_table(trained_vit, tmp_path, monkeypatch, capsys):
    import gradlens.vit_demo

    monkeypatch.setattr(gradlens.vit_demo, "train_vit_model", lambda *a, **k: trained_vit)
    result = gradlens.vit_demo.run_vit_demo(tmp_path, quick=True, progress=False)
    assert result.figure.stat().st_size > 10_000 and result.accuracy == trained_vit[2]
    with result.table.open() as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert list(rows) == [
        "attention_rollout",
        "gradient_attention_rollout",
        "gradcam (blocks.3.norm1)",
    ]
    assert all(0 <= float(row["pointing_game"]) <= 1 for row in rows.values())
    assert not math.isnan(float(rows["gradient_attention_rollout"]["deletion_auc"]))
    assert "gradient_attention_rollout" in capsys.readouterr().out
