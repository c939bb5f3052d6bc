"""Attribution speed against Captum: Integrated Gradients, SmoothGrad, Occlusion, DeepLIFT,
DeepLiftShap and GradientSHAP on ResNet-18.

One run on a random-init torchvision ResNet-18 (CPU, eval mode) prints the median time of
each method and its ratio to Captum's time measured in the same run, first with the same
internal batch size as Captum, then at the best of a few gradlens batch sizes:

* Integrated Gradients: batch 2, 32 Gauss-Legendre steps (Captum ``internal_batch_size``);
* SmoothGrad: batch 2, 16 noise samples over saliency (``NoiseTunnel(Saliency)``,
  ``nt_samples_batch_size``; gradlens ``batch_size = nt_samples_batch_size * B``);
* Occlusion: batch 1, window 16, stride 8 (``sliding_window_shapes=(3, 16, 16)``,
  ``strides=(3, 8, 8)``, ``perturbations_per_eval``; gradlens ``batch_size = P * B``);
* DeepLIFT: batch 2, zero baseline; DeepLiftShap: batch 2, 8 baselines (Captum runs all
  ``B * N`` pairs at once; gradlens ``batch_size = B * N`` for the same batch);
* GradientSHAP: batch 2, 8 baselines, 16 samples, ``stdevs=0.1`` (Captum runs all
  ``B * n_samples`` draws at once). Captum and gradlens draw differently, so the
  ``max |diff|`` column of this row is a Monte-Carlo difference, not an equivalence check.

Captum's ``DeepLift`` refuses torchvision's ResNet-18 (each block calls one ``nn.ReLU``
twice), so DeepLIFT and DeepLiftShap run on a copy whose blocks call two ReLU modules, one
each, and whose stem has no max pooling (Captum's results differ where a ReLU feeds a max
pooling directly); the same work otherwise.

Variants are timed in interleaved rounds (every variant once per round, after one warm-up
call each) so that background load affects them alike. Both the wall time and the
process CPU time are reported: on a shared, loaded machine the CPU time (with
``--threads 1``, where no thread waits on another) is the steadier measure of the work done.
Target: gradlens <= 1.05x Captum.

Usage::

    python benchmarks/bench_attribution.py [--quick] [--repeats N] [--threads T]
        [--size S] [--occlusion-size S]
        [--only ig|smoothgrad|occlusion|deeplift|deeplift_shap|gradient_shap ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from torch import nn

from gradlens.attribution import (
    deeplift,
    deeplift_shap,
    gradient_shap,
    integrated_gradients,
    noise_scale,
    occlusion,
    smoothgrad,
)

Times = dict[str, tuple[float, float]]  # variant -> (median wall s, median CPU s)


def measure(variants: dict[str, Callable[[], object]], repeats: int) -> Times:
    """Median wall and process CPU seconds per variant, over interleaved rounds."""
    for run in variants.values():
        run()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in variants
    }


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def bench_integrated_gradients(
    model, size: int, steps: int, captum_batch: int, sweep: list[int], repeats: int
):
    from captum.attr import IntegratedGradients

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    target = [1, 2]
    captum = IntegratedGradients(model)

    def theirs():
        return captum.attribute(x, target=target, n_steps=steps, internal_batch_size=captum_batch)

    def ours(batch_size: int):
        return lambda: integrated_gradients(model, x, target, steps=steps, batch_size=batch_size)

    check = max_difference(ours(captum_batch)(), theirs())
    variants = {
        "captum": theirs,
        **{f"gradlens@{b}": ours(b) for b in sorted({captum_batch, *sweep})},
    }
    return f"IG (B=2, {steps} steps, {size}px)", captum_batch, measure(variants, repeats), check


def bench_smoothgrad(model, size: int, samples: int, captum_k: int, sweep: list[int], repeats: int):
    from captum.attr import NoiseTunnel, Saliency

    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # the same value range for both samples
    target = [1, 2]
    sigma = 0.15
    stdevs = float(noise_scale(x, sigma)[0])
    tunnel = NoiseTunnel(Saliency(model))

    def theirs():
        torch.manual_seed(0)
        return tunnel.attribute(
            x,
            target=target,
            nt_type="smoothgrad",
            nt_samples=samples,
            stdevs=stdevs,
            nt_samples_batch_size=captum_k,
        )

    def ours(batch_size: int):
        return lambda: smoothgrad(
            model, x, target, n=samples, sigma=sigma, batch_size=batch_size, seed=0
        )

    same = captum_k * 2
    check = max_difference(ours(same)(), theirs())
    variants = {"captum": theirs, **{f"gradlens@{b}": ours(b) for b in sorted({same, *sweep})}}
    return f"SmoothGrad (B=2, {samples} samples, {size}px)", same, measure(variants, repeats), check


def bench_occlusion(model, size: int, perturbations: int, sweep: list[int], repeats: int):
    from captum.attr import Occlusion

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    target = [1]
    captum = Occlusion(model)

    def theirs():
        return captum.attribute(
            x,
            target=target,
            sliding_window_shapes=(3, 16, 16),
            strides=(3, 8, 8),
            perturbations_per_eval=perturbations,
        )

    def ours(batch_size: int):
        return lambda: occlusion(
            model, x, target, window=(3, 16, 16), stride=(3, 8, 8), batch_size=batch_size
        )

    same = perturbations * 1
    check = max_difference(ours(same)(), theirs())
    variants = {"captum": theirs, **{f"gradlens@{b}": ours(b) for b in sorted({same, *sweep})}}
    positions = ((size - 16 + 7) // 8 + 1) ** 2
    return (
        f"Occlusion (B=1, w16 s8, {size}px, {positions} win)",
        same,
        measure(variants, repeats),
        check,
    )


class _UnsharedBlock(nn.Module):
    """A torchvision BasicBlock (same modules and weights) calling two ReLU modules."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        identity = x if b.downsample is None else b.downsample(x)
        out = b.bn2(b.conv2(self.relu1(b.bn1(b.conv1(x)))))
        return self.relu2(out + identity)


