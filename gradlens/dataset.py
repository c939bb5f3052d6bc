"""Dataset-scale extraction and attribution, streamed to ``.npy`` files, resumable, distributed.

:func:`extract_dataset` runs a model over a whole dataset and writes the outputs of the
selected layers to one ``.npy`` file per layer; :func:`attribute_dataset` does the same for
the maps of any method of :data:`gradlens.METHODS`. :func:`load_features` memory-maps the
result. What lands in the output directory ``out``::

    out/manifest.json           what was computed: layers, shapes, dtype, model, progress
    out/<layer name>.npy        one array per layer, shape (N, *feature shape)
    out/.gradlens-progress/     per-rank progress files while a run is incomplete

How it works:

* Each ``.npy`` file is created at its final shape ``(N, *feature_shape)`` with
  :func:`numpy.lib.format.open_memmap` (the feature shape comes from the first batch) and
  filled with positioned writes (``os.pwrite`` at the row's byte offset): no array of the
  whole dataset is ever held in memory, and no dirty memory-mapped pages accumulate, so the
  process's anonymous memory stays flat whatever ``N`` is.
* Every ``flush_every`` batches the written data is synced to disk (``fdatasync``) and only
  then the rows are recorded as completed in a small per-rank progress file. A run that is
  killed resumes, when the same call is made again, at the first row not recorded: since
  rows are recorded at batch boundaries the batches are the same as in an uninterrupted
  run, and so are the files, byte for byte. Calling it again after completion reads the
  manifest and returns without running the model.
* Under :mod:`torch.distributed` (e.g. ``torchrun --nproc_per_node=N``), rank ``r`` of
  ``W`` processes handles the contiguous rows ``[r*n//W, (r+1)*n//W)`` -- no padding, no
  row skipped or duplicated -- and all ranks write into the same files. Rank 0 creates the
  files before a barrier and writes the final manifest after one.

Scaling out:

* One machine, several processes: launch the script with ``torchrun --nproc_per_node=N``
  and call ``torch.distributed.init_process_group("nccl")`` (``"gloo"`` on CPU; with nccl
  also ``torch.cuda.set_device(local_rank)``) before :func:`extract_dataset`; inputs follow
  the model's device.
* Several machines with a shared filesystem (Lustre, GPFS, ...): run torchrun on each with
  ``--nnodes=M --node_rank=i --nproc_per_node=N --rdzv_backend=c10d
  --rdzv_endpoint=host0:29500`` and an output directory on the shared filesystem; all
  ``M*N`` ranks split the rows and write into the same files. (NFS does not promise intact
  concurrent writes from several machines into one file: use shards there.)
* Several machines without a shared filesystem: give machine ``k`` of ``K`` a
  ``shard=(k, K)``; it writes rows ``[k*N//K, (k+1)*N//K)`` of the dataset to its own
  directory (and may itself run several processes with torchrun), and
  :func:`merge_shards` joins the copied directories.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import pickle
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)

from ._inputs import Inputs
from ._inputs import batch_size as _input_batch_size
from .errors import ManifestMismatchError
from .extract import extract
from .selection import Layers, select_layers
from .targets import OutputSpec, Target

__all__ = [
    "Manifest",
    "extract_dataset",
    "attribute_dataset",
    "load_features",
    "merge_shards",
    "shard_range",
]

PathLike = Union[str, "os.PathLike[str]"]
Interval = tuple[int, int]

MANIFEST_NAME = "manifest.json"
PROGRESS_DIR = ".gradlens-progress"
FORMAT_VERSION = 1

_STORAGE_DTYPES = {
    np.dtype("float16"): torch.float16,
    np.dtype("float32"): torch.float32,
    np.dtype("float64"): torch.float64,
}


# -- the manifest ------------------------------------------------------------------------


@dataclass
class Manifest:
    """What an output directory holds; stored as ``out/manifest.json``.

    Attributes:
        kind: ``"features"`` (:func:`extract_dataset`) or ``"attributions"``
            (:func:`attribute_dataset`).
        layers: the array names in order: the resolved layer names, or the method name.
        files: ``{name: file name in out}``.
        shapes: ``{name: [n_samples, *feature shape]}``.
        dtype: the storage dtype (``"float32"``, ``"float16"`` or ``"float64"``).
        n_samples: the rows in each file.
        row_offset: the dataset index of row 0 (non-zero for a shard, see :func:`merge_shards`).
        dataset_size: the number of samples of the whole dataset.
        model_class: ``module.ClassName`` of the model.
        fingerprint: a hash of the model's parameter and buffer names, shapes, dtypes and a
            fixed sample of their values (a changed model gives another fingerprint).
        gradlens_version: the version that wrote the files.
        options: the options that shape the results (``reduce``, ``select``, method,
            method options, target), as text.
        completed: the finished row ranges ``[[start, stop], ...]`` (file rows, merged).
        complete: every row is written.
    """

    kind: str
    layers: list[str]
    files: dict[str, str]
    shapes: dict[str, list[int]]
    dtype: str
    n_samples: int
    row_offset: int
    dataset_size: int
    model_class: str
    fingerprint: str
    gradlens_version: str
    options: dict[str, Any] = field(default_factory=dict)
    completed: list[list[int]] = field(default_factory=list)
    complete: bool = False
    format_version: int = FORMAT_VERSION

    # fields that must agree for a directory to be resumed
    IDENTITY = (
        "kind",
        "layers",
        "dtype",
        "n_samples",
        "row_offset",
        "dataset_size",
        "model_class",
        "fingerprint",
        "options",
    )

    @property
    def rows_done(self) -> int:
        """The number of completed rows."""
        return sum(b - a for a, b in self.completed)

    def to_json(self) -> str:
        """The manifest as indented JSON text."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, out: PathLike) -> Manifest | None:
        """The manifest in directory ``out``, or ``None`` if there is none.

        Raises:
            ValueError: the file exists but is not a gradlens manifest.
        """
        path = Path(out) / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in names})
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(
                f"{path} is not a gradlens manifest ({exc}); remove it or pass overwrite=True"
            ) from None

    def write(self, out: PathLike) -> None:
        """Write ``out/manifest.json`` atomically."""
        _atomic_write(Path(out) / MANIFEST_NAME, self.to_json())

    def differences(self, other: Manifest) -> list[str]:
        """The identity fields in which ``other`` differs, described for an error message."""
        return [
            f"{name}: {getattr(self, name)!r} here, {getattr(other, name)!r} requested"
            for name in self.IDENTITY
            if getattr(self, name) != getattr(other, name)
        ]


