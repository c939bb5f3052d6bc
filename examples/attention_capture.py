"""Capturing attention: the probabilities of any attention layer, and their gradients.

Uses small random-init models built offline: a torchvision ``VisionTransformer`` (whose
``nn.MultiheadAttention`` is called with ``need_weights=False``, so the probabilities never
exist in an ordinary forward), a timm ``VisionTransformer`` (fused
``scaled_dot_product_attention``) and a small text classifier with a padding mask. Writes
``attention_capture.txt`` (the names, shapes and checks quoted in ``docs/attention.md``).

Run: ``python examples/attention_capture.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from _common import parse_args
from torch import Tensor, nn

import gradlens


def vision_transformer() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=64, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()


def vit_probabilities(vit: nn.Module, x: Tensor) -> list[str]:
    # --8<-- [start:attentions]
    probs = gradlens.attentions(vit, x)  # {attention module name: (B, heads, N, N)}
    for name, p in probs.items():
        print(name, tuple(p.shape))
    # encoder.layers.encoder_layer_0.self_attention (2, 2, 65, 65)
    # encoder.layers.encoder_layer_1.self_attention (2, 2, 65, 65)

    cls_row = probs["encoder.layers.encoder_layer_1.self_attention"][:, :, 0, 1:]
    # (B, heads, 64): how much the class token attends to each of the 8 x 8 patches
    # --8<-- [end:attentions]
    assert torch.allclose(cls_row.sum(-1) + probs[name][:, :, 0, 0], torch.ones(2, 2))
    lines = [f"{name} {tuple(p.shape)}" for name, p in probs.items()]
    # --8<-- [start:layers]
    last = gradlens.attentions(vit, x, layers="encoder.layers.encoder_layer_1.*")
    # {'encoder.layers.encoder_layer_1.self_attention': (2, 2, 65, 65)}
    # --8<-- [end:layers]
    assert list(last) == ["encoder.layers.encoder_layer_1.self_attention"]
    return lines


class TextClassifier(nn.Module):
    """Token ids (B, T) and an attention mask (B, T) -> logits (B, classes)."""

    def __init__(self, vocabulary: int = 100, dim: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, dim, padding_idx=0)
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 64, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.encoder(self.embedding(ids), src_key_padding_mask=~attention_mask)
        return self.head(hidden[:, 0])


def timm_probabilities(x: Tensor) -> list[str]:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    # --8<-- [start:timm]
    vit = VisionTransformer(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    vit.eval()  # timm calls F.scaled_dot_product_attention (fused_attn=True)
    probs = gradlens.attentions(vit, x)  # {'blocks.0.attn': (2, 2, 65, 65), 'blocks.1.attn': ...}
    # --8<-- [end:timm]
    assert all(block.attn.fused_attn for block in vit.blocks)  # unchanged
    return [f"{name} {tuple(p.shape)}" for name, p in probs.items()]


def text_probabilities() -> list[str]:
    torch.manual_seed(0)
    model = TextClassifier().eval()
    ids = torch.tensor([[5, 17, 42, 8, 0, 0], [23, 4, 99, 61, 12, 7]])
    # --8<-- [start:text]
    mask = ids != 0  # the first sequence is padded after 4 tokens
    probs = gradlens.attentions(model, ids, forward_kwargs={"attention_mask": mask})
    first = probs["encoder.self_attn"]  # (2, 2, 6, 6)
    padded = first[0, :, :, 4:]  # zeros: no token attends to the padding
    # --8<-- [end:text]
    assert torch.equal(padded, torch.zeros_like(padded))
    return [f"{name} {tuple(p.shape)}" for name, p in probs.items()] + [
        f"attention to padding (sum): {padded.sum().item()}"
    ]


def gradients(vit: nn.Module, x: Tensor) -> list[str]:
    # --8<-- [start:gradients]
    with gradlens.capture_attention(vit, grad=True) as attention:
        logits = vit(x)
        logits[:, 3].sum().backward()  # or any score; see Recorder.grad for K targets
    grad = attention.gradients["encoder.layers.encoder_layer_0.self_attention"]
    # d logit_3 / d probabilities, (B, heads, N, N) like the probabilities
    # --8<-- [end:gradients]
    vit.zero_grad(set_to_none=True)
    return [f"gradient {tuple(grad.shape)}, norm {grad.norm():.3g}"]


def with_the_recorder(vit: nn.Module, x: Tensor) -> list[str]:
    # --8<-- [start:recorder]
    with gradlens.record(vit, "encoder.layers.encoder_layer_1.ln_1", attention=True) as rec:
        logits = vit(x)
        rec.grad(logits[:, [3, 5]])  # two targets per image, one batched backward
    probs = rec.attentions["encoder.layers.encoder_layer_1.self_attention"]  # (2, 2, 65, 65)
    grads = rec.attention_gradients["encoder.layers.encoder_layer_1.self_attention"]
    # (2, 2, 2, 65, 65): a leading K = 2, like rec.gradients["encoder.layers.encoder_layer_1.ln_1"]
    # --8<-- [end:recorder]
    assert grads.shape == (2, *probs.shape)
    assert all(p.grad is None for p in vit.parameters())  # no parameter gradient was computed
    return [f"recorder: probs {tuple(probs.shape)}, gradients {tuple(grads.shape)}"]


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    vit = vision_transformer()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision's head starts at 0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    lines = vit_probabilities(vit, x) + timm_probabilities(x) + text_probabilities()
    lines += gradients(vit, x) + with_the_recorder(vit, x)
    report = args.out / "attention_capture.txt"
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return [report]


if __name__ == "__main__":
    main()
