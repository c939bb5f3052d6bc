"""The shards of an activation cache: Hugging Face ``datasets`` directories written with
``save_to_disk``, one per ``shard_size`` windows, by a background thread.

A shard ``k`` holds windows ``[k * shard_size, (k + 1) * shard_size)``: one ``Array2D``
column ``(context_size, d)`` per hook point, named by the hook point, and an int32
``token_ids`` column ``(context_size,)`` (SAELens' ``CacheActivationsRunner`` layout). It
is written to a temporary directory and renamed into place, so a shard directory under its
final name is always complete; its ``gradlens-shard.json`` records which windows it holds
and a digest of their token ids, so that a resumed run can check that the token source
still gives the same windows.

Arrow has no bfloat16: a bfloat16 cache stores each value's 16-bit pattern in a ``uint16``
column (the top half of the float32 with the same value, so no bit is lost) and says so in
the dataset's description and the gradlens manifest;
:func:`~gradlens.dataset.cache_reader.load_activations` gives bfloat16 tensors back.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHARDS_DIR = "shards"
SHARD_RECORD = "gradlens-shard.json"
TOKEN_COLUMN = "token_ids"

# storage dtype name -> (torch dtype computed in, numpy dtype stored, Arrow value type)
STORAGE = {
    "float32": (torch.float32, np.dtype("float32"), "float32"),
    "float64": (torch.float64, np.dtype("float64"), "float64"),
    "float16": (torch.float16, np.dtype("float16"), "float16"),
    "bfloat16": (torch.bfloat16, np.dtype("uint16"), "uint16"),
}
BFLOAT16_NOTE = "bfloat16 values stored as their 16-bit patterns in uint16 columns"


def import_datasets() -> Any:
    """The ``datasets`` package.

    Raises:
        ImportError: it is not installed (with the command that installs it).
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a test dependency
        raise ImportError(
            "cache_activations writes Hugging Face datasets: pip install datasets"
        ) from exc
    return datasets


def storage_name(dtype: Any) -> str:
    """``"float32"``, ``"float64"``, ``"float16"`` or ``"bfloat16"`` for a torch dtype or name.

    Raises:
        ValueError: another dtype.
    """
    name = str(dtype).removeprefix("torch.")
    if name not in STORAGE:
        raise ValueError(
            f"dtype must be torch.float32, torch.float16, torch.bfloat16 or torch.float64, got "
            f"{dtype!r}"
        )
    return name


def description(dtype: str) -> str:
    """The dataset description: what wrote it and how the activations are stored."""
    stored = {"activation_dtype": dtype, "writer": "gradlens.cache_activations"}
    if dtype == "bfloat16":
        stored["encoding"] = BFLOAT16_NOTE
    return json.dumps({"gradlens": stored})


def features(names: list[str], widths: dict[str, int], context_size: int, dtype: str) -> Any:
    """The ``datasets.Features`` of a cache: an ``Array2D`` per hook point, then ``token_ids``."""
    ds = import_datasets()
    value = STORAGE[dtype][2]
    columns: dict[str, Any] = {
        name: ds.Array2D(shape=(context_size, widths[name]), dtype=value) for name in names
    }
    columns[TOKEN_COLUMN] = ds.Sequence(ds.Value("int32"), length=context_size)
    return ds.Features(columns)


