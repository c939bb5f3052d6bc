"""Metric speed against Quantus 0.6: pixel flipping, region perturbation, ROAD, faithfulness
correlation, max-sensitivity and MPRT on ResNet-18.

One run on a random-init torchvision ResNet-18 (CPU, eval mode, float32) and ``--images``
random images of ``--size`` px (default 64 of 224). The attributions are Integrated
Gradients maps (gradlens, zero baseline, ``--ig-steps`` steps, reduced to one value per
pixel with :func:`gradlens.maps.to_2d`), computed once before any timing; Quantus gets them
as ``(B, 1, H, W)``, which it broadcasts over the channels. The target is the model's top
class on the clean image, given to both. Both libraries see the same inputs, attributions,
baseline and number of steps/runs/samples, and each row checks that both give the same
scores (largest absolute difference, against the stated tolerance):

* pixel flipping: ``S = 32`` steps (gradlens' default) with the "black" fill (the
  sample's minimum); Quantus ``features_in_step = 3 H W / S`` (Quantus counts elements: a
  pixel's 3 channels tie and are removed together; its assertion that this divides
  ``H W``, which no whole number of pixels does at 224 px, is lifted). Quantus' default
  ``features_in_step=1`` (150528 forwards per image) is not usable at 224 px. Checked:
  ``curve[:, 1:]`` against Quantus' curve.
* region perturbation: patches of 8 px (Quantus' default), MoRF, ``regions = 32`` (Quantus'
  default 100 triples the time of both sides and changes nothing in the ratio), black
  fill. Checked: ``curve[:, 0] - curve[:, 1:]`` against Quantus' drops.
* ROAD: ``S = 16``, Quantus ``percentages = 100 k / S`` for ``k = 1..S-1`` (exact pixel
  counts), MoRF, noise 0 (so the accuracies can be compared; the noise is one draw per
  image on both sides and changes no work). Quantus 0.6's ROAD ranks elements but imputes
  pixels and so raises on 3-channel images with one map per pixel; it is given the
  attributions as ``(B, 3, H, W)`` with channels 1 and 2 below every pixel's value and
  ``a_size = H * W`` (its own code path and ranking then remove the top pixels). Checked:
  the mean accuracy per percentage.
* faithfulness correlation: ``runs = 50`` (Quantus' default 100 doubles both sides),
  ``subset_size = 224`` pixels (Quantus' default 224, counted as ``3 * 224`` elements),
  black fill, logits (Quantus' default ``softmax=False``). Both remove the same random
  subsets: Quantus' ``np.random.choice`` is replaced by a function handing it ours
  (cheaper than its own draw, so the Quantus time is if anything an underestimate).
* max-sensitivity: ``nr_samples = 10`` (Quantus' default 200 is 20x both sides), uniform
  noise in ``[-0.2, 0.2]`` (Quantus' default ``lower_bound``), relative to ``||Phi(x)||``
  (Quantus' default); both add the same noise (Quantus through a ``perturb_func`` that
  replays it).
* MPRT: cascading from the top (Quantus' default ``layer_order``) over the 62 modules with
  ``reset_parameters`` (conv, batch norm, linear), no normalisation; Quantus' layer seeds
  are replayed from gradlens' ``generator``, so both randomise identically. Checked: the
  Spearman correlation per layer.

Max-sensitivity and MPRT re-explain perturbed inputs / randomised models: both sides call
the *same* explanation function (gradlens ``saliency``, signed gradient reduced with
``to_2d``), so the rows compare the metric machinery, not two IG implementations (IG would
multiply both sides' time by its steps).

Where both libraries must run the same forwards (or explanation calls) and those dominate,
the ratio is bounded: the "floor" columns count the model forwards (chunks of
``--images`` images) or explanation calls each side runs, time one of them in the same
run, and give the best possible ratio ``Quantus time / (Quantus' count x unit time)``.

Target: each ratio (Quantus time / gradlens time) >= 10x.

Usage::

    python benchmarks/bench_metrics.py [--quick] [--repeats N] [--threads T]
        [--images B] [--size S]
        [--only pixel_flipping|region_perturbation|road|faithfulness_correlation|
                max_sensitivity|mprt ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import quantus
import torch
import torchvision
from quantus.helpers import asserts
from torch import nn

from gradlens import metrics
from gradlens.attribution import integrated_gradients, saliency
from gradlens.maps import to_2d

QUIET = {"abs": False, "normalise": False, "disable_warnings": True, "display_progressbar": False}
ALL = [
    "pixel_flipping",
    "region_perturbation",
    "road",
    "faithfulness_correlation",
    "max_sensitivity",
    "mprt",
]


@dataclass
class Setting:
    steps: int  # pixel flipping
    regions: int  # region perturbation
    road_steps: int
    runs: int  # faithfulness correlation
    subset: int  # pixels
    samples: int  # max-sensitivity


FULL = Setting(steps=32, regions=32, road_steps=16, runs=50, subset=224, samples=10)
QUICK = Setting(steps=16, regions=8, road_steps=8, runs=8, subset=16, samples=3)


@dataclass
class Case:
    """The data every row shares."""

    model: nn.Module
    x: torch.Tensor  # (B, 3, H, W) float32
    y: torch.Tensor  # (B,) int64
    maps: torch.Tensor  # (B, H, W) float32 IG maps
    saliency_maps: torch.Tensor  # (B, H, W) float32, Phi(x) of the re-explaining rows

    @property
    def batch(self) -> int:
        return int(self.x.shape[0])


@dataclass
class Row:
    label: str
    quantus: float
    gradlens: float
    diff: float
    tolerance: float
    units_quantus: int  # forwards (or explanation calls) Quantus runs
    units_gradlens: int
    unit: str  # "fwd" or "expl"


def explain(model: nn.Module, x: torch.Tensor, target: Any = None) -> torch.Tensor:
    """The one explanation function of both sides: signed saliency reduced to ``(B, H, W)``."""
    return to_2d(saliency(model, x, target=target, abs=False)).detach()


def quantus_explain(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
    """Quantus' ``explain_func``: :func:`explain` as ``(B, 1, H, W)`` numpy."""
    x = torch.as_tensor(inputs, dtype=torch.float32)
    return explain(model, x, torch.as_tensor(targets))[:, None].numpy()


