"""Many processes and many machines: the ``torch.distributed`` group a run belongs to, and
:func:`merge_shards`, which joins the directories that machines wrote with ``shard=(k, K)``.

Under :mod:`torch.distributed`, rank ``r`` of ``W`` handles the contiguous rows
``[r*n//W, (r+1)*n//W)`` (:func:`~gradlens.dataset.rows.shard_range`) and every rank writes
into the same files; rank 0 alone reads and writes the manifest, and tells the others what
it found.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch

from ..errors import ManifestMismatchError
from . import directory
from .manifest import Manifest, PathLike
from .rows import count, merge

T = TypeVar("T")


class Dist:
    """The current process's place in a ``torch.distributed`` group (rank 0 of 1 without one).

    Every rank makes the same collective calls in the same order.

    Attributes:
        active: a process group is initialised.
        rank, world: this process's rank and the number of ranks.
    """

    def __init__(self) -> None:
        self.active = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.active else 0
        self.world = torch.distributed.get_world_size() if self.active else 1

    def from_rank0(self, function: Callable[[], T]) -> T:
        """Run ``function`` on rank 0 and give every rank its result (or raise its error)."""
        payload: list[Any] = [None]
        if self.rank == 0:
            try:
                payload = [("ok", function())]
            except Exception as exc:
                if not self.active:
                    raise
                payload = [("error", _picklable(exc))]
                error = exc
        if self.active:
            torch.distributed.broadcast_object_list(payload, src=0)
        status, value = payload[0]
        if status == "error":
            if self.rank == 0:
                raise error
            raise value
        # what rank 0's function returned (sent as a pickle, which loses the static type)
        return cast(T, value)

    def all_gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order."""
        if not self.active:
            return [obj]
        gathered: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.active:
            torch.distributed.barrier()


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"rank 0: {type(exc).__name__}: {exc}")


def merge_shards(
    shards: Sequence[PathLike], out: PathLike, *, overwrite: bool = False, chunk_rows: int = 1024
) -> Manifest:
    """Join the directories written with ``shard=(k, K)`` into one covering the whole dataset.

    Rows are copied in chunks of ``chunk_rows`` with positioned writes, so memory stays small.

    Args:
        shards: the shard directories, in any order.
        out: the merged directory (its arrays have ``dataset_size`` rows).
        overwrite: replace an existing result in ``out``.
        chunk_rows: rows copied per write.

    Returns:
        The merged :class:`Manifest`.

    Raises:
        ManifestMismatchError: the shards come from different calls (model, layers,
            options).
        ValueError: a shard is incomplete, or the shards do not cover the dataset exactly
            once.
    """
    manifests = [directory.load_features(s)[1] for s in shards]
    if not manifests:
        raise ValueError("merge_shards needs at least one shard directory")
    first = manifests[0]
    for path, m in zip(shards, manifests):
        other = dataclasses.replace(
            m, n_samples=first.n_samples, row_offset=first.row_offset, shapes=first.shapes
        )
        if diffs := first.differences(other):
            raise ManifestMismatchError(
                f"{path} was written by another call than {shards[0]}: " + "; ".join(diffs)
            )
    order = sorted(range(len(shards)), key=lambda i: manifests[i].row_offset)
    ranges = [
        (manifests[i].row_offset, manifests[i].row_offset + manifests[i].n_samples) for i in order
    ]
    if merge(ranges) != [(0, first.dataset_size)] or count(ranges) != first.dataset_size:
        raise ValueError(
            f"the shards cover rows {ranges} of a dataset of {first.dataset_size} samples; they "
            "must cover every row exactly once"
        )
    n = first.dataset_size
    merged = dataclasses.replace(
        first,
        n_samples=n,
        row_offset=0,
        completed=[],
        complete=False,
        shapes={k: [n, *v[1:]] for k, v in first.shapes.items()},
    )
    out = Path(out)
    state = directory.prepare(out, merged, overwrite)
    if state.complete:
        assert state.manifest is not None  # prepare finds complete results only by their manifest
        return state.manifest
    directory.create(out, merged)
    with directory.writer(out, merged) as writer:
        for i in order:
            arrays, m = directory.load_features(shards[i])
            for name, array in arrays.items():
                for start in range(0, m.n_samples, chunk_rows):
                    block = np.ascontiguousarray(array[start : start + chunk_rows])
                    writer.write(name, m.row_offset + start, block)
        writer.sync()
    return directory.finish(out, merged, [(0, n)])