# -- public API ---------------------------------------------------------------------------


def extract_dataset(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Layers,
    out: PathLike,
    *,
    input_fn: Callable[[Any], Inputs] | None = None,
    n_samples: int | None = None,
    reduce: Callable[[Tensor], Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    dtype: np.dtype | torch.dtype | str | None = None,
    stop_early: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    flush_every: int = 32,
) -> Manifest:
    """Write the outputs of the selected layers for every sample of a dataset to ``.npy`` files.

    Each batch goes through :func:`gradlens.extract` (no autograd tape, the forward pass
    stops after the last selected layer); layer ``name`` is written to ``out/<name>.npy`` of
    shape ``(N, *feature shape)``. See the module docstring for the file layout, the resume
    protocol and the distributed protocol.

    Args:
        model: the model; inputs are moved to the device of its first parameter.
        loader: a :class:`~torch.utils.data.DataLoader` over a map-style dataset with
            ``len`` that reads it in order (``shuffle=False``, no custom sampler, no
            ``drop_last``); or any iterable of batches together with ``n_samples``
            (single process only; resuming re-reads, without computing, the finished batches).
        layers: layer names, patterns, types or filters (see :mod:`gradlens.selection`).
        out: the output directory (created if needed).
        input_fn: ``batch -> model input`` (a tuple for several positional inputs). Default:
            ``batch[0]`` for tuple/list batches (``(images, labels)``), the batch itself otherwise.
        n_samples: the number of samples an iterable yields (required for iterables; for a
            DataLoader it must equal ``len(loader.dataset)`` if given).
        reduce: applied to each activation inside the hook, as for :class:`~gradlens.Recorder`
            (e.g. ``lambda t: t.mean((2, 3))`` to store pooled features).
        select: picks one tensor of a structured layer output, as for the Recorder.
        dtype: storage dtype: float32 (default), float16 or float64.
        stop_early: stop each forward pass after the last selected layer.
        forward_kwargs: keyword inputs passed to the model with every batch.
        shard: ``(k, K)``: write only rows ``[k*N//K, (k+1)*N//K)`` of the dataset into
            ``out`` (for machines without a shared filesystem; join with :func:`merge_shards`).
        overwrite: replace whatever ``out`` holds instead of refusing a different manifest.
        progress: show a tqdm progress bar (samples/s) on rank 0.
        flush_every: sync the files and record progress every this many batches (and at
            the end); a killed run repeats at most this many batches.

    Returns:
        The final :class:`Manifest` (``complete=True``); :func:`load_features` reads the arrays.

    Raises:
        LayerNotFoundError: a layer spec selects nothing.
        ManifestMismatchError: ``out`` holds the results of another call (another model,
            other layers or options) and ``overwrite`` is not set (a ``ValueError``).
        ValueError: a shuffling or otherwise unordered loader, a missing or wrong
            ``n_samples``, a bad ``dtype`` or ``shard``, or an output whose dim 0 is not the
            batch.
        FileExistsError: ``out`` holds a ``<layer>.npy`` not written by gradlens.
    """
    names = list(select_layers(model, layers))
    np_dtype, torch_dtype = _storage_dtype(dtype)
    kwargs = dict(forward_kwargs or {})

    def compute(x: Inputs, batch: Any, rows: Interval) -> dict[str, Any]:
        return extract(
            model,
            x,
            names,
            stop_early=stop_early,
            forward_kwargs=kwargs,
            reduce=reduce,
            select=select,
            device="cpu",
            dtype=torch_dtype,
        )

    options = {
        "reduce": _describe(reduce),
        "select": _describe(select),
        "forward_kwargs": _describe(kwargs),
    }
    job = _Job("features", names, options, np_dtype, compute, model, input_fn or default_input)
    return _run(
        job,
        loader,
        Path(out),
        n_samples=n_samples,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
        flush_every=flush_every,
    )


def attribute_dataset(
    method: str | Callable[..., Tensor],
    model: nn.Module,
    loader: Iterable[Any],
    out: PathLike,
    *,
    target: Target | str = None,
    input_fn: Callable[[Any], Inputs] | None = None,
    n_samples: int | None = None,
    dtype: np.dtype | torch.dtype | str | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    flush_every: int = 32,
    **method_options: Any,
) -> Manifest:
    """Write the maps of an explanation method for every sample of a dataset to a ``.npy`` file.

    The same machinery as :func:`extract_dataset` (ordered loader, resume, distributed
    ranks, shards), with ``method(model, x, target=..., **method_options)`` computing each
    batch's maps; they are written to ``out/<method name>.npy`` of shape
    ``(N, *map shape)``, e.g. ``(N, H, W)`` for CAM methods and ``(N, C, H, W)`` for
    input-space attributions.

    Args:
        method: a name in :data:`gradlens.METHODS` (``"gradcam"``, ``"saliency"``, ...) or a
            function ``f(model, x, target=None, **options) -> Tensor`` with dim 0 = batch.
        model: the model.
        loader: an ordered DataLoader, or an iterable with ``n_samples`` (see :func:`extract_dataset`).
        out: the output directory.
        target: what to explain for each sample:

            * ``None`` (the top class), an ``int``, or a callable ``output -> scores``:
              passed to the method unchanged for every batch (see :mod:`gradlens.targets`);
            * ``"label"``: the labels in the batch -- ``batch[1]`` of a tuple/list batch,
              ``batch["label"]`` (or ``"labels"``) of a dict batch;
            * a sequence, array or tensor with one entry (or one row of ``K`` classes) per
              dataset sample: sliced to each batch's rows.
        input_fn: ``batch -> model input`` (see :func:`extract_dataset`).
        n_samples: the number of samples of an iterable of batches.
        dtype: storage dtype: float32 (default), float16 or float64.
        shard: ``(k, K)``: only part ``k`` of ``K`` of the dataset (see :func:`merge_shards`).
        overwrite: replace whatever ``out`` holds.
        progress: show a progress bar on rank 0.
        flush_every: sync and record progress every this many batches.
        **method_options: passed to the method (e.g. ``layer="layer4"``).

    Returns:
        The final :class:`Manifest`.

    Raises:
        ValueError: an unknown method name (the message lists the registered ones), a
            ``target`` of the wrong length or kind, and everything :func:`extract_dataset` raises.
    """
    name, function = _resolve_method(method)
    np_dtype, _ = _storage_dtype(dtype)
    options = {
        "method": name,
        "method_options": _describe(method_options),
        "target": _describe(target),
    }
    pick_target = _TargetPicker(target)

    def compute(x: Inputs, batch: Any, rows: Interval) -> dict[str, Any]:
        maps = function(model, x, target=pick_target(batch, rows), **method_options)
        return {name: maps.detach() if isinstance(maps, Tensor) else maps}

    job = _Job("attributions", [name], options, np_dtype, compute, model, input_fn or default_input)
    job.check_rows = pick_target.check
    return _run(
        job,
        loader,
        Path(out),
        n_samples=n_samples,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
        flush_every=flush_every,
    )


def load_features(
    out: PathLike, *, allow_partial: bool = False
) -> tuple[dict[str, np.memmap], Manifest]:
    """Memory-map the arrays written by :func:`extract_dataset` / :func:`attribute_dataset`.

    Args:
        out: the output directory.
        allow_partial: also open an unfinished directory (rows not in
            ``manifest.completed`` hold zeros or stale data).

    Returns:
        ``(arrays, manifest)``: ``arrays`` maps each layer (or method) name to a read-only
        :class:`numpy.memmap` of shape ``(N, *feature shape)``, in manifest order; the
        manifest's ``completed`` includes the progress of unfinished runs.

    Raises:
        FileNotFoundError: ``out`` has no manifest.
        ValueError: the extraction is not complete (without ``allow_partial``).
    """
    out = Path(out)
    manifest = Manifest.read(out)
    if manifest is None:
        raise FileNotFoundError(
            f"{out} holds no gradlens {MANIFEST_NAME}: it was not written by extract_dataset"
        )
    if not manifest.complete:
        done = _merge([tuple(i) for i in manifest.completed] + _read_progress(out))
        manifest.completed = [list(i) for i in done]
        if not allow_partial:
            raise ValueError(
                f"the extraction in {out} is not complete ({manifest.rows_done} of "
                f"{manifest.n_samples} rows): run the same call again to finish it, or pass "
                "allow_partial=True to read what is there"
            )
    arrays = {name: np.load(out / manifest.files[name], mmap_mode="r") for name in manifest.layers}
    return arrays, manifest


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
    manifests = [load_features(s)[1] for s in shards]
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
    if (
        _merge(ranges) != [(0, first.dataset_size)]
        or sum(b - a for a, b in ranges) != first.dataset_size
    ):
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
    state = _prepare_out(out, merged, overwrite)
    if state.complete:
        return state.manifest
    _create_files(out, merged)
    with _RowWriter(out, merged) as writer:
        for i in order:
            arrays, m = load_features(shards[i])
            for name, array in arrays.items():
                for start in range(0, m.n_samples, chunk_rows):
                    block = np.ascontiguousarray(array[start : start + chunk_rows])
                    writer.write(name, m.row_offset + start, block)
        writer.sync()
    return _finish(out, merged, [(0, n)])


def shard_range(n: int, index: int, count: int) -> Interval:
    """Rows ``[index*n//count, (index+1)*n//count)``: part ``index`` of ``count`` contiguous,
    disjoint parts covering ``range(n)`` (sizes differ by at most one; no padding)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"part index {index} must be in 0..{count - 1} (count={count})")
    return index * n // count, (index + 1) * n // count


def default_input(batch: Any) -> Any:
    """The default ``input_fn``: ``batch[0]`` for tuple/list batches, else the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


# -- the job and its run ------------------------------------------------------------------


@dataclass
class _Job:
    kind: str
    names: list[str]
    options: dict[str, Any]
    dtype: np.dtype
    compute: Callable[[Inputs, Any, Interval], dict[str, Any]]
    model: nn.Module
    input_fn: Callable[[Any], Inputs]
    check_rows: Callable[[int], None] = lambda n: None


@dataclass
class _State:
    """What rank 0 found in ``out``; broadcast to every rank."""

    manifest: Manifest | None  # None: start afresh (files not created yet)
    completed: list[Interval]
    complete: bool = False


def _run(
    job: _Job,
    loader: Iterable[Any],
    out: Path,
    *,
    n_samples: int | None,
    shard: tuple[int, int] | None,
    overwrite: bool,
    progress: bool,
    flush_every: int,
) -> Manifest:
    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1, got {flush_every}")
    dist = _Dist()
    source = _source(loader, n_samples, dist, shard)
    start, stop = shard_range(source.size, *shard) if shard is not None else (0, source.size)
    n = stop - start
    if n == 0:
        raise ValueError("there are no samples to process (empty dataset or shard)")
    job.check_rows(source.size)
    if job.model.training:
        warnings.warn(
            "the model is in train mode: dropout and batch statistics make the results depend "
            "on the batch; call model.eval() for reproducible features",
            stacklevel=3,
        )
    wanted = Manifest(
        kind=job.kind,
        layers=list(job.names),
        files={k: _file_name(k) for k in job.names},
        shapes={},
        dtype=job.dtype.name,
        n_samples=n,
        row_offset=start,
        dataset_size=source.size,
        model_class=f"{type(job.model).__module__}.{type(job.model).__qualname__}",
        fingerprint=fingerprint(job.model),
        gradlens_version=_version(),
        options=job.options,
    )
    state: _State = dist.from_rank0(lambda: _prepare_out(out, wanted, overwrite))
    if state.complete:
        return state.manifest
    mine = shard_range(n, dist.rank, dist.world)
    todo = _subtract(mine, state.completed)
    already = _intersect(mine, state.completed)
    results = _results(job, source, todo, start, n)
    first = next(results, None)
    manifest = state.manifest
    if manifest is None:
        manifest = _create_everywhere(out, wanted, first, dist)
    bar = _progress_bar(
        job.kind,
        mine[1] - mine[0],
        sum(b - a for a, b in already),
        progress and dist.rank == 0,
        dist,
    )
    checkpoint = _Checkpoint(out, dist, already)
    with _RowWriter(out, manifest) as writer, bar:
        for count, (rows, arrays) in enumerate(
            itertools.chain([] if first is None else [first], results), 1
        ):
            for name in manifest.layers:
                writer.write(name, rows[0], _check_shape(arrays[name], name, rows, manifest))
            checkpoint.add(rows)
            bar.update(rows[1] - rows[0])
            if count % flush_every == 0:
                writer.sync()
                checkpoint.save()
        writer.sync()
        checkpoint.save()
    dist.barrier()
    return dist.from_rank0(lambda: _finish(out, manifest, state.completed + _read_progress(out)))


def _results(
    job: _Job, source: _Source, todo: list[Interval], start: int, n: int
) -> Iterator[tuple[Interval, dict[str, np.ndarray]]]:
    """``((first row, stop row), {name: rows as numpy})`` for the batches to compute; rows are
    file rows (dataset index minus ``start``)."""
    device = _model_device(job.model)
    for row, batch, x in source.batches(todo, start, job.input_fn):
        k = _input_batch_size(x)
        rows = (row, row + k)
        if rows[1] > n:
            raise ValueError(
                f"the data yielded more than n_samples={n} samples; pass the number of "
                "samples the iterable yields"
            )
        arrays = job.compute(_to_device(x, device), batch, (row + start, row + start + k))
        yield rows, {name: _to_numpy(arrays.get(name), name, k, job.dtype) for name in job.names}


def _create_everywhere(
    out: Path, wanted: Manifest, first: tuple[Interval, dict[str, np.ndarray]] | None, dist: _Dist
) -> Manifest:
    """Agree on the feature shapes (from the first batch of any rank), create the files on
    rank 0, and return the manifest on every rank once they exist."""
    mine = None if first is None else {k: list(v.shape[1:]) for k, v in first[1].items()}
    shapes = [s for s in dist.all_gather(mine) if s is not None]
    if not shapes:
        raise ValueError("no rank computed any batch: nothing to create")
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"the ranks computed different feature shapes: {shapes}")
    manifest = dataclasses.replace(
        wanted, shapes={k: [wanted.n_samples, *shapes[0][k]] for k in wanted.layers}
    )
    dist.from_rank0(lambda: _create_files(out, manifest))
    return manifest


