"""AttnLRP (``gradlens.attnlrp``): against an explicit per-operation relevance propagation,
conservation, every attention kernel, the Hugging Face / timm / torchvision families, token
and generation attributions, and clear errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gradlens
from gradlens.errors import RelevanceError
from tests import zoo

# -- the explicit reference: each operation's relevance rule written out ----------------------


def _linear(x: Tensor, layer: nn.Linear, relevance: Tensor) -> Tensor:
    """ε-rule with ε = 0: ``R_x_i = x_i Σ_j W_ji R_j / z_j`` (z with the bias)."""
    z = F.linear(x, layer.weight, layer.bias)
    return x * ((relevance / z) @ layer.weight)


def _sum(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """ε-rule of a sum ``c = a + b``: each summand in proportion."""
    c = a + b
    return a / c * relevance, b / c * relevance


def _layer_norm(x: Tensor, norm: nn.LayerNorm, relevance: Tensor) -> Tensor:
    """Identity rule on the normalisation: ``y = (x - mean) / σ ⊙ w + b`` with σ constant.
    The affine map by the ε-rule, the division by σ passes relevance unchanged, the mean
    subtraction ``c_i = Σ_j (δ_ij - 1/D) x_j`` by the ε-rule."""
    centred = x - x.mean(-1, keepdim=True)
    normalised = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps)
    scaled = normalised * norm.weight
    y = scaled if norm.bias is None else scaled + norm.bias
    r_normalised = scaled / y * relevance
    ratio = r_normalised / centred
    return x * (ratio - ratio.mean(-1, keepdim=True))


def _heads(x: Tensor, heads: int) -> Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def _attention(block: zoo.PlainBlock, x: Tensor, relevance: Tensor) -> Tensor:
    """Relevance of the attention's input ``x`` (after the first norm) from that of its
    output (before the residual)."""
    heads = block.heads
    q, k, v = (_heads(layer(x), heads) for layer in (block.query, block.key, block.value))
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    probs = scores.softmax(-1)
    out = torch.einsum("bhij,bhjd->bhid", probs, v)
    merged = out.transpose(1, 2).reshape(x.shape)
    r_out = _heads(_linear(merged, block.proj, relevance), heads)
    # out_id = Σ_j p_ij v_jd: uniform rule, each product p_ij v_jd gets its share of R_out_id
    share = torch.einsum("bhij,bhjd->bhijd", probs, v) / out[:, :, :, None] * r_out[:, :, :, None]
    r_probs = 0.5 * share.sum(-1)
    r_v = 0.5 * share.sum(2)
    # softmax: first-order Taylor at its input, R_s_i = s_i (R_p_i - p_i Σ_j R_p_j)
    r_scores = scores * (r_probs - probs * r_probs.sum(-1, keepdim=True))
    # scores_ij = scale Σ_d q_id k_jd: uniform rule on each product
    terms = torch.einsum("bhid,bhjd->bhijd", q, k) * scale
    share = terms / scores[..., None] * r_scores[..., None]
    r_q, r_k = 0.5 * share.sum(3), 0.5 * share.sum(2)

    def merge(r: Tensor) -> Tensor:
        return r.transpose(1, 2).reshape(x.shape)

    return (
        _linear(x, block.query, merge(r_q))
        + _linear(x, block.key, merge(r_k))
        + _linear(x, block.value, merge(r_v))
    )


def _mlp(block: zoo.PlainBlock, x: Tensor, relevance: Tensor) -> Tensor:
    hidden = block.fc1(x)
    if block.gate is None:
        activated = F.gelu(hidden)
        r_activated = _linear(activated, block.fc2, relevance)
        return _linear(x, block.fc1, r_activated)  # GELU: identity rule
    gate = F.silu(block.gate(x))
    r_product = _linear(gate * hidden, block.fc2, relevance)
    # uniform rule on the gate product, identity rule on the SiLU
    return _linear(x, block.gate, 0.5 * r_product) + _linear(x, block.fc1, 0.5 * r_product)


def reference_relevance(model: zoo.PlainTransformer, x: Tensor, target: int) -> Tensor:
    """AttnLRP relevance of the input embeddings, one operation at a time, forward values
    recomputed explicitly and no autograd."""
    with torch.no_grad():
        states = [x + model.position]
        block_inputs = []
        for block in model.blocks:
            h = states[-1]
            after_attention = h
            if block.kernel != "none":
                after_attention = h + block.attention(block.norm1(h))
            block_inputs.append((h, after_attention))
            states.append(after_attention + block.mlp(block.norm2(after_attention)))
        last = states[-1]
        normed = model.norm(last)[:, 0]
        logits = model.head(normed)
        r_logits = torch.zeros_like(logits)
        r_logits[:, target] = logits[:, target]  # the explained logit starts the pass
        r_last = torch.zeros_like(last)
        r_last[:, 0] = _layer_norm(last[:, 0], model.norm, _linear(normed, model.head, r_logits))
        relevance = r_last
        for block, (h, after_attention) in zip(reversed(model.blocks), reversed(block_inputs)):
            mlp_out = block.mlp(block.norm2(after_attention))
            r_skip, r_mlp = _sum(after_attention, mlp_out, relevance)
            normed2 = block.norm2(after_attention)
            relevance = r_skip + _layer_norm(
                after_attention, block.norm2, _mlp(block, normed2, r_mlp)
            )
            if block.kernel != "none":
                attention_out = block.attention(block.norm1(h))
                r_skip, r_attention = _sum(h, attention_out, relevance)
                normed1 = block.norm1(h)
                relevance = r_skip + _layer_norm(
                    h, block.norm1, _attention(block, normed1, r_attention)
                )
        r_x, _ = _sum(x, model.position.expand_as(x), relevance)
        return r_x


def _embeddings(seed: int = 3) -> Tensor:
    return torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("gated", [False, True])
def test_attnlrp_equals_the_explicit_per_operation_propagation(kernel: str, gated: bool) -> None:
    model = zoo.plain_transformer(kernel=kernel, gated=gated)
    x = _embeddings()
    expected = reference_relevance(model, x, target=1)
    relevance = gradlens.attnlrp(model, x, target=1)
    scale = expected.abs().max()
    assert (relevance - expected).abs().max() <= 1e-5 * scale


def test_attnlrp_differs_from_input_x_gradient_at_this_weight_scale() -> None:
    model = zoo.plain_transformer()
    x = _embeddings()
    relevance = gradlens.attnlrp(model, x, target=1)
    plain = gradlens.input_x_gradient(model, x, target=1)
    assert (relevance - plain).abs().max() > 0.1 * relevance.abs().max()


def _with_positions(model: zoo.PlainTransformer, x: Tensor, relevance: Tensor) -> Tensor:
    """Per sample, the input's relevance plus the share the position embeddings keep at
    the sum ``x + position`` (ε-rule: ``R_position = R_x ⊙ position / x``)."""
    return (relevance + relevance * model.position / x).sum((1, 2))


@pytest.mark.parametrize("gated", [False, True])
def test_relevance_is_conserved_without_biases_where_the_rules_conserve(gated: bool) -> None:
    # LayerNorm (identity rule), GELU/SiLU (identity), the gate product (uniform), residual
    # sums and bias-free linear layers all conserve: the relevance sums to the logit
    model = zoo.plain_transformer(kernel="none", bias=False, gated=gated)
    x = _embeddings()
    relevance = gradlens.attnlrp(model, x, target=2)
    logits = model(x)[:, 2].detach()
    torch.testing.assert_close(_with_positions(model, x, relevance), logits, rtol=1e-4, atol=0)


def test_the_softmax_taylor_rule_does_not_conserve() -> None:
    # with attention the softmax's Taylor rule keeps a bias share: the sum is not the logit
    model = zoo.plain_transformer(bias=False)
    x = _embeddings()
    relevance = gradlens.attnlrp(model, x, target=2)
    total = _with_positions(model, x, relevance)
    assert not torch.allclose(total, model(x)[:, 2].detach(), rtol=1e-3)


def test_eps_stabilises_the_linear_layers() -> None:
    model = zoo.plain_transformer()
    x = _embeddings()
    plain = gradlens.attnlrp(model, x, target=1)
    stabilised = gradlens.attnlrp(model, x, target=1, epsilon=1.0)
    assert not torch.allclose(plain, stabilised)
    torch.testing.assert_close(gradlens.attnlrp(model, x, target=1, epsilon=1e-12), plain)


def test_a_negative_eps_is_refused() -> None:
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        gradlens.attnlrp(zoo.plain_transformer(), _embeddings(), epsilon=-1.0)


def test_k_targets_give_one_relevance_per_target() -> None:
    model = zoo.plain_transformer()
    x = _embeddings()
    both = gradlens.attnlrp(model, x, target=[[0, 2], [0, 2]])
    assert both.shape == (2, 2, 5, 8)
    torch.testing.assert_close(both[:, 1], gradlens.attnlrp(model, x, target=2))


# -- the γ-rule options and layer relevance -----------------------------------------------------


@pytest.mark.parametrize(("conv_gamma", "linear_gamma"), [(0.25, None), (None, 0.1), (100.0, 0.05)])
def test_gamma_options_are_lrps_gamma_rule(conv_gamma: Any, linear_gamma: Any) -> None:
    # on a network of convolutions, linear layers, ReLU and pooling (where AttnLRP's other
    # rules are LRP-0, which is Input x Gradient), the γ options give exactly gradlens.lrp
    # with Gamma on those layers and LRP-0 (ε = 0) elsewhere, up to the 1e-10 that keeps
    # the Gradient x Input form's division by the layer input away from zero
    model = zoo.captum_cnn().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lrp0 = gradlens.lrp.Epsilon(0.0)
    composite = {
        nn.Conv2d: lrp0 if conv_gamma is None else gradlens.lrp.Gamma(conv_gamma),
        nn.Linear: lrp0 if linear_gamma is None else gradlens.lrp.Gamma(linear_gamma),
        nn.AdaptiveAvgPool2d: gradlens.lrp.Norm(0.0),
    }
    expected = gradlens.lrp(model, x, target=2, composite=composite)
    relevance = gradlens.attnlrp(
        model, x, target=2, conv_gamma=conv_gamma, linear_gamma=linear_gamma
    )
    torch.testing.assert_close(relevance, expected, rtol=0, atol=1e-6 * expected.abs().max())
    assert not torch.allclose(relevance, gradlens.attnlrp(model, x, target=2))


def test_linear_gamma_reaches_a_vits_linear_layers_and_conserves_without_biases() -> None:
    # the γ-rule conserves relevance, as the rules it replaces do: bias-free, no attention
    model = zoo.plain_transformer(kernel="none", bias=False)
    x = _embeddings()
    relevance = gradlens.attnlrp(model, x, target=2, linear_gamma=0.25)
    assert not torch.allclose(relevance, gradlens.attnlrp(model, x, target=2))
    logits = model(x)[:, 2].detach()
    torch.testing.assert_close(_with_positions(model, x, relevance), logits, rtol=1e-4, atol=0)


def test_the_gamma_options_take_k_targets_in_one_backward() -> None:
    model = zoo.timm_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    both = gradlens.attnlrp(model, x, target=[[0, 2], [0, 2]], conv_gamma=0.25, linear_gamma=0.05)
    one = gradlens.attnlrp(model, x, target=2, conv_gamma=0.25, linear_gamma=0.05)
    torch.testing.assert_close(both[:, 1], one, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("option", ["conv_gamma", "linear_gamma"])
def test_a_negative_gamma_is_refused(option: str) -> None:
    with pytest.raises(ValueError, match=f"{option} must be >= 0"):
        gradlens.attnlrp(zoo.plain_transformer(), _embeddings(), **{option: -0.1})


def test_layer_relevance_summed_over_the_width_is_the_token_relevance() -> None:
    # token_attributions(method="attnlrp") is the relevance of the word embeddings summed
    # over the width; layer= on the embedding layer gives it per feature, from token ids
    model = zoo.hf_bert(initializer_range=0.3)
    ids = zoo.token_ids(2, 6)
    per_feature = gradlens.attnlrp(
        model, ids, target=1, layer="bert.embeddings.word_embeddings", output="logits"
    )
    assert per_feature.shape == (2, 6, model.config.hidden_size)
    tokens = gradlens.token_attributions(model, ids, 1, method="attnlrp", output="logits")
    torch.testing.assert_close(per_feature.sum(-1), tokens, rtol=1e-5, atol=1e-6)


def test_layer_relevance_of_a_patch_embedding_sums_the_pixels_relevance() -> None:
    # the relevance reaching the patch embedding's output is what its rules pass on to the
    # pixels: bias-free it arrives there whole
    model = zoo.timm_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = gradlens.attnlrp(model, x, target=1, layer="patch_embed.proj")
    pixels = gradlens.attnlrp(model, x, target=1)
    bias = model.patch_embed.proj.bias
    assert tokens.shape[:2] == (2, bias.shape[0])
    # R_x = Σ over outputs of R_z (z - b) / z: the bias keeps its share
    z = model.patch_embed.proj(x).detach()
    torch.testing.assert_close(
        pixels.sum((1, 2, 3)),
        (tokens * (z - bias[:, None, None]) / z).sum((1, 2, 3)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_layer_relevance_takes_k_targets() -> None:
    model = zoo.plain_transformer()
    x = _embeddings()
    both = gradlens.attnlrp(model, x, target=[[0, 2], [0, 2]], layer="blocks.1")
    assert both.shape == (2, 2, 5, 8)
    torch.testing.assert_close(both[:, 1], gradlens.attnlrp(model, x, target=2, layer="blocks.1"))


# -- kernels ----------------------------------------------------------------------------------


def test_timm_fused_and_eager_attention_give_the_same_relevance() -> None:
    fused, eager = zoo.timm_vit(fused=True), zoo.timm_vit(fused=False)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    relevance = gradlens.attnlrp(fused, x, target=1)
    assert relevance.shape == x.shape
    torch.testing.assert_close(relevance, gradlens.attnlrp(eager, x, target=1), atol=1e-6, rtol=0)
    assert all(block.attn.fused_attn for block in fused.blocks)


class _MultiHead(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)
        self.need_weights = need_weights

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.attention(x, x, x, need_weights=self.need_weights)
        return self.head((x + out)[:, 0])


def test_multihead_attention_gets_the_rules_with_and_without_weights() -> None:
    # need_weights=False runs scaled_dot_product_attention, True runs bmm + softmax + bmm
    x = _embeddings().float()
    fused = gradlens.attnlrp(_MultiHead(need_weights=False), x, target=0)
    eager = gradlens.attnlrp(_MultiHead(need_weights=True), x, target=0)
    torch.testing.assert_close(fused, eager, atol=1e-6, rtol=0)
    assert (fused - gradlens.input_x_gradient(_MultiHead(False), x, target=0)).abs().max() > 1e-3


def test_torchvision_vit_gives_an_input_shaped_relevance() -> None:
    model = zoo.torchvision_vit(head_seed=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    relevance = gradlens.attnlrp(model, x, target=3)
    plain = gradlens.input_x_gradient(model, x, target=3)
    assert relevance.shape == x.shape and relevance.isfinite().all()
    assert not torch.allclose(relevance, plain)


def test_hf_vit_sdpa_and_eager_give_the_same_relevance() -> None:
    eager, sdpa = zoo.eager_and_sdpa(zoo.hf_vit)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    relevance = gradlens.attnlrp(sdpa, x, target=1, output="logits")
    torch.testing.assert_close(
        relevance, gradlens.attnlrp(eager, x, target=1, output="logits"), atol=1e-6, rtol=0
    )
    assert sdpa.config._attn_implementation == "sdpa"


class _FlashLikeAttention(nn.Module):
    """Attention computed inside an autograd function (as a flash-attention extension does),
    where no rule can reach its products."""

    class _Kernel(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return (q @ k.transpose(-2, -1)).softmax(-1) @ v

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> Any:
            return grad, grad, grad

    def forward(self, x: Tensor) -> Tensor:
        return self._Kernel.apply(x, x, x)


def test_an_attention_kernel_the_rules_cannot_see_is_an_error_naming_the_module() -> None:
    model = nn.Sequential(nn.Linear(8, 8), _FlashLikeAttention(), nn.Linear(8, 3))
    with pytest.raises(RelevanceError, match=r"'1' \(_FlashLikeAttention\)"):
        gradlens.attnlrp(model, _embeddings().float(), target=0)
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks


# -- language models ----------------------------------------------------------------------------

DECODERS = [zoo.hf_gpt2, zoo.hf_llama, zoo.hf_qwen2, zoo.hf_gemma]


@pytest.mark.parametrize("build", DECODERS, ids=lambda b: b.__name__)
def test_decoders_sdpa_and_eager_give_the_same_token_relevance(build: Any) -> None:
    eager, sdpa = zoo.eager_and_sdpa(build, initializer_range=0.3)
    ids = zoo.token_ids(2, 6)
    target = gradlens.targets.token(5)
    relevance = gradlens.token_attributions(sdpa, ids, target, method="attnlrp", output="logits")
    assert relevance.shape == (2, 6)
    torch.testing.assert_close(
        relevance,
        gradlens.token_attributions(eager, ids, target, method="attnlrp", output="logits"),
        atol=1e-5,
        rtol=1e-5,
    )
    plain = gradlens.token_attributions(
        sdpa, ids, target, method="input_x_gradient", output="logits"
    )
    assert (relevance - plain).abs().max() > 0.05 * relevance.abs().max()
    assert sdpa.config._attn_implementation == "sdpa"


def test_gemma_rmsnorm_offset_is_held_by_the_identity_rule() -> None:
    # Gemma's RMSNorm computes x * rsqrt(mean(x²) + eps) * (1 + w): the rsqrt is detached,
    # so the norm passes g * (1 + w) / rms back; checked on the norm alone
    model = zoo.hf_gemma(initializer_range=0.3)
    norm = model.model.norm
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    relevance = gradlens.attnlrp(norm, x, target=lambda out: out.sum((1, 2)))
    y = norm(x).detach()
    torch.testing.assert_close(relevance.sum(-1), y.sum(-1), rtol=1e-5, atol=1e-6)


def test_bert_token_relevance_is_zero_on_padding() -> None:
    model = zoo.hf_bert(initializer_range=0.3)
    ids = zoo.token_ids(2, 6)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    relevance = gradlens.token_attributions(
        model, {"input_ids": ids, "attention_mask": mask}, 1, method="attnlrp", output="logits"
    )
    assert relevance.shape == (2, 6)
    assert (relevance[1, 4:] == 0).all() and (relevance[1, :4] != 0).all()


def test_generation_attributions_give_one_row_per_generated_token() -> None:
    model = zoo.hf_gpt2(initializer_range=0.3)
    prompt = zoo.token_ids(2, 4)
    continuation = zoo.token_ids(2, 3, seed=5)
    relevance = gradlens.generation_attributions(model, prompt, continuation, method="attnlrp")
    assert relevance.shape == (2, 3, 7)
    assert relevance.isfinite().all()


def test_the_model_is_untouched_and_stays_sdpa() -> None:
    model = zoo.hf_llama(attn_implementation="sdpa", initializer_range=0.3)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    gradlens.token_attributions(
        model, zoo.token_ids(1, 5), gradlens.targets.token(3), method="attnlrp", output="logits"
    )
    assert model.config._attn_implementation == "sdpa"
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
