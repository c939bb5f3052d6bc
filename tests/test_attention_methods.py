"""Attention rollout and gradient-weighted rollout as methods, on real (small, random-init)
transformers: exact against the formulas computed from Hugging Face's eager
``output_attentions=True`` maps (and ``retain_grad`` on them), and running unchanged on
torchvision's ViT, timm's fused-attention ViT, Hugging Face ViT with sdpa, BERT and GPT-2."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradlens
from gradlens.demos.training import TinyCNN
from gradlens.errors import AttentionCaptureError, AttentionRolloutError
from gradlens.registry import ATTENTION_METHODS, INFO, METHODS

from . import zoo
from .contract_support import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TOL = dict(atol=1e-5, rtol=0)
METHOD_NAMES = ["attention_rollout", "gradient_attention_rollout"]


# -- models ------------------------------------------------------------------------------


def hf_vit(implementation: str) -> nn.Module:
    """Three layers, so the rollout multiplies more than two maps."""
    return zoo.hf_vit(layers=3, num_labels=4, attn_implementation=implementation)


@pytest.fixture(scope="module")
def eager_vit() -> nn.Module:
    return hf_vit("eager")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def reference_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    """Hugging Face's own attention maps and their gradients (``retain_grad``, ``backward``
    of the target logits on a copy of the model, as published implementations do)."""
    model = copy.deepcopy(model)
    out = model(x, output_attentions=True)
    for a in out.attentions:
        a.retain_grad()
    out.logits.gather(1, target[:, None]).sum().backward()
    return [a.detach() for a in out.attentions], [a.grad for a in out.attentions]


def by_hand_rollout(maps, head_fusion: str, discard_ratio: float) -> torch.Tensor:
    """Abnar & Zuidema's rollout, written out: (B, N, N)."""
    batch, _, tokens, _ = maps[0].shape
    result = torch.eye(tokens).repeat(batch, 1, 1)
    for a in maps:
        fused = {"mean": a.mean(1), "max": a.max(1).values, "min": a.min(1).values}[head_fusion]
        fused = fused.clone()
        count = int(discard_ratio * tokens)
        for b in range(batch):
            for i in range(tokens):
                order = [j for j in fused[b, i].argsort().tolist() if (i, j) != (0, 0)]
                fused[b, i, order[:count]] = 0
        mixed = (fused + torch.eye(tokens)) / 2
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed @ result
    return result


def by_hand_gradient_rollout(maps, grads) -> torch.Tensor:
    """Chefer et al.'s self-attention rule, written out: (B, N, N)."""
    batch, _, tokens, _ = maps[0].shape
    result = torch.eye(tokens).repeat(batch, 1, 1)
    for a, g in zip(maps, grads):
        weighted = (g * a).clamp(min=0).mean(1)
        result = result + weighted @ result
    return result


def class_row_as_grid(matrix: torch.Tensor) -> torch.Tensor:
    """Row 0 (the class token) over the 16 patch tokens, as the 4 x 4 grid."""
    return matrix[:, 0, 1:].reshape(-1, 4, 4)


# -- equivalence with the formulas ---------------------------------------------------------


def test_both_methods_are_registered_as_attention_methods():
    assert set(ATTENTION_METHODS) == set(METHOD_NAMES)
    for name in METHOD_NAMES:
        assert METHODS[name] is getattr(gradlens, name)
        assert INFO[name].kind == "attention" and not INFO[name].needs_layer
    assert INFO["gradient_attention_rollout"].multi_target
    assert not INFO["attention_rollout"].multi_target


@pytest.mark.parametrize(
    ("head_fusion", "discard_ratio"), [("mean", 0.0), ("max", 0.5), ("min", 0.2)]
)
def test_attention_rollout_equals_the_formula_on_hugging_face_attention_maps(
    eager_vit, images, head_fusion, discard_ratio
):
    maps, _ = reference_maps(eager_vit, images, torch.zeros(2, dtype=torch.long))
    expected = class_row_as_grid(by_hand_rollout(maps, head_fusion, discard_ratio))
    ours = gradlens.attention_rollout(
        eager_vit,
        images,
        head_fusion=head_fusion,
        discard_ratio=discard_ratio,
        upsample=False,
        normalize=False,
    )
    torch.testing.assert_close(ours, expected, **TOL)


def test_gradient_rollout_equals_the_formula_on_hugging_face_maps_and_their_gradients(
    eager_vit, images
):
    target = torch.tensor([1, 3])
    maps, grads = reference_maps(eager_vit, images, target)
    expected = class_row_as_grid(by_hand_gradient_rollout(maps, grads))
    ours = gradlens.gradient_attention_rollout(
        eager_vit, images, target, upsample=False, normalize=False
    )
    torch.testing.assert_close(ours, expected, **TOL)


def test_sdpa_attention_gives_the_same_maps_as_eager_attention(eager_vit, images):
    sdpa = hf_vit("sdpa")
    sdpa.load_state_dict(eager_vit.state_dict())
    before = snapshot(sdpa)
    for name in METHOD_NAMES:
        expected = METHODS[name](eager_vit, images)
        torch.testing.assert_close(METHODS[name](sdpa, images), expected, **TOL)
    assert_unchanged(before, snapshot(sdpa))


def test_image_maps_are_upsampled_and_normalised_like_cams(eager_vit, images):
    raw = gradlens.gradient_attention_rollout(eager_vit, images, upsample=False, normalize=False)
    maps = gradlens.gradient_attention_rollout(eager_vit, images)
    expected = gradlens.cam.postprocess(raw, (32, 32), upsample=True, normalize=True)
    assert maps.shape == (2, 32, 32) and maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected, **TOL)
    assert maps.amin(dim=(1, 2)).eq(0).all() and maps.amax(dim=(1, 2)).eq(1).all()


