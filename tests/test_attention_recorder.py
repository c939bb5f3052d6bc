"""The Recorder's ``attention=`` option: attention probabilities and their exact gradients
beside recorded layers, from ``backward()`` or ``Recorder.grad`` (also with K targets).

The reference gradients are ``retain_grad`` on Hugging Face's ``output_attentions`` maps of
the same weights with eager attention.
"""

from __future__ import annotations

import copy

import pytest
import torch

import gradlens
from gradlens.errors import AttentionCaptureError, RecorderStateError

from .contract_support import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")

TOL = dict(atol=1e-5, rtol=0)
NAMES = ["vit.layers.0.attention", "vit.layers.1.attention"]


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def reference_gradients(eager: torch.nn.Module, x: torch.Tensor, cls: int) -> list[torch.Tensor]:
    out = eager(x, output_attentions=True)
    for t in out.attentions:
        t.retain_grad()
    out.logits[:, cls].sum().backward()
    eager.zero_grad(set_to_none=True)
    return [t.grad for t in out.attentions]


def test_recorder_grad_gives_exact_attention_gradients_beside_layer_gradients(hf_vit_pair, images):
    eager, sdpa = hf_vit_pair
    expected = reference_gradients(eager, images, 1)
    before = snapshot(sdpa)
    with gradlens.record(sdpa, ["vit.layers.1.layernorm_before"], attention=True) as rec:
        logits = sdpa(images).logits
        rec.grad(logits[:, 1])
    assert list(rec.attentions) == NAMES
    assert rec.gradients["vit.layers.1.layernorm_before"].shape == (2, 17, 32)
    for name, g in zip(NAMES, expected):
        assert rec.attentions[name].shape == (2, 2, 17, 17)
        torch.testing.assert_close(rec.attention_gradients[name], g, **TOL)
    assert all(p.grad is None for p in sdpa.parameters())  # only the recorded tensors
    assert_unchanged(before, snapshot(sdpa))
    assert sdpa.config._attn_implementation == "sdpa"


def test_backward_inside_the_block_fills_attention_gradients(hf_vit_pair, images):
    eager, sdpa = hf_vit_pair
    expected = reference_gradients(eager, images, 2)
    with gradlens.record(sdpa, attention=True) as rec:
        sdpa(images).logits[:, 2].sum().backward()
    for name, g in zip(NAMES, expected):
        torch.testing.assert_close(rec.attention_gradients[name], g, **TOL)
    sdpa.zero_grad(set_to_none=True)


def test_k_targets_give_a_leading_k_dimension(hf_vit_pair, images):
    eager, sdpa = hf_vit_pair
    expected = [reference_gradients(eager, images, k) for k in (0, 2)]
    with gradlens.record(sdpa, attention=True) as rec:
        rec.grad(sdpa(images).logits[:, [0, 2]])  # (B, 2): both targets in one backward
    for i, name in enumerate(NAMES):
        grad = rec.attention_gradients[name]
        assert grad.shape == (2, 2, 2, 17, 17)
        for k in range(2):
            torch.testing.assert_close(grad[k], expected[k][i], **TOL)


def test_tape_from_layers_and_a_frozen_model_still_give_attention_gradients(hf_vit_pair, images):
    eager, sdpa = hf_vit_pair
    expected = reference_gradients(eager, images, 1)
    frozen = copy.deepcopy(sdpa).requires_grad_(False)
    with gradlens.record(
        frozen, "vit.layers.1.layernorm_before", tape_from_layers=True, attention=True
    ) as rec:
        rec.grad(frozen(images).logits[:, 1])
    for name, g in zip(NAMES, expected):
        torch.testing.assert_close(rec.attention_gradients[name], g, **TOL)
    assert torch.is_grad_enabled()


def test_attention_takes_a_layer_spec(hf_vit_pair, images):
    with gradlens.record(hf_vit_pair[1], attention="vit.layers.1.*") as rec:
        hf_vit_pair[1](images)
    assert list(rec.attentions) == ["vit.layers.1.attention"]


def test_a_recorder_without_attention_says_how_to_ask_for_it(hf_vit_pair, images):
    with gradlens.record(hf_vit_pair[1], "vit.layers.0") as rec:
        hf_vit_pair[1](images)
    with pytest.raises(RecorderStateError, match="attention=True"):
        _ = rec.attentions


def test_attention_on_a_model_without_attention_raises_at_construction(resnet18):
    with pytest.raises(AttentionCaptureError, match="no attention module"):
        gradlens.record(resnet18, "layer4", attention=True)
