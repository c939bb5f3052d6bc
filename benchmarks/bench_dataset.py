"""Benchmark of gradlens.extract_dataset: throughput against a hand-written loop, and flat memory.

1. Throughput: ResNet-18 (random init), 2,048 synthetic 64x64 images in a TensorDataset,
   layers layer3 + layer4, batches of 64. The baseline is what people write by hand: a
   DataLoader, forward hooks on the two layers, a full forward under inference_mode and one
   ``np.save`` per batch and layer. Both run alternately ``--repeats`` times in this process
   (the order flips every round); the table gives the median and the best wall time and
   the median CPU time (user + system, all threads) of a pass, each with its ratio to the
   hand-written loop (target >= 0.95). CPU time is the steadier figure on a busy machine.

2. Memory: peak anonymous memory (``RssAnon`` in /proc/self/status: heap and tensors; the
   page cache and file-backed pages of the output files do not count) of extract_dataset
   over 512 and over 4,096 samples, each size in a fresh subprocess. The images are made
   on the fly by a map-style dataset, so the data itself takes no memory; a sampler thread
   reads RssAnon every millisecond during the run and keeps the maximum (the kernel keeps
   no high-water mark for anonymous memory alone: VmHWM includes file pages). The table
   gives both peaks and their ratio (target <= 1.10).

Both parts run with one torch thread by default (``--threads``): on a small machine shared
with other jobs, two threads that must meet at every operator's barrier turn each
descheduling into a stall, and the figures vary by a factor of two between passes.

Run: python benchmarks/bench_dataset.py [--repeats 5] [--samples 2048] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, TensorDataset

import gradlens
from gradlens.dataset import extract_dataset

LAYERS = ["layer3", "layer4"]


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def hand_written_loop(model: torch.nn.Module, loader: DataLoader, out: Path) -> None:
    """The loop people write today: hooks, a forward per batch, np.save per batch and layer."""
    stash: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: stash.__setitem__(name, o))
        for name in LAYERS
    ]
    try:
        with torch.inference_mode():
            for i, (x,) in enumerate(loader):
                model(x)
                for name in LAYERS:
                    np.save(out / f"{name}_{i:05d}.npy", stash[name].numpy())
    finally:
        for handle in handles:
            handle.remove()


def throughput(samples: int, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """``(wall seconds, CPU seconds)`` per pass of each contender; the passes alternate (and
    their order flips every round) so that changes of the machine's load hit both."""
    model = make_model()
    images = torch.randn(samples, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images), batch_size=64)
    runs = {
        "hand-written loop": lambda out: hand_written_loop(model, loader, out),
        "extract_dataset": lambda out: extract_dataset(model, loader, LAYERS, out, progress=False),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for run in runs.values():  # warm-up
            run(Path(tempfile.mkdtemp(dir=tmp)))
        for i in range(repeats):
            order = list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]
            for name, run in order:
                out = Path(tempfile.mkdtemp(dir=tmp))
                wall, cpu = time.perf_counter(), time.process_time()
                run(out)
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


class SyntheticImages(Dataset):
    """``n`` random 64x64 images made on the fly (image ``i`` is seeded with ``i``)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i))


def rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def memory_child(samples: int) -> None:
    """Run in a fresh process: peak RssAnon during extract_dataset over ``samples`` images."""
    model = make_model()
    loader = DataLoader(SyntheticImages(samples), batch_size=64)
    peak, stop = [rss_anon_kib()], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon_kib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    before = rss_anon_kib()
    with tempfile.TemporaryDirectory(dir=".") as out:
        sampler.start()
        start = time.perf_counter()
        extract_dataset(model, loader, LAYERS, out, progress=False)
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        written = sum(p.stat().st_blocks * 512 for p in Path(out).glob("*.npy"))
    print(json.dumps({"before": before, "peak": peak[0], "seconds": seconds, "written": written}))


def memory(samples: int) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            str(samples),
            "--threads",
            str(torch.get_num_threads()),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: steady figures on a shared machine; 0: torch's default)",
    )
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return

    print(
        f"gradlens {gradlens.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"\n1. Throughput: resnet18 (random init), {args.samples} images 3x64x64, "
        f"layers {' + '.join(LAYERS)}, "
        f"batch 64, median of {args.repeats}"
    )
    times = throughput(args.samples, args.repeats)
    base = "hand-written loop"
    stats = {
        name: {
            "median": statistics.median(w for w, _ in t),
            "best": min(w for w, _ in t),
            "cpu": statistics.median(c for _, c in t),
        }
        for name, t in times.items()
    }
    print(
        f"{'':<20}{'median s':>9}{'samples/s':>10}{'ratio':>7}"
        f"{'best s':>8}{'ratio':>7}{'CPU s':>7}{'ratio':>7}"
    )
    for name, st in stats.items():
        ratios = {k: stats[base][k] / st[k] for k in st}
        print(
            f"{name:<20}{st['median']:>9.2f}{args.samples / st['median']:>10.1f}"
            f"{ratios['median']:>7.3f}"
            f"{st['best']:>8.2f}{ratios['best']:>7.3f}{st['cpu']:>7.2f}{ratios['cpu']:>7.3f}"
        )
    ratio = stats[base]["median"] / stats["extract_dataset"]["median"]
    print(
        f"target: extract_dataset >= 0.95 x the hand-written loop (median samples/s) -> {ratio:.3f}"
    )

    print("\n2. Peak anonymous memory (RssAnon) of extract_dataset, each size in a fresh process")
    results = {n: memory(n) for n in (512, 4096)}
    print(
        f"{'samples':>8}{'before (MiB)':>14}{'peak (MiB)':>12}{'written (MiB)':>15}{'seconds':>9}"
    )
    for n, r in results.items():
        print(
            f"{n:>8}{r['before'] / 1024:>14.1f}{r['peak'] / 1024:>12.1f}"
            f"{r['written'] / 2**20:>15.1f}{r['seconds']:>9.1f}"
        )
    ratio = results[4096]["peak"] / results[512]["peak"]
    print(f"target: peak(4096) <= 1.10 x peak(512) -> {ratio:.3f}")


if __name__ == "__main__":
    main()