def run_quantus(metric: Any, case: Case, a_batch: np.ndarray | None = None, **kwargs: Any) -> Any:
    a = case.maps[:, None].numpy() if a_batch is None else a_batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(
            model=case.model,
            x_batch=case.x.numpy().copy(),
            y_batch=case.y.numpy(),
            a_batch=a.copy(),  # Quantus may edit it in place
            channel_first=True,
            device="cpu",
            batch_size=case.batch,
            **kwargs,
        )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(
    theirs: Callable[[], Any], ours: Callable[[], Any], repeats: int
) -> tuple[float, float, Any, Any]:
    """Median seconds of interleaved runs (Quantus first in each round) and the last results."""
    tq, tg = [], []
    rq = rg = None
    for _ in range(repeats):
        t, rq = timed(theirs)
        tq.append(t)
        t, rg = timed(ours)
        tg.append(t)
    return statistics.median(tq), statistics.median(tg), rq, rg


def max_abs(a: Any, b: Any) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    both = ~(np.isnan(a) & np.isnan(b))
    return float(np.abs(a - b)[both].max())


# --- the rows ---------------------------------------------------------------------------------


def bench_pixel_flipping(case: Case, s: Setting, repeats: int) -> Row:
    _, _, h, w = case.x.shape
    metric = quantus.PixelFlipping(
        features_in_step=3 * h * w // s.steps, perturb_baseline="black", **QUIET
    )

    def ours() -> Any:
        return metrics.pixel_flipping(
            case.model, case.x, case.maps, case.y, steps=s.steps, fill="min",
            batch_size=case.batch,
        )  # fmt: skip

    def theirs() -> Any:
        # Quantus asserts that features_in_step divides H * W, which no whole number of
        # 3-channel pixels does when H * W has no factor 3: the assertion is lifted (the
        # steps themselves are whole pixels)
        real = asserts.assert_features_in_step
        asserts.assert_features_in_step = lambda **kwargs: None
        try:
            return run_quantus(metric, case, softmax=True)
        finally:
            asserts.assert_features_in_step = real

    tq, tg, rq, rg = measure(theirs, ours, repeats)
    return Row(
        f"pixel flipping (S={s.steps})", tq, tg, max_abs(rg.curve[:, 1:], rq), 1e-5,
        s.steps, s.steps + 2, "fwd",
    )  # fmt: skip


def bench_region_perturbation(case: Case, s: Setting, repeats: int) -> Row:
    metric = quantus.RegionPerturbation(
        patch_size=8, regions_evaluation=s.regions, order="morf", perturb_baseline="black", **QUIET
    )

    def ours() -> Any:
        return metrics.region_perturbation(
            case.model, case.x, case.maps, case.y, patch_size=8, regions=s.regions,
            order="morf", fill="min", batch_size=case.batch,
        )  # fmt: skip

    tq, tg, rq, rg = measure(lambda: run_quantus(metric, case, softmax=True), ours, repeats)
    drops = rg.curve[:, :1] - rg.curve[:, 1:]
    return Row(
        f"region perturbation (8px, {s.regions} regions)", tq, tg, max_abs(drops, rq), 1e-5,
        s.regions + 1, s.regions + 2, "fwd",
    )  # fmt: skip


