"""Feature extraction cost on ResNet-50 (random init, CPU): gradlens.extract vs a plain forward,
torchextractor and torchvision's create_feature_extractor.

    python benchmarks/bench_extract.py [--quick]

Prints median times and ratios to a plain ``inference_mode`` forward, measured in one run.
Targets: extract of layer1..layer4 <= 1.02x the plain forward; extract of layer2 alone no
more than 0.03 above torchvision's graph-truncated extractor.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians, print_table  # noqa: E402

import gradlens  # noqa: E402

STAGES = ["layer1", "layer2", "layer3", "layer4"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="batch 4 at 128x128, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    batch, size, repeats = (4, 128, 3) if args.quick else (16, 224, 5)
    repeats = args.repeats or repeats

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(batch, 3, size, size)

    def plain() -> object:
        with torch.inference_mode():
            return model(x)

    cases = {
        "plain inference_mode forward": plain,
        "gradlens.extract layer1..4": lambda: gradlens.extract(model, x, STAGES),
        "gradlens.extract layer2": lambda: gradlens.extract(model, x, "layer2"),
    }
    try:
        from torchvision.models.feature_extraction import create_feature_extractor

        tv_all = create_feature_extractor(model, {s: s for s in STAGES})
        tv_two = create_feature_extractor(model, {"layer2": "layer2"})

        def run_tv(extractor: torch.nn.Module) -> object:
            with torch.inference_mode():
                return extractor(x)

        cases["torchvision feature_extractor layer1..4"] = lambda: run_tv(tv_all)
        cases["torchvision feature_extractor layer2"] = lambda: run_tv(tv_two)
    except ImportError:
        pass
    try:
        import torchextractor

        # torchextractor hooks the model it is given for good: give it a copy, so that its
        # hooks (which keep every stage's output alive) do not run in the other cases
        te_all = torchextractor.Extractor(copy.deepcopy(model), STAGES)

        def run_te() -> object:
            with torch.inference_mode():
                return te_all(x)

        cases["torchextractor layer1..4"] = run_te
    except ImportError:
        te_all = None

    print(
        f"ResNet-50, batch {batch}, {size}x{size}, {torch.get_num_threads()} threads, "
        f"{repeats} repeats"
    )
    medians = interleaved_medians(cases, repeats=repeats)
    print_table(medians, "plain inference_mode forward", "feature extraction")
    base = medians["plain inference_mode forward"]
    if "torchvision feature_extractor layer2" in medians:
        ours = medians["gradlens.extract layer2"] / base
        theirs = medians["torchvision feature_extractor layer2"] / base
        print(
            f"\nlayer2 alone: gradlens {ours:.2f}x vs torchvision {theirs:.2f}x "
            f"(difference {ours - theirs:+.2f}; target <= +0.03)"
        )
    print(
        f"layer1..4: gradlens {medians['gradlens.extract layer1..4'] / base:.2f}x (target <= 1.02x)"
    )
    if te_all is not None:
        for handle in getattr(te_all, "handles", []) or []:
            handle.remove()


if __name__ == "__main__":
    main()