def to_storage(activation: torch.Tensor, dtype: str) -> np.ndarray:
    """A ``(B, T, d)`` tensor as a numpy array of the stored dtype (bfloat16 as its bits)."""
    tensor = activation.detach().to(STORAGE[dtype][0]).cpu().contiguous()
    if dtype == "bfloat16":
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def token_digest(ids: np.ndarray) -> str:
    """A digest of windows' token ids (any integer dtype gives the same digest)."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:32]


Buffers = dict[str, np.ndarray]
"""A set of activation buffers, ``{hook point: (windows, context_size, d)}``, filled by the
forward and reused shard after shard."""


@dataclass
class Shard:
    """The windows ``[first, first + len(ids))`` of one shard, ready to write.

    Attributes:
        index: the shard's number ``k``.
        first: its first window.
        ids: ``(n, context_size)`` token ids.
        activations: ``{hook point: (n, context_size, d)}`` in the stored dtype.
        buffers: the writer's buffer set the activations are views of
            (:meth:`ShardWriter.buffers`), handed back once the shard is written.
    """

    index: int
    first: int
    ids: np.ndarray
    activations: dict[str, np.ndarray]
    buffers: Buffers | None = None


def shard_path(out: Path, index: int) -> Path:
    """The directory of shard ``index``."""
    return out / SHARDS_DIR / f"shard_{index:05d}"


def write_shard(out: Path, shard: Shard, names: list[str], dtype: str, fingerprint: str) -> None:
    """Write ``shard`` with ``save_to_disk`` into a temporary directory, then rename it into
    place (a directory under a shard's name is always complete)."""
    ds = import_datasets()
    from datasets.table import InMemoryTable

    n, context_size = shard.ids.shape
    widths = {name: shard.activations[name].shape[2] for name in names}
    schema_features = features(names, widths, context_size, dtype)
    table = _table(shard, names, schema_features, context_size)
    dataset = ds.Dataset(
        InMemoryTable(table),
        info=ds.DatasetInfo(features=schema_features, description=description(dtype)),
        fingerprint=_digest([fingerprint, shard.index]),
    )
    final = shard_path(out, shard.index)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet(ds):
        dataset.save_to_disk(str(tmp), num_shards=1)
    record = {
        "index": shard.index,
        "first": shard.first,
        "windows": n,
        "tokens": token_digest(shard.ids),
    }
    (tmp / SHARD_RECORD).write_text(json.dumps(record) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def written_shards(out: Path) -> dict[int, dict[str, Any]]:
    """``{index: record}`` of the complete shards in ``out`` (temporary directories of
    interrupted writes are removed)."""
    found: dict[int, dict[str, Any]] = {}
    folder = out / SHARDS_DIR
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            shutil.rmtree(path, ignore_errors=True)
            continue
        try:
            record = json.loads((path / SHARD_RECORD).read_text())
            found[int(record["index"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(path, ignore_errors=True)
    return found


class ShardWriter:
    """Writes shards in a background thread, one at a time, while the next shard is computed.

    At most one shard waits in the queue, so memory holds at most three shards (the one
    being computed, one waiting, one being written), in three buffer sets that are reused
    from shard to shard (:meth:`buffers`): memory that is written over again costs no new
    page faults, where fresh ``np.empty`` buffers cost the forward's thread up to a tenth of
    its time in page faults (measured on a 2-core CPU). An error in the thread is raised by
    the next :meth:`put` or by :meth:`close`.
    """

    SETS = 3

    def __init__(self, out: Path, names: list[str], dtype: str, fingerprint: str) -> None:
        self.out, self.names, self.dtype, self.fingerprint = out, names, dtype, fingerprint
        self.error: BaseException | None = None
        self.queue: queue.Queue[Shard | None] = queue.Queue(maxsize=1)
        self.free: queue.SimpleQueue[Buffers] = queue.SimpleQueue()
        self.sets = 0
        (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        self.thread = threading.Thread(target=self._work, name="gradlens-shard-writer", daemon=True)
        self.thread.start()

    def buffers(self) -> Buffers:
        """A buffer set to fill for the next shard and give to :meth:`put` with it (empty
        when new: the forward allocates what it needs). When all three sets are in use it
        waits for the writer to finish a shard, which never waits long: a set is taken only
        after :meth:`put` queued the last one, so at most two are with the writer."""
        if self.sets < self.SETS and self.free.empty():
            self.sets += 1
            return {}
        return self.free.get()

    def put(self, shard: Shard) -> None:
        """Queue ``shard`` (waits while another shard waits)."""
        self._raise()
        self.queue.put(shard)

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise its error if it had one."""
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def abandon(self) -> None:
        """Write what is queued and stop the thread, ignoring its error (the caller is
        raising one of its own)."""
        self.queue.put(None)
        self.thread.join()
        self.error = None

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _work(self) -> None:
        while (shard := self.queue.get()) is not None:
            if self.error is None:
                try:
                    write_shard(self.out, shard, self.names, self.dtype, self.fingerprint)
                except BaseException as exc:  # handed to the main thread
                    self.error = exc
            if shard.buffers is not None:  # write_shard's Arrow table on them is gone
                self.free.put(shard.buffers)


def _table(shard: Shard, names: list[str], schema_features: Any, context_size: int) -> Any:
    """The shard as an Arrow table, built on the numpy buffers (Arrow's 32-bit list offsets
    are respected by cutting a large column into chunks)."""
    import pyarrow as pa

    schema = schema_features.arrow_schema
    n = shard.ids.shape[0]
    columns = []
    for name in names:
        values = shard.activations[name]
        d = values.shape[2]
        step = max(1, (2**31 - 1) // (context_size * d))
        chunks = [
            pa.ExtensionArray.from_storage(
                schema.field(name).type, _nested(values[start : start + step], context_size, d)
            )
            for start in range(0, n, step)
        ]
        columns.append(pa.chunked_array(chunks, type=schema.field(name).type))
    ids = pa.array(np.ascontiguousarray(shard.ids, dtype=np.int32).reshape(-1))
    columns.append(pa.chunked_array([pa.FixedSizeListArray.from_arrays(ids, context_size)]))
    return pa.Table.from_arrays(columns, schema=schema)


def _nested(values: np.ndarray, context_size: int, d: int) -> Any:
    """``(n, context_size, d)`` values as Arrow ``list<list<value>>`` (``Array2D``'s storage)."""
    import pyarrow as pa

    n = values.shape[0]
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * context_size * d + 1, d, dtype=np.int32)),
        pa.array(np.ascontiguousarray(values).reshape(-1)),
    )
    return pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * context_size + 1, context_size, dtype=np.int32)), inner
    )


class _quiet:
    """Turn the ``datasets`` progress bars off for a ``save_to_disk``."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds
        self.was_off = ds.are_progress_bars_disabled()

    def __enter__(self) -> None:
        self.ds.disable_progress_bars()

    def __exit__(self, *exc: Any) -> None:
        if not self.was_off:
            self.ds.enable_progress_bars()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]
