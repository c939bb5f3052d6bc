"""Max-activating examples of a latent, read from an activation cache: :func:`top_features`.

The cache is the one :func:`gradlens.cache_activations` writes (and SAELens'
``CacheActivationsRunner``): a Hugging Face ``datasets`` dataset with one row per window of
``context_size`` tokens, an int32 ``token_ids`` column ``(context_size,)`` and one
``Array2D`` column per hook point, named by the hook point, ``(context_size, d)``. The
latents are computed from the cached activations with the SAE's ``encode``: the model does
not run again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import Tensor, nn

from ..core.chunks import check_batch_size
from ..core.selection import close_names
from ..errors import LayerNotFoundError, SAEError
from .autoencoder import check_sae, input_width

if TYPE_CHECKING:
    import datasets

__all__ = ["TopFeatures", "top_features"]

Cache = Union["datasets.Dataset", str, "os.PathLike[str]"]
"""A cache: a ``datasets.Dataset``, or the directory it was saved to."""

TOKENS = "token_ids"
"""The cache's column of token ids."""


@dataclass
class TopFeatures:
    """The windows of a cache where one latent fires most, strongest first.

    Attributes:
        hook_point: the hook point (the cache's column) the latent reads.
        latent: the latent's index.
        values: ``(k,)`` the latent's largest activation in each window, descending.
        windows: ``(k,)`` the windows' rows in the cache.
        positions: ``(k,)`` where in its window each largest activation is.
        token_ids: ``(k, context_size)`` the windows' token ids.
        activations: ``(k, context_size)`` the latent at every position of each window.
        windows_read: how many windows of the cache were read.
    """

    hook_point: str
    latent: int
    values: Tensor
    windows: Tensor
    positions: Tensor
    token_ids: Tensor
    activations: Tensor
    windows_read: int