def _finish(out: Path, manifest: Manifest, completed: list[Interval]) -> Manifest:
    """Rank 0, after every rank is done: check that every row is written, write the final manifest."""
    done = _merge(completed)
    if done != [(0, manifest.n_samples)]:
        raise ValueError(
            f"after the run only rows {done} of {manifest.n_samples} are recorded as written "
            f"in {out}; run the same call again to finish"
        )
    final = dataclasses.replace(
        manifest, completed=[[0, manifest.n_samples]], complete=True, gradlens_version=_version()
    )
    final.write(out)
    shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
    return final


# -- the output directory -----------------------------------------------------------------


def _prepare_out(out: Path, wanted: Manifest, overwrite: bool) -> _State:
    """Rank 0: check what ``out`` holds against ``wanted``; clear it for ``overwrite``."""
    out.mkdir(parents=True, exist_ok=True)
    existing = Manifest.read(out) if not overwrite else _read_quietly(out)
    if existing is not None and not overwrite:
        diffs = existing.differences(wanted)
        if diffs:
            raise ManifestMismatchError(
                f"{out} holds results of another call ({'; '.join(diffs)}); pass "
                "overwrite=True to replace them, or choose another output directory"
            )
        if existing.complete:
            return _State(existing, [(0, existing.n_samples)], complete=True)
        if _files_ok(out, existing):
            return _State(
                existing, _merge([tuple(i) for i in existing.completed] + _read_progress(out))
            )
    if existing is not None:
        for name in existing.files.values():
            (out / name).unlink(missing_ok=True)
        (out / MANIFEST_NAME).unlink(missing_ok=True)
    elif not overwrite:
        clash = [f for f in wanted.files.values() if (out / f).exists()]
        if clash:
            raise FileExistsError(
                f"{out} already holds {', '.join(clash)} without a gradlens manifest; pass "
                "overwrite=True to replace them, or choose another output directory"
            )
    shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
    return _State(None, [])


