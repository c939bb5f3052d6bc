"""AttnLRP against Input × Gradient on a GPT-2 language model (issue 19).

    python benchmarks/bench_attnlrp.py [--quick] [--repeats N] [--threads T]

The GPT-2 config of ``bench_generation.py`` (4 layers, width 256, 4 heads, random init,
eval mode, Hugging Face ``sdpa`` attention), its 32-token prompt and K = 16 continuation
tokens. Two calls, each with ``method="input_x_gradient"`` and ``method="attnlrp"``:

* ``token_attributions`` of the first continuation token's logit on the prompt
  (``(1, 32)``): one forward and one backward;
* ``generation_attributions`` of the K continuation tokens (``(1, K, 48)``): one forward
  and batched backwards (4 log-probabilities each).

AttnLRP is the same passes with modified backward rules (function handlers, module rules),
so its cost over Input × Gradient is the rules' overhead. Target: <= 1.5x the time.
Median wall time over interleaved rounds, after a warm-up call of each case.

Run with ``PYTHONPATH=.`` from the repository root when gradlens is not installed from it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

import gradlens
from gradlens import targets

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians, print_table  # noqa: E402
from bench_generation import PROMPT, K, problem  # noqa: E402

METHODS = ("input_x_gradient", "attnlrp")


def cases(prompt_length: int, k: int) -> dict[str, Callable[[], object]]:
    _, model, _, ids, continuation = problem(prompt_length, k)
    first = targets.token(int(continuation[0]))
    found: dict[str, Callable[[], object]] = {}
    for method in METHODS:
        found[f"token_attributions {method}"] = lambda m=method: gradlens.token_attributions(
            model, ids, first, method=m, output="logits"
        )
    for method in METHODS:
        found[f"generation_attributions {method}"] = lambda m=method: (
            gradlens.generation_attributions(model, ids, continuation, method=m)
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8-token prompt, K = 4, 2 rounds")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompt_length, k, repeats = (8, 4, 2) if args.quick else (PROMPT, K, args.repeats)
    runs = cases(prompt_length, k)
    medians = interleaved_medians(runs, repeats=repeats)
    for call in ("token_attributions", "generation_attributions"):
        print_table(
            {name: t for name, t in medians.items() if name.startswith(call)},
            f"{call} input_x_gradient",
            f"{call}, GPT-2 4 x 256, prompt {prompt_length}, K = {k} "
            f"(median of {repeats}; {torch.get_num_threads()} thread(s))",
        )
    for call in ("token_attributions", "generation_attributions"):
        ratio = medians[f"{call} attnlrp"] / medians[f"{call} input_x_gradient"]
        print(f"{call}: attnlrp / input_x_gradient = {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
