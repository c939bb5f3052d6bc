"""gradlens.maps: the one post-processing of explanation maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradlens.maps import normalize, resize, safe_divide, to_2d


def test_to_2d_sums_absolute_values_over_channels():
    attribution = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # (1, 2, 1, 2)
    assert torch.equal(to_2d(attribution), torch.tensor([[[4.0, 2.5]]]))


def test_to_2d_keeps_maps_and_rejects_other_shapes():
    maps = torch.randn(2, 3, 4)
    assert to_2d(maps) is maps
    with pytest.raises(ValueError, match=r"\(B, H, W\) or \(B, C, H, W\)"):
        to_2d(torch.randn(2, 3))


def test_resize_is_bilinear_without_aligned_corners_over_any_leading_dims():
    maps = torch.randn(2, 3, 4, 5)
    expected = F.interpolate(maps, size=(8, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize(maps, (8, 10)), expected)
    assert resize(maps[0, 0], (8, 10)).shape == (8, 10)
    assert resize(maps, (4, 5)) is maps


def test_resize_takes_other_modes():
    maps = torch.arange(4.0).view(1, 2, 2)
    assert torch.equal(resize(maps, (4, 4), mode="nearest")[0, ::2, ::2], maps[0])
    corners = resize(maps, (3, 3), align_corners=True)
    assert corners[0, 0, 0] == 0 and corners[0, -1, -1] == 3


def test_normalize_spans_zero_to_one_per_map():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[-1.0, -1.0], [0.0, 1.0]]])
    expected = torch.tensor([[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.5, 1.0]]])
    torch.testing.assert_close(normalize(maps), expected)


def test_a_constant_map_normalises_to_zeros_not_nan():
    assert torch.equal(normalize(torch.full((2, 3, 3), 7.0)), torch.zeros(2, 3, 3))


def test_safe_divide_falls_back_where_the_denominator_is_zero():
    n, d = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.0, -1.0])
    assert torch.equal(safe_divide(n, d), torch.tensor([0.5, 0.0, -3.0]))
    assert torch.equal(safe_divide(n, d, default=n), torch.tensor([0.5, 2.0, -3.0]))


def test_safe_divide_has_finite_gradients_at_a_zero_denominator():
    d = torch.tensor([0.0, 2.0], requires_grad=True)
    safe_divide(torch.ones(2), d).sum().backward()
    assert torch.equal(d.grad, torch.tensor([0.0, -0.25]))
