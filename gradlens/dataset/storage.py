"""The files of an output directory: ``.npy`` arrays filled row by row, progress files, and
atomic writes.

Each ``.npy`` file is created at its final shape ``(N, *feature shape)`` with
:func:`numpy.lib.format.open_memmap` and filled with positioned writes (``os.pwrite`` at the
row's byte offset): no array of the whole dataset is held in memory, and no dirty
memory-mapped pages accumulate. :class:`Checkpoint` records, per rank, the rows whose data
has been synced to disk.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .rows import Interval, merge

PROGRESS_DIR = ".gradlens-progress"


def file_name(name: str) -> str:
    """The ``.npy`` file name of a layer or method name (path separators become ``_``)."""
    return name.replace(os.sep, "_").replace("/", "_") + ".npy"


def create_npy(path: Path, shape: Sequence[int], dtype: np.dtype) -> None:
    """Create ``path`` as a ``.npy`` file of ``shape`` (sparse: rows are written later)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    del array


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, offset of the data)`` of a ``.npy`` file.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a C-ordered ``.npy`` file.
    """
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read(f)
        if fortran_order:
            raise ValueError(f"{path} is in Fortran order")
        return shape, dtype, f.tell()


class RowWriter:
    """Positioned writes of whole rows into existing ``.npy`` files; use it as a context manager.

    Args:
        paths: ``{name: path}`` of the files.
        shapes: ``{name: [N, *row shape]}``: the shape each file must have.

    Raises:
        ValueError: a file has another shape.
    """

    def __init__(self, paths: Mapping[str, Path], shapes: Mapping[str, Sequence[int]]) -> None:
        self.files: dict[str, tuple[int, int, int]] = {}  # name -> (fd, data offset, row bytes)
        for name, path in paths.items():
            shape, dtype, offset = npy_header(path)
            if list(shape) != list(shapes[name]):
                self.close()
                raise ValueError(f"{path} has shape {shape}, the manifest says {shapes[name]}")
            row_bytes = math.prod(shape[1:]) * dtype.itemsize
            fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
            self.files[name] = (fd, offset, row_bytes)

    def write(self, name: str, row: int, rows: np.ndarray) -> None:
        """Write ``rows`` (of the file's dtype) into file ``name`` from row ``row`` on."""
        fd, offset, row_bytes = self.files[name]
        view = np.ascontiguousarray(rows).data.cast("B")
        position = offset + row * row_bytes
        while view:  # a single pwrite may write less than asked (e.g. > 2 GiB)
            written = _pwrite(fd, view, position)
            view, position = view[written:], position + written

    def sync(self) -> None:
        """Flush the written rows to disk."""
        for fd, _, _ in self.files.values():
            (getattr(os, "fdatasync", None) or os.fsync)(fd)

    def close(self) -> None:
        """Close the files."""
        for fd, _, _ in self.files.values():
            os.close(fd)
        self.files.clear()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _pwrite(fd: int, data: memoryview, position: int) -> int:
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, position)
    os.lseek(fd, position, os.SEEK_SET)  # pragma: no cover (Windows)
    return os.write(fd, data)  # pragma: no cover


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoint:
    """One rank's completed rows, saved to ``out/.gradlens-progress/rank{r}-of-{W}.json``.

    The file holds the rows this rank found completed in its range when it started plus
    those it wrote since, so that the union of all progress files (from this and earlier
    runs, with any number of ranks) is always the set of rows whose data is on disk.

    Args:
        out: the output directory.
        rank, world: this process's rank and the number of ranks.
        already: the rows of this rank's range that were complete before it started.
    """

    def __init__(self, out: Path, rank: int, world: int, already: list[Interval]) -> None:
        self.path = out / PROGRESS_DIR / f"rank{rank}-of-{world}.json"
        self.done = list(already)
        self.saved = list(already)

    def add(self, rows: Interval) -> None:
        """Note ``rows`` as written (recorded by the next :meth:`save`)."""
        self.done = merge(self.done + [rows])

    def save(self) -> None:
        """Record the rows noted so far; call it only after their data is synced."""
        if self.done == self.saved:
            return
        self.path.parent.mkdir(exist_ok=True)
        atomic_write(self.path, json.dumps({"completed": [list(i) for i in self.done]}) + "\n")
        self.saved = list(self.done)


def read_progress(out: Path) -> list[Interval]:
    """The rows recorded as written by the progress files of every rank in ``out``."""
    rows: list[Interval] = []
    for path in sorted((out / PROGRESS_DIR).glob("rank*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            rows += [(int(a), int(b)) for a, b in json.loads(path.read_text())["completed"]]
    return merge(rows)
