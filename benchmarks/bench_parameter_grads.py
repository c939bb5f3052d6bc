"""Peak memory of gradient methods with the parameters off the autograd tape (issue 18).

    python benchmarks/bench_parameter_grads.py [--quick] [--runs N]

Every gradient method records with ``Recorder(parameter_grads=False)``: the parameters'
``requires_grad`` is off while it runs, so autograd keeps no layer inputs for parameter
gradients. Each case runs twice, each time in a fresh process (median of ``--runs``
processes, after one small warm-up call of the same kind):

* ``off``: as gradlens runs it;
* ``on``: the same call with the switch replaced by a no-op (the parameters stay on the
  tape, as before the change), by patching ``gradlens.core.recorder.parameters_without_grad``.

Cases (random init, CPU, eval mode):

* Grad-CAM on ResNet-50, batch 8, 224x224, ``layer4`` (the tape starts at ``layer4``: only
  the head is on it), and at ``layer3`` (``layer4`` on the tape too);
* Integrated Gradients on ResNet-18, batch 1, 224x224, 16 steps, ``batch_size=16`` (all
  steps in one forward; the whole network on the tape);
* ``token_attributions`` with Integrated Gradients (16 steps, ``batch_size=64``, all steps
  per forward) on a GPT-2 config with 4 layers and width 256 (``benchmarks/bench_generation.py``'s
  model), batch 4 x 64 tokens, explaining each sequence's summed log-probability of its
  last 16 tokens.

The figure is the growth of the peak RSS (``VmHWM``) during one call. Time is not
measured: this script is about memory, and on a shared machine memory figures are
reliable where time figures are not.

Run with ``PYTHONPATH=.`` from the repository root when gradlens is not installed from it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import warnings
from collections.abc import Callable

import torch
import torchvision

import gradlens
from gradlens import targets
from gradlens.core import recorder

sys.path.insert(0, os.path.dirname(__file__))
from _memory import growth, median_growth, print_growth  # noqa: E402

METHODS = ["gradcam layer4", "gradcam layer3", "integrated_gradients", "token_attributions"]


def _resnet(depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, f"resnet{depth}")().eval()


def _images(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def call(method: str, small: bool) -> Callable[[], object]:
    """One call of ``method`` at the benchmark size (``small``: the warm-up size)."""
    if method.startswith("gradcam"):
        model, layer = _resnet(50), method.split()[1]
        x = _images(1, 64) if small else _images(8, 224)
        return lambda: gradlens.gradcam(model, x, target=0, layer=layer)
    if method == "integrated_gradients":
        model = _resnet(18)
        x = _images(1, 64) if small else _images(1, 224)
        steps = 2 if small else 16
        return lambda: gradlens.integrated_gradients(model, x, 0, steps=steps, batch_size=16)
    if method == "token_attributions":
        from bench_generation import language_model

        model = language_model(512)
        batch, length = (1, 8) if small else (4, 64)
        ids = torch.randint(2, 512, (batch, length), generator=torch.Generator().manual_seed(2))
        score = targets.sequence(ids[:, length // 4 * 3 :] if small else ids[:, -16:])
        steps = 2 if small else 16
        return lambda: gradlens.token_attributions(
            model,
            ids,
            score,
            method="integrated_gradients",
            baseline=0,
            steps=steps,
            batch_size=64,
        )
    raise ValueError(method)


def memory_case(name: str) -> float:
    """Peak RSS growth (MB) of case ``name`` (``"<method> on|off"``) in this fresh process."""
    method, tape = name.rsplit(" ", 1)
    if tape == "on":
        recorder.parameters_without_grad = lambda model: contextlib.nullcontext()  # type: ignore[assignment]
    call(method, small=True)()
    return growth(call(method, small=False))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 process per case")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per case")
    parser.add_argument("--only", choices=METHODS, nargs="+", default=METHODS)
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # transformers' config notes
    if args.memory_case:
        with contextlib.redirect_stdout(io.StringIO()):
            grown = memory_case(args.memory_case)
        print(f"{grown:.1f}")
        return
    runs = 1 if args.quick else args.runs
    for method in args.only:
        cases = [f"{method} on", f"{method} off"]
        grown = median_growth(os.path.abspath(__file__), cases, 0, 0, runs)
        print_growth(
            grown,
            f"{method}: peak RSS growth of one call (median of {runs} fresh processes)",
            cases[0],
        )


if __name__ == "__main__":
    main()
