"""Splitting work into forward passes of bounded size: :func:`chunks`, :func:`copies_per_chunk`
and the one check of a ``batch_size`` option, :func:`check_batch_size`.

Every method that runs more rows than it was given (integration steps, noisy copies,
occluded windows, ablated channels, patched cases, metric batches) walks them with these::

    per_chunk = copies_per_chunk(batch_size, batch, len(alphas))  # stacked copies per forward
    for part in chunks(len(alphas), per_chunk):
        run(alphas[part])
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

__all__ = ["check_batch_size", "chunks", "copies_per_chunk"]


def check_batch_size(batch_size: int | None, *, optional: bool = False) -> int | None:
    """``batch_size`` as an int, checked to be a positive number of rows per forward pass.

    Args:
        batch_size: the option as the user gave it (any integer type; not a bool).
        optional: whether ``None`` (no limit) is allowed.

    Returns:
        ``batch_size`` as a Python int, or ``None`` where ``optional`` allows it.

    Raises:
        ValueError: ``batch_size`` is below 1, not an integer, or ``None`` where it is
            required.
    """
    if batch_size is None and optional:
        return None
    value = None
    if batch_size is not None and not isinstance(batch_size, bool):
        try:
            value = operator.index(batch_size)
        except TypeError:
            pass
    if value is None or value < 1:
        allowed = " or None (no limit)" if optional else ""
        raise ValueError(
            f"batch_size must be a positive int (model inputs per forward pass){allowed}, "
            f"got {batch_size!r}"
        )
    return value


def chunks(total: int, size: int | None) -> Iterator[slice]:
    """Consecutive slices that cover ``range(total)``, each at most ``size`` long.

    ``chunks(5, 2)`` yields ``slice(0, 2)``, ``slice(2, 4)``, ``slice(4, 5)``; slice a
    tensor or list of ``total`` rows with them. Every slice has an explicit ``start`` and
    ``stop`` (``part.stop - part.start`` is its length).

    Args:
        total: how many rows there are (``0`` yields nothing).
        size: the most rows per chunk; ``None`` puts all of them in one chunk.

    Raises:
        ValueError: ``size`` is not a positive int or ``None`` (the message names it
            ``batch_size``, the option it comes from).
    """
    step = check_batch_size(size, optional=True)
    if step is None:
        step = max(total, 1)
    for start in range(0, total, step):
        yield slice(start, min(start + step, total))


def copies_per_chunk(batch_size: int | None, batch: int, total: int) -> int:
    """How many stacked copies of a batch of ``batch`` samples one forward pass may take.

    A method that evaluates ``total`` copies of the input (steps, noise draws, windows,
    cases) stacks as many as fit ``batch_size`` rows, and always at least one: a copy is
    never split, so a budget smaller than one batch still runs one copy per forward.

    Args:
        batch_size: the most rows per forward pass; ``None`` takes all ``total`` copies at
            once.
        batch: the rows of one copy (the input's batch size).
        total: the number of copies to evaluate.

    Returns:
        ``max(1, min(total, batch_size // batch))``; ``total`` (at least 1) for ``None``.

    Raises:
        ValueError: ``batch_size`` is not a positive int or ``None``.
    """
    budget = check_batch_size(batch_size, optional=True)
    if budget is None:
        return max(total, 1)
    return max(1, min(total, budget // max(batch, 1)))
