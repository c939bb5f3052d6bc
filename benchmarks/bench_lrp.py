"""LRP speed and memory: ``epsilon_plus_flat`` against Input x Gradient and zennit.

One run on a random-init torchvision ResNet-50 (eval mode, batch 8, 224 x 224 by default)
measures, for one target per sample:

* ``input_x_gradient`` -- gradlens' Input x Gradient (one forward, one backward);
* ``lrp`` -- ``gradlens.lrp(model, x, target)`` (composite ``"epsilon_plus_flat"``: flat
  on the first convolution, z+ on the others, epsilon on the linear layer, BatchNorm folded,
  residual sums by the Norm rule);
* ``zennit`` -- zennit's ``EpsilonPlusFlat`` with its ``ResNetCanonizer``, the attributor's
  context entered once outside the timing (the most favourable case for zennit).

Times are medians (and minima) of interleaved rounds after a warm-up, with ratios to
Input x Gradient; peak memory is the median growth of the peak RSS over fresh processes
(``--memory-runs``; on CUDA, ``torch.cuda.max_memory_allocated`` in the same process). The
largest relative difference of LRP and zennit (relevance times the score) is printed as a
check. Targets: LRP <= 1.3x the time and <= 1.2x the peak memory of Input x Gradient, and
<= 1.0x zennit's time.

Usage::

    python benchmarks/bench_lrp.py [--batch 8] [--size 224] [--repeats 5] [--threads T]
        [--device cpu|cuda] [--memory-runs 3] [--only input_x_gradient lrp zennit]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable

import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from _memory import growth, median_growth, print_growth  # noqa: E402
from _timing import median_and_min, print_median_and_min  # noqa: E402

from gradlens import input_x_gradient, lrp  # noqa: E402

CASES = ("input_x_gradient", "lrp", "zennit")


def setup(batch: int, size: int, device: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(device)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    target = torch.arange(batch, device=device) % 1000
    return model, x, target


def cases(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, only: list[str]
) -> dict[str, Callable[[], object]]:
    made: dict[str, Callable[[], object]] = {}
    if "input_x_gradient" in only:
        made["input_x_gradient"] = lambda: input_x_gradient(model, x, target)
    if "lrp" in only:
        made["lrp"] = lambda: lrp(model, x, target)
    if "zennit" in only:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer

        twin = copy.deepcopy(model)  # zennit's canonizer edits the model while active
        attributor = Gradient(twin, EpsilonPlusFlat(canonizers=[ResNetCanonizer()]))
        attributor.__enter__()
        one_hot = torch.nn.functional.one_hot(target, 1000).to(x.dtype)
        made["zennit"] = lambda: attributor(x, one_hot)[1]
    return made


def check(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    """The largest difference of LRP and zennit's relevance times the score, relative to
    the largest relevance."""
    run = cases(model, x[:2], target[:2], ["lrp", "zennit"])
    ours = run["lrp"]()
    scores = model(x[:2]).gather(1, target[:2, None]).detach()
    theirs = run["zennit"]() * scores.view(-1, 1, 1, 1)  # type: ignore[operator]
    return float(((ours - theirs).abs().max() / theirs.abs().max()).detach())  # type: ignore[operator]


def memory_case(name: str, batch: int, size: int, device: str) -> None:
    """Child process: print the peak memory growth (MB) of one call of case ``name``."""
    model, x, target = setup(batch, size, device)
    run = cases(model, x, target, [name])[name]
    run()  # warm-up: allocator pools, lazy initialisation
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = run()
        torch.cuda.synchronize()
        print((torch.cuda.max_memory_allocated() - before) / 2**20)
        del result
        return
    print(growth(run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    # the memory children inherit the device through the environment
    default_device = os.environ.get(
        "BENCH_LRP_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--device", default=default_device)
    parser.add_argument("--memory-runs", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--memory-case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["BENCH_LRP_DEVICE"] = args.device
    if args.memory_case:
        memory_case(args.memory_case, args.batch, args.size, args.device)
        return
    model, x, target = setup(args.batch, args.size, args.device)
    title = f"ResNet-50, batch {args.batch}, {args.size}px, {args.device}"
    if {"lrp", "zennit"} <= set(args.only):
        print(f"LRP vs zennit, largest relative difference: {check(model, x, target):.2e}")
    run = cases(model, x, target, args.only)
    if args.device == "cuda":
        synchronized = {name: fn for name, fn in run.items()}
        run = {
            name: (lambda fn=fn: (fn(), torch.cuda.synchronize()))
            for name, fn in synchronized.items()
        }
    baseline = "input_x_gradient" if "input_x_gradient" in run else next(iter(run))
    times = median_and_min(run, repeats=args.repeats)
    print_median_and_min(times, baseline, f"Time: {title}")
    if "zennit" in times and "lrp" in times:
        print(f"lrp / zennit (median): {times['lrp'][0] / times['zennit'][0]:.2f}x")
    if args.memory_runs > 0:
        grown = median_growth(__file__, args.only, args.batch, args.size, args.memory_runs)
        print_growth(grown, f"Peak memory growth: {title}", baseline)


if __name__ == "__main__":
    main()