def bench_road(case: Case, s: Setting, repeats: int) -> Row:
    _, _, h, w = case.x.shape
    percentages = [100 * k / s.road_steps for k in range(1, s.road_steps)]
    # channel 0 holds the map, channels 1 and 2 rank below every pixel (see the docstring)
    low = case.maps.flatten(1).amin(1).view(-1, 1, 1) - 1
    a_batch = torch.stack([case.maps, low.expand_as(case.maps), low.expand_as(case.maps)], 1)

    def theirs() -> Any:
        metric = quantus.ROAD(percentages=percentages, noise=0.0, **QUIET)
        metric.a_size = h * w
        run_quantus(metric, case, a_batch=a_batch.numpy(), softmax=True)
        return np.array([metric.evaluation_scores[p] for p in percentages])

    def ours() -> Any:
        return metrics.road(
            case.model, case.x, case.maps, case.y, steps=s.road_steps, noise=0.0,
            score="accuracy", batch_size=case.batch,
        )  # fmt: skip

    tq, tg, rq, rg = measure(theirs, ours, repeats)
    accuracy = rg.curve[:, 1 : s.road_steps].mean(0)
    return Row(
        f"ROAD (S={s.road_steps}, MoRF)", tq, tg, max_abs(accuracy, rq), 1e-12,
        s.road_steps - 1, s.road_steps + 2, "fwd",
    )  # fmt: skip


def bench_faithfulness_correlation(case: Case, s: Setting, repeats: int) -> Row:
    b, _, h, w = case.x.shape
    g = torch.Generator().manual_seed(5)
    subsets = torch.stack(
        [torch.stack([torch.randperm(h * w, generator=g)[: s.subset] for _ in range(s.runs)])
         for _ in range(b)]
    )  # fmt: skip
    # Quantus draws one subset of elements per run and sample (run-major): hand it ours,
    # every channel of each pixel
    handed = [
        np.concatenate([subsets[i, r].numpy() + c * h * w for c in range(3)])
        for r in range(s.runs)
        for i in range(b)
    ]

    def theirs() -> Any:
        drawn: Iterator[np.ndarray] = iter(handed)
        real = np.random.choice
        np.random.choice = lambda *args, **kwargs: next(drawn)  # type: ignore[assignment]
        try:
            metric = quantus.FaithfulnessCorrelation(
                nr_runs=s.runs, subset_size=3 * s.subset, perturb_baseline="black",
                return_aggregate=False, **QUIET,
            )  # fmt: skip
            return run_quantus(metric, case, softmax=False)
        finally:
            np.random.choice = real  # type: ignore[assignment]

    def ours() -> Any:
        return metrics.faithfulness_correlation(
            case.model, case.x, case.maps, case.y, subsets=subsets, fill="min", score="logit",
            batch_size=case.batch,
        )  # fmt: skip

    tq, tg, rq, rg = measure(theirs, ours, repeats)
    return Row(
        f"faithfulness correlation ({s.runs} runs, {s.subset} px)", tq, tg,
        max_abs(rg.scores, rq), 1e-4, s.runs + 1, s.runs + 2, "fwd",
    )  # fmt: skip


def bench_max_sensitivity(case: Case, s: Setting, repeats: int) -> Row:
    steps = torch.randint(
        -204, 205, (s.samples, *case.x.shape), generator=torch.Generator().manual_seed(7)
    )
    noise = steps.float() / 1024  # in [-0.2, 0.2]

    def theirs() -> Any:
        draws: Iterator[torch.Tensor] = iter(noise)

        def perturb(arr: np.ndarray, indices: Any, **_: Any) -> np.ndarray:
            return arr + next(draws).reshape(arr.shape[0], -1).numpy()

        metric = quantus.MaxSensitivity(
            nr_samples=s.samples, perturb_func=perturb, lower_bound=0.2, disable_warnings=True,
            display_progressbar=False,
        )  # fmt: skip
        a = case.saliency_maps[:, None].numpy()
        return run_quantus(metric, case, a_batch=a, explain_func=quantus_explain)

    def ours() -> Any:
        return metrics.max_sensitivity(
            case.model, case.x, case.saliency_maps, case.y, method=explain,
            perturbations=noise, batch_size=case.batch,
        )  # fmt: skip

    tq, tg, rq, rg = measure(theirs, ours, repeats)
    return Row(
        f"max-sensitivity ({s.samples} samples)", tq, tg, max_abs(rg.scores, rq), 1e-5,
        s.samples, s.samples, "expl",
    )  # fmt: skip