def _read_quietly(out: Path) -> Manifest | None:
    try:
        return Manifest.read(out)
    except ValueError:
        return None


def _files_ok(out: Path, manifest: Manifest) -> bool:
    """Every file of the manifest exists with the manifest's shape and dtype."""
    for name in manifest.layers:
        try:
            shape, dtype, _ = _npy_header(out / manifest.files[name])
        except (OSError, ValueError):
            return False
        if list(shape) != manifest.shapes[name] or dtype != np.dtype(manifest.dtype):
            return False
    return True


def _create_files(out: Path, manifest: Manifest) -> None:
    # manifest first: a file without a manifest is someone else's and never overwritten
    manifest.write(out)
    for name in manifest.layers:
        array = np.lib.format.open_memmap(
            out / manifest.files[name],
            mode="w+",
            dtype=np.dtype(manifest.dtype),
            shape=tuple(manifest.shapes[name]),
        )
        del array  # the file exists at full size (sparse); rows are written with pwrite


def _file_name(name: str) -> str:
    return name.replace(os.sep, "_").replace("/", "_") + ".npy"


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, offset of the data)`` of a ``.npy`` file."""
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


class _RowWriter:
    """Positioned writes of whole rows into the ``.npy`` files of a manifest."""

    def __init__(self, out: Path, manifest: Manifest) -> None:
        self.files: dict[str, tuple[int, int, int]] = {}  # name -> (fd, data offset, row bytes)
        for name in manifest.layers:
            path = out / manifest.files[name]
            shape, dtype, offset = _npy_header(path)
            if list(shape) != manifest.shapes[name]:
                raise ValueError(
                    f"{path} has shape {shape}, the manifest says {manifest.shapes[name]}"
                )
            row_bytes = math.prod(shape[1:]) * dtype.itemsize
            self.files[name] = (
                os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0)),
                offset,
                row_bytes,
            )

    def write(self, name: str, row: int, rows: np.ndarray) -> None:
        fd, offset, row_bytes = self.files[name]
        view = memoryview(np.ascontiguousarray(rows)).cast("B")
        position = offset + row * row_bytes
        while view:  # a single pwrite may write less than asked (e.g. > 2 GiB)
            written = _pwrite(fd, view, position)
            view, position = view[written:], position + written

    def sync(self) -> None:
        for fd, _, _ in self.files.values():
            _fdatasync(fd)

    def __enter__(self) -> _RowWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        for fd, _, _ in self.files.values():
            os.close(fd)
        self.files.clear()


def _pwrite(fd: int, data: memoryview, position: int) -> int:
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, position)
    os.lseek(fd, position, os.SEEK_SET)  # pragma: no cover (Windows)
    return os.write(fd, data)  # pragma: no cover


def _fdatasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- progress -----------------------------------------------------------------------------


class _Checkpoint:
    """This rank's completed rows, saved to ``out/.gradlens-progress/rank{r}-of-{W}.json``.

    The file holds the rows this rank found completed in its range when it started plus
    those it wrote since, so that the union of all progress files (from this and earlier
    runs, with any number of ranks) is always the set of rows whose data is on disk.
    """

    def __init__(self, out: Path, dist: _Dist, already: list[Interval]) -> None:
        self.path = out / PROGRESS_DIR / f"rank{dist.rank}-of-{dist.world}.json"
        self.done = list(already)
        self.saved = list(already)

    def add(self, rows: Interval) -> None:
        self.done = _merge(self.done + [rows])

    def save(self) -> None:
        if self.done == self.saved:
            return
        self.path.parent.mkdir(exist_ok=True)
        _atomic_write(self.path, json.dumps({"completed": [list(i) for i in self.done]}) + "\n")
        self.saved = list(self.done)


def _read_progress(out: Path) -> list[Interval]:
    rows: list[Interval] = []
    for path in sorted((out / PROGRESS_DIR).glob("rank*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            rows += [(int(a), int(b)) for a, b in json.loads(path.read_text())["completed"]]
    return _merge(rows)


def _progress_bar(kind: str, total: int, initial: int, enabled: bool, dist: _Dist) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    desc = "extracting" if kind == "features" else "attributing"
    if dist.world > 1:
        desc += f" (rank 0 of {dist.world})"
    return tqdm(
        total=total, initial=initial, unit="samples", desc=desc, dynamic_ncols=True, smoothing=0.1
    )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


# -- data sources -------------------------------------------------------------------------


class _Source:
    """Where batches come from: ``batches(todo, start, input_fn)`` yields ``(file row, batch,
    model input)`` for the batches that hold rows of ``todo``."""

    size: int

    def batches(
        self, todo: list[Interval], start: int, input_fn: Callable[[Any], Inputs]
    ) -> Iterator[tuple[int, Any, Inputs]]:
        raise NotImplementedError


class _LoaderSource(_Source):
    """An ordered DataLoader over a map-style dataset: each interval gets a loader over a
    :class:`~torch.utils.data.Subset`, so no finished sample is loaded again."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.size = len(loader.dataset)

    def batches(
        self, todo: list[Interval], start: int, input_fn: Callable[[Any], Inputs]
    ) -> Iterator[tuple[int, Any, Inputs]]:
        for a, b in todo:
            if (a + start, b + start) == (0, self.size):
                loader = self.loader
            else:
                loader = _subset_loader(self.loader, range(a + start, b + start))
            row = a
            for batch in loader:
                x = input_fn(batch)
                yield row, batch, x
                row += _input_batch_size(x)
            if row != b:
                raise ValueError(f"the loader yielded rows {a}..{row} where {a}..{b} were expected")


