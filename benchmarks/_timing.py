"""Shared helpers for the benchmark scripts: interleaved median timing and a table printer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(
    cases: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times (s) of ``repeats`` runs of each case, the cases run round-robin so that
    load drift on a shared machine hits every case alike."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(
    cases: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median wall time (s) of each case (see :func:`interleaved_times`)."""
    return {
        name: statistics.median(ts)
        for name, ts in interleaved_times(cases, repeats, warmup).items()
    }


def print_table(medians: dict[str, float], baseline: str, title: str) -> None:
    """Print name, median ms and ratio to ``baseline``."""
    base = medians[baseline]
    width = max(len(n) for n in medians)
    print(f"\n{title}")
    print(f"{'case':<{width}}  {'median ms':>10}  {'ratio':>6}")
    for name, t in medians.items():
        print(f"{name:<{width}}  {t * 1e3:>10.1f}  {t / base:>5.2f}x")


def median_and_min(
    cases: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, tuple[float, float]]:
    """Median and minimum wall time (s) of each case (see :func:`interleaved_times`). The
    minimum is shown beside the median because it is the least disturbed by other processes
    competing for the cores."""
    return {
        name: (statistics.median(ts), min(ts))
        for name, ts in interleaved_times(cases, repeats, warmup).items()
    }


def print_median_and_min(
    results: dict[str, tuple[float, float]], baseline: str, title: str
) -> None:
    """Print name, median ms, its ratio to ``baseline``, minimum ms and its ratio."""
    base_median, base_min = results[baseline]
    width = max(len(n) for n in results)
    print(f"\n{title}")
    print(f"{'case':<{width}}  {'median ms':>10}  {'ratio':>6}  {'min ms':>9}  {'ratio':>6}")
    for name, (med, low) in results.items():
        print(
            f"{name:<{width}}  {med * 1e3:>10.1f}  {med / base_median:>5.2f}x  "
            f"{low * 1e3:>9.1f}  {low / base_min:>5.2f}x"
        )
