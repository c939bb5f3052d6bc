"""Attention capture: the probabilities of every attention kernel, with exact gradients.

Models are small and random-init (built offline): torchvision's ViT and
``nn.TransformerEncoder`` (nn.MultiheadAttention with need_weights=False, fast path), timm's
ViT (fused scaled_dot_product_attention), Hugging Face ViT, BERT and GPT-2 with ``sdpa`` and
with ``eager`` attention. References are computed independently of gradlens: Hugging Face's
``output_attentions=True`` maps (and ``retain_grad`` on them), ``nn.MultiheadAttention``'s
own ``need_weights=True`` weights, the input of timm's attention dropout on the eager path,
and the closed form of d score / d probabilities of one attention layer.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.attention import AttentionCapture, attention_modules, attentions, capture_attention
from gradlens.core.attention.maths import attention_with_probabilities
from gradlens.errors import (
    AttentionCaptureError,
    GradientNotAvailableError,
    LayerNotFoundError,
    RecorderStateError,
)

from . import zoo
from .contract_support import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = dict(atol=1e-5, rtol=0)


def assert_probabilities(probs: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert tuple(probs.shape) == shape
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(shape[:-1]), **TOL)


# -- models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_vit() -> nn.Module:
    return zoo.torchvision_vit(num_classes=1000)


@pytest.fixture(scope="module")
def timm_vit() -> nn.Module:
    return zoo.timm_vit(fused=True)


def encoder(dropout: float = 0.0) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=dropout, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


@pytest.fixture(scope="module")
def hf_bert() -> tuple[nn.Module, nn.Module]:
    return zoo.eager_and_sdpa(zoo.hf_bert, vocab_size=50, max_positions=16, num_labels=2)


@pytest.fixture(scope="module")
def hf_gpt2() -> tuple[nn.Module, nn.Module]:
    return zoo.eager_and_sdpa(zoo.hf_gpt2, vocab_size=50, positions=16, end_token_id=0)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def tokens() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0  # the second sequence is padded after 4 tokens
    return ids, mask


# -- the maths form ------------------------------------------------------------------------


def qkv(*shape: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(3)]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"scale": 0.3},
        {"is_causal": True},
        {"attn_mask": torch.rand(5, 6, generator=torch.Generator().manual_seed(3)) > 0.3},
        {"attn_mask": torch.randn(2, 1, 5, 6, generator=torch.Generator().manual_seed(4))},
    ],
    ids=["plain", "scale", "causal", "bool-mask", "float-mask"],
)
def test_maths_form_equals_scaled_dot_product_attention(options):
    q, _, _ = qkv(2, 3, 5, 4)
    _, k, v = qkv(2, 3, 6, 4, seed=1)
    if options.get("is_causal"):
        k, v = k[..., :5, :], v[..., :5, :]
    expected = F.scaled_dot_product_attention(q, k, v, **options)
    output, probs, weights = attention_with_probabilities(q, k, v, **options)
    torch.testing.assert_close(output, expected, **TOL)
    assert weights is probs  # no dropout
    torch.testing.assert_close(output, probs @ v, **TOL)


def test_maths_form_causal_probabilities_are_lower_triangular():
    q, k, v = qkv(1, 2, 4, 3)
    probs = attention_with_probabilities(q, k, v, is_causal=True).probs
    assert torch.equal(probs.triu(1), torch.zeros_like(probs))
    torch.testing.assert_close(probs[..., 0, 0], torch.ones(1, 2))


def test_maths_form_grouped_query_attention():
    q, _, _ = qkv(1, 4, 5, 4)
    _, k, v = qkv(1, 2, 5, 4, seed=1)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    output, probs, _ = attention_with_probabilities(q, k, v, enable_gqa=True)
    torch.testing.assert_close(output, expected, **TOL)
    assert probs.shape == (1, 4, 5, 5)


def test_maths_form_fully_masked_rows_are_zero_as_in_pytorch():
    q, k, v = qkv(1, 1, 3, 4)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    output, probs, _ = attention_with_probabilities(q, k, v, attn_mask=mask)
    torch.testing.assert_close(output, expected, **TOL)
    assert torch.equal(probs[0, 0, 1], torch.zeros(3))
    q.requires_grad_(True)
    attention_with_probabilities(q, k, v, attn_mask=mask).output.sum().backward()
    assert torch.isfinite(q.grad).all()  # no NaN leaks from the masked row


def test_maths_form_dropout_applies_after_the_probabilities():
    q, k, v = qkv(1, 2, 6, 4)
    output, probs, weights = attention_with_probabilities(q, k, v, dropout_p=0.5)
    dropped = weights == 0
    assert dropped.any() and (~dropped).any()
    torch.testing.assert_close(weights[~dropped], probs[~dropped] / 0.5)
    torch.testing.assert_close(output, weights @ v, **TOL)


# -- nn.MultiheadAttention: torchvision ViT, TransformerEncoder ----------------------------


def test_torchvision_vit_probabilities_equal_multihead_attention_weights(torchvision_vit, images):
    model = torchvision_vit
    before = snapshot(model)
    with torch.no_grad():
        expected_output = model(images)
    probs = attentions(model, images)
    assert list(probs) == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in (0, 1)]
    for name, p in probs.items():
        assert_probabilities(p, (2, 2, 17, 17))
        assert not p.is_inference()
        # the reference: the module's own per-head weights for the same input
        inputs = gradlens.extract(model, images, name.rsplit(".", 1)[0] + ".ln_1")
        h = next(iter(inputs.values()))
        module = model.get_submodule(name)
        _, weights = module(h, h, h, need_weights=True, average_attn_weights=False)
        torch.testing.assert_close(p, weights, **TOL)
    with torch.no_grad(), capture_attention(model):
        output = model(images)
    torch.testing.assert_close(output, expected_output, **TOL)
    assert_unchanged(before, snapshot(model))


def test_transformer_encoder_fast_path_eval(images):
    model = encoder().eval()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(5))
    before = snapshot(model)
    with torch.inference_mode():
        expected = model(x)  # the fused fast path
    with torch.inference_mode(), capture_attention(model) as capture:
        output = model(x)
    torch.testing.assert_close(output, expected, **TOL)
    assert capture.names == ["layers.0.self_attn", "layers.1.self_attn"]
    for call in capture.calls():
        assert call.kernel == "multi_head_attention_forward"
        assert_probabilities(call.probs, (2, 2, 5, 5))
    assert_unchanged(before, snapshot(model))


def test_transformer_encoder_padding_keeps_the_nested_tensor_outputs():
    # enable_nested_tensor (the default): the fast path returns norm(0) at padded positions
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16)).eval()
    nn.init.normal_(model.norm.bias)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(5))
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    before = snapshot(model)
    with torch.inference_mode():
        expected = model(x, src_key_padding_mask=padding)
    assert torch.equal(expected[1, 3], model.norm.bias.detach())  # the nested path ran
    probs = attentions(model, x, forward_kwargs={"src_key_padding_mask": padding})
    with torch.inference_mode(), capture_attention(model):
        output = model(x, src_key_padding_mask=padding)
    torch.testing.assert_close(output, expected, **TOL)
    for p in probs.values():
        assert torch.equal(p[1, :, :, 3:], torch.zeros(2, 5, 2))
    assert_unchanged(before, snapshot(model))


def test_transformer_encoder_train_mode_outputs_unchanged_and_state_kept():
    model = encoder(dropout=0.0).train()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(5))
    before = snapshot(model)
    expected = model(x)
    with capture_attention(model, grad=True) as capture:
        output = model(x)
        output.sum().backward()
    torch.testing.assert_close(output, expected, **TOL)
    assert set(capture.gradients) == {"layers.0.self_attn", "layers.1.self_attn"}
    for p in model.parameters():
        p.grad = None
    assert_unchanged(before, snapshot(model))


def mha_closed_form_gradient(mha: nn.MultiheadAttention, x: torch.Tensor, r: torch.Tensor):
    """d sum(out * r) / d weights for a batch-first 2-head, width-8 ``mha(x, x, x)``:
    out = concat_h(W_h V_h) W_o^T + b, so d/dW_h = (r W_o)[..., h-th slice] V_h^T."""
    b, n = x.shape[:2]
    v = (x @ mha.in_proj_weight[16:].T + mha.in_proj_bias[16:]).view(b, n, 2, 4).transpose(1, 2)
    g_heads = (r @ mha.out_proj.weight).view(b, n, 2, 4).transpose(1, 2)
    return (g_heads @ v.transpose(-2, -1)).detach()


def test_multihead_attention_gradient_equals_the_closed_form():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x, r = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    with capture_attention(mha, grad=True) as capture:
        out, _ = mha(x, x, x, need_weights=False)
        (out * r).sum().backward()
    torch.testing.assert_close(capture.gradients[""], mha_closed_form_gradient(mha, x, r), **TOL)
    mha.zero_grad(set_to_none=True)


def test_train_mode_gradients_are_exact_for_the_probabilities_before_dropout():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True).train()
    x, r = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    with capture_attention(mha, grad=True) as capture:
        out, weights = mha(x, x, x, average_attn_weights=False)  # weights after dropout
        (out * r).sum().backward()
    probs, grad = capture.probs[""], capture.gradients[""]
    assert_probabilities(probs, (3, 2, 4, 4))  # dropout does not touch the probabilities
    kept = weights.detach() / probs  # the dropout mask / (1 - p): 0 or 2
    assert set(kept.round().unique().tolist()) == {0.0, 2.0}
    # weights = probs * kept, so d score / d probs = d score / d weights * kept
    expected = mha_closed_form_gradient(mha, x, r) * kept
    torch.testing.assert_close(grad, expected, **TOL)
    mha.zero_grad(set_to_none=True)


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_multihead_attention_asked_for_weights_still_gets_them(average, batched):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2).eval()
    x = torch.randn(4, 3, 8) if batched else torch.randn(4, 8)
    expected_out, expected_w = mha(x, x, x, average_attn_weights=average)
    with capture_attention(mha) as capture:
        out, w = mha(x, x, x, average_attn_weights=average)
    torch.testing.assert_close(out, expected_out, **TOL)
    torch.testing.assert_close(w, expected_w, **TOL)
    assert capture.probs[""].shape == (3 if batched else 1, 2, 4, 4)


# -- scaled_dot_product_attention: timm, Hugging Face sdpa ---------------------------------


def test_timm_fused_attention_equals_its_eager_path(timm_vit, images):
    model = timm_vit
    before = snapshot(model)
    with torch.no_grad():
        expected_output = model(images)
    probs = attentions(model, images)
    assert list(probs) == ["blocks.0.attn", "blocks.1.attn"]
    eager = copy.deepcopy(model)
    reference = {}
    for i, block in enumerate(eager.blocks):
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(
            lambda m, a, o, i=i: reference.__setitem__(f"blocks.{i}.attn", a[0])
        )
    with torch.no_grad():
        eager(images)
    captured_eager = attentions(eager, images)  # attn.softmax(dim=-1) on timm's eager path
    for name, p in probs.items():
        assert_probabilities(p, (2, 2, 17, 17))
        torch.testing.assert_close(p, reference[name], **TOL)
        torch.testing.assert_close(captured_eager[name], reference[name], **TOL)
    with torch.no_grad(), capture_attention(model) as capture:
        output = model(images)
    assert {call.kernel for call in capture.calls()} == {"scaled_dot_product_attention"}
    torch.testing.assert_close(output, expected_output, **TOL)
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_hf_vit_probabilities_and_gradients_equal_output_attentions(
    hf_vit_pair, images, implementation
):
    eager, sdpa = hf_vit_pair
    model = eager if implementation == "eager" else sdpa
    reference = eager(images, output_attentions=True)
    for t in reference.attentions:
        t.retain_grad()
    reference.logits[:, 1].sum().backward()
    eager.zero_grad(set_to_none=True)
    before = snapshot(model)
    probs = attentions(model, images)
    assert list(probs) == ["vit.layers.0.attention", "vit.layers.1.attention"]
    for p, expected in zip(probs.values(), reference.attentions):
        assert_probabilities(p, (2, 2, 17, 17))
        torch.testing.assert_close(p, expected.detach(), **TOL)
    with capture_attention(model, grad=True) as capture:
        logits = model(images).logits
        logits[:, 1].sum().backward()
    torch.testing.assert_close(logits, reference.logits, **TOL)
    kernel = "softmax" if implementation == "eager" else "scaled_dot_product_attention"
    assert {call.kernel for call in capture.calls()} == {kernel}
    for g, expected in zip(capture.gradients.values(), reference.attentions):
        torch.testing.assert_close(g, expected.grad, **TOL)
    model.zero_grad(set_to_none=True)
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_hf_bert_padding_mask(hf_bert, tokens, implementation):
    eager, sdpa = hf_bert
    model = eager if implementation == "eager" else sdpa
    ids, mask = tokens
    reference = eager(ids, attention_mask=mask, output_attentions=True)
    before = snapshot(model)
    probs = attentions(model, ids, forward_kwargs={"attention_mask": mask})
    assert list(probs) == [f"bert.encoder.layer.{i}.attention.self" for i in (0, 1)]
    for p, expected in zip(probs.values(), reference.attentions):
        assert_probabilities(p, (2, 2, 7, 7))
        torch.testing.assert_close(p, expected, **TOL)
        assert torch.equal(p[1, :, :, 4:], torch.zeros(2, 7, 3))  # padded keys get nothing
    with torch.no_grad(), capture_attention(model):
        logits = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, reference.logits, **TOL)
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_hf_gpt2_causal(hf_gpt2, tokens, implementation):
    eager, sdpa = hf_gpt2
    model = eager if implementation == "eager" else sdpa
    ids, _ = tokens
    reference = eager(ids, output_attentions=True)
    for t in reference.attentions:
        t.retain_grad()
    reference.logits[:, -1, 3].sum().backward()
    eager.zero_grad(set_to_none=True)
    before = snapshot(model)
    probs = attentions(model, ids)
    assert list(probs) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    for p, expected in zip(probs.values(), reference.attentions):
        assert_probabilities(p, (2, 2, 7, 7))
        assert torch.equal(p.triu(1), torch.zeros_like(p))  # no token sees the future
        torch.testing.assert_close(p, expected.detach(), **TOL)
    with capture_attention(model, grad=True) as capture:
        logits = model(ids).logits
        logits[:, -1, 3].sum().backward()
    torch.testing.assert_close(logits, reference.logits, **TOL)
    for g, expected in zip(capture.gradients.values(), reference.attentions):
        torch.testing.assert_close(g, expected.grad, **TOL)
    model.zero_grad(set_to_none=True)
    assert_unchanged(before, snapshot(model))


def test_frozen_model_gradients_start_the_tape_at_the_first_attention(hf_vit_pair, images):
    eager, sdpa = hf_vit_pair
    reference = eager(images, output_attentions=True)
    for t in reference.attentions:
        t.retain_grad()
    reference.logits[:, 0].sum().backward()
    eager.zero_grad(set_to_none=True)
    frozen = copy.deepcopy(sdpa).requires_grad_(False)
    with capture_attention(frozen, grad=True) as capture:
        frozen(images).logits[:, 0].sum().backward()
    for g, expected in zip(capture.gradients.values(), reference.attentions):
        torch.testing.assert_close(g, expected.grad, **TOL)
    assert all(p.grad is None for p in frozen.parameters())


# -- selection, early stop, several calls ----------------------------------------------------


def test_layers_select_modules_and_the_forward_stops_after_them(timm_vit, images):
    ran = []
    handle = timm_vit.head.register_forward_hook(lambda *_: ran.append("head"))
    try:
        probs = attentions(timm_vit, images, layers="blocks.0.attn")
        assert list(probs) == ["blocks.0.attn"] and ran == []
        attentions(timm_vit, images, layers="blocks.0.attn", stop_early=False)
        assert ran == ["head"]
    finally:
        handle.remove()


def test_a_block_named_in_layers_records_the_attention_computed_inside_it(timm_vit, images):
    probs = attentions(timm_vit, images, layers="blocks.*")
    assert list(probs) == ["blocks.0", "blocks.1"]
    torch.testing.assert_close(probs["blocks.1"], attentions(timm_vit, images)["blocks.1.attn"])


def test_every_call_of_a_shared_attention_module():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(3):
                x = x + self.attn(x, x, x, need_weights=False)[0]
            return x

    torch.manual_seed(0)
    model = Shared().eval()
    calls = attentions(model, torch.randn(1, 4, 8), every_call=True)
    assert list(calls) == ["attn"] and len(calls["attn"]) == 3
    assert not torch.allclose(calls["attn"][0], calls["attn"][2])


def test_early_stop_is_not_caught_by_except_exception_in_the_model():
    class Guarded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.MultiheadAttention(8, 2, batch_first=True)
            self.second = nn.MultiheadAttention(8, 2, batch_first=True)
            self.ran_second = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                x = self.first(x, x, x)[0]
            except Exception:  # a model that swallows errors must not swallow the stop
                pass
            self.ran_second = True
            return self.second(x, x, x)[0]

    model = Guarded().eval()
    probs = attentions(model, torch.randn(1, 3, 8), layers="first")
    assert list(probs) == ["first"] and not model.ran_second


def test_a_backward_after_the_block_stores_nothing(timm_vit, images):
    with capture_attention(timm_vit, grad=True) as capture:
        logits = timm_vit(images)
    logits[:, 0].sum().backward()
    assert dict(capture.gradients) == {}
    timm_vit.zero_grad(set_to_none=True)


def test_attention_modules_lists_what_counts_as_attention(hf_bert):
    names = list(attention_modules(hf_bert[1]))
    assert names == [
        "bert.encoder.layer.0.attention",
        "bert.encoder.layer.0.attention.self",
        "bert.encoder.layer.1.attention",
        "bert.encoder.layer.1.attention.self",
    ]


# -- bad input and uncapturable attention ----------------------------------------------------


class FlashOnlyAttention(nn.Module):
    """An attention module that calls a fused kernel through torch.ops directly."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        return out.transpose(1, 2).flatten(2)


class FlashNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = FlashOnlyAttention()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(x))


def test_attention_from_a_custom_kernel_raises_naming_the_module_and_kernel():
    model = FlashNet().eval()
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError) as error:
        attentions(model, torch.randn(2, 4, 8))
    message = str(error.value)
    assert "'attention'" in message and "FlashOnlyAttention" in message
    assert "_scaled_dot_product_flash_attention_for_cpu" in message
    assert "scaled_dot_product_attention" in message  # what was tried
    assert_unchanged(before, snapshot(model))


def test_a_selected_module_without_attention_raises(timm_vit, images):
    before = snapshot(timm_vit)
    with pytest.raises(AttentionCaptureError, match="'blocks.0.mlp'"):
        attentions(timm_vit, images, layers="blocks.0.mlp")
    assert_unchanged(before, snapshot(timm_vit))


def test_a_model_without_attention_raises(resnet18, image_batch):
    with pytest.raises(AttentionCaptureError, match="no attention module"):
        attentions(resnet18, image_batch)


def test_attention_outside_every_attention_module_raises():
    class Inline(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.Linear(4, 4)
            self.attn_like = nn.MultiheadAttention(4, 1)  # present, but not what runs

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.mix(x)
            return F.scaled_dot_product_attention(h, h, h)

    with pytest.raises(AttentionCaptureError, match="outside every module"):
        attentions(Inline(), torch.randn(1, 3, 4))
    # naming the module that computes it captures it
    probs = attentions(Inline(), torch.randn(1, 3, 4), layers="")
    assert probs[""].shape == (1, 1, 3, 3)


def test_unknown_layer_names_get_suggestions(timm_vit, images):
    with pytest.raises(LayerNotFoundError, match="did you mean"):
        attentions(timm_vit, images, layers="blocks.0.atn")


def test_reduce_shrinks_what_is_stored_not_the_gradients(timm_vit, images):
    full = attentions(timm_vit, images)
    with capture_attention(timm_vit, grad=True, reduce=lambda p: p[:, :, 0]) as capture:
        timm_vit(images)[:, 0].sum().backward()
    timm_vit.zero_grad(set_to_none=True)
    for name, p in full.items():
        torch.testing.assert_close(capture.probs[name], p[:, :, 0], **TOL)  # the class row
        assert capture.gradients[name].shape == p.shape


def test_a_capture_cannot_be_entered_twice(timm_vit):
    capture = capture_attention(timm_vit)
    with capture, pytest.raises(RecorderStateError, match="entered twice"):
        capture.__enter__()


def test_gradients_before_a_backward_raise(timm_vit, images):
    with capture_attention(timm_vit, grad=True) as capture:
        timm_vit(images)
    assert isinstance(capture, AttentionCapture)
    with pytest.raises(GradientNotAvailableError, match="grad=True"):
        capture.gradients["blocks.0.attn"]


def test_scaled_dot_product_scale_is_respected():
    # a model passing scale= explicitly (as Hugging Face does)
    class ScaledAttention(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, q, q, scale=1 / math.sqrt(2))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = ScaledAttention()

        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return self.attention(q)

    q = torch.randn(1, 1, 3, 4)
    probs = attentions(Model(), q)["attention"]
    torch.testing.assert_close(probs[0, 0], torch.softmax(q[0, 0] @ q[0, 0].T / math.sqrt(2), -1))


def test_buffers_updated_by_a_train_mode_forward_in_the_block_are_restored():
    from .contract_support import ContractViT

    torch.manual_seed(0)
    model = ContractViT().train()  # BatchNorm in the head: train-mode forwards update it
    x = torch.randn(2, 3, 8, 8)
    before = [b.clone() for b in model.buffers()]
    with capture_attention(model):
        model(x)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    with capture_attention(model, restore_buffers=False):  # the forward's own update stays
        model(x)
    assert int(model.head[0].num_batches_tracked) == 1
