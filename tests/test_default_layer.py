"""The default CAM layer (``layer=None``): the last spatial output of a CNN, and for a
transformer the first LayerNorm of its last block (the input of the last attention).

The rule is checked on the four vision transformers people use (torchvision, timm,
Hugging Face ViT and Swin, all tiny and random) and on hand-made blocks that isolate
each part of it: post-norm blocks, norms inside the attention, convolutions after the
transformer blocks.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradlens
import gradlens.cam as C
from gradlens import LayerNotFoundError

from . import zoo
from .contract_support import assert_unchanged, snapshot
from .models import SharedNet

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

IMAGE = (32, 32)


def images(batch: int = 2, size: tuple[int, int] = IMAGE) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))


# model -> the first LayerNorm of its last block (HF models need no output=: their
# ImageClassifierOutput is scored on its logits)
VISION_TRANSFORMERS = {
    "torchvision ViT": (
        lambda: zoo.torchvision_vit(num_classes=3, head_seed=1),
        "encoder.layers.encoder_layer_1.ln_1",
    ),
    "timm ViT": (lambda: zoo.timm_vit(mlp_ratio=2.0), "blocks.1.norm1"),
    "HF ViT": (zoo.hf_vit, "vit.layers.1.layernorm_before"),
    "HF Swin": (zoo.hf_swin, "swin.encoder.layers.1.blocks.0.layernorm_before"),
}


@pytest.fixture(scope="module", params=sorted(VISION_TRANSFORMERS))
def vision_transformer(request) -> tuple[nn.Module, str]:
    build, layer = VISION_TRANSFORMERS[request.param]
    return build(), layer


def test_the_default_layer_of_a_vision_transformer_is_the_first_norm_of_its_last_block(
    vision_transformer,
):
    model, layer = vision_transformer
    assert gradlens.default_layer(model, images()) == layer


def test_layers_marks_the_same_default(vision_transformer):
    model, layer = vision_transformer
    table = gradlens.layers(model, images(2))
    assert [info.name for info in table if info.default] == [layer]


def test_gradcam_without_a_layer_maps_the_image_from_that_norm(vision_transformer):
    model, layer = vision_transformer
    before = snapshot(model)
    maps = C.gradcam(model, images(), target=1)
    assert maps.shape == (2, *IMAGE)
    assert (maps.flatten(1).amax(1) == 1).all()  # normalised, and not a constant map
    torch.testing.assert_close(maps, C.gradcam(model, images(), layer, target=1))
    assert_unchanged(before, snapshot(model))


def test_a_mapping_input_gets_the_same_default_and_maps():
    model, x = zoo.hf_vit(), images()
    assert gradlens.default_layer(model, {"pixel_values": x}) == "vit.layers.1.layernorm_before"
    torch.testing.assert_close(
        C.gradcam(model, {"pixel_values": x}, target=1), C.gradcam(model, x, target=1)
    )


def test_swin_tokens_without_a_class_token_form_the_last_stage_grid():
    model, layer = zoo.hf_swin(), VISION_TRANSFORMERS["HF Swin"][1]
    x = images(2, (32, 64))  # a 4 x 8 grid of 32 tokens at the last stage

    def by_hand(tokens: torch.Tensor) -> torch.Tensor:
        assert tokens.shape[1:] == (32, 32)  # (B, H*W, C): no class token to drop
        return tokens.transpose(1, 2).reshape(tokens.shape[0], 32, 4, 8)

    raw = dict(target=2, upsample=False, normalize=False)
    auto = C.gradcam(model, x, None, **raw)
    assert auto.shape == (2, 4, 8) and (auto.flatten(1).amax(1) > 0).all()
    torch.testing.assert_close(auto, C.gradcam(model, x, layer, reshape=by_hand, **raw))
    assert C.gradcam(model, x).shape == (2, 32, 64)


# -- the parts of the rule, on hand-made blocks ----------------------------------------------


class Attention(nn.Module):
    """Single-head self-attention; optional LayerNorms on the queries and keys ``(B, N, C)``."""

    def __init__(self, width: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = nn.LayerNorm(width) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(width) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        weights = (q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])).softmax(dim=-1)
        return self.proj(weights @ v)


class Block(nn.Module):
    def __init__(self, width: int, pre_norm: bool, qk_norm: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, qk_norm)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class LinearPatches(nn.Module):
    """8 x 8 patches cut with tensor operations and embedded by a Linear: no 4-D output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 8 * 8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.unfold(x, kernel_size=8, stride=8)  # (B, 3 * 64, 16)
        return self.embed(patches.transpose(1, 2)).transpose(1, 2)  # (B, C, N), 3-D


