"""An output directory through a call's life: checked against the call (refused, resumed or
cleared), created, finished, and read back with :func:`load_features`."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ManifestMismatchError
from .identity import unidentified
from .manifest import MANIFEST_NAME, Manifest, PathLike, gradlens_version
from .rows import Interval, merge
from .storage import PROGRESS_DIR, RowWriter, create_npy, npy_header, read_progress


@dataclass
class State:
    """What rank 0 found in ``out``; broadcast to every rank.

    Attributes:
        manifest: the manifest to continue, or ``None`` to start afresh (files not created).
        completed: the rows already on disk.
        complete: every row is on disk: nothing to compute.
    """

    manifest: Manifest | None
    completed: list[Interval]
    complete: bool = False


def prepare(out: Path, wanted: Manifest, overwrite: bool) -> State:
    """Check what ``out`` holds against the call described by ``wanted``; clear it for
    ``overwrite`` or when its files cannot be resumed (run on rank 0 only).

    Raises:
        ManifestMismatchError: ``out`` holds the results of another call, or of a call that
            cannot be told apart from this one (an option without a stable description),
            and ``overwrite`` is not set.
        FileExistsError: ``out`` holds one of the files to write, without a manifest.
        ValueError: ``out`` holds a ``manifest.json`` that is not a gradlens manifest.
    """
    out.mkdir(parents=True, exist_ok=True)
    existing = Manifest.read(out) if not overwrite else _read_quietly(out)
    if existing is not None and not overwrite:
        diffs = existing.differences(wanted)
        if diffs:
            raise ManifestMismatchError(
                f"{out} holds results of another call ({'; '.join(diffs)}); pass "
                "overwrite=True to replace them, or choose another output directory"
            )
        unknown = unidentified(wanted.options)
        if unknown:
            raise ManifestMismatchError(
                f"{out} holds results that cannot be matched with this call: "
                f"{'; '.join(unknown)}, so another call could have written them; pass "
                "overwrite=True to compute them again, or choose another output directory"
            )
        if existing.complete:
            return State(existing, [(0, existing.n_samples)], complete=True)
        if _files_ok(out, existing):
            return State(
                existing, merge([(a, b) for a, b in existing.completed] + read_progress(out))
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
    return State(None, [])


def create(out: Path, manifest: Manifest) -> None:
    """Write the manifest, then create every file at its full shape."""
    manifest.write(out)  # first: a file without a manifest is someone else's, never overwritten
    for name in manifest.layers:
        create_npy(out / manifest.files[name], manifest.shapes[name], np.dtype(manifest.dtype))


def writer(out: Path, manifest: Manifest) -> RowWriter:
    """A :class:`RowWriter` for the files of ``manifest``."""
    paths = {name: out / manifest.files[name] for name in manifest.layers}
    return RowWriter(paths, manifest.shapes)


def finish(out: Path, manifest: Manifest, completed: list[Interval]) -> Manifest:
    """After every rank is done (rank 0): check that every row is written, write the final
    manifest and remove the progress files.

    Raises:
        ValueError: some rows are not recorded as written.
    """
    done = merge(completed)
    if done != [(0, manifest.n_samples)]:
        raise ValueError(
            f"after the run only rows {done} of {manifest.n_samples} are recorded as written "
            f"in {out}; run the same call again to finish"
        )
    final = dataclasses.replace(
        manifest,
        completed=[[0, manifest.n_samples]],
        complete=True,
        gradlens_version=gradlens_version(),
    )
    final.write(out)
    shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
    return final


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
        done = merge([(a, b) for a, b in manifest.completed] + read_progress(out))
        manifest.completed = [list(i) for i in done]
        if not allow_partial:
            raise ValueError(
                f"the extraction in {out} is not complete ({manifest.rows_done} of "
                f"{manifest.n_samples} rows): run the same call again to finish it, or pass "
                "allow_partial=True to read what is there"
            )
    arrays = {name: np.load(out / manifest.files[name], mmap_mode="r") for name in manifest.layers}
    return arrays, manifest


def _read_quietly(out: Path) -> Manifest | None:
    try:
        return Manifest.read(out)
    except ValueError:
        return None


def _files_ok(out: Path, manifest: Manifest) -> bool:
    """Every file of the manifest exists with the manifest's shape and dtype."""
    for name in manifest.layers:
        try:
            shape, dtype, _ = npy_header(out / manifest.files[name])
        except (OSError, ValueError):
            return False
        if list(shape) != manifest.shapes[name] or dtype != np.dtype(manifest.dtype):
            return False
    return True
