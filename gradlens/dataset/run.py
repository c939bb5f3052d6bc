"""The run shared by :func:`extract_dataset` and :func:`attribute_dataset`: split the rows
between ranks, resume what is done, compute the rest batch by batch, write, record progress.

Every ``flush_every`` batches the written data is synced to disk and only then are the
rows recorded as completed. Since rows are recorded at batch boundaries, a resumed run
computes the same batches as an uninterrupted one, and writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.inputs import Inputs
from ..core.inputs import batch_size as input_batch_size
from . import directory
from .distributed import Dist
from .identity import fingerprint
from .manifest import Manifest, gradlens_version
from .rows import Interval, count, intersect, shard_range, subtract
from .sources import Source, model_device, source, to_device
from .storage import Checkpoint, file_name, read_progress

STORAGE_DTYPES = {
    np.dtype("float16"): torch.float16,
    np.dtype("float32"): torch.float32,
    np.dtype("float64"): torch.float64,
}


@dataclass
class Job:
    """What to compute for each batch, and what identifies it.

    Attributes:
        kind: ``"features"`` or ``"attributions"``.
        names: the arrays each batch gives (one file each).
        options: the described options (see :mod:`gradlens.dataset.identity`).
        dtype: the storage dtype.
        compute: ``(model input, batch, dataset rows) -> {name: tensor with dim 0 = batch}``.
        model: the model (its device, fingerprint and class go into the manifest).
        input_fn: ``batch -> model input``.
        sample_names: one name per dataset sample, or ``None``.
        check_rows: called with the dataset size before anything is computed.
    """

    kind: str
    names: list[str]
    options: dict[str, Any]
    dtype: np.dtype
    compute: Callable[[Inputs, Any, Interval], dict[str, Any]]
    model: nn.Module
    input_fn: Callable[[Any], Inputs]
    sample_names: Sequence[str] | None = None
    check_rows: Callable[[int], None] = field(default=lambda n: None)


def storage_dtype(dtype: np.dtype | torch.dtype | str | None) -> tuple[np.dtype, torch.dtype]:
    """The numpy and torch storage dtypes for ``dtype`` (default float32).

    Raises:
        ValueError: not float16, float32 or float64.
    """
    if dtype is None:
        return np.dtype("float32"), torch.float32
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        np_dtype = None
    if np_dtype is None or np_dtype not in STORAGE_DTYPES:
        raise ValueError(
            f"dtype must be float16, float32 or float64 (numpy has no bfloat16), got {dtype!r}"
        )
    return np_dtype, STORAGE_DTYPES[np_dtype]


def run(
    job: Job,
    loader: Iterable[Any],
    out: Path,
    *,
    n_samples: int | None,
    shard: tuple[int, int] | None,
    overwrite: bool,
    progress: bool,
    flush_every: int,
) -> Manifest:
    """Run ``job`` over ``loader`` into ``out`` (see :func:`extract_dataset` for the arguments).

    Returns:
        The final manifest.
    """
    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1, got {flush_every}")
    dist = Dist()
    data = source(loader, n_samples, one_process=dist.world == 1 and shard is None)
    start, stop = shard_range(data.size, *shard) if shard is not None else (0, data.size)
    n = stop - start
    if n == 0:
        raise ValueError("there are no samples to process (empty dataset or shard)")
    job.check_rows(data.size)
    names = None if job.sample_names is None else [str(name) for name in job.sample_names]
    if names is not None and len(names) != data.size:
        raise ValueError(
            f"sample_names has {len(names)} names for a dataset of {data.size} samples: give "
            "one per sample"
        )
    if job.model.training:
        warnings.warn(
            "the model is in train mode: dropout and batch statistics make the results depend "
            "on the batch; call model.eval() for reproducible features",
            stacklevel=3,
        )
    wanted = Manifest(
        kind=job.kind,
        layers=list(job.names),
        files={k: file_name(k) for k in job.names},
        shapes={},
        dtype=job.dtype.name,
        n_samples=n,
        row_offset=start,
        dataset_size=data.size,
        model_class=f"{type(job.model).__module__}.{type(job.model).__qualname__}",
        fingerprint=fingerprint(job.model),
        gradlens_version=gradlens_version(),
        options=job.options,
        sample_names=names,
    )
    state: directory.State = dist.from_rank0(lambda: directory.prepare(out, wanted, overwrite))
    if state.complete:
        assert state.manifest is not None  # prepare finds complete results only by their manifest
        return state.manifest
    mine = shard_range(n, dist.rank, dist.world)
    todo = subtract(mine, state.completed)
    already = intersect(mine, state.completed)
    results = _results(job, data, todo, start, n)
    first = next(results, None)
    manifest = state.manifest
    if manifest is None:
        manifest = _create_everywhere(out, wanted, first, dist)
    bar = _progress_bar(job.kind, mine, count(already), progress and dist.rank == 0, dist.world)
    checkpoint = Checkpoint(out, dist.rank, dist.world, already)
    with directory.writer(out, manifest) as writer:
        try:
            for batches, (rows, arrays) in enumerate(
                itertools.chain([] if first is None else [first], results), 1
            ):
                for name in manifest.layers:
                    writer.write(name, rows[0], _check_shape(arrays[name], name, rows, manifest))
                checkpoint.add(rows)
                if bar is not None:
                    bar.update(rows[1] - rows[0])
                if batches % flush_every == 0:
                    writer.sync()
                    checkpoint.save()
            writer.sync()
            checkpoint.save()
        finally:
            if bar is not None:
                bar.close()
    dist.barrier()
    return dist.from_rank0(
        lambda: directory.finish(out, manifest, state.completed + read_progress(out))
    )


def show_progress(progress: bool) -> bool:
    """Whether to draw a progress bar: asked for, and stderr is a terminal (in a log file,
    the bar's carriage-return updates would pile up as lines)."""
    stream = sys.stderr
    return progress and stream is not None and hasattr(stream, "isatty") and stream.isatty()


def _progress_bar(kind: str, rows: Interval, done: int, progress: bool, world: int) -> Any:
    """A tqdm bar over this rank's ``rows`` (samples/s) on stderr, or ``None``."""
    desc = "extracting" if kind == "features" else "attributing"
    return progress_bar(desc, rows[1] - rows[0], done, progress, world)


def progress_bar(
    desc: str, total: int | None, done: int, progress: bool, world: int, unit: str = "samples"
) -> Any:
    """A tqdm bar on stderr (rate in ``unit``/s; ``total=None`` for a stream of unknown
    length), or ``None`` when :func:`show_progress` says no."""
    if not show_progress(progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=done,
        unit=unit,
        unit_scale=unit != "samples",
        desc=desc if world == 1 else f"{desc} (rank 0 of {world})",
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _results(
    job: Job, data: Source, todo: list[Interval], start: int, n: int
) -> Iterator[tuple[Interval, dict[str, np.ndarray]]]:
    """``((first row, stop row), {name: rows as numpy})`` for the batches to compute; rows are
    file rows (dataset index minus ``start``)."""
    device = model_device(job.model)
    for row, batch, x in data.batches(todo, start, job.input_fn):
        k = input_batch_size(x)
        rows = (row, row + k)
        if rows[1] > n:
            raise ValueError(
                f"the data yielded more than n_samples={n} samples; pass the number of "
                "samples the iterable yields"
            )
        arrays = job.compute(to_device(x, device), batch, (row + start, row + start + k))
        yield rows, {name: _to_numpy(arrays.get(name), name, k, job.dtype) for name in job.names}


def _create_everywhere(
    out: Path, wanted: Manifest, first: tuple[Interval, dict[str, np.ndarray]] | None, dist: Dist
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
    dist.from_rank0(lambda: directory.create(out, manifest))
    return manifest


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
    value = value.detach().to("cpu", STORAGE_DTYPES[dtype])
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
