"""gradlens.generation_attributions: each continuation token attributed to the tokens before
it, all K rows at once, on a tiny HF GPT-2 config."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import gradlens
from gradlens import targets
from gradlens.errors import LayerNotFoundError, TokenInputError

from .contract_support import assert_unchanged, snapshot
from .zoo import hf_gpt2, token_ids

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT, K = 6, 3
OPTIONS: dict[str, dict[str, Any]] = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"steps": 4, "baseline": 0},
}


def _single_row(
    model: nn.Module, prompt: torch.Tensor, continuation: torch.Tensor, k: int, method: str
) -> torch.Tensor:
    """Row k the slow way: one call for the one target log p(continuation token k)."""
    every = targets.sequence(continuation, per_token=True)
    return gradlens.token_attributions(
        model,
        torch.cat([prompt, continuation], 1),
        lambda output: every(output)[:, k],
        method=method,
        **OPTIONS[method],
    )


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_rows_equal_single_target_calls(tiny_gpt2: nn.Module, method: str) -> None:
    prompt, continuation = token_ids(2, PROMPT), token_ids(2, K, seed=2)
    rows = gradlens.generation_attributions(
        tiny_gpt2, prompt, continuation, method=method, **OPTIONS[method]
    )
    assert rows.shape == (2, K, PROMPT + K)
    for k in range(K):
        single = _single_row(tiny_gpt2, prompt, continuation, k, method)
        torch.testing.assert_close(
            rows[:, k, : PROMPT + k], single[:, : PROMPT + k], atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
@pytest.mark.parametrize("count", [1, 2, None])
def test_rows_are_the_same_in_chunks_of_targets_per_backward(
    tiny_gpt2: nn.Module, method: str, count: int | None
) -> None:
    prompt, continuation = token_ids(2, PROMPT), token_ids(2, K, seed=2)
    chunked = gradlens.generation_attributions(
        tiny_gpt2,
        prompt,
        continuation,
        method=method,
        targets_per_backward=count,
        **OPTIONS[method],
    )
    for k in range(K):
        single = _single_row(tiny_gpt2, prompt, continuation, k, method)
        torch.testing.assert_close(
            chunked[:, k, : PROMPT + k], single[:, : PROMPT + k], atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(("count", "sizes"), [(None, [3]), (4, [3]), (2, [2, 1]), (1, [1, 1, 1])])
def test_targets_per_backward_splits_the_k_scores_into_batched_backwards(
    tiny_gpt2: nn.Module, monkeypatch: pytest.MonkeyPatch, count: int | None, sizes: list[int]
) -> None:
    seen: list[int] = []
    grad = torch.autograd.grad

    def counting_grad(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("is_grads_batched"):
            seen.append(len(args[2]))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    gradlens.generation_attributions(
        tiny_gpt2, token_ids(1, PROMPT), token_ids(1, K, seed=2), targets_per_backward=count
    )
    assert seen == sizes


@pytest.mark.parametrize("count", [0, 2.0])
def test_a_targets_per_backward_that_is_not_a_positive_int_is_refused(
    tiny_gpt2: nn.Module, count: Any
) -> None:
    prompt = token_ids(1, PROMPT)
    before = snapshot(tiny_gpt2, prompt)
    with pytest.raises(ValueError, match="positive int or None"):
        gradlens.generation_attributions(
            tiny_gpt2, prompt, token_ids(1, K, seed=2), targets_per_backward=count
        )
    assert_unchanged(before, snapshot(tiny_gpt2, prompt))


def test_positions_at_and_after_each_token_are_zero(tiny_gpt2: nn.Module) -> None:
    rows = gradlens.generation_attributions(
        tiny_gpt2, token_ids(1, PROMPT), token_ids(1, K, seed=2), method="saliency"
    )
    for k in range(K):
        assert torch.equal(rows[0, k, PROMPT + k :], torch.zeros(K - k))
        assert (rows[0, k, : PROMPT + k] != 0).all()


def test_all_rows_come_from_one_forward_and_one_batched_backward(
    tiny_gpt2: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    backwards: list[bool] = []
    grad = torch.autograd.grad

    def counting_grad(*args: Any, **kwargs: Any) -> Any:
        backwards.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    last_block = tiny_gpt2.transformer.h[-1]
    calls = []
    handle = last_block.register_forward_hook(lambda *args: calls.append(1))
    try:
        gradlens.generation_attributions(tiny_gpt2, token_ids(2, PROMPT), token_ids(2, K, seed=2))
    finally:
        handle.remove()
    assert len(calls) == 1  # the embedding lookup stops before the blocks
    assert backwards == [True]


def test_integrated_gradients_runs_one_batched_pass_per_chunk_of_steps(
    tiny_gpt2: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    backwards: list[bool] = []
    grad = torch.autograd.grad

    def counting_grad(*args: Any, **kwargs: Any) -> Any:
        backwards.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    gradlens.generation_attributions(
        tiny_gpt2,
        token_ids(1, PROMPT),
        token_ids(1, K, seed=2),
        method="integrated_gradients",
        baseline=0,
        steps=4,
        batch_size=2,  # two steps per pass
    )
    assert backwards == [True, True]


def test_a_shared_continuation_is_used_for_every_prompt(tiny_gpt2: nn.Module) -> None:
    prompt, continuation = token_ids(2, PROMPT), token_ids(1, K, seed=2)
    shared = gradlens.generation_attributions(tiny_gpt2, prompt, continuation[0])
    given = gradlens.generation_attributions(tiny_gpt2, prompt, continuation.expand(2, -1))
    torch.testing.assert_close(shared, given, atol=0, rtol=0)


def test_a_left_padded_prompt_scores_zero_on_its_padding(tiny_gpt2: nn.Module) -> None:
    prompt = token_ids(2, PROMPT)
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    rows = gradlens.generation_attributions(
        tiny_gpt2, prompt, token_ids(2, K, seed=2), attention_mask=mask
    )
    assert torch.equal(rows[1, :, :2], torch.zeros(K, 2))
    assert (rows[0, :, :2] != 0).all()


def test_a_continuation_batch_that_is_not_the_prompts_is_refused_untouched(
    tiny_gpt2: nn.Module,
) -> None:
    prompt = token_ids(2, PROMPT)
    before = snapshot(tiny_gpt2, prompt)
    with pytest.raises(TokenInputError, match="3 continuations but input_ids holds 2 prompts"):
        gradlens.generation_attributions(tiny_gpt2, prompt, token_ids(3, K))
    assert_unchanged(before, snapshot(tiny_gpt2, prompt))


def test_a_model_without_an_embedding_layer_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(LayerNotFoundError, match="no input embedding layer"):
        gradlens.generation_attributions(model, token_ids(1, 3), token_ids(1, 1))


@pytest.mark.parametrize("mode", ["eval", "train", "frozen", "no_grad", "inference_mode"])
def test_the_model_is_left_untouched(mode: str) -> None:
    model = hf_gpt2()
    if mode == "train":
        model.train()
    if mode == "frozen":
        model.requires_grad_(False)
    head = model.lm_head.weight
    if head.requires_grad:
        head.grad = torch.full_like(head, 0.25)
    prompt = token_ids(1, PROMPT)
    before = snapshot(model, prompt)
    context = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}
    with context.get(mode, torch.enable_grad()):
        gradlens.generation_attributions(
            model,
            prompt,
            token_ids(1, K, seed=2),
            method="integrated_gradients",
            baseline=0,
            steps=2,
        )
    assert_unchanged(before, snapshot(model, prompt))


def test_integrated_gradients_runs_one_step_per_pass_by_default(
    tiny_gpt2: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    backwards: list[bool] = []
    grad = torch.autograd.grad

    def counting_grad(*args: Any, **kwargs: Any) -> Any:
        backwards.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    gradlens.generation_attributions(
        tiny_gpt2,
        token_ids(2, PROMPT),
        token_ids(2, K, seed=2),
        method="integrated_gradients",
        baseline=0,
        steps=3,
    )
    assert backwards == [True, True, True]  # one batched backward per step, K targets each
