"""Attention cost on CPU: capturing attention probabilities against a plain forward.

    python benchmarks/bench_attention.py [--quick] [--repeats N] [--only SECTION] [--skip-memory]

The model is ViT-S/16-shaped (width 384, 6 layers, 6 heads, 224x224, batch 8, random init)
with fused ``scaled_dot_product_attention``: timm's ``VisionTransformer`` (``fused_attn``)
and, with ``--hf``, Hugging Face's ``ViTForImageClassification`` (``sdpa``).

1. Capture (issue 13): ``gradlens.attentions(model, x)`` -- every layer's probabilities,
   recomputed in the maths form and copied out of inference mode -- against a plain
   ``inference_mode`` forward. Target: <= 1.5x.
2. Gradient rollout (issue 13): ``gradient_attention_rollout`` on the Hugging Face model
   (``sdpa``; top class) against the reference procedure of Chefer et al.'s published code
   on the same weights (eager attention, ``output_attentions=True``, ``retain_grad`` on each
   map, ``score.backward()`` over all parameters, the rollout). The two maps are checked to
   agree first. Target: <= 0.75x.
3. Peak memory: growth of the peak RSS (``VmHWM``, reset before the measured call) in a
   fresh subprocess per case.

Times are the median and the minimum of interleaved runs (the minimum is the figure least
disturbed by other processes sharing the machine). ``--quick`` uses batch 2 at 112x112 and
3 repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

import torch

import gradlens
import gradlens.maps

sys.path.insert(0, os.path.dirname(__file__))
from _memory import growth, median_growth, print_growth  # noqa: E402
from _timing import median_and_min, print_median_and_min  # noqa: E402


def timm_vit(size: int) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=size, patch_size=16, embed_dim=384, depth=6, num_heads=6, num_classes=1000
    ).eval()
    assert all(block.attn.fused_attn for block in model.blocks)
    return model


def hf_vit(size: int) -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=size,
        patch_size=16,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        intermediate_size=1536,
        num_labels=1000,
    )
    model = ViTForImageClassification(config).eval()
    model.set_attn_implementation("sdpa")
    return model


def images(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


# -- 1. capture -----------------------------------------------------------------------------


def capture_cases(model: torch.nn.Module, x: torch.Tensor) -> dict:
    def plain() -> object:
        with torch.inference_mode():
            return model(x)

    return {
        "plain inference_mode forward": plain,
        "gradlens.attentions": lambda: gradlens.attentions(model, x),
    }


def bench_capture(name: str, model: torch.nn.Module, batch: int, size: int, repeats: int) -> None:
    x = images(batch, size)
    print(
        f"\n{name}, batch {batch}, {size}x{size}, {torch.get_num_threads()} threads, "
        f"{repeats} repeats"
    )
    results = median_and_min(capture_cases(model, x), repeats)
    print_median_and_min(
        results, "plain inference_mode forward", "Capture (ratio to the plain forward)"
    )
    ours, base = results["gradlens.attentions"], results["plain inference_mode forward"]
    print(
        f"attentions / forward: median {ours[0] / base[0]:.2f}x, min {ours[1] / base[1]:.2f}x"
        "  (target <= 1.5x)"
    )


# -- 2. gradient rollout ----------------------------------------------------------------------


def eager_twin(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """The same Hugging Face ViT (same weights) with eager attention, for the reference."""
    eager = hf_vit(size)
    eager.set_attn_implementation("eager")
    eager.load_state_dict(model.state_dict())
    return eager


def reference_gradient_rollout(eager: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s published procedure, batched: an eager forward with
    ``output_attentions=True``, ``retain_grad`` on every map, ``backward()`` of the top
    class's logit through the whole network (parameter gradients included), then
    ``R <- R + mean_heads(ReLU(grad * A)) @ R``; returns the class token's row over the
    patches, ``(B, N - 1)``."""
    eager.zero_grad(set_to_none=True)
    out = eager(x, output_attentions=True)
    for a in out.attentions:
        a.retain_grad()
    logits = out.logits
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    tokens = out.attentions[0].shape[-1]
    relevance = torch.eye(tokens).expand(len(x), tokens, tokens)
    with torch.no_grad():
        for a in out.attentions:
            weighted = (a.grad * a).clamp(min=0).mean(1)
            relevance = relevance + weighted @ relevance
    return relevance[:, 0, 1:]