class _IterableSource(_Source):
    """Any iterable of batches of known total size; finished batches are read but not computed."""

    def __init__(self, iterable: Iterable[Any], size: int) -> None:
        self.iterable = iterable
        self.size = size

    def batches(
        self, todo: list[Interval], start: int, input_fn: Callable[[Any], Inputs]
    ) -> Iterator[tuple[int, Any, Inputs]]:
        row = 0
        for batch in self.iterable:
            if row >= self.size:
                raise ValueError(f"the iterable yielded more than n_samples={self.size} samples")
            x = input_fn(batch)
            k = _input_batch_size(x)
            if _intersect((row, row + k), todo):
                yield row, batch, x
            row += k
        if row != self.size:
            raise ValueError(f"the iterable yielded {row} samples, but n_samples={self.size}")


def _source(
    loader: Iterable[Any], n_samples: int | None, dist: _Dist, shard: tuple[int, int] | None
) -> _Source:
    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        _check_ordered(loader)
        size = _length(loader.dataset)
        if size is not None:
            if n_samples is not None and n_samples != size:
                raise ValueError(
                    f"n_samples={n_samples} but the loader's dataset has {size} samples; to process "
                    "part of a dataset, wrap it in torch.utils.data.Subset"
                )
            return _LoaderSource(loader)
    if n_samples is None:
        raise ValueError(
            "n_samples is required for an iterable of batches (or a dataset without len): "
            "pass the number of samples it yields"
        )
    if dist.world > 1 or shard is not None:
        raise ValueError(
            "distributed runs and shards need a DataLoader over a map-style dataset with len "
            "(each rank loads its own index range); an iterable of batches works in one process only"
        )
    return _IterableSource(loader, int(n_samples))


