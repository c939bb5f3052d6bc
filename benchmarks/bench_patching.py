"""Patching cost on CPU: gradlens activation and attribution patching against TransformerLens.

    python benchmarks/bench_patching.py [--quick] [--repeats N] [--threads T]

Model: a random-init Hugging Face GPT-2 config (4 layers, width 256, 4 heads, GPT-2's
50257-token vocabulary) in eval mode; a clean and a corrupted prompt of 16 tokens that
differ at position 5; metric: the logit difference of two tokens at the last position.
Patched: the residual stream before each block, every position: 4 x 16 = 64 patched runs
(for GPT-2 that is the output of ``transformer.drop`` and of ``transformer.h.0`` to
``transformer.h.2``; TransformerLens calls it ``blocks.{i}.hook_resid_pre``).

Cases, timed in interleaved rounds (``_timing.interleaved_times``), median and minimum:

* TransformerLens: ``run_with_cache(clean)`` and ``patching.get_act_patch_resid_pre`` on a
  ``TransformerBridge`` that wraps a copy of the same HF model (``boot_transformers`` with
  ``hf_model=``, from a config saved to a temporary folder: nothing is downloaded);
* ``gradlens.activation_patching`` on the HF model, all 64 cases in one forward and in
  forwards of 16 rows; on the bridge's own hook points (``blocks.{i}.hook_in``); and with
  ``forward_kwargs={"logits_to_keep": 1}``, so that the HF model computes the logits of the
  last position only (the one the metric reads);
* a hand-written loop of 64 single patched forwards (plain forward hooks);
* one plain ``inference_mode`` forward of the corrupted prompt, and
  ``gradlens.attribution_patching`` (two forwards, one backward).

It also prints the largest difference between the results (gradlens against
TransformerLens and against the loop) and the Spearman rank correlation of attribution
patching's estimate with the measured change, over all 64 cells and over the 44 cells at
or after the corrupted position (before it a causal model's two runs agree, and both
methods give exactly 0).

Targets (issue 14): activation_patching <= 0.5x TransformerLens; attribution_patching <= 4x
one plain forward. ``--quick`` uses 2 layers and 8 tokens, one round (a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's progress bars
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import gradlens  # noqa: E402
from gradlens.metrics import logit_difference, spearman  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_times  # noqa: E402

CORRECT, WRONG = 1000, 2000
CORRUPTED_POSITION = 5


def gpt2(layers: int) -> torch.nn.Module:
    config = transformers.GPT2Config(
        n_layer=layers, n_embd=256, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    config.use_cache = False
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def transformer_lens_bridge(model: torch.nn.Module):
    """A TransformerBridge around a copy of ``model`` (the bridge rewires the model it wraps)."""
    from transformer_lens.model_bridge import TransformerBridge

    with tempfile.TemporaryDirectory() as folder:
        model.config.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(
            folder, hf_model=copy.deepcopy(model), load_weights=False
        )
    return bridge.eval()


def hand_written_loop(model, clean, corrupted, layers, metric) -> torch.Tensor:
    """One forward per (layer, position), each patched by a plain forward hook."""
    stored = {}
    with torch.inference_mode():
        handles = [
            model.get_submodule(n).register_forward_hook(
                lambda m, a, o, n=n: stored.__setitem__(n, o.clone())
            )
            for n in layers
        ]
        model(clean)
        for h in handles:
            h.remove()
        result = torch.zeros(len(layers), clean.shape[1])
        for i, name in enumerate(layers):
            for p in range(clean.shape[1]):

                def hook(m, a, o, name=name, p=p):
                    o = o.clone()
                    o[:, p] = stored[name][:, p]
                    return o

                handle = model.get_submodule(name).register_forward_hook(hook)
                result[i, p] = metric(model(corrupted)).mean()
                handle.remove()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, 8 tokens, one round")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    repeats = args.repeats or (1 if args.quick else 5)
    n_layers, n_tokens = (2, 8) if args.quick else (4, 16)

    model = gpt2(n_layers)
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, model.config.vocab_size, (1, n_tokens), generator=generator)
    corrupted = clean.clone()
    corrupted[0, CORRUPTED_POSITION] = (clean[0, CORRUPTED_POSITION] + 12345) % 50257
    resid_pre = ["transformer.drop"] + [f"transformer.h.{i}" for i in range(n_layers - 1)]
    metric = logit_difference(CORRECT, WRONG, output="logits")

    def scalar_metric(logits: torch.Tensor) -> torch.Tensor:  # TransformerLens: a scalar
        return logit_difference(CORRECT, WRONG)(logits).mean()

    bridge = transformer_lens_bridge(model)
    hook_points = [f"blocks.{i}.hook_in" for i in range(n_layers)]
    from transformer_lens import patching

    def lens() -> torch.Tensor:
        _, cache = bridge.run_with_cache(clean)
        return patching.get_act_patch_resid_pre(bridge, corrupted, cache, scalar_metric)

    def ours(batch_size=None, on_bridge=False, forward_kwargs=None) -> torch.Tensor:
        if on_bridge:
            return gradlens.activation_patching(
                bridge, clean, corrupted, hook_points, scalar_metric, positions="each"
            )
        return gradlens.activation_patching(
            model,
            clean,
            corrupted,
            resid_pre,
            metric,
            positions="each",
            batch_size=batch_size,
            forward_kwargs=forward_kwargs,
        )

    def plain_forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(corrupted).logits

    def attribution() -> torch.Tensor:
        return gradlens.attribution_patching(
            model, clean, corrupted, resid_pre, metric, positions="each"
        )

    cases = {
        "TransformerLens get_act_patch_resid_pre": lens,
        "gradlens.activation_patching": ours,
        f"gradlens.activation_patching, batch_size={n_tokens}": lambda: ours(n_tokens),
        "gradlens.activation_patching on the bridge": lambda: ours(on_bridge=True),
        "gradlens.activation_patching, logits_to_keep=1": lambda: ours(
            forward_kwargs={"logits_to_keep": 1}
        ),
        "hand-written loop of patched forwards": lambda: hand_written_loop(
            model, clean, corrupted, resid_pre, metric
        ),
        "plain forward (inference_mode)": plain_forward,
        "gradlens.attribution_patching": attribution,
    }
    runs = n_layers * n_tokens
    print(
        f"GPT-2 config: {n_layers} layers, width 256, vocabulary 50257, {n_tokens} tokens; "
        f"{runs} patched runs; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    reference, measured = lens(), ours()
    differences = {
        "gradlens - TransformerLens": measured - reference,
        "gradlens on the bridge - TransformerLens": ours(on_bridge=True) - reference,
        "gradlens - hand-written loop": measured
        - hand_written_loop(model, clean, corrupted, resid_pre, metric),
    }
    for name, difference in differences.items():
        print(f"max |{name}| = {float(difference.abs().max()):.2e}")
    with torch.inference_mode():
        baseline = metric(model(corrupted)).mean()
    change, estimate = measured - baseline, attribution()
    after = slice(CORRUPTED_POSITION, None)
    correlations = [
        float(spearman(e.flatten()[None], c.flatten()[None])[0])
        for e, c in ((estimate, change), (estimate[:, after], change[:, after]))
    ]
    print(
        "Spearman(attribution estimate, measured change): all cells "
        f"{correlations[0]:.3f}, cells from the corrupted position on {correlations[1]:.3f}"
    )

    times = interleaved_times(cases, repeats=repeats, warmup=1)
    stats = {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}
    width = max(len(name) for name in stats)
    print(f"\n{'case':<{width}}  {'median ms':>10}  {'min ms':>9}")
    for name, (med, low) in stats.items():
        print(f"{name:<{width}}  {med * 1e3:>10.1f}  {low * 1e3:>9.1f}")
    lens_median, lens_min = stats["TransformerLens get_act_patch_resid_pre"]
    forward_median, forward_min = stats["plain forward (inference_mode)"]
    ap_median, ap_min = stats["gradlens.activation_patching"]
    atp_median, atp_min = stats["gradlens.attribution_patching"]
    print(
        f"\nactivation_patching / TransformerLens: {ap_median / lens_median:.3f}x median, "
        f"{ap_min / lens_min:.3f}x min (target <= 0.5x)"
    )
    print(
        f"attribution_patching / plain forward:  {atp_median / forward_median:.2f}x median, "
        f"{atp_min / forward_min:.2f}x min (target <= 4x)"
    )


if __name__ == "__main__":
    main()