def bench_mprt(case: Case, s: Setting, repeats: int) -> Row:
    layers = [n for n, m in case.model.named_modules() if hasattr(m, "reset_parameters")][::-1]
    seeds = torch.randint(
        2**62, (len(layers),), generator=torch.Generator().manual_seed(5)
    ).tolist()

    def theirs() -> Any:
        order = iter(seeds)
        real = torch.manual_seed
        torch.manual_seed = lambda seed: real(next(order))  # type: ignore[assignment]
        try:
            metric = quantus.MPRT(
                layer_order="top_down", normalise=False, disable_warnings=True,
                display_progressbar=False,
            )  # fmt: skip
            a = case.saliency_maps[:, None].numpy()
            return run_quantus(metric, case, a_batch=a, explain_func=quantus_explain)
        finally:
            torch.manual_seed = real  # type: ignore[assignment]

    def ours() -> Any:
        return metrics.model_parameter_randomisation(
            case.model, case.x, case.saliency_maps, case.y, method=explain, layers=layers,
            generator=torch.Generator().manual_seed(5), batch_size=case.batch,
        )  # fmt: skip

    tq, tg, rq, rg = measure(theirs, ours, repeats)
    per_layer = np.array([v for k, v in rq.items() if k != "original"]).T
    return Row(
        f"MPRT (cascading, {len(layers)} layers)", tq, tg, max_abs(rg.correlations, per_layer),
        1e-6, len(layers) + 1, len(layers), "expl",
    )  # fmt: skip


BENCHES = {
    "pixel_flipping": bench_pixel_flipping,
    "region_perturbation": bench_region_perturbation,
    "road": bench_road,
    "faithfulness_correlation": bench_faithfulness_correlation,
    "max_sensitivity": bench_max_sensitivity,
    "mprt": bench_mprt,
}


def unit_times(case: Case, repeats: int) -> dict[str, float]:
    """Median seconds of one forward of the whole batch and of one :func:`explain` call."""
    forward, explanation = [], []
    with torch.inference_mode():
        case.model(case.x)  # warm-up
    for _ in range(max(repeats, 2)):
        with torch.inference_mode():
            forward.append(timed(lambda: case.model(case.x))[0])
        explanation.append(timed(lambda: explain(case.model, case.x, case.y))[0])
    return {"fwd": statistics.median(forward), "expl": statistics.median(explanation)}


def report(rows: list[Row], units: dict[str, float], batch: int) -> None:
    print(
        f"\nunit times: forward of {batch} images {units['fwd']:.3f} s, "
        f"one explanation call on {batch} images {units['expl']:.3f} s"
    )
    header = (
        f"{'metric':<42} {'Quantus s':>9} {'gradlens s':>10} {'ratio':>7}   "
        f"{'units Q/g':>10} {'floor':>6}   {'max |diff|':>10} {'tol':>7} {'same':>4}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        floor = r.quantus / (r.units_quantus * units[r.unit])
        units_text = f"{r.units_quantus}/{r.units_gradlens} {r.unit}"
        same = "yes" if r.diff <= r.tolerance else "NO"
        print(
            f"{r.label:<42} {r.quantus:9.2f} {r.gradlens:10.2f} {r.quantus / r.gradlens:6.2f}x   "
            f"{units_text:>10} {floor:5.2f}x   {r.diff:10.1e} {r.tolerance:7.0e} {same:>4}"
        )


def make_case(images: int, size: int, ig_steps: int) -> Case:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        y = model(x).argmax(1)
    ig = integrated_gradients(model, x, y, steps=ig_steps, batch_size=images)
    maps = to_2d(ig).detach().float()
    return Case(model=model, x=x, y=y, maps=maps, saliency_maps=explain(model, x, y).float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 images of 64 px, few steps")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--images", type=int, default=None, help="images (default 64)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 224)")
    parser.add_argument("--ig-steps", type=int, default=None, help="IG steps (default 16)")
    parser.add_argument("--only", choices=ALL, action="append", help="run only these")
    args = parser.parse_args()
    setting = QUICK if args.quick else FULL
    images = args.images or (8 if args.quick else 64)
    size = args.size or (64 if args.quick else 224)
    ig_steps = args.ig_steps or (4 if args.quick else 16)
    if args.threads:
        torch.set_num_threads(args.threads)
    case = make_case(images, size, ig_steps)
    print(
        f"ResNet-18 (random init), CPU, {torch.get_num_threads()} thread(s), torch "
        f"{torch.__version__}, quantus {quantus.__version__}; {images} images of {size} px, "
        f"IG maps ({ig_steps} steps); medians of {args.repeats} interleaved round(s)"
    )
    rows = []
    for name in args.only or ALL:
        rows.append(BENCHES[name](case, setting, args.repeats))
        print(f"  {rows[-1].label}: Quantus {rows[-1].quantus:.2f} s, gradlens "
              f"{rows[-1].gradlens:.2f} s", flush=True)  # fmt: skip
    report(rows, unit_times(case, args.repeats), images)


if __name__ == "__main__":
    main()