def _check_ordered(loader: DataLoader) -> None:
    batches = loader.batch_sampler
    if batches is None:
        raise ValueError("the DataLoader must batch its samples (batch_size=None is not supported)")
    sampler = getattr(batches, "sampler", None)
    if isinstance(sampler, RandomSampler) or isinstance(loader.sampler, RandomSampler):
        raise ValueError(
            "the DataLoader shuffles (shuffle=True): rows would not match dataset indices and a "
            "resumed run would write other samples; use shuffle=False"
        )
    if type(batches) is not BatchSampler or not isinstance(sampler, SequentialSampler):
        raise ValueError(
            "the DataLoader must read the dataset in order (no sampler=/batch_sampler= other "
            f"than sequential ones; got {type(sampler).__name__}); gradlens splits the dataset "
            "between torch.distributed ranks itself"
        )
    if batches.drop_last:
        raise ValueError(
            "the DataLoader drops its last batch (drop_last=True): those rows would never be written"
        )


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


def _subset_loader(loader: DataLoader, indices: range) -> DataLoader:
    """A DataLoader like ``loader`` over ``Subset(loader.dataset, indices)``."""
    options: dict[str, Any] = dict(
        batch_size=loader.batch_sampler.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
    )
    if loader.num_workers > 0:
        options.update(
            prefetch_factor=loader.prefetch_factor,
            multiprocessing_context=loader.multiprocessing_context,
        )
    if hasattr(loader, "in_order"):
        options["in_order"] = loader.in_order
    return DataLoader(Subset(loader.dataset, indices), **options)


