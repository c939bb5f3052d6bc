"""gradlens.core.batched_grad: K scores per sample in one batched backward, or in chunks of
``targets_per_backward`` scores."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from gradlens.core.batched_grad import batched_grad, targets_per_backward


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden (4, 3) requiring grad, scores (4, 5))`` of a small MLP."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5))
    hidden = torch.randn(4, 3, requires_grad=True)
    return hidden, head(hidden)


def _count_batched_backwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of cotangents of every batched backward from now on."""
    sizes: list[int] = []
    grad = torch.autograd.grad

    def counting_grad(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("is_grads_batched"):
            sizes.append(len(args[2]))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    return sizes


def test_k_scores_give_the_gradients_of_each_score() -> None:
    hidden, scores = _problem()
    (batched,) = batched_grad(scores, [hidden])
    assert batched.shape == (5, 4, 3)
    for k in range(5):
        (single,) = torch.autograd.grad(scores[:, k].sum(), hidden, retain_graph=True)
        torch.testing.assert_close(batched[k], single, atol=1e-7, rtol=0)


@pytest.mark.parametrize(("count", "sizes"), [(None, [5]), (5, [5]), (2, [2, 2, 1]), (1, [1] * 5)])
def test_targets_per_backward_splits_the_scores_into_chunks(
    count: int | None, sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden, scores = _problem()
    (whole,) = batched_grad(scores, [hidden])
    seen = _count_batched_backwards(monkeypatch)
    with targets_per_backward(count):
        (chunked,) = batched_grad(scores, [hidden])
    assert seen == sizes
    torch.testing.assert_close(chunked, whole, atol=1e-7, rtol=0)


def test_a_tensor_the_scores_do_not_depend_on_gets_none_in_chunks() -> None:
    hidden, scores = _problem()
    unused = torch.randn(2, requires_grad=True)
    with targets_per_backward(2):
        grads = batched_grad(scores, [hidden, unused])
    assert grads[0] is not None and grads[0].shape == (5, 4, 3)
    assert grads[1] is None


def test_targets_per_backward_applies_inside_its_block_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hidden, scores = _problem()
    seen = _count_batched_backwards(monkeypatch)
    with targets_per_backward(3):
        with targets_per_backward(None):
            batched_grad(scores, [hidden], retain_graph=True)
        batched_grad(scores, [hidden], retain_graph=True)
    batched_grad(scores, [hidden])
    assert seen == [5, 3, 2, 5]


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_targets_per_backward_must_be_a_positive_int(count: Any) -> None:
    with pytest.raises(ValueError, match="positive int or None"):
        with targets_per_backward(count):
            pass
