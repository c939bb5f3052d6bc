"""Transformers: CAMs on ViT and Swin token layouts, and token attributions for a text model.

Uses small random-init torchvision ``VisionTransformer`` and ``SwinTransformer`` models and
a tiny text classifier (embedding, one transformer encoder layer, mean pooling, linear)
whose forward takes token ids and an attention mask and returns a dict. Writes
``transformers.png`` (Grad-CAM maps of the ViT and the Swin model), ``transformers_tokens.png``
(the per-token attributions drawn with ``gradlens.viz.text``) and ``transformers.txt``
(layouts, shapes and per-token attributions).

Run: ``python examples/transformer_layouts.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from _common import parse_args, save_figure
from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer

import gradlens
import gradlens.viz
from gradlens.attribution import layer_gradient_x_activation, layer_integrated_gradients
from gradlens.cam import gradcam, scorecam
from gradlens.demos.shapes import make_shapes


def vision_transformer(x: Tensor) -> dict[str, Tensor]:
    torch.manual_seed(0)
    # --8<-- [start:vit]
    vit = torchvision.models.VisionTransformer(
        image_size=64,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    ).eval()
    torch.nn.init.normal_(
        vit.heads.head.weight, std=0.5
    )  # torchvision initialises the head to zeros
    # the last encoder block's first LayerNorm returns (B, 1 + 8 * 8, 32) tokens: a class
    # token and an 8 x 8 grid, read as (B, 32, 8, 8) automatically
    maps = gradcam(vit, x, "encoder.layers.encoder_layer_1.ln_1")  # (B, 64, 64)
    # it is also the default layer: gradcam(vit, x) gives the same maps
    assert gradlens.default_layer(vit, x) == "encoder.layers.encoder_layer_1.ln_1"

    # --8<-- [end:vit]
    # --8<-- [start:reshape]
    def patch_tokens(tokens: Tensor) -> Tensor:  # (B, 1 + h*w, C) -> (B, C, h, w)
        grid = tokens[:, 1:]  # drop the class token (or several)
        return grid.transpose(1, 2).reshape(len(tokens), -1, 8, 8)

    explicit = gradcam(vit, x, "encoder.layers.encoder_layer_1.ln_1", reshape=patch_tokens)
    # --8<-- [end:reshape]
    assert torch.allclose(maps, explicit, atol=1e-6)
    return {
        "ViT Grad-CAM": maps,
        "ViT Score-CAM": scorecam(vit, x, "encoder.layers.encoder_layer_1.ln_1"),
    }


def swin_transformer(x: Tensor) -> dict[str, Tensor]:
    torch.manual_seed(0)
    # --8<-- [start:swin]
    swin = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=10,
    ).eval()
    # Swin's stages return channels-last (B, H, W, C) maps: recognised automatically
    maps = gradcam(swin, x, "features.3")  # (B, 8, 8, 32) read as NHWC
    same = gradcam(swin, x, "features.3", reshape="nhwc")  # or say so explicitly
    # --8<-- [end:swin]
    assert torch.allclose(maps, same)
    return {"Swin Grad-CAM": maps}


# --8<-- [start:text-model]
class TextClassifier(nn.Module):
    """Token ids (B, T) and an attention mask (B, T) -> {"logits": (B, classes)}."""

    def __init__(self, vocabulary: int = 100, dim: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, dim, padding_idx=0)
        self.encoder = nn.TransformerEncoderLayer(
            dim, nhead=2, dim_feedforward=64, batch_first=True
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        hidden = self.encoder(self.embedding(ids), src_key_padding_mask=~attention_mask)
        weights = attention_mask[..., None].float()
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        return {"logits": self.head(pooled)}


# --8<-- [end:text-model]


def text_model() -> dict[str, object]:
    torch.manual_seed(0)
    model = TextClassifier().eval()
    ids = torch.tensor([[5, 17, 42, 8, 0, 0], [23, 4, 99, 61, 12, 7]])
    # --8<-- [start:text]
    mask = ids != 0  # padding is token id 0
    attributions, delta = layer_integrated_gradients(
        model,
        ids,
        "embedding",
        target=1,
        baselines=torch.zeros_like(ids),  # all-padding input (the default)
        forward_kwargs={"attention_mask": mask},
        steps=200,
        return_delta=True,
    )  # (B, T, 32), like the embedding's output
    per_token = attributions.sum(-1)  # (B, T): one number per token

    quick = layer_gradient_x_activation(  # one forward and backward
        model, ids, "embedding", target=1, forward_kwargs={"attention_mask": mask}
    ).sum(-1)
    # --8<-- [end:text]
    # --8<-- [start:text-picture]
    words = [
        ["the", "cat", "sat", "<down>", "[PAD]", "[PAD]"],
        ["a", "$5", "dog", "ran", "far", "away"],
    ]
    picture = gradlens.viz.text(
        words, per_token, mask, titles=["sample 0", "sample 1"], line_width=40
    )
    page = gradlens.viz.text_html(words, per_token, mask)  # the same as HTML, for notebooks
    # --8<-- [end:text-picture]
    assert "&lt;down&gt;" in page and "[PAD]" not in page
    deltas = {}
    for steps in (16, 50, 200):
        _, d = layer_integrated_gradients(
            model,
            ids,
            "embedding",
            target=1,
            forward_kwargs={"attention_mask": mask},
            steps=steps,
            return_delta=True,
        )
        deltas[steps] = [f"{float(v):+.1e}" for v in d]
    with torch.inference_mode():
        gap = model(ids, mask)["logits"][:, 1] - model(torch.zeros_like(ids), mask)["logits"][:, 1]
    assert torch.allclose(delta, torch.tensor([float(v) for v in deltas[200]]), atol=1e-3)
    return {
        "picture": picture,
        "f(x) - f(baseline)": [f"{float(v):.3f}" for v in gap],
        "completeness delta by steps": deltas,
        "per-token IG, sample 0": [round(float(v), 3) for v in per_token[0]],
        "per-token gradient x activation, sample 0": [round(float(v), 3) for v in quick[0]],
    }


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    x = make_shapes(2, seed=1).images  # (2, 3, 64, 64) synthetic images
    maps = {**vision_transformer(x), **swin_transformer(x)}
    save_figure(gradlens.viz.show(x, maps, panel_size=1.4), args.out / "transformers.png")
    torch.manual_seed(0)
    lines = [f"{name}: {tuple(m.shape)}" for name, m in maps.items()]
    text_results = text_model()
    tokens_png = save_figure(
        text_results.pop("picture"), args.out / "transformers_tokens.png", dpi=110
    )
    lines += [f"{key}: {value}" for key, value in text_results.items()]
    report = args.out / "transformers.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [args.out / "transformers.png", tokens_png, report]


if __name__ == "__main__":
    main()