def top_features(
    cache: Cache,
    sae: Any,
    hook_point: str,
    latent: int,
    *,
    k: int = 10,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> TopFeatures:
    """The ``k`` cached windows where ``latent`` reaches its largest values.

    Each window is ranked by the latent's largest activation over its positions (a window
    appears once); the latents are ``sae.encode`` of the cached activations, ``batch_size``
    windows at a time, under ``torch.inference_mode`` -- no forward of the model.

    Example::

        cache = datasets.load_from_disk("cache/")           # from gradlens.cache_activations
        top = gradlens.sae.top_features(cache, sae, "transformer.h.6.mlp", latent=123, k=20)
        html = gradlens.viz.top_features_table(top, tokenizer.convert_ids_to_tokens)

    Args:
        cache: a ``datasets.Dataset`` with the columns of the module docstring, or the
            directory it was saved to (read with ``datasets.load_from_disk``).
        sae: the SAE of ``hook_point`` (``encode``; see :func:`gradlens.sae.splice`).
        hook_point: the cache's column of activations.
        latent: the latent's index.
        k: how many windows (fewer when the cache holds fewer).
        batch_size: windows encoded at a time.
        device: where to encode; ``None``: the device of the SAE's first parameter (CPU for
            an SAE without parameters). Cached values are cast to the SAE's dtype.

    Returns:
        A :class:`TopFeatures`.

    Raises:
        LayerNotFoundError: the cache has no column ``hook_point`` (the message lists its
            columns and the closest names).
        SAEError: the SAE lacks ``encode``; its width is not the column's; the column is not
            floating point; ``latent`` is not one of its latents.
        ValueError: ``k`` or ``batch_size`` is not a positive int; the cache has no
            ``token_ids`` column.
        ImportError: ``cache`` is a path and ``datasets`` is not installed.
    """
    check_sae(sae, hook_point)
    check_batch_size(batch_size)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if isinstance(latent, bool) or not isinstance(latent, int) or latent < 0:
        raise SAEError(f"latent must be the index of one latent (an int >= 0), got {latent!r}")
    dataset = _load(cache)
    columns = list(dataset.column_names)
    if hook_point not in columns:
        hint = close_names(hook_point, columns)
        raise LayerNotFoundError(
            f"the cache has no column {hook_point!r}; its columns are "
            f"{', '.join(map(repr, columns))}"
            + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
        )
    if TOKENS not in columns:
        raise ValueError(
            f"the cache has no {TOKENS!r} column (its columns: {', '.join(map(repr, columns))}); "
            "top_features reads a cache written by gradlens.cache_activations"
        )
    target_device, dtype = _placement(sae, device)
    activations = dataset.with_format("torch", columns=[hook_point])
    best_values = torch.empty(0)
    best_windows = torch.empty(0, dtype=torch.long)
    best_positions = torch.empty(0, dtype=torch.long)
    n = len(dataset)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        values = _latent(
            activations[start:stop][hook_point], sae, hook_point, latent, target_device, dtype
        )
        peak, where = values.max(dim=1)
        best_values = torch.cat([best_values, peak.cpu().float()])
        best_windows = torch.cat([best_windows, torch.arange(start, stop)])
        best_positions = torch.cat([best_positions, where.cpu()])
        keep = best_values.topk(min(k, len(best_values))).indices
        best_values, best_windows, best_positions = (
            best_values[keep],
            best_windows[keep],
            best_positions[keep],
        )
    rows = best_windows.tolist()
    chosen = dataset.with_format("torch", columns=[hook_point, TOKENS])[rows] if rows else None
    if chosen is None:
        token_ids = torch.empty(0, 0, dtype=torch.long)
        per_position = torch.empty(0, 0)
    else:
        token_ids = chosen[TOKENS].long()
        per_position = _latent(chosen[hook_point], sae, hook_point, latent, target_device, dtype)
        per_position = per_position.cpu().float()
    return TopFeatures(
        hook_point=hook_point,
        latent=latent,
        values=best_values,
        windows=best_windows,
        positions=best_positions,
        token_ids=token_ids,
        activations=per_position,
        windows_read=n,
    )


def _load(cache: Cache) -> Any:
    if isinstance(cache, (str, os.PathLike)):
        import datasets

        return datasets.load_from_disk(os.fspath(cache))
    if not hasattr(cache, "column_names") or not hasattr(cache, "with_format"):
        raise TypeError(
            "cache must be a datasets.Dataset or the directory of one (as written by "
            f"gradlens.cache_activations); got {type(cache).__name__}"
        )
    return cache


def _placement(sae: Any, device: torch.device | str | None) -> tuple[torch.device, torch.dtype]:
    parameter = next(sae.parameters(), None) if isinstance(sae, nn.Module) else None
    dtype = parameter.dtype if parameter is not None else torch.float32
    if device is not None:
        return torch.device(device), dtype
    return (parameter.device if parameter is not None else torch.device("cpu")), dtype


def _latent(
    cached: Tensor,
    sae: Any,
    hook_point: str,
    latent: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """The latent's values ``(windows, context_size)`` for cached activations
    ``(windows, context_size, d)``."""
    if not cached.is_floating_point():
        raise SAEError(
            f"the cache stores {hook_point!r} as {cached.dtype}, not floating point; read it "
            "back as floats first (a bfloat16 cache stored as bit patterns needs its reader)"
        )
    width = input_width(sae)
    if width is not None and cached.shape[-1] != width:
        raise SAEError(
            f"the SAE encodes vectors of width {width}, but the cache's {hook_point!r} column "
            f"holds shape {tuple(cached.shape[1:])} per window (width {cached.shape[-1]})"
        )
    with torch.inference_mode():
        latents = sae.encode(cached.to(device=device, dtype=dtype))
    n_latents = latents.shape[-1]
    if latent >= n_latents:
        raise SAEError(f"latent {latent} is out of range: the SAE has {n_latents} latents")
    values: Tensor = latents[..., latent]
    return values