def captum_deeplift_resnet(model: nn.Module) -> nn.Module:
    """ResNet-18's weights with unshared ReLUs and no max pooling (see the docstring)."""
    copy = torchvision.models.resnet18()
    copy.load_state_dict(model.state_dict())
    copy.maxpool = nn.Identity()
    copy.relu = nn.ReLU()
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stage = getattr(copy, name)
        setattr(copy, name, nn.Sequential(*(_UnsharedBlock(block) for block in stage)))
    return copy.eval()


def bench_deeplift(model, size: int, repeats: int):
    from captum.attr import DeepLift

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    target = [1, 2]
    captum = DeepLift(model)

    def theirs():
        return captum.attribute(x, target=target)

    def ours():
        return deeplift(model, x, target)

    check = max_difference(ours(), theirs())
    variants = {"captum": theirs, "gradlens@2": ours}
    return f"DeepLift (B=2, {size}px)", 2, measure(variants, repeats), check


def bench_deeplift_shap(model, size: int, count: int, sweep: list[int], repeats: int):
    from captum.attr import DeepLiftShap

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    background = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))
    target = [1, 2]
    captum = DeepLiftShap(model)

    def theirs():
        return captum.attribute(x, background, target=target)

    def ours(batch_size: int):
        return lambda: deeplift_shap(model, x, target, baselines=background, batch_size=batch_size)

    same = 2 * count
    check = max_difference(ours(same)(), theirs())
    variants = {"captum": theirs, **{f"gradlens@{b}": ours(b) for b in sorted({same, *sweep})}}
    return f"DeepLiftShap (B=2, N={count}, {size}px)", same, measure(variants, repeats), check


