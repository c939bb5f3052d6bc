"""``manifest.json``: what an output directory holds, and what identifies the call that wrote it."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..version import __version__
from .rows import count
from .storage import atomic_write

PathLike = Union[str, "os.PathLike[str]"]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What an output directory holds; stored as ``out/manifest.json``.

    Attributes:
        kind: ``"features"`` (:func:`extract_dataset`), ``"attributions"``
            (:func:`attribute_dataset`) or ``"activations"`` (:func:`cache_activations`,
            whose ``n_samples`` and ``shapes`` are the window count and the column shapes,
            known and recorded on completion).
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
        options: descriptions of the options that shape the results (``reduce``,
            ``select``, method, method options, target); a function is described by its
            code, closure and defaults, so that another function is another call.
        sample_names: the name of every dataset sample (e.g. image file names), in dataset
            order, when the call gave them (``sample_names=``); ``None`` otherwise. Row
            ``i`` of the files is sample ``row_offset + i``.
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
    sample_names: list[str] | None = None
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
        "sample_names",
    )

    @property
    def rows_done(self) -> int:
        """The number of completed rows."""
        return count(self.completed)

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
        atomic_write(Path(out) / MANIFEST_NAME, self.to_json())

    def differences(self, other: Manifest) -> list[str]:
        """The identity fields in which ``other`` differs, described for an error message."""
        found: list[str] = []
        for name in self.IDENTITY:
            found += _differences(name, getattr(self, name), getattr(other, name))
        return found


def gradlens_version() -> str:
    """The version of the installed gradlens (recorded in every manifest)."""
    return __version__


def _differences(name: str, here: Any, requested: Any) -> list[str]:
    """``"name: A here, B requested"`` lines; dicts (the options) are compared key by key."""
    if here == requested:
        return []
    if isinstance(here, dict) and isinstance(requested, dict):
        found: list[str] = []
        for key in {**here, **requested}:
            found += _differences(f"{name}[{key!r}]", here.get(key), requested.get(key))
        return found
    return [f"{name}: {_short(here)} here, {_short(requested)} requested"]


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
