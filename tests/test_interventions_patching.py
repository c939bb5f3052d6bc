"""Activation patching and attribution patching, checked against hand-written loops of single
patched forwards, the by-hand attribution formula and TransformerLens's own patching."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradlens
from gradlens import InterventionError, LayerNotExecutedError
from gradlens.metrics import logit_difference, normalized

from . import zoo
from .contract_support import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")

BLOCKS = ["transformer.h.0", "transformer.h.1"]
CORRECT, WRONG = 3, 4


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    return zoo.hf_gpt2(vocab_size=40, positions=16, heads=4, end_token_id=0)


@pytest.fixture(scope="module")
def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two clean prompts of 6 tokens, and corrupted ones that differ at position 2."""
    clean = torch.tensor([[5, 9, 11, 2, 7, 30], [8, 1, 17, 22, 6, 13]])
    corrupted = clean.clone()
    corrupted[:, 2] = torch.tensor([25, 33])
    return clean, corrupted


def lm_metric(output) -> torch.Tensor:
    return logit_difference(CORRECT, WRONG, output="logits")(output)


def patched_by_hand(
    model: nn.Module,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    layers: list[str],
    positions: list[int] | None,
    metric: Callable,
) -> torch.Tensor:
    """The reference: one forward per (layer, position), patched by a plain forward hook."""
    with torch.no_grad():
        stored = {}
        handles = [
            model.get_submodule(name).register_forward_hook(
                lambda m, a, o, name=name: stored.__setitem__(name, o.clone())
            )
            for name in layers
        ]
        model(clean)
        for handle in handles:
            handle.remove()
        result = torch.zeros(len(layers), 1 if positions is None else len(positions))
        for i, name in enumerate(layers):
            for j, position in enumerate([None] if positions is None else positions):

                def hook(module, args, output, name=name, position=position):
                    output = output.clone()
                    if position is None:
                        output[:] = stored[name]
                    else:
                        output[:, position] = stored[name][:, position]
                    return output

                handle = model.get_submodule(name).register_forward_hook(hook)
                result[i, j] = metric(model(corrupted)).mean()
                handle.remove()
    return result


# -- activation patching ---------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 4])
def test_gpt2_residual_stream_every_position_equals_a_loop_of_patched_forwards(
    gpt2, prompts, batch_size
):
    clean, corrupted = prompts
    result = gradlens.activation_patching(
        gpt2, clean, corrupted, BLOCKS, lm_metric, positions="each", batch_size=batch_size
    )
    expected = patched_by_hand(gpt2, clean, corrupted, BLOCKS, list(range(6)), lm_metric)
    assert result.shape == (2, 6)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


def test_resnet_stages_equal_a_loop_of_patched_forwards():
    resnet = zoo.torchvision_cnn("resnet18")
    clean = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    corrupted = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    stages = ["layer1", "layer2", "layer3", "layer4"]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 7]

    before = snapshot(resnet)
    result = gradlens.activation_patching(resnet, clean, corrupted, stages, metric)
    expected = patched_by_hand(resnet, clean, corrupted, stages, None, metric)
    assert result.shape == (4, 1)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)
    assert_unchanged(before, snapshot(resnet))


def test_normalized_metric_is_one_where_the_clean_run_is_restored_and_zero_where_runs_agree(
    gpt2, prompts
):
    clean, corrupted = prompts
    with torch.no_grad():
        metric = normalized(lm_metric, gpt2(clean), gpt2(corrupted))
    result = gradlens.activation_patching(gpt2, clean, corrupted, BLOCKS, metric, positions="each")
    # the last block's output at the last position alone decides the last logits
    torch.testing.assert_close(result[1, 5], torch.tensor(1.0), atol=1e-5, rtol=0)
    # before the corrupted token the causal model's two runs are the same
    torch.testing.assert_close(result[:, :2], torch.zeros(2, 2), atol=1e-6, rtol=0)


def test_a_list_of_positions_gives_those_columns(gpt2, prompts):
    clean, corrupted = prompts
    every = gradlens.activation_patching(
        gpt2, clean, corrupted, BLOCKS, lm_metric, positions="each"
    )
    some = gradlens.activation_patching(
        gpt2, clean, corrupted, BLOCKS, lm_metric, positions=[2, -1]
    )
    torch.testing.assert_close(some, every[:, [2, 5]], atol=1e-6, rtol=0)


