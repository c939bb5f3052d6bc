"""The floor under LRP's time: what any z+ implementation of ``epsilon_plus_flat`` must run
on ResNet-50 (batch 8, 224 px), timed piece by piece against Input x Gradient.

LRP with the z+ rule on every convolution needs, besides the model's own forward, per
convolution: the map ``W+ x`` (a second convolution forwards), ``W+^T s`` (the input-gradient
convolution, as Input x Gradient runs) and three elementwise passes over the layer's
activations (the stabilised denominator ``z + eps sign(z)``, the division ``s = R / z``,
the product with the input). Each piece is timed alone on the convolutions' real inputs
and outputs (captured from one forward), in interleaved rounds with
``gradlens.input_x_gradient``; the sum over a round, divided by that round's Input x
Gradient time, is the best ratio LRP could reach on this machine with no other work
at all (no ReLU or pooling backward, no Python).

Usage::

    python benchmarks/bench_lrp_floor.py [--rounds 5] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch.nn.grad import conv2d_input

from gradlens import input_x_gradient
from gradlens.relevance.rules import stabilize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    target = torch.arange(8)
    calls: list[tuple[torch.nn.Conv2d, torch.Tensor, torch.Tensor]] = []

    def keep(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(module, torch.nn.Conv2d)
        calls.append((module, inputs[0], out))

    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_hook(keep) for m in convolutions]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    fresh = [a.clone() for _, a, _ in calls]  # each stands for an input-gradient result

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def positive_maps() -> None:
        for m, a, _ in calls:
            m._conv_forward(a, m.weight.clamp(min=0), None)

    def input_gradients() -> None:
        for m, a, z in calls:
            conv2d_input(a.shape, m.weight, z, m.stride, m.padding, m.dilation, m.groups)

    def elementwise() -> None:
        for (_, a, z), c in zip(calls, fresh):
            _ = z / stabilize(z, 1e-6)
            c.mul_(a)

    cases: dict[str, Callable[[], object]] = {
        "the model's forward": forward,
        "W+ x convolutions": positive_maps,
        "input-gradient convolutions": input_gradients,
        "3 elementwise passes": elementwise,
        "input_x_gradient": lambda: input_x_gradient(model, x, target),
    }
    for case in cases.values():
        case()
    rounds = []
    for _ in range(args.rounds):
        timed = {}
        for name, case in cases.items():
            start = time.perf_counter()
            case()
            timed[name] = time.perf_counter() - start
        rounds.append(timed)
    threads = torch.get_num_threads()
    print(f"ResNet-50, batch 8, 224 px, {threads} threads, {len(calls)} convolutions")
    for name in cases:
        print(f"{name:30s} median {statistics.median(r[name] for r in rounds) * 1e3:7.0f} ms")
    pieces = [n for n in cases if n != "input_x_gradient"]
    floors = [sum(r[n] for n in pieces) / r["input_x_gradient"] for r in rounds]
    convs = [sum(r[n] for n in pieces[:3]) / r["input_x_gradient"] for r in rounds]
    print("floor / Input x Gradient, per round:", " ".join(f"{q:.2f}" for q in floors))
    print(f"  median {statistics.median(floors):.2f}x (target of issue 19: <= 1.3x)")
    print("without the elementwise passes:", " ".join(f"{q:.2f}" for q in convs))
    print(f"  median {statistics.median(convs):.2f}x")


if __name__ == "__main__":
    main()