# -- torch.distributed --------------------------------------------------------------------


class _Dist:
    """The current process's place in a ``torch.distributed`` group (rank 0 of 1 without one).

    Every rank makes the same collective calls in the same order.
    """

    def __init__(self) -> None:
        self.active = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.active else 0
        self.world = torch.distributed.get_world_size() if self.active else 1

    def from_rank0(self, function: Callable[[], Any]) -> Any:
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
        return value

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        gathered: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"rank 0: {type(exc).__name__}: {exc}")


# -- helpers ------------------------------------------------------------------------------


def fingerprint(model: nn.Module) -> str:
    """A hash of the model's parameter and buffer names, shapes, dtypes and of 64 values
    sampled at fixed positions of each (cheap, exact and the same on every rank and device)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            flat = tensor.detach().reshape(-1)
            if flat.numel():
                index = torch.linspace(
                    0, flat.numel() - 1, min(flat.numel(), 64), device="cpu"
                ).long()
                sample = flat[index.to(flat.device)].cpu().contiguous()
                digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _storage_dtype(dtype: np.dtype | torch.dtype | str | None) -> tuple[np.dtype, torch.dtype]:
    if dtype is None:
        return np.dtype("float32"), torch.float32
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        np_dtype = None
    if np_dtype not in _STORAGE_DTYPES:
        raise ValueError(
            f"dtype must be float16, float32 or float64 (numpy has no bfloat16), got {dtype!r}"
        )
    return np_dtype, _STORAGE_DTYPES[np_dtype]


def _to_numpy(value: Any, name: str, k: int, dtype: np.dtype) -> np.ndarray:
    if not isinstance(value, Tensor):
        raise ValueError(
            f"{name!r} gave a {type(value).__name__}, not a tensor: pass select= to pick one "
            "tensor of a structured layer output, or reduce= to turn it into one"
        )
    if value.ndim == 0 or value.shape[0] != k:
        raise ValueError(
            f"{name!r} gave shape {tuple(value.shape)} for a batch of {k}: dim 0 must be the batch"
        )
    value = value.detach().to("cpu", _STORAGE_DTYPES[dtype])
    return np.ascontiguousarray(value.numpy())


def _check_shape(array: np.ndarray, name: str, rows: Interval, manifest: Manifest) -> np.ndarray:
    expected = manifest.shapes[name][1:]
    if list(array.shape[1:]) != expected:
        raise ValueError(
            f"{name!r} gave rows of shape {tuple(array.shape[1:])} for rows {rows[0]}..{rows[1]}, "
            f"but the file holds rows of shape {tuple(expected)}: every sample must give the "
            "same shape (resize the inputs, or reduce= the features)"
        )
    return array


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return None


def _to_device(x: Any, device: torch.device | None) -> Any:
    if device is None:
        return x
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True) if x.device != device else x
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(_to_device(v, device) for v in x)
    if isinstance(x, list):
        return [_to_device(v, device) for v in x]
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _describe(value: Any) -> Any:
    """A JSON-safe, stable description of an option (for the manifest's identity check)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, Tensor) else value
        digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]
        return f"array{list(array.shape)}:{array.dtype}:{digest}"
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return repr(value)


