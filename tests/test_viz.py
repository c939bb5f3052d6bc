"""gradlens.viz: overlays are aligned, value ranges and layouts are read right, figures save."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from gradlens.viz import DIVERGING_CMAP, overlay, save, show

H, W = 6, 10  # non-square, so a transposed result cannot have the right shape


def grey_image() -> torch.Tensor:
    """A ``(3, H, W)`` mid-grey image in [0, 1]."""
    return torch.full((3, H, W), 0.5)


def top_left_hot(h: int = H, w: int = W) -> torch.Tensor:
    heat = torch.zeros(h, w)
    heat[: h // 2, : w // 2] = 1.0
    return heat


def test_overlay_is_uint8_rgb_of_the_image_size():
    result = overlay(grey_image(), torch.rand(H, W))
    assert result.dtype == np.uint8
    assert result.shape == (H, W, 3)


def test_overlay_is_aligned_with_the_image():
    result = overlay(grey_image(), top_left_hot()).astype(int)
    redness = result[..., 0] - result[..., 2]  # jet: red is hot, blue is cold
    assert (redness[: H // 2, : W // 2] > 0).all()
    assert (redness[H // 2 :, :] < 0).all()
    assert (redness[:, W // 2 :] < 0).all()


def test_a_smaller_heatmap_is_stretched_over_the_whole_image():
    # With the grey colour map and alpha=1 the overlay *is* the normalised heatmap.
    result = overlay(grey_image(), top_left_hot(2, 2), alpha=1.0, cmap="gray")[..., 0].astype(int)
    assert result[0, 0] == 255 and result[-1, -1] == 0
    assert (np.diff(result[0]) <= 0).all()  # fades to the right ...
    assert (np.diff(result[:, 0]) <= 0).all()  # ... and downwards


def test_channels_first_and_channels_last_give_the_same_overlay():
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    heat = torch.rand(H, W, generator=torch.Generator().manual_seed(1))
    chw = overlay(image, heat)
    hwc = overlay(image.permute(1, 2, 0).numpy(), heat.numpy())
    assert np.array_equal(chw, hwc)


def test_unit_range_and_byte_range_give_the_same_overlay():
    levels = torch.randint(0, 256, (3, H, W), generator=torch.Generator().manual_seed(0))
    heat = torch.rand(H, W, generator=torch.Generator().manual_seed(1))
    unit = overlay(levels.float() / 255, heat)
    float_bytes = overlay(levels.float(), heat)
    uint8 = overlay(levels.to(torch.uint8), heat)
    assert np.array_equal(float_bytes, uint8)
    # levels / 255 in float32 is not exactly levels / 255: allow one level of rounding.
    assert np.abs(unit.astype(int) - uint8.astype(int)).max() <= 1


def test_mean_and_std_undo_the_input_normalisation():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    normalised = (image - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    heat = torch.rand(H, W)
    assert (
        np.abs(
            overlay(normalised, heat, mean=mean, std=std).astype(int)
            - overlay(image, heat).astype(int)
        ).max()
        <= 1
    )  # float rounding may move a value by one level


def test_alpha_zero_returns_the_image_and_alpha_one_the_colours():
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    as_uint8 = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(overlay(image, torch.rand(H, W), alpha=0.0), as_uint8)
    cold = overlay(image, torch.zeros(H, W), alpha=1.0)  # a constant map is all "0": dark blue
    assert (cold == cold[0, 0]).all() and cold[0, 0, 2] > 100 and cold[0, 0, 0] == 0


def shapes_batch(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(b, 3, H, W, generator=torch.Generator().manual_seed(0))
    return images, torch.rand(b, H, W, generator=torch.Generator().manual_seed(1))


def test_show_has_one_image_panel_and_one_panel_per_map_for_every_sample():
    images, maps = shapes_batch(3)
    assert isinstance(show(images, maps), Figure)
    assert len(show(images, maps).axes) == 3 * 2
    assert len(show(images, [maps, maps, maps]).axes) == 3 * 4
    assert len(show(images, {"a": maps, "b": maps}).axes) == 3 * 3
    assert len(show(images, torch.stack([maps] * 4, dim=1)).axes) == 3 * 5  # (B, K, H, W)


def test_show_titles_name_the_columns():
    images, maps = shapes_batch()
    fig = show(images, {"grad-cam": maps, "saliency": maps})
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "grad-cam", "saliency"]
    fig = show(images, [maps], titles=["mine"])
    assert fig.axes[1].get_title() == "mine"


def test_show_ncols_puts_several_samples_on_a_row():
    images, maps = shapes_batch(5)
    fig = show(images, maps, ncols=2)
    assert len(fig.axes) == 5 * 2
    rows = {ax.get_subplotspec().rowspan.start for ax in fig.axes}
    assert rows == {0, 1, 2}


def test_show_colorbar_adds_one_axes_per_map_panel():
    images, maps = shapes_batch()
    assert len(show(images, maps, colorbar=True).axes) == 2 * 2 + 2


def test_signed_maps_use_a_diverging_colormap_centred_at_zero():
    images, _ = shapes_batch(1)
    signed = torch.zeros(1, H, W)
    signed[0, 0, 0], signed[0, -1, -1] = -0.5, 2.0
    fig = show(images, signed)
    picture = fig.axes[1].get_images()[0]
    assert picture.get_cmap().name == DIVERGING_CMAP
    assert picture.get_clim() == (-2.0, 2.0)


def test_unsigned_maps_are_overlays_unless_signed_is_forced():
    images, maps = shapes_batch(1)
    overlaid = show(images, maps).axes[1].get_images()[0]
    assert overlaid.get_array().shape == (H, W, 3)  # an RGB overlay, not a mapped scalar
    forced = show(images, maps, signed=True).axes[1].get_images()[0]
    assert forced.get_cmap().name == DIVERGING_CMAP
    low, high = forced.get_clim()
    assert low == -high


def test_show_draws_the_boxes_on_every_panel():
    images, maps = shapes_batch()
    fig = show(images, [maps, maps], boxes=torch.tensor([[1, 2, 4, 5], [0, 0, 3, 3]]))
    assert all(len(ax.patches) == 1 for ax in fig.axes)
    box = fig.axes[0].patches[0]  # (x0, y0, x1, y1) = (1, 2, 4, 5), end exclusive
    assert box.get_xy() == (0.5, 1.5) and box.get_width() == 3 and box.get_height() == 3


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_save_writes_the_format_of_the_suffix(tmp_path, suffix, magic):
    images, maps = shapes_batch()
    path = save(show(images, maps), tmp_path / "sub" / f"figure{suffix}")
    assert path.read_bytes()[:4] == magic


def test_save_needs_a_known_suffix(tmp_path):
    images, maps = shapes_batch(1)
    with pytest.raises(ValueError):
        save(show(images, maps), tmp_path / "figure")
    with pytest.raises(ValueError):
        save(show(images, maps), tmp_path / "figure.nope")


def test_viz_does_not_import_pyplot():
    import ast
    from pathlib import Path

    import gradlens.viz

    imported = []
    for path in Path(gradlens.viz.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                imported += [f"{node.module}.{alias.name}" for alias in node.names]
    assert "matplotlib.figure.Figure" in imported
    assert not any("pyplot" in name for name in imported)


def test_the_diverging_colormap_is_white_at_zero():
    import matplotlib

    cmap = matplotlib.colormaps[DIVERGING_CMAP]
    assert isinstance(cmap, LinearSegmentedColormap)
    assert np.allclose(cmap(0.5)[:3], (1.0, 1.0, 1.0), atol=0.01)


def test_patching_heatmap_draws_one_panel_per_result_with_the_labels():
    from gradlens.viz import patching_heatmap

    measured = torch.tensor([[0.0, 1.0, -0.5], [0.2, 0.0, 0.8]])
    fig = patching_heatmap(
        {"activation patching": measured, "attribution patching": measured * 0.5},
        layers=["h.0", "h.1"],
        positions=["The", " cat", " sat"],
    )
    image_axes = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in image_axes] == ["activation patching", "attribution patching"]
    assert [t.get_text() for t in image_axes[0].get_xticklabels()] == ["The", " cat", " sat"]
    assert [t.get_text() for t in image_axes[0].get_yticklabels()] == ["h.0", "h.1"]
    shown = image_axes[1].get_images()[0]
    assert np.allclose(shown.get_array(), measured.numpy() * 0.5)
    assert shown.get_clim() == (-0.5, 0.5)  # symmetric around 0, per panel


def test_patching_heatmap_refuses_results_of_different_shapes():
    from gradlens.viz import patching_heatmap

    with pytest.raises(ValueError, match="one shape"):
        patching_heatmap({"a": torch.zeros(2, 3), "b": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="2 layer and 2 position labels"):
        patching_heatmap(torch.zeros(2, 3), positions=["a", "b"])