def bench_gradient_shap(model, size: int, count: int, samples: int, sweep: list[int], repeats):
    from captum.attr import GradientShap

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    background = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))
    target = [1, 2]
    captum = GradientShap(model)

    def theirs():
        torch.manual_seed(0)
        np.random.seed(0)
        return captum.attribute(x, background, target=target, n_samples=samples, stdevs=0.1)

    def ours(batch_size: int):
        return lambda: gradient_shap(
            model,
            x,
            target,
            baselines=background,
            n=samples,
            stdevs=0.1,
            batch_size=batch_size,
            seed=0,
        )

    same = 2 * samples
    check = max_difference(ours(same)(), theirs())
    variants = {"captum": theirs, **{f"gradlens@{b}": ours(b) for b in sorted({same, *sweep})}}
    label = f"GradientShap (B=2, N={count}, {samples} smp, {size}px)"
    return label, same, measure(variants, repeats), check


def report(rows, clock: int, title: str) -> None:
    """One table for the wall (``clock=0``) or CPU (``clock=1``) medians."""
    print(f"\n{title}")
    header = (
        f"{'method':<40} {'Captum s':>9} {'gradlens same batch':>21} {'ratio':>6}   "
        f"{'best batch':>10} {'best s':>8} {'ratio':>6}   {'max |diff|':>10}"
    )
    print(header)
    print("-" * len(header))
    for label, same, times, check in rows:
        captum = times["captum"][clock]
        ours = {int(name.split("@")[1]): t[clock] for name, t in times.items() if name != "captum"}
        best = min(ours, key=ours.get)
        print(
            f"{label:<40} {captum:9.3f} {ours[same]:14.3f} (@{same:>3}) "
            f"{ours[same] / captum:5.2f}x   "
            f"{best:>10} {ours[best]:8.3f} {ours[best] / captum:5.2f}x   {check:10.1e}"
        )
    print("  sweep (gradlens batch size: median s):")
    for label, _, times, _ in rows:
        sweep = ", ".join(
            f"{n.split('@')[1]}: {t[clock]:.3f}" for n, t in times.items() if n != "captum"
        )
        print(f"    {label}: {sweep}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64px images, one round (a smoke run)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per variant (default 3)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="image size for IG and SmoothGrad (default 224)"
    )
    parser.add_argument(
        "--occlusion-size", type=int, default=None, help="image size for occlusion (default 224)"
    )
    parser.add_argument(
        "--only",
        choices=["ig", "smoothgrad", "occlusion", "deeplift", "deeplift_shap", "gradient_shap"],
        action="append",
        help="run only these",
    )
    args = parser.parse_args()
    size = args.size or (64 if args.quick else 224)
    occlusion_size = args.occlusion_size or (64 if args.quick else 224)
    repeats = args.repeats or (1 if args.quick else 3)
    only = set(
        args.only or ["ig", "smoothgrad", "occlusion", "deeplift", "deeplift_shap", "gradient_shap"]
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # Captum warns about hooks and batch sizes

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    print(
        f"ResNet-18 (random init), CPU, {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}; "
        f"medians of {repeats} interleaved rounds after 1 warm-up"
    )
    rows = []
    if "ig" in only:
        rows.append(bench_integrated_gradients(model, size, 32, 16, [8, 32, 64], repeats))
    if "smoothgrad" in only:
        rows.append(bench_smoothgrad(model, size, 16, 4, [16, 32], repeats))
    if "occlusion" in only:
        rows.append(bench_occlusion(model, occlusion_size, 16, [32, 64, 128], repeats))
    if only & {"deeplift", "deeplift_shap"}:
        unshared = captum_deeplift_resnet(model)
        if "deeplift" in only:
            rows.append(bench_deeplift(unshared, size, repeats))
        if "deeplift_shap" in only:
            rows.append(bench_deeplift_shap(unshared, size, 8, [4, 32], repeats))
    if "gradient_shap" in only:
        rows.append(bench_gradient_shap(model, size, 8, 16, [8, 16], repeats))
    report(rows, 0, "wall time")
    report(rows, 1, "process CPU time")


if __name__ == "__main__":
    main()