class TinyTransformer(nn.Module):
    """8 x 8 patches of a 32 x 32 image as 16 tokens, two blocks, a final norm, a head;
    ``conv_after`` adds a convolution over the 4 x 4 token grid after the blocks."""

    def __init__(
        self,
        pre_norm: bool = True,
        qk_norm: bool = False,
        conv_after: bool = False,
        linear_patches: bool = False,
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = LinearPatches() if linear_patches else nn.Conv2d(3, 16, 8, stride=8)
        self.blocks = nn.Sequential(*(Block(16, pre_norm, qk_norm) for _ in range(2)))
        self.norm = nn.LayerNorm(16)
        self.conv_after = nn.Conv2d(16, 16, 3, padding=1) if conv_after else None
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.blocks(self.patch(x).flatten(2).transpose(1, 2)))
        if self.conv_after is not None:
            grid = tokens.transpose(1, 2).reshape(x.shape[0], 16, 4, 4)
            tokens = self.conv_after(grid).flatten(2).transpose(1, 2)
        return self.head(tokens.mean(dim=1))


def test_pre_norm_blocks_give_the_norm_before_the_last_attention():
    assert gradlens.default_layer(TinyTransformer(), images()) == "blocks.1.norm1"


def test_norms_inside_the_attention_do_not_replace_the_norm_before_it():
    # q_norm and k_norm are token LayerNorms too, but norm1 runs first in the block
    model = TinyTransformer(qk_norm=True)
    assert gradlens.default_layer(model, images()) == "blocks.1.norm1"


def test_post_norm_blocks_have_no_norm_before_attention_so_the_spatial_rule_applies():
    assert gradlens.default_layer(TinyTransformer(pre_norm=False), images()) == "patch"


def test_a_convolution_after_the_blocks_wins_over_the_blocks():
    model = TinyTransformer(conv_after=True)
    assert gradlens.default_layer(model, images()) == "conv_after"


def test_an_image_input_is_enough_without_a_patch_convolution():
    model = TinyTransformer(linear_patches=True)
    assert gradlens.default_layer(model, images()) == "blocks.1.norm1"


def test_text_transformers_get_no_default_layer():
    # GPT-2's ln_1 comes before its attention, but its tokens are text, not an image grid
    gpt2 = zoo.hf_gpt2()
    with pytest.raises(LayerNotFoundError, match="pass layer="):
        gradlens.default_layer(gpt2, torch.randint(0, 64, (2, 16)))


def test_the_cnn_rule_is_unchanged(resnet18):
    assert gradlens.default_layer(resnet18, torch.randn(1, 3, 64, 64)) == "layer4"


def test_a_model_without_spatial_or_token_layers_still_raises():
    with pytest.raises(LayerNotFoundError, match="pass layer="):
        gradlens.default_layer(SharedNet(), torch.randn(2, 4))


class ImageAndExtraChannel(nn.Module):
    """A CNN with a second, keyword input concatenated to the image's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(torch.cat([x, extra], dim=1)).mean(dim=(2, 3)))


def test_the_probe_takes_the_first_sample_of_keyword_inputs_too():
    extra = torch.randn(2, 1, 32, 32)
    model = ImageAndExtraChannel()
    assert gradlens.default_layer(model, images(), forward_kwargs={"extra": extra}) == "conv"


def test_a_later_output_in_the_freed_memory_of_an_earlier_one_is_not_the_same_tensor():
    # The probe identifies "the same tensor" (layer4, layer4.1, layer4.1.relu) by shape,
    # storage address, strides and version. The patch convolution's (B, 16, 4, 4) output is
    # freed during the forward, and conv_after's output of the same shape may be allocated
    # at its address; before only nested modules could share a tensor, this picked "patch"
    # in 6 of 200 tries of this loop.
    for tries in range(200):
        held = [torch.empty(1, 16, 4, 4) for _ in range(tries % 7)]  # vary the allocator
        model = TinyTransformer(conv_after=True)
        assert gradlens.default_layer(model, images()) == "conv_after", f"try {tries}"
        del held
