"""CAM cost on CPU: gradlens against pytorch-grad-cam, Captum and torchcam, measured in one run.

    python benchmarks/bench_cam.py [--quick] [--repeats N] [--only SECTION] [--skip-scorecam]
        [--skip-memory]

1. Grad-CAM on ResNet-50 (random init, batch 8, 224x224, layer4): median time and ratio to a
   plain ``inference_mode`` forward, for a forward with autograd, gradlens.gradcam,
   pytorch-grad-cam GradCAM, Captum LayerGradCam, torchcam GradCAM; and gradlens with 10
   targets per image (ratio to one target).
Times are the median and the minimum wall time of interleaved runs (the minimum is the
figure least disturbed by other processes sharing the machine).

2. Score-CAM on ResNet-18 (batch 1, 224x224, layer4): gradlens at its defaults against
   pytorch-grad-cam and torchcam at theirs, and each gradlens lever taken away in turn
   (inference_mode -> no_grad, batch 16 -> 32, constant-channel skipping off,
   channels-last masked inputs off, BatchNorm folding off).
3. Peak memory: growth of the peak RSS (``VmHWM``, reset before the measured call; else
   ``ru_maxrss``) in a fresh subprocess per case: inference forward, gradlens.gradcam, Captum
   LayerGradCam, a forward with the whole-network tape.

Targets (issue 3): gradcam <= 1.10x the inference forward; 10 targets <= 2x one target;
gradcam peak memory <= 1.1x the inference forward's; Score-CAM <= 0.8x the faster peer.
``--quick`` uses batch 2 at 128x128 for Grad-CAM and 112x112 for Score-CAM, 3 repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import torch  # noqa: E402
import torchvision  # noqa: E402

import gradlens  # noqa: E402
import gradlens.cam as C  # noqa: E402
import gradlens.cam.score_cam as score_cam  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _memory import growth, median_growth, print_growth  # noqa: E402
from _timing import median_and_min, print_median_and_min  # noqa: E402

MEMORY_CASES = ["inference forward", "gradlens.gradcam", "Captum LayerGradCam", "full-tape forward"]


def resnet(depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, f"resnet{depth}")().eval()


# -- 1. Grad-CAM --------------------------------------------------------------------------


def gradcam_cases(model: torch.nn.Module, x: torch.Tensor) -> dict:
    top = model(x).argmax(1).detach()

    def plain() -> object:
        with torch.inference_mode():
            return model(x)

    def with_autograd() -> object:
        with torch.enable_grad():
            return model(x)

    cases = {
        "plain inference_mode forward": plain,
        "forward with autograd": with_autograd,
        "gradlens.gradcam": lambda: C.gradcam(model, x, "layer4"),
    }
    try:
        from pytorch_grad_cam import GradCAM

        pgc_model = copy.deepcopy(model)
        pgc = GradCAM(pgc_model, [pgc_model.layer4])
        cases["pytorch-grad-cam GradCAM"] = lambda: pgc(x, targets=None)
    except ImportError:
        pass
    try:
        from captum.attr import LayerGradCam

        captum_model = copy.deepcopy(model)
        captum = LayerGradCam(captum_model, captum_model.layer4)
        cases["Captum LayerGradCam"] = lambda: captum.attribute(x, top, relu_attributions=True)
    except ImportError:
        pass
    try:
        from torchcam.methods import GradCAM as TorchcamGradCAM

        tc_model = copy.deepcopy(model)
        tc = TorchcamGradCAM(tc_model, "layer4")

        def run_torchcam() -> object:
            scores = tc_model(x)
            return tc(class_idx=scores.argmax(1).tolist(), scores=scores)

        cases["torchcam GradCAM"] = run_torchcam
    except ImportError:
        pass
    return cases


def bench_gradcam(batch: int, size: int, repeats: int) -> dict[str, float]:
    model = resnet(50)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    cases = gradcam_cases(model, x)
    ten = torch.randint(0, 1000, (batch, 10), generator=torch.Generator().manual_seed(2))
    cases["gradlens.gradcam, 10 targets"] = lambda: C.gradcam(model, x, "layer4", ten)
    print(
        f"\nResNet-50, batch {batch}, {size}x{size}, {torch.get_num_threads()} threads, "
        f"{repeats} repeats"
    )
    medians = median_and_min(cases, repeats=repeats)
    print_median_and_min(
        medians,
        "plain inference_mode forward",
        "Grad-CAM (ratio to the plain inference_mode forward)",
    )
    ten, one = medians["gradlens.gradcam, 10 targets"], medians["gradlens.gradcam"]
    print(
        f"10 targets / 1 target (gradlens): median {ten[0] / one[0]:.2f}x, "
        f"min {ten[1] / one[1]:.2f}x  (target <= 2x)"
    )
    return medians


# -- 2. Score-CAM -------------------------------------------------------------------------


class _NoGradTorch:
    """``torch`` with ``inference_mode`` replaced by ``no_grad``: gradlens' Score-CAM without
    that lever."""

    def __getattr__(self, name: str) -> object:
        if name == "inference_mode":
            return lambda *a, **k: torch.no_grad()
        return getattr(torch, name)


@contextlib.contextmanager
def without_inference_mode():
    score_cam.torch = _NoGradTorch()
    try:
        yield
    finally:
        score_cam.torch = torch


def bench_scorecam(size: int, repeats: int) -> dict[str, float]:
    model = resnet(18)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    a = gradlens.extract(model, x, "layer4")["layer4"].flatten(2)
    zero = int((a.amax(2) == a.amin(2)).sum())

    def no_grad_lever() -> object:
        with without_inference_mode():
            return C.scorecam(model, x, "layer4")

    cases = {"gradlens.scorecam (defaults)": lambda: C.scorecam(model, x, "layer4")}
    try:
        from pytorch_grad_cam import ScoreCAM

        pgc_model = copy.deepcopy(model)
        pgc = ScoreCAM(pgc_model, [pgc_model.layer4])
        cases["pytorch-grad-cam ScoreCAM (defaults)"] = lambda: pgc(x, targets=None)
    except ImportError:
        pass
    try:
        from torchcam.methods import ScoreCAM as TorchcamScoreCAM

        tc_model = copy.deepcopy(model)
        tc = TorchcamScoreCAM(tc_model, "layer4")

        def run_torchcam() -> object:
            with torch.inference_mode():
                scores = tc_model(x)
            return tc(class_idx=scores.argmax(1).tolist())

        cases["torchcam ScoreCAM (defaults)"] = run_torchcam
    except ImportError:
        pass
    cases["gradlens, no_grad instead of inference_mode"] = no_grad_lever
    cases["gradlens, batch_size=32"] = lambda: C.scorecam(model, x, "layer4", batch_size=32)
    cases["gradlens, skip_constant=False"] = lambda: C.scorecam(
        model, x, "layer4", skip_constant=False
    )
    cases["gradlens, channels_last=False"] = lambda: C.scorecam(
        model, x, "layer4", channels_last=False
    )
    cases["gradlens, fold_batchnorm=False"] = lambda: C.scorecam(
        model, x, "layer4", fold_batchnorm=False
    )
    print(
        f"\nResNet-18, batch 1, {size}x{size}, layer4 (512 channels, {zero} constant), "
        f"{torch.get_num_threads()} threads, {repeats} repeats, no warm-up "
        "(each run is 500+ forwards)"
    )
    medians = median_and_min(cases, repeats=repeats, warmup=0)
    print_median_and_min(
        medians, "gradlens.scorecam (defaults)", "Score-CAM (ratio to gradlens at its defaults)"
    )
    peers = [v for k, v in medians.items() if k.startswith(("pytorch-grad-cam", "torchcam"))]
    if peers:
        ours = medians["gradlens.scorecam (defaults)"]
        median, low = ours[0] / min(p[0] for p in peers), ours[1] / min(p[1] for p in peers)
        print(f"gradlens / faster peer: median {median:.2f}x, min {low:.2f}x  (target <= 0.8x)")
    return medians


# -- 3. peak memory -----------------------------------------------------------------------


def memory_case(name: str, batch: int, size: int) -> float:
    """Peak RSS growth (MB) of one call of case ``name``, in this (fresh) process, after one
    call of the same case on a tiny input (thread pools, kernels and other one-time lazy
    initialisation are not counted)."""
    model = resnet(50)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    top = torch.zeros(batch, dtype=torch.long)
    if name == "inference forward":

        def run(inputs: torch.Tensor, target: torch.Tensor) -> object:
            with torch.inference_mode():
                return model(inputs)

    elif name == "gradlens.gradcam":

        def run(inputs: torch.Tensor, target: torch.Tensor) -> object:
            return C.gradcam(model, inputs, "layer4", target)

    elif name == "Captum LayerGradCam":
        from captum.attr import LayerGradCam

        captum = LayerGradCam(model, model.layer4)

        def run(inputs: torch.Tensor, target: torch.Tensor) -> object:
            return captum.attribute(inputs, target, relu_attributions=True)

    elif name == "full-tape forward":

        def run(inputs: torch.Tensor, target: torch.Tensor) -> object:
            return model(inputs)  # the tape stays alive with the result

    else:
        raise ValueError(name)
    run(x[:1, :, :64, :64], top[:1])
    return growth(lambda: run(x, top))


def bench_memory(batch: int, size: int, runs: int) -> dict[str, float]:
    """Median over ``runs`` fresh processes of each case's peak RSS growth (MB)."""
    grown = median_growth(os.path.abspath(__file__), MEMORY_CASES, batch, size, runs)
    title = (
        f"Peak RSS growth, ResNet-50 batch {batch}, {size}x{size} "
        f"(median of {runs} fresh processes per case)"
    )
    print_growth(grown, title, "inference forward")
    return grown


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--only", choices=["gradcam", "memory", "scorecam"], default=None, help="run one section"
    )
    parser.add_argument("--skip-scorecam", action="store_true")
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
    batch, size, score_size, repeats = (2, 128, 112, 3) if args.quick else (8, 224, 224, 5)
    repeats = args.repeats or repeats
    start = time.perf_counter()
    if args.only in (None, "gradcam"):
        bench_gradcam(batch, size, repeats)
    if args.only == "memory" or (args.only is None and not args.skip_memory):
        bench_memory(batch, size, runs=3 if args.quick else 5)
    if args.only == "scorecam" or (args.only is None and not args.skip_scorecam):
        bench_scorecam(score_size, min(repeats, 3))
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
