"""Peak-memory measurement shared by the benchmarks: one case per fresh process.

A benchmark script runs itself with ``--memory-case NAME --batch B --size S``; in that
child :func:`growth` measures the case, and the parent collects the children's figures
with :func:`median_growth` and prints them with :func:`print_growth`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable


def reset_peak() -> None:
    """Collect garbage, hand freed heap back to the OS, and reset the peak RSS to the
    current RSS (``/proc/self/clear_refs``) where Linux offers it."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_mb() -> float:
    """The process's peak RSS (MB): ``VmHWM``, which :func:`reset_peak` resets, where Linux
    offers it. (``ru_maxrss`` of a child starts at the parent's RSS at the time of the fork,
    which hides the child's own growth when the parent is large.)"""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def growth(run: Callable[[], object]) -> float:
    """Peak RSS growth (MB) of one call of ``run``, kept alive until measured."""
    reset_peak()
    before = peak_mb()
    result = run()
    grown = peak_mb() - before
    del result
    return grown


def median_growth(
    script: str, cases: Iterable[str], batch: int, size: int, runs: int
) -> dict[str, float]:
    """``{case: median peak RSS growth (MB)}`` over ``runs`` fresh processes of ``script``
    per case: a single process varies by 10-20 MB with how the allocator's per-thread
    arenas happen to grow. A case whose process fails is reported and left out."""
    grown: dict[str, float] = {}
    for name in cases:
        command = [sys.executable, script, "--memory-case", name]
        command += ["--batch", str(batch), "--size", str(size)]
        values = []
        for _ in range(runs):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{name}: failed\n{done.stderr[-2000:]}")
                break
            values.append(float(done.stdout.strip().splitlines()[-1]))
        if values:
            grown[name] = statistics.median(values)
    return grown


def print_growth(grown: dict[str, float], title: str, baseline: str) -> None:
    """A table of the growths and their ratios to ``baseline``'s."""
    base = grown.get(baseline)
    print(f"\n{title}")
    width = max(len(n) for n in grown)
    print(f"{'case':<{width}}  {'MB':>8}  {'ratio':>6}")
    for name, mb in grown.items():
        ratio = f"{mb / base:>5.2f}x" if base else "   n/a"
        print(f"{name:<{width}}  {mb:>8.0f}  {ratio}")
