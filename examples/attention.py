"""Attention rollout and gradient-weighted attention rollout, beside Grad-CAM, on a tiny ViT.

Trains a :class:`gradlens.demos.tiny_vit.TinyViT` on the synthetic shapes
(:func:`gradlens.demos.tiny_vit.train_vit_model`; ``--quick`` trains a barely trained one on a few
images), explains held-out images with both attention methods and with Grad-CAM, and scores
them with the pointing game against the objects' masks. Also explains a small random-init
text classifier (one number per token) and shows what happens on Swin's windowed
attention. Writes ``attention.png`` (maps) and ``attention.txt`` (the figures quoted in
``docs/attention.md``).

Run: ``python examples/attention.py [--quick] [--out DIR]``
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from _common import parse_args, save_figure
from torch import Tensor, nn

import gradlens
import gradlens.viz
from gradlens import metrics
from gradlens.demos.shapes import make_shapes
from gradlens.demos.tiny_vit import train_vit_model
from gradlens.demos.training import Recipe
from gradlens.errors import AttentionRolloutError

QUICK_RECIPE = Recipe(n_train=128, n_test=32, epochs=1, batch_size=32, lr=1e-3)


def image_maps(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    # --8<-- [start:rollout]
    rollout = gradlens.attention_rollout(model, x)  # (B, 64, 64)
    # the class token's row of R = Â_4 · Â_3 · Â_2 · Â_1 over the 8 x 8 patches, upsampled

    sharper = gradlens.attention_rollout(model, x, head_fusion="max", discard_ratio=0.9)
    # --8<-- [end:rollout]
    # --8<-- [start:gradient]
    weighted = gradlens.gradient_attention_rollout(model, x)  # (B, 64, 64), top class

    per_class = gradlens.gradient_attention_rollout(model, x, target=[[0, 4, 8]] * len(x))
    # (B, 3, 64, 64): red circle, green square, blue triangle, from one backward
    # --8<-- [end:gradient]
    # --8<-- [start:gradcam]
    cam = gradlens.gradcam(model, x, model.cam_layer_name)  # "blocks.3.norm1"
    # --8<-- [end:gradcam]
    assert per_class.shape == (len(x), 3, *x.shape[-2:])
    return {
        "attention rollout": rollout,
        "rollout (max, discard 0.9)": sharper,
        "gradient rollout": weighted,
        "Grad-CAM": cam,
    }


def pointing(model: nn.Module, images: Tensor, masks: Tensor) -> dict[str, float]:
    scores = {}
    for start in range(0, len(images), 100):
        x, truth = images[start : start + 100], masks[start : start + 100]
        for name, maps in image_maps(model, x).items():
            # --8<-- [start:pointing]
            hits = metrics.pointing_game(maps, masks=truth, tolerance=4)  # (B,) bool
            # --8<-- [end:pointing]
            scores.setdefault(name, []).append(hits)
    return {name: torch.cat(hits).float().mean().item() for name, hits in scores.items()}


class TextClassifier(nn.Module):
    """Token ids (B, T) and a padding mask (B, T) -> logits (B, classes), read from the first
    token (a [CLS] token, as in BERT) after two encoder layers."""

    def __init__(self, vocabulary: int = 100, dim: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, dim, padding_idx=0)
        layer = nn.TransformerEncoderLayer(dim, 2, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.encoder(self.embedding(ids), src_key_padding_mask=attention_mask == 0)
        return self.head(hidden[:, 0])


def text_maps() -> list[str]:
    torch.manual_seed(0)
    model = TextClassifier().eval()
    ids = torch.tensor([[2, 17, 42, 8, 3, 0], [2, 4, 99, 61, 12, 3]])
    # --8<-- [start:text]
    mask = (ids != 0).long()  # padding is token id 0
    per_token = gradlens.gradient_attention_rollout(
        model, ids, target=1, forward_kwargs={"attention_mask": mask}
    )  # (B, T): the first token's row over the T tokens
    last_row = gradlens.attention_rollout(
        model, ids, row=-1, forward_kwargs={"attention_mask": mask}
    )  # another token's row
    # --8<-- [end:text]
    return [
        f"text: per_token {tuple(per_token.shape)}, sample 0: "
        + ", ".join(f"{float(v):.2f}" for v in per_token[0]),
        f"text: last_row {tuple(last_row.shape)}",
    ]


def swin_error() -> str:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    swin = SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4]
    ).eval()
    # --8<-- [start:swin]
    try:
        gradlens.attention_rollout(swin, torch.rand(1, 3, 64, 64))
    except AttentionRolloutError as error:
        message = str(error)  # the attention of '...attn' has 16 maps for a batch of 1: ...
    # --8<-- [end:swin]
    return message


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    torch.manual_seed(0)
    start = time.perf_counter()
    if args.quick:  # a barely trained model, enough to run the code
        model, test, accuracy = train_vit_model(QUICK_RECIPE, progress=False)
    else:
        # --8<-- [start:train]
        model, test, accuracy = train_vit_model(progress=False)  # VIT_RECIPE
        # --8<-- [end:train]
    train_seconds = time.perf_counter() - start
    shown = make_shapes(4, seed=2) if args.quick else test[:4]
    maps = image_maps(model, shown.images)
    figure = gradlens.viz.show(shown.images, maps, boxes=shown.boxes, panel_size=1.6)
    save_figure(figure, args.out / "attention.png")
    n = 32 if args.quick else len(test)
    scores = pointing(model, test.images[:n], test.masks[:n])
    lines = [
        f"tiny ViT: held-out accuracy {accuracy:.3f} ({len(test)} images), "
        f"trained in {train_seconds:.0f} s (torch threads: {torch.get_num_threads()})",
        f"pointing game on {n} held-out images (tolerance 4 px):",
        *(f"  {name:<28} {value:.3f}" for name, value in scores.items()),
        *text_maps(),
        "swin: " + swin_error(),
    ]
    report = args.out / "attention.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [args.out / "attention.png", report]


if __name__ == "__main__":
    main()