def rollout_cases(model: torch.nn.Module, eager: torch.nn.Module, x: torch.Tensor) -> dict:
    def plain() -> object:
        with torch.inference_mode():
            return model(x)

    return {
        "plain inference_mode forward": plain,
        "reference (eager, retain_grad, backward)": lambda: reference_gradient_rollout(eager, x),
        "gradlens.gradient_attention_rollout": lambda: gradlens.gradient_attention_rollout(
            model, x
        ),
    }


def bench_rollout(batch: int, size: int, repeats: int) -> None:
    model = hf_vit(size)
    eager = eager_twin(model, size)
    x = images(batch, size)
    ours = gradlens.gradient_attention_rollout(model, x, upsample=False)
    grid = size // 16
    expected = reference_gradient_rollout(eager, x).reshape(batch, grid, grid)
    expected = gradlens.maps.normalize(expected)
    assert torch.allclose(ours, expected, atol=1e-4), "the two procedures disagree"
    print(
        f"\nHugging Face ViT-S/16 shape (sdpa; the reference: eager), batch {batch}, "
        f"{size}x{size}, {torch.get_num_threads()} threads, {repeats} repeats"
    )
    results = median_and_min(rollout_cases(model, eager, x), repeats)
    print_median_and_min(
        results, "plain inference_mode forward", "Gradient rollout (ratio to the plain forward)"
    )
    ours_t = results["gradlens.gradient_attention_rollout"]
    ref_t = results["reference (eager, retain_grad, backward)"]
    print(
        f"gradient_attention_rollout / reference: median {ours_t[0] / ref_t[0]:.2f}x, "
        f"min {ours_t[1] / ref_t[1]:.2f}x  (target <= 0.75x)"
    )


# -- 3. peak memory -------------------------------------------------------------------------

MEMORY_CASES = ["inference forward", "gradlens.attentions"]
ROLLOUT_MEMORY_CASES = [
    "HF inference forward",
    "gradlens.gradient_attention_rollout",
    "reference gradient rollout",
]


def memory_case(name: str, batch: int, size: int) -> float:
    """Peak RSS growth (MB) of one call of case ``name`` in this (fresh) process, after one
    call on a tiny input (one-time lazy initialisation is not counted)."""
    if name in ROLLOUT_MEMORY_CASES:
        model = hf_vit(size)
        eager = eager_twin(model, size) if name == "reference gradient rollout" else None
        cases = {
            "HF inference forward": lambda x: rollout_cases(model, eager, x)[
                "plain inference_mode forward"
            ](),
            "gradlens.gradient_attention_rollout": lambda x: gradlens.gradient_attention_rollout(
                model, x
            ),
            "reference gradient rollout": lambda x: reference_gradient_rollout(eager, x),
        }
    else:
        model = timm_vit(size)
        cases = {
            "inference forward": lambda x: capture_cases(model, x)[
                "plain inference_mode forward"
            ](),
            "gradlens.attentions": lambda x: gradlens.attentions(model, x),
        }
    run = cases[name]
    run(images(1, size))
    return growth(lambda: run(images(batch, size)))


def bench_memory(
    batch: int,
    size: int,
    runs: int,
    names: list[str] = MEMORY_CASES,
    model_name: str = "timm ViT-S/16 shape",
) -> None:
    """Median over ``runs`` fresh processes of each case's peak RSS growth (MB)."""
    grown = median_growth(os.path.abspath(__file__), names, batch, size, runs)
    title = (
        f"Peak RSS growth, {model_name}, batch {batch}, {size}x{size} "
        f"(median of {runs} fresh processes per case)"
    )
    print_growth(grown, title, names[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="batch 2, 112x112, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", choices=["capture", "rollout", "memory"], default=None)
    parser.add_argument("--hf", action="store_true", help="also the Hugging Face ViT (sdpa)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        with contextlib.redirect_stdout(io.StringIO()):
            grown = memory_case(args.memory_case, args.batch, args.size)
        print(f"{grown:.1f}")
        return
    batch, size, repeats = (2, 112, 3) if args.quick else (8, 224, 5)
    repeats = args.repeats or repeats
    start = time.perf_counter()
    if args.only in (None, "capture"):
        bench_capture("timm ViT-S/16 shape (fused_attn)", timm_vit(size), batch, size, repeats)
        if args.hf:
            bench_capture("Hugging Face ViT-S/16 shape (sdpa)", hf_vit(size), batch, size, repeats)
    if args.only in (None, "rollout"):
        bench_rollout(batch, size, repeats)
    if args.only == "memory" or (args.only is None and not args.skip_memory):
        bench_memory(batch, size, runs=3)
        bench_memory(batch, size, 3, ROLLOUT_MEMORY_CASES, "Hugging Face ViT-S/16 shape")
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
