"""Row ranges: the half-open intervals ``(start, stop)`` of rows that runs, ranks and shards
own, and that progress files record as written."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Interval = tuple[int, int]


def shard_range(n: int, index: int, count: int) -> Interval:
    """Rows ``[index*n//count, (index+1)*n//count)``: part ``index`` of ``count`` contiguous,
    disjoint parts covering ``range(n)`` (sizes differ by at most one; no padding).

    Args:
        n: the number of rows to split.
        index: which part, ``0 <= index < count``.
        count: the number of parts.

    Returns:
        ``(start, stop)``.

    Raises:
        ValueError: ``index`` is not in ``0..count-1``.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"part index {index} must be in 0..{count - 1} (count={count})")
    return index * n // count, (index + 1) * n // count


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of ``intervals`` as sorted, disjoint, non-touching intervals."""
    merged: list[Interval] = []
    for a, b in sorted((int(a), int(b)) for a, b in intervals if b > a):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def subtract(span: Interval, done: list[Interval]) -> list[Interval]:
    """The parts of ``span`` not covered by ``done``."""
    left: list[Interval] = []
    cursor, stop = span
    for a, b in merge(done):
        if b <= cursor or a >= stop:
            continue
        if a > cursor:
            left.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < stop:
        left.append((cursor, stop))
    return left


def intersect(span: Interval, intervals: list[Interval]) -> list[Interval]:
    """The parts of ``span`` covered by ``intervals``."""
    return [
        (max(a, span[0]), min(b, span[1]))
        for a, b in merge(intervals)
        if min(b, span[1]) > max(a, span[0])
    ]


def count(intervals: Iterable[Sequence[int]]) -> int:
    """The number of rows in ``intervals`` (``(start, stop)`` pairs that do not overlap)."""
    return sum(b - a for a, b in intervals)
