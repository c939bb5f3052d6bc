"""gradlens.attention.rollout: the rollout maths on lists of attention maps, by hand."""

from __future__ import annotations

import pytest
import torch

from gradlens.attention.rollout import (
    add_residual,
    discard_lowest,
    fuse_heads,
    gradient_rollout,
    rollout,
)


def softmax_maps(layers: int, batch: int = 2, heads: int = 3, tokens: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, heads, tokens, tokens, generator=generator).softmax(-1)
        for _ in range(layers)
    ]


def test_heads_fuse_by_mean_max_and_min():
    attention = torch.tensor([[[[0.2, 0.8]], [[0.6, 0.4]]]])  # (B=1, heads=2, 1, 2)
    assert torch.allclose(fuse_heads(attention, "mean"), torch.tensor([[[0.4, 0.6]]]))
    assert torch.equal(fuse_heads(attention, "max"), torch.tensor([[[0.6, 0.8]]]))
    assert torch.equal(fuse_heads(attention, "min"), torch.tensor([[[0.2, 0.4]]]))


def test_discarding_zeroes_the_lowest_weights_of_each_row_but_never_the_class_tokens_own():
    attention = torch.tensor(
        [
            [
                [0.05, 0.45, 0.15, 0.35],  # the class token's own weight is the smallest
                [0.10, 0.40, 0.20, 0.30],
                [0.25, 0.05, 0.60, 0.10],
                [0.25, 0.35, 0.35, 0.05],
            ]
        ]
    )
    expected = torch.tensor(
        [
            [
                [0.05, 0.45, 0.00, 0.00],  # 0.05 stays; the two smallest of the others go
                [0.00, 0.40, 0.00, 0.30],
                [0.25, 0.00, 0.60, 0.00],
                [0.00, 0.35, 0.35, 0.00],
            ]
        ]
    )
    assert torch.equal(discard_lowest(attention, 0.5), expected)  # floor(0.5 * 4) = 2 a row


def test_a_ratio_below_one_token_discards_nothing():
    attention = softmax_maps(1)[0].mean(1)
    assert discard_lowest(attention, 0.19) is attention  # floor(0.19 * 5) = 0


def test_the_residual_is_added_as_half_identity_with_rows_summing_to_one():
    attention = torch.tensor([[[0.5, 0.5], [0.0, 0.5]]])  # second row sums to 0.5 (discarded)
    mixed = add_residual(attention)
    # (A + I) / 2 = [[0.75, 0.25], [0, 0.75]], rows renormalised
    assert torch.allclose(mixed, torch.tensor([[[0.75, 0.25], [0.0, 1.0]]]))


def test_rollout_multiplies_the_residual_maps_last_layer_first():
    identity = torch.eye(2).view(1, 1, 2, 2)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    upper = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    # Â(identity) = I; Â(swap) = [[.5, .5], [.5, .5]]; Â(upper) = [[1, 0], [.5, .5]]
    assert torch.allclose(rollout([identity, swap]), torch.full((1, 2, 2), 0.5))
    # R = Â(upper) · Â(swap) = [[.5, .5], [.5, .5]] and Â(swap) · Â(upper) = [[.75, .25]] * 2
    assert torch.allclose(rollout([swap, upper]), torch.full((1, 2, 2), 0.5))
    assert torch.allclose(rollout([upper, swap]), torch.tensor([[[0.75, 0.25], [0.75, 0.25]]]))


def test_rollout_rows_sum_to_one():
    result = rollout(softmax_maps(4), discard_ratio=0.4)
    assert torch.allclose(result.sum(-1), torch.ones(2, 5))


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
def test_one_rollout_row_is_that_row_of_the_whole_matrix(head_fusion):
    maps = softmax_maps(3)
    whole = rollout(maps, head_fusion=head_fusion, discard_ratio=0.3)
    for row in (0, 2, -1):
        one = rollout(maps, head_fusion=head_fusion, discard_ratio=0.3, row=row)
        assert torch.allclose(one, whole[:, row], atol=1e-6)


def test_gradient_rollout_of_one_layer_is_identity_plus_the_positive_weighted_map():
    attention = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]], [[0.9, 0.1], [0.4, 0.6]]]])
    gradient = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]], [[-1.0, 2.0], [1.0, 1.0]]]])
    # ReLU(grad * A) per head: [[.5, 0], [.6, .4]] and [[0, .2], [.4, .6]]; mean over heads
    expected = torch.eye(2) + torch.tensor([[0.25, 0.1], [0.5, 0.5]])
    assert torch.allclose(gradient_rollout([attention], [gradient]), expected[None])


def test_gradient_rollout_accumulates_layer_by_layer():
    maps = softmax_maps(3)
    grads = [torch.randn_like(a) for a in maps]
    expected = torch.eye(5).expand(2, 5, 5)
    for a, g in zip(maps, grads):
        weighted = (g * a).clamp(min=0).mean(1)
        expected = expected + weighted @ expected
    assert torch.allclose(gradient_rollout(maps, grads), expected, atol=1e-6)
    assert torch.allclose(gradient_rollout(maps, grads, row=0), expected[:, 0], atol=1e-6)
    assert torch.allclose(gradient_rollout(maps, grads, row=3), expected[:, 3], atol=1e-6)
    assert torch.allclose(gradient_rollout(maps, grads, row=-1), expected[:, 4], atol=1e-6)


def test_k_gradients_per_sample_give_k_rollouts():
    maps = softmax_maps(2)
    per_target = [[torch.randn_like(a) for a in maps] for _ in range(3)]
    stacked = [torch.stack([grads[layer] for grads in per_target]) for layer in range(2)]
    together = gradient_rollout(maps, stacked, row=0)  # (K, B, N)
    assert together.shape == (3, 2, 5)
    for k, grads in enumerate(per_target):
        assert torch.allclose(together[k], gradient_rollout(maps, grads, row=0), atol=1e-6)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_a_discard_ratio_outside_zero_to_one_is_refused(ratio):
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        rollout(softmax_maps(1), discard_ratio=ratio)


def test_an_unknown_head_fusion_is_refused():
    with pytest.raises(ValueError, match="head_fusion must be one of 'mean', 'max', 'min'"):
        rollout(softmax_maps(1), head_fusion="median")


def test_maps_that_cannot_be_multiplied_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        rollout([])
    with pytest.raises(ValueError, match="same batch size and number of tokens"):
        rollout(softmax_maps(1, tokens=5) + softmax_maps(1, tokens=4))
    with pytest.raises(ValueError, match="square"):
        rollout([torch.rand(1, 2, 1, 5)])
    with pytest.raises(ValueError, match="does not fit"):
        gradient_rollout(softmax_maps(1), [torch.rand(2, 3, 5)])


def test_a_row_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="row 5 does not exist: there are 5 tokens"):
        rollout(softmax_maps(1), row=5)