def _version() -> str:
    import gradlens

    return str(getattr(gradlens, "__version__", "unknown"))


def registered_methods() -> dict[str, Callable[..., Tensor]]:
    """:data:`gradlens.METHODS`, after importing the modules that fill it (``gradlens.cam``,
    ``gradlens.attribution``) if they exist."""
    import importlib

    from .registry import METHODS

    for module in ("gradlens.cam", "gradlens.attribution"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return METHODS


def _resolve_method(method: str | Callable[..., Tensor]) -> tuple[str, Callable[..., Tensor]]:
    if callable(method):
        return getattr(method, "__name__", "attribution"), method
    methods = registered_methods()
    if method not in methods:
        hint = difflib.get_close_matches(method, list(methods), n=3)
        raise ValueError(
            f"unknown method {method!r}"
            + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
            + f" Registered methods: {', '.join(sorted(methods)) or 'none'}"
        )
    return method, methods[method]


class _TargetPicker:
    """``(batch, dataset rows) -> target`` for :func:`attribute_dataset`'s ``target``."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.per_sample = isinstance(target, (Tensor, np.ndarray)) or (
            isinstance(target, Sequence) and not isinstance(target, str)
        )
        if isinstance(target, str) and target != "label":
            raise ValueError(
                f'target={target!r}: the only string target is "label" (the labels in the batch)'
            )

    def check(self, dataset_size: int) -> None:
        if self.per_sample and len(self.target) != dataset_size:
            raise ValueError(
                f"a per-sample target needs one entry per dataset sample ({dataset_size}), "
                f"got {len(self.target)}"
            )

    def __call__(self, batch: Any, rows: Interval) -> Any:
        if isinstance(self.target, str):
            return _labels(batch)
        if self.per_sample:
            part = self.target[rows[0] : rows[1]]
            return part if isinstance(part, Tensor) else torch.as_tensor(np.asarray(part))
        return self.target


def _labels(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    if isinstance(batch, Mapping):
        for key in ("label", "labels"):
            if key in batch:
                return batch[key]
    raise ValueError(
        'target="label" needs (inputs, labels, ...) batches or dict batches with a "label" '
        f"key; got a {type(batch).__name__}"
    )


def _merge(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for a, b in sorted((int(a), int(b)) for a, b in intervals if b > a):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _subtract(span: Interval, done: list[Interval]) -> list[Interval]:
    """The parts of ``span`` not covered by ``done``."""
    left: list[Interval] = []
    cursor, stop = span
    for a, b in _merge(done):
        if b <= cursor or a >= stop:
            continue
        if a > cursor:
            left.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < stop:
        left.append((cursor, stop))
    return left


def _intersect(span: Interval, intervals: list[Interval]) -> list[Interval]:
    return [
        (max(a, span[0]), min(b, span[1]))
        for a, b in _merge(intervals)
        if min(b, span[1]) > max(a, span[0])
    ]