def test_k_targets_per_sample_give_one_map_each_from_one_call(eager_vit, images):
    targets = torch.tensor([[0, 2, 3], [1, 1, 0]])
    together = gradlens.gradient_attention_rollout(eager_vit, images, targets)
    assert together.shape == (2, 3, 32, 32)
    for k in range(3):
        one = gradlens.gradient_attention_rollout(eager_vit, images, targets[:, k])
        torch.testing.assert_close(together[:, k], one, **TOL)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen", "train"])
def test_gradient_rollout_works_in_any_grad_mode_and_leaves_the_model_as_it_was(
    eager_vit, images, mode
):
    model = copy.deepcopy(eager_vit)
    expected = gradlens.gradient_attention_rollout(model, images, 1)
    if mode == "frozen":
        model.requires_grad_(False)
    if mode == "train":
        model.train()  # ViTConfig's dropout probabilities default to 0: the same maps
    before = snapshot(model)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(
        mode, torch.enable_grad
    )
    with context():
        maps = gradlens.gradient_attention_rollout(model, images, 1)
    assert_unchanged(before, snapshot(model))
    torch.testing.assert_close(maps, expected, **TOL)


# -- other architectures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_vit() -> nn.Module:
    return zoo.torchvision_vit(num_classes=1000, head_seed=1)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_torchvision_vit_runs_unchanged(torchvision_vit, images, name):
    before = snapshot(torchvision_vit)
    maps = METHODS[name](torchvision_vit, images)
    assert_unchanged(before, snapshot(torchvision_vit))
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
    assert maps.amax(dim=(1, 2)).eq(1).all()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_timm_vit_with_fused_attention_gives_the_maps_of_its_eager_attention(images, name):
    fused, eager = zoo.timm_vit(fused=True), zoo.timm_vit(fused=False)
    before = snapshot(fused)
    maps = METHODS[name](fused, images, upsample=False, normalize=False)
    assert_unchanged(before, snapshot(fused))
    torch.testing.assert_close(maps, METHODS[name](eager, images, upsample=False, normalize=False))
    assert maps.shape == (2, 4, 4)


def bert() -> nn.Module:
    return zoo.hf_bert(vocab_size=50, max_positions=16, attn_implementation="sdpa")


def gpt2() -> nn.Module:
    return zoo.hf_gpt2(vocab_size=50, positions=16, attn_implementation="sdpa")


TEXT = torch.tensor([[5, 7, 9, 11, 2, 0], [4, 8, 3, 0, 0, 0]])
MASK = (TEXT != 0).long()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_text_encoders_explain_the_first_tokens_row_over_all_tokens(name):
    model = bert()
    before = snapshot(model)
    kwargs = dict(forward_kwargs={"attention_mask": MASK})
    maps = METHODS[name](model, TEXT, **kwargs)
    assert_unchanged(before, snapshot(model))
    assert maps.shape == (2, 6) and maps.amax(1).eq(1).all() and maps.amin(1).eq(0).all()
    torch.testing.assert_close(maps, METHODS[name](model, TEXT, row=0, **kwargs))
    assert not torch.allclose(maps, METHODS[name](model, TEXT, row=-1, **kwargs))


def next_token_3(output) -> torch.Tensor:
    return output.logits[:, -1, 3]  # the score of token 3 as the next token


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_causal_models_explain_the_last_tokens_row(name):
    model = gpt2()
    ids = torch.tensor([[5, 7, 9, 11, 2, 1]])
    before = snapshot(model)
    kwargs = dict(target=next_token_3)
    maps = METHODS[name](model, ids, **kwargs)
    assert_unchanged(before, snapshot(model))
    assert maps.shape == (1, 6)
    torch.testing.assert_close(maps, METHODS[name](model, ids, row=5, **kwargs))
    # the first token's row sees only the first token
    first = METHODS[name](model, ids, row=0, normalize=False, **kwargs)
    assert (first[0, 1:] == 0).all() and first[0, 0] > 0


# -- what cannot be explained, and bad input -------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_swin_windowed_attention_is_refused_with_a_clear_error(name):
    swin = zoo.torchvision_swin()
    before = snapshot(swin)
    with pytest.raises(AttentionRolloutError, match="windowed attention"):
        METHODS[name](swin, torch.rand(1, 3, 32, 32))
    assert_unchanged(before, snapshot(swin))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_model_without_attention_gets_a_clear_error(name):
    model = TinyCNN().eval()
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError, match="no attention module"):
        METHODS[name](model, torch.rand(1, 3, 64, 64))
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("ratio", [-0.5, 1.0])
def test_a_discard_ratio_outside_zero_to_one_is_refused(eager_vit, images, ratio):
    before = snapshot(eager_vit)
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        gradlens.attention_rollout(eager_vit, images, discard_ratio=ratio)
    assert_unchanged(before, snapshot(eager_vit))


def test_an_unknown_head_fusion_is_refused(eager_vit, images):
    before = snapshot(eager_vit)
    with pytest.raises(ValueError, match="head_fusion must be one of 'mean', 'max', 'min'"):
        gradlens.attention_rollout(eager_vit, images, head_fusion="sum")
    assert_unchanged(before, snapshot(eager_vit))


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("row", [6, -7])
def test_a_text_row_that_does_not_exist_is_refused(name, row):
    model = bert()
    before = snapshot(model)
    with pytest.raises(AttentionRolloutError, match=f"row {row} does not exist: .* 6 tokens"):
        METHODS[name](model, TEXT, row=row, forward_kwargs={"attention_mask": MASK})
    assert_unchanged(before, snapshot(model))
