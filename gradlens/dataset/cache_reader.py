"""Reading an activation cache back: :func:`load_activations` gives torch tensors in the
dtype the cache was written in (bfloat16 included, which Arrow stores as ``uint16`` bits)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .manifest import Manifest, PathLike
from .shards import STORAGE, TOKEN_COLUMN, import_datasets

__all__ = ["ActivationCache", "load_activations"]


class ActivationCache:
    """A finished activation cache, read window by window as torch tensors.

    ``cache[i]`` is ``{hook point: (context_size, d), "token_ids": (context_size,)}`` for
    window ``i``; ``cache[i:j]`` (or a list of indices) adds a leading ``(n,)`` dimension.
    Activations come in the stored dtype (``float32``, ``float16``, ``bfloat16`` or
    ``float64``), token ids as int64. Reads are memory-mapped by Arrow: only the windows
    asked for are loaded.

    Attributes:
        dataset: the underlying ``datasets.Dataset`` (``datasets.load_from_disk(out_dir)``).
        manifest: the cache's :class:`~gradlens.dataset.Manifest`.
        hook_points: the activation columns, in the order they were given.
        dtype: the activations' torch dtype.
        context_size: the tokens per window.
    """

    def __init__(self, dataset: Any, manifest: Manifest) -> None:
        self.dataset = dataset
        self.manifest = manifest
        self.hook_points = list(manifest.layers)
        self.dtype: torch.dtype = STORAGE[manifest.dtype][0]
        self.context_size = int(manifest.options["context_size"])
        self._numpy = dataset.with_format("numpy")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | slice | Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self._numpy[index]
        result = {name: self._tensor(rows[name]) for name in self.hook_points}
        result[TOKEN_COLUMN] = torch.from_numpy(np.asarray(rows[TOKEN_COLUMN], dtype=np.int64))
        return result

    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        if self.dtype == torch.bfloat16:  # the numpy format widens the uint16 bits
            bits = np.ascontiguousarray(values, dtype=np.uint16).view(np.int16)
            return torch.from_numpy(bits).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(values))

    def __repr__(self) -> str:
        return (
            f"ActivationCache({len(self)} windows of {self.context_size} tokens, "
            f"{self.hook_points}, {str(self.dtype).removeprefix('torch.')})"
        )


def load_activations(out_dir: PathLike) -> ActivationCache:
    """Open the activation cache written by :func:`~gradlens.dataset.cache_activations`.

    ``datasets.load_from_disk(out_dir)`` reads the same data as a Hugging Face dataset; this
    reader also turns a bfloat16 cache's ``uint16`` bit patterns back into bfloat16.

    Args:
        out_dir: the cache's directory.

    Returns:
        An :class:`ActivationCache` over the windows, in window order.

    Raises:
        FileNotFoundError: ``out_dir`` holds no gradlens activation cache.
        ValueError: the cache is not complete (run the same call again to finish it).
    """
    out = Path(out_dir)
    manifest = Manifest.read(out)
    if manifest is None or manifest.kind != "activations":
        raise FileNotFoundError(f"{out} holds no activation cache written by cache_activations")
    if not manifest.complete:
        raise ValueError(
            f"the activation cache in {out} is not complete: run the same cache_activations "
            "call again to finish it"
        )
    return ActivationCache(import_datasets().load_from_disk(str(out)), manifest)