def test_batch_size_caps_the_rows_of_each_forward(gpt2, prompts):
    clean, corrupted = prompts
    rows = []
    handle = gpt2.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        gradlens.activation_patching(
            gpt2, clean, corrupted, BLOCKS, lm_metric, positions="each", batch_size=5
        )
    finally:
        handle.remove()
    # one clean forward, then 12 cases of 2 rows, 2 cases (4 rows) per forward
    assert rows == [2] + [4] * 6


def test_a_scalar_metric_is_taken_per_case(gpt2, prompts):
    clean, corrupted = prompts
    per_sample = gradlens.activation_patching(gpt2, clean, corrupted, BLOCKS, lm_metric)

    def scalar(output) -> torch.Tensor:
        return lm_metric(output).mean()

    torch.testing.assert_close(
        gradlens.activation_patching(gpt2, clean, corrupted, BLOCKS, scalar), per_sample
    )


def test_transformer_lens_get_act_patch_resid_pre_agrees():
    lens = pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge

    config = lens.TransformerBridgeConfig(
        n_layers=2,
        d_model=32,
        n_ctx=16,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=40,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    model = TransformerBridge.boot_native(config).eval()
    clean = torch.tensor([[5, 9, 11, 2, 7]])
    corrupted = torch.tensor([[5, 9, 24, 2, 7]])

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, CORRECT] - logits[:, -1, WRONG]).mean()

    _, cache = model.run_with_cache(clean)
    expected = lens.patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
    result = gradlens.activation_patching(
        model, clean, corrupted, ["blocks.0.hook_in", "blocks.1.hook_in"], metric, positions="each"
    )
    assert expected.shape == result.shape == (2, 5)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


# -- attribution patching --------------------------------------------------------------------


def attribution_by_hand(model, clean, corrupted, layers) -> dict[str, torch.Tensor]:
    """``(a_clean - a_corrupted) * d mean metric / d a_corrupted`` per layer, elementwise."""
    acts: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            acts[name] = output
            return None

        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in layers]
    try:
        with torch.no_grad():
            model(clean)
        clean_acts = {n: a.clone() for n, a in acts.items()}
        score = lm_metric(model(corrupted)).mean()
        grads = torch.autograd.grad(score, [acts[n] for n in layers])
    finally:
        for handle in handles:
            handle.remove()
    return {n: (clean_acts[n] - acts[n].detach()) * g for n, g in zip(layers, grads)}


def test_attribution_patching_equals_the_formula_by_hand(gpt2, prompts):
    clean, corrupted = prompts
    before = snapshot(gpt2)
    per_position = gradlens.attribution_patching(
        gpt2, clean, corrupted, BLOCKS, lm_metric, positions="each"
    )
    whole = gradlens.attribution_patching(gpt2, clean, corrupted, BLOCKS, lm_metric)
    terms = attribution_by_hand(gpt2, clean, corrupted, BLOCKS)
    expected = torch.stack([terms[n].sum(dim=(0, 2)) for n in BLOCKS])
    assert per_position.shape == (2, 6) and whole.shape == (2, 1)
    torch.testing.assert_close(per_position, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole[:, 0], expected.sum(1), atol=1e-5, rtol=1e-5)
    assert_unchanged(before, snapshot(gpt2))  # no parameter .grad, no hook


def test_attribution_patching_costs_two_forwards(gpt2, prompts):
    clean, corrupted = prompts
    calls = []
    handle = gpt2.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:
        gradlens.attribution_patching(gpt2, clean, corrupted, BLOCKS, lm_metric, positions="each")
    finally:
        handle.remove()
    assert calls == [2, 2]


def test_attribution_patching_is_exact_for_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).eval()
    clean, corrupted = torch.randn(1, 3), torch.randn(1, 3)

    def metric(output: torch.Tensor) -> torch.Tensor:
        return output[:, 0] - output[:, 1]

    estimate = gradlens.attribution_patching(model, clean, corrupted, ["0"], metric)
    actual = gradlens.activation_patching(model, clean, corrupted, ["0"], metric)
    with torch.no_grad():
        change = actual - metric(model(corrupted))
    torch.testing.assert_close(estimate, change, atol=1e-6, rtol=1e-5)


# -- metrics -----------------------------------------------------------------------------------


def test_logit_difference_of_language_model_and_classifier_logits():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [5.0, 3.0, 1.0]], [[1.0, 1.0, 1.0], [2.0, 0.0, 7.0]]])
    assert torch.equal(logit_difference(0, 2)(logits), torch.tensor([4.0, -5.0]))
    assert torch.equal(logit_difference(0, 2, position=0)(logits), torch.tensor([-2.0, 0.0]))
    assert torch.equal(logit_difference([1, 2], [0, 1])(logits[:, 1]), torch.tensor([-2.0, 7.0]))


