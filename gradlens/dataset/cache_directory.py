"""An activation cache's directory through a call's life: checked against the call (refused,
resumed, cleared), and assembled into one Hugging Face dataset when every shard is written.

While a run is incomplete ``out_dir`` holds only ``manifest.json`` (the progress record: what
call writes it, ``complete: false``) and ``shards/shard_XXXXX/`` (one ``save_to_disk``
directory per complete shard), so ``datasets.load_from_disk(out_dir)`` fails. On completion
rank 0 links the shards' Arrow files into ``out_dir`` as ``data-XXXXX-of-NNNNN.arrow`` in
window order, writes ``dataset_info.json`` and ``state.json`` (what ``load_from_disk``
reads), then the final manifest, and removes ``shards/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ManifestMismatchError
from .identity import unidentified
from .manifest import MANIFEST_NAME, Manifest
from .shards import SHARDS_DIR, shard_path, written_shards
from .storage import atomic_write

STATE = "state.json"
INFO = "dataset_info.json"
PRODUCTS = (STATE, INFO)  # besides data-*.arrow


@dataclass
class CacheState:
    """What rank 0 found in ``out_dir``; broadcast to every rank.

    Attributes:
        manifest: the call's manifest (the final one when ``complete``).
        shards: ``{index: record}`` of the shards already written.
        complete: the cache is finished: nothing to compute.
    """

    manifest: Manifest
    shards: dict[int, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False


def prepare(out: Path, wanted: Manifest, resume: bool, overwrite: bool) -> CacheState:
    """Check ``out`` against the call described by ``wanted`` (rank 0 only): start afresh
    (writing the progress record), resume, or return a finished cache.

    Raises:
        ManifestMismatchError: ``out`` holds a cache of another call (the message lists what
            changed), or one that cannot be matched (an option without a stable
            description), and ``overwrite`` is not set.
        FileExistsError: ``out`` holds a cache and ``resume=False``, or other files, and
            ``overwrite`` is not set.
    """
    out.mkdir(parents=True, exist_ok=True)
    existing = None if overwrite else Manifest.read(out)
    if overwrite:
        clear(out)
    elif existing is None:
        if any(out.iterdir()):
            raise FileExistsError(
                f"{out} is not empty and holds no gradlens activation cache; choose an empty or "
                "new directory, or pass overwrite=True to replace what is there"
            )
    elif not resume:
        state = "a complete" if existing.complete else "an incomplete"
        raise FileExistsError(
            f"{out} holds {state} activation cache and resume=False; pass overwrite=True to "
            "replace it, or resume=True to continue (or return) it"
        )
    else:
        comparable = dataclasses.replace(
            wanted,
            n_samples=existing.n_samples,
            dataset_size=existing.dataset_size,
            shapes=existing.shapes,
        )
        diffs = existing.differences(comparable)
        if diffs:
            raise ManifestMismatchError(
                f"{out} holds an activation cache of another call ({'; '.join(diffs)}); pass "
                "overwrite=True to replace it, or choose another directory"
            )
        unknown = unidentified(wanted.options)
        if unknown:
            raise ManifestMismatchError(
                f"{out} holds a cache that cannot be matched with this call: "
                f"{'; '.join(unknown)}; pass overwrite=True to compute it again"
            )
        if existing.complete and (out / STATE).is_file():
            return CacheState(existing, complete=True)
        return CacheState(existing, written_shards(out))
    wanted.write(out)
    return CacheState(wanted)


def clear(out: Path) -> None:
    """Remove what a cache writes in ``out`` (its files only; other files stay)."""
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
    for name in (MANIFEST_NAME, *PRODUCTS):
        (out / name).unlink(missing_ok=True)
    for path in out.glob("data-*-of-*.arrow"):
        path.unlink()


def check_shards(shards: dict[int, dict[str, Any]], n_windows: int, shard_size: int) -> None:
    """Every shard of ``n_windows`` windows is written, with the windows it should hold.

    Raises:
        ManifestMismatchError: a shard holds other windows than the token source gives now
            (the source changed since it was written).
        ValueError: a shard is missing.
    """
    count = -(-n_windows // shard_size)
    extra = sorted(k for k in shards if k >= count)
    if extra:
        raise ManifestMismatchError(
            f"the token source changed: it gives {n_windows} windows ({count} shards), but the "
            f"cache holds shard {extra[0]} from an earlier run; pass overwrite=True"
        )
    missing = [k for k in range(count) if k not in shards]
    if missing:
        raise ValueError(f"shards {missing[:5]} of {count} were not written; run the call again")
    for k in range(count):
        size = min(shard_size, n_windows - k * shard_size)
        if shards[k]["windows"] != size or shards[k]["first"] != k * shard_size:
            raise ManifestMismatchError(
                f"the token source changed: shard {k} holds {shards[k]['windows']} windows "
                f"where it now gives {size}; pass overwrite=True"
            )


def assemble(out: Path, manifest: Manifest, n_shards: int) -> Manifest:
    """Join the shards into one dataset in ``out`` (see the module docstring); returns the
    final manifest."""
    data_files = []
    for k in range(n_shards):
        state = json.loads((shard_path(out, k) / STATE).read_text())
        for file in state["_data_files"]:
            name = f"data-{k:05d}-of-{n_shards:05d}.arrow"
            _link(shard_path(out, k) / file["filename"], out / name)
            data_files.append({"filename": name})
    info = json.loads((shard_path(out, 0) / INFO).read_text())
    atomic_write(out / INFO, json.dumps(info, indent=2) + "\n")
    state = json.loads((shard_path(out, 0) / STATE).read_text())
    state["_data_files"] = data_files
    state["_fingerprint"] = _fingerprint(manifest)
    atomic_write(out / STATE, json.dumps(state, indent=2, sort_keys=True) + "\n")
    final = dataclasses.replace(manifest, completed=[[0, manifest.n_samples]], complete=True)
    final.write(out)
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
    return final


def _link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy where links are not possible)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _fingerprint(manifest: Manifest) -> str:
    """The dataset's fingerprint: a digest of the call and the window count, the same for
    every process layout."""
    identity = {name: getattr(manifest, name) for name in Manifest.IDENTITY}
    text = json.dumps([identity, manifest.shapes], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
