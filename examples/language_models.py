"""Transformers and language models: Grad-CAM on a Hugging Face ViT, per-token attributions
of a BERT classifier trained on the synthetic text task, per-generated-token attributions of
a GPT-2, and Grad-CAM of a detector's detections.

Every model is built from a small config with random weights (nothing is downloaded); the
BERT is trained on :func:`gradlens.demos.text_task.make_text_task`, whose trigger tokens are the
ground truth. Writes ``language_models.png`` (the BERT's token attributions as coloured
text) and ``language_models.txt``.

Run: ``python examples/language_models.py [--quick] [--out DIR]``
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torchvision
from _common import parse_args, save_figure
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTForImageClassification,
)

import gradlens
from gradlens import metrics, targets, viz
from gradlens.demos import training


def vision_transformer() -> list[str]:
    torch.manual_seed(0)
    # --8<-- [start:vit]
    vit = ViTForImageClassification(
        ViTConfig(
            image_size=64,
            patch_size=8,
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=128,
            num_labels=4,
        )
    ).eval()
    images = torch.rand(2, 3, 64, 64)
    maps = gradlens.gradcam(vit, images)  # (2, 64, 64); no output=, no layer=
    layer = gradlens.default_layer(vit, images)  # the last block's first LayerNorm
    # --8<-- [end:vit]
    return [f"ViT: Grad-CAM maps {tuple(maps.shape)} at {layer!r}"]


def text_classifier(quick: bool, out: Path) -> tuple[list[str], Path]:
    torch.manual_seed(0)
    # the full run trains on TEXT_RECIPE (about 20 s on one CPU thread) and scores 128
    # held-out sequences; the quick run only exercises the code
    recipe = training.TEXT_RECIPE
    n = 128
    if quick:
        recipe, n = training.Recipe(n_train=256, n_test=32, epochs=1, batch_size=32, lr=3e-3), 8
    # --8<-- [start:bert]
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=64,  # the text task's vocabulary; its pad id 0 is BERT's default
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=32,
            num_labels=4,
        )
    )
    bert, test, accuracy = training.train_text_model(recipe, model=bert, progress=False)
    samples = test[:n]
    scores = gradlens.token_attributions(bert, samples.inputs, samples.labels)
    # (n, T): Integrated Gradients from the [PAD] baseline, one signed score per token,
    # exactly 0 on padding
    found = metrics.token_localization(scores, samples.triggers, samples.attention_mask)
    # (n,) bool: is each sequence's top-scoring token a trigger?
    words = [[samples.vocabulary[i] for i in row] for row in samples.input_ids[:4].tolist()]
    figure = viz.text(
        words,
        scores[:4],
        samples.attention_mask[:4],
        titles=[f"label {int(label)}" for label in samples.labels[:4]],
    )
    # --8<-- [end:bert]
    picture = save_figure(figure, out / "language_models.png")
    lines = [
        f"BERT on the text task: held-out accuracy {accuracy:.3f}",
        f"  integrated gradients put the top score on a trigger in {found.float().mean():.2f} of "
        f"{len(samples)} held-out sequences",
    ]
    return lines, picture


def language_model() -> list[str]:
    torch.manual_seed(0)
    # --8<-- [start:gpt2]
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=128,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
    ).eval()
    prompt = torch.randint(0, 128, (2, 8))  # (B, P)
    with torch.no_grad():  # greedy decoding of 4 tokens, as model.generate would
        ids = prompt
        for _ in range(4):
            ids = torch.cat([ids, gpt2(ids).logits[:, -1:].argmax(-1)], dim=1)
    continuation = ids[:, 8:]  # (B, K) = (2, 4)
    rows = gradlens.generation_attributions(gpt2, prompt, continuation)
    # (2, 4, 12): row k attributes log p(continuation[k]) to the 8 + k tokens before it,
    # all four rows from one forward and one batched backward
    next_token = gradlens.token_attributions(gpt2, prompt, targets.token(7), baseline=0)
    # (2, 8): the logit of token 7 after each prompt, by Integrated Gradients
    # --8<-- [end:gpt2]
    return [
        f"GPT-2: generation_attributions {tuple(rows.shape)}; row 3 of sample 0 over its "
        f"11 earlier tokens: " + " ".join(f"{float(v):+.2f}" for v in rows[0, 3, :11]),
        f"  token_attributions of targets.token(7): {tuple(next_token.shape)}",
    ]


def detector() -> list[str]:
    torch.manual_seed(0)
    # --8<-- [start:detector]
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5, box_score_thresh=0.0
    ).eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 128)]  # a list, as detectors take
    with torch.no_grad():
        found = model(images)  # [{"boxes", "labels", "scores"}, ...]
    boxes = [f["boxes"][:1] for f in found]  # explain each image's first detection
    labels = [f["labels"][:1] for f in found]
    maps = gradlens.gradcam(
        model, images, "backbone.body.16", target=targets.detection(boxes, labels)
    )  # (2, 96, 128)
    # --8<-- [end:detector]
    return [f"Faster R-CNN: Grad-CAM maps {tuple(maps.shape)} of the matched detections"]


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    warnings.filterwarnings("ignore", module="transformers")
    lines = vision_transformer()
    text_lines, picture = text_classifier(args.quick, args.out)
    lines += text_lines + language_model() + detector()
    report = args.out / "language_models.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [picture, report]


if __name__ == "__main__":
    main()