def test_logit_difference_out_of_range_is_a_target_error():
    with pytest.raises(gradlens.TargetError, match="wrong: class index 3 is out of range"):
        logit_difference(0, 3)(torch.zeros(2, 3))


def test_normalized_refuses_runs_that_do_not_differ():
    def metric(output: torch.Tensor) -> torch.Tensor:
        return output[:, 0]

    with pytest.raises(ValueError, match="same value"):
        normalized(metric, torch.ones(2, 3), torch.ones(2, 3))


# -- bad input ---------------------------------------------------------------------------------


def test_clean_and_corrupted_of_different_lengths_are_refused(gpt2, prompts):
    clean, _ = prompts
    before = snapshot(gpt2)
    with pytest.raises(InterventionError, match=r"\(2, 6\) in the clean run and \(2, 5\)"):
        gradlens.activation_patching(gpt2, clean, clean[:, :5], BLOCKS, lm_metric)
    with pytest.raises(InterventionError, match="same number of tokens"):
        gradlens.attribution_patching(gpt2, clean, clean[:, :5], BLOCKS, lm_metric)
    assert_unchanged(before, snapshot(gpt2))


def test_a_batch_size_below_one_is_refused_before_any_forward(gpt2, prompts):
    clean, corrupted = prompts
    rows = []
    handle = gpt2.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            gradlens.activation_patching(gpt2, clean, corrupted, BLOCKS, lm_metric, batch_size=0)
    finally:
        handle.remove()
    assert rows == []


def test_a_position_out_of_range_is_refused_before_any_patched_run(gpt2, prompts):
    clean, corrupted = prompts
    before = snapshot(gpt2)
    with pytest.raises(InterventionError, match="position 6 is out of range"):
        gradlens.activation_patching(gpt2, clean, corrupted, BLOCKS, lm_metric, positions=[0, 6])
    with pytest.raises(InterventionError, match="position -7 is out of range"):
        gradlens.attribution_patching(gpt2, clean, corrupted, BLOCKS, lm_metric, positions=[-7])
    assert_unchanged(before, snapshot(gpt2))


def test_a_metric_of_the_wrong_shape_is_refused(gpt2, prompts):
    clean, corrupted = prompts

    def all_logits(output) -> torch.Tensor:
        return output.logits[:, -1]

    before = snapshot(gpt2)
    with pytest.raises(InterventionError, match=r"shape \(2,\), or a scalar.*returned \(2, 40\)"):
        gradlens.activation_patching(gpt2, clean, corrupted, BLOCKS, all_logits)
    with pytest.raises(InterventionError, match=r"returned \(2, 40\)"):
        gradlens.attribution_patching(gpt2, clean, corrupted, BLOCKS, all_logits)
    assert_unchanged(before, snapshot(gpt2))


def test_a_layer_that_never_runs_is_named(gpt2, prompts):
    clean, corrupted = prompts
    gpt2.add_module("unused_probe", nn.Linear(32, 2))
    try:
        before = snapshot(gpt2)
        with pytest.raises(LayerNotExecutedError, match="'unused_probe'"):
            gradlens.activation_patching(gpt2, clean, corrupted, "unused_probe", lm_metric)
        with pytest.raises(LayerNotExecutedError, match="'unused_probe'"):
            gradlens.attribution_patching(gpt2, clean, corrupted, "unused_probe", lm_metric)
        assert_unchanged(before, snapshot(gpt2))
    finally:
        del gpt2.unused_probe


def test_each_position_needs_layers_with_the_same_number_of_positions(resnet18, image_batch):
    with pytest.raises(InterventionError, match=r"same size of dimension 1.*'layer1': 64"):
        gradlens.activation_patching(
            resnet18,
            image_batch,
            image_batch.flip(0),
            ["layer1", "layer2"],
            lambda out: out[:, 0],
            positions="each",
        )


def test_encodings_given_as_mappings_patch_like_tensors(gpt2, prompts):
    clean, corrupted = prompts
    as_tensors = gradlens.activation_patching(gpt2, clean, corrupted, BLOCKS, lm_metric)
    as_mappings = gradlens.activation_patching(
        gpt2, {"input_ids": clean}, {"input_ids": corrupted}, BLOCKS, lm_metric
    )
    torch.testing.assert_close(as_mappings, as_tensors)
