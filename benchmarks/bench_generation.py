"""Per-generated-token attributions against Captum's ``LLMGradientAttribution`` (issue 12).

    python benchmarks/bench_generation.py [--quick] [--steps S] [--repeats N] [--threads T]
        [--skip-memory]

A GPT-2 config with 4 layers, width 256 and 4 heads (random init, eval mode, Hugging Face
``sdpa`` attention), a word-level tokenizer built offline with the ``tokenizers`` package
(512 words, wrapped as a ``PreTrainedTokenizerFast`` for Captum), a 32-token prompt and a
continuation of K = 16 tokens. Both sides run Integrated Gradients on the embedding layer
``transformer.wte`` with the same Gauss-Legendre steps:

* Captum: ``LLMGradientAttribution(LayerIntegratedGradients(model, wte), tokenizer)
  .attribute(TextTokenInput(prompt), target=continuation, n_steps=S)`` -- K separate
  attributions, each a forward and a backward of all S steps of prompt + the tokens before it;
* gradlens: ``generation_attributions(model, ids, continuation, method="integrated_gradients",
  steps=S, batch_size=b)`` -- one forward of prompt + continuation per chunk of ``b`` steps and
  batched backwards of 4 of the K log-probabilities each (``targets_per_backward=4``, the
  default); ``b = None`` (all steps in one chunk), 8, and 1 (one step per pass:
  generation_attributions' default, the memory-lean setting); and 1 step per pass with all
  K log-probabilities in one batched backward (``targets_per_backward=None``, the default
  before issue 18).

The baseline is token 0 on the prompt and the continuation's own tokens after it, Captum's
baseline, so the prompt columns of gradlens' rows are checked against Captum's
``token_attr`` first. Then:

1. Time: median wall and process CPU seconds over interleaved rounds (after one small
   warm-up call of each variant). Targets: gradlens <= 0.3x Captum (issue 12); the
   default <= 0.75x (issue 18).
2. Peak memory: growth of the peak RSS (``VmHWM``) of one call in a fresh process per case
   (median of 2), against one forward and backward of the full sequence (prompt +
   continuation, the summed continuation log-probability; ``loss.backward()``, and
   ``torch.autograd.grad`` to the embeddings only). Target: <= 1.5x.

Run with ``PYTHONPATH=.`` from the repository root when gradlens is not installed from it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch

import gradlens
from gradlens import targets

sys.path.insert(0, os.path.dirname(__file__))
from _memory import growth, median_growth, print_growth  # noqa: E402

VOCAB_WORDS = 510  # + [PAD] and [UNK]
PROMPT, K = 32, 16


def word_tokenizer():
    """A word-level tokenizer of 512 entries (``[PAD]`` = 0, ``[UNK]`` = 1, ``w0`` ... ``w509``),
    built offline and wrapped as a ``PreTrainedTokenizerFast`` (Captum calls ``encode``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(VOCAB_WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]")


def language_model(vocab_size: int):
    """GPT-2 shape: 4 layers, width 256, 4 heads, random init, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=4,
        n_embd=256,
        n_head=4,
        vocab_size=vocab_size,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def problem(prompt_length: int = PROMPT, k: int = K):
    """``(tokenizer, model, prompt text, prompt ids (1, P), continuation ids (K,))``."""
    tokenizer = word_tokenizer()
    model = language_model(len(tokenizer))
    generator = torch.Generator().manual_seed(1)
    words = torch.randint(0, VOCAB_WORDS, (prompt_length,), generator=generator)
    prompt = " ".join(f"w{int(i)}" for i in words)
    ids = tokenizer.encode(prompt, return_tensors="pt")
    continuation = torch.randint(2, len(tokenizer), (k,), generator=generator)
    return tokenizer, model, prompt, ids, continuation


def variants(
    steps: int, prompt_length: int = PROMPT, k: int = K
) -> dict[str, Callable[[], object]]:
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    tokenizer, model, prompt, ids, continuation = problem(prompt_length, k)
    # Captum's baseline: token 0 on the prompt, the real tokens after it
    baseline = torch.cat([torch.zeros_like(ids), continuation[None]], dim=1)
    captum = LLMGradientAttribution(
        LayerIntegratedGradients(model, model.transformer.wte), tokenizer
    )

    def theirs():
        return captum.attribute(
            TextTokenInput(prompt, tokenizer),
            target=continuation,
            n_steps=steps,
            method="gausslegendre",
        ).token_attr

    def ours(batch_size: int | None, per_backward: int | None = 4) -> Callable[[], torch.Tensor]:
        return lambda: gradlens.generation_attributions(
            model,
            ids,
            continuation,
            method="integrated_gradients",
            baseline=baseline,
            steps=steps,
            batch_size=batch_size,
            targets_per_backward=per_backward,
        )

    return {
        "captum LLMGradientAttribution": theirs,
        "gradlens (all steps per pass)": ours(None),
        "gradlens (8 steps per pass)": ours(8),
        "gradlens (1 step per pass, default)": ours(1),
        "gradlens (1 step per pass, all K per backward)": ours(1, None),
    }


def references(prompt_length: int = PROMPT, k: int = K) -> dict[str, Callable[[], object]]:
    """One forward and backward of the full sequence, in two forms."""
    _, model, _, ids, continuation = problem(prompt_length, k)
    full = torch.cat([ids, continuation[None]], dim=1)
    score = targets.sequence(continuation)

    def backward_all():
        model.zero_grad(set_to_none=True)
        score(model(full)).sum().backward()
        return [p.grad for p in model.parameters()]

    def grad_to_embeddings():
        embeddings = model.transformer.wte(full).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeddings)
        return torch.autograd.grad(score(logits).sum(), embeddings)

    return {
        "forward+backward (loss.backward())": backward_all,
        "forward+backward (grad to embeddings)": grad_to_embeddings,
    }


def check(steps: int) -> None:
    cases = variants(steps)
    theirs = cases["captum LLMGradientAttribution"]()
    ours = cases["gradlens (all steps per pass)"]()
    difference = float((ours[0, :, :PROMPT] - theirs).abs().max())
    print(
        f"gradlens rows (prompt columns) vs Captum token_attr: max |difference| {difference:.1e} "
        f"(largest |attribution| {float(theirs.abs().max()):.2e})"
    )


def time_variants(steps: int, repeats: int) -> None:
    cases = variants(steps)
    small = variants(2, prompt_length=4, k=2)  # warm-up: lazy initialisation, not measured
    for run in small.values():
        run()
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    base_wall = statistics.median(wall["captum LLMGradientAttribution"])
    base_cpu = statistics.median(cpu["captum LLMGradientAttribution"])
    print(
        f"\nTime, GPT-2 4 layers x 256, prompt {PROMPT}, K = {K}, {steps} steps "
        f"(median of {repeats} interleaved rounds; {torch.get_num_threads()} thread(s))"
    )
    width = max(map(len, cases))
    print(f"{'case':<{width}}  {'wall s':>7}  {'ratio':>6}  {'CPU s':>7}  {'ratio':>6}")
    for name in cases:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(
            f"{name:<{width}}  {w:>7.2f}  {w / base_wall:>5.2f}x  {c:>7.2f}  {c / base_cpu:>5.2f}x"
        )


def memory_case(name: str, steps: int) -> float:
    """Peak RSS growth (MB) of one call of case ``name`` in this fresh process, after a small
    warm-up call of the same kind."""
    if name.startswith("forward+backward"):
        small, case = references(4, 2)[name], references()[name]
    else:
        small, case = variants(2, 4, 2)[name], variants(steps)[name]
    small()
    return growth(case)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="8 steps, 1 round, no memory")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # transformers' config notes
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_case:
        with contextlib.redirect_stdout(io.StringIO()):
            grown = memory_case(args.memory_case, args.size)
        print(f"{grown:.1f}")
        return
    steps, repeats = (8, 1) if args.quick else (args.steps, args.repeats)
    start = time.perf_counter()
    check(steps)
    time_variants(steps, repeats)
    if not (args.quick or args.skip_memory):
        names = [*references(), *variants(2, 4, 2)]
        grown = median_growth(os.path.abspath(__file__), names, 1, steps, runs=2)
        print_growth(
            grown,
            f"Peak RSS growth of one call, {steps} steps (median of 2 fresh processes per case)",
            names[0],
        )
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
