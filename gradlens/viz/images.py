"""Images and their maps: heatmap :func:`overlay` and grids of images x maps (:func:`show`).

Images may be torch tensors or numpy arrays, channels-first ``(C, H, W)`` or channels-last
``(H, W, C)`` (``C`` = 1, 3 or 4; a 4th channel is dropped), or ``(H, W)`` greyscale. The
layout is channels-first when the first dimension has size 1, 3 or 4 and the last does
not. Values are read as:

* ``uint8``: 0..255;
* float: first ``image * std + mean`` per channel when ``mean``/``std`` are given (undoing
  input normalisation), then [0, 1] when the maximum is at most 1, else 0..255; finally
  clipped to [0, 1].

Heatmaps are ``(h, w)`` (leading size-1 dimensions are dropped), resized bilinearly to the
image size when it differs, and each panel is scaled on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from ..maps import normalize, resize
from ._arrays import ArrayLike, as_numpy, symmetric_limit
from .colours import DIVERGING_CMAP

__all__ = ["overlay", "show"]

Maps = Union[ArrayLike, Sequence[ArrayLike], Mapping[str, ArrayLike]]


def _rgb(
    image: Any, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """An image as float64 ``(H, W, 3)`` in [0, 1] (see the module docstring)."""
    array = as_numpy(image)
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim != 3:
        raise ValueError(f"an image must have 2 or 3 dimensions, got shape {array.shape}")
    if array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image needs 1, 3 or 4 channels, got shape {array.shape}")
    is_uint8 = array.dtype == np.uint8
    array = array[..., :3].astype(np.float64)
    if is_uint8:
        array = array / 255.0
    else:
        if std is not None:
            array = array * np.asarray(std, dtype=np.float64)
        if mean is not None:
            array = array + np.asarray(mean, dtype=np.float64)
        if np.nanmax(array, initial=0.0) > 1.0:
            array = array / 255.0
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.clip(np.nan_to_num(array), 0.0, 1.0)


def _heat(heatmap: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """A heatmap as float64 ``(H, W)``, resized bilinearly to ``size`` if it differs."""
    array = as_numpy(heatmap).astype(np.float64)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"a heatmap must have shape (h, w), got {array.shape}")
    array = np.nan_to_num(array)
    if size is not None:
        array = resize(torch.from_numpy(array), size).numpy()
    return array


def _unit(array: np.ndarray) -> np.ndarray:
    """A ``(H, W)`` array min-max scaled to [0, 1]; a constant array becomes zeros."""
    return normalize(torch.from_numpy(array)).numpy()


def overlay(
    image: ArrayLike,
    heatmap: ArrayLike,
    alpha: float = 0.5,
    cmap: str = "jet",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Blend a colour-mapped heatmap over an image.

    ``result = (1 - alpha) * image + alpha * cmap(normalised heatmap)``, where the heatmap
    is resized to the image and min-max normalised to [0, 1] (a constant heatmap maps to
    the colour of 0).

    Args:
        image: ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)``, tensor or array (value ranges
            and layout: see the module docstring).
        heatmap: ``(h, w)`` (or ``(1, h, w)``), tensor or array.
        alpha: weight of the heatmap colour, in [0, 1].
        cmap: a matplotlib colour map name.
        mean, std: per-channel normalisation to undo (``image * std + mean``).

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: bad shapes or an ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _rgb(image, mean, std)
    heat = _unit(_heat(heatmap, rgb.shape[:2]))
    colour = np.asarray(matplotlib.colormaps[cmap](heat))[..., :3]
    blended = (1.0 - alpha) * rgb + alpha * colour
    return np.round(blended * 255.0).astype(np.uint8)


def _columns(maps: Maps, titles: Sequence[str] | None, batch: int) -> list[tuple[str, np.ndarray]]:
    """``[(title, (B, H, W) array), ...]`` from the ``maps`` argument of :func:`show`."""
    named: list[tuple[str | None, ArrayLike]]
    if isinstance(maps, Mapping):
        named = list(maps.items())
    elif isinstance(maps, (torch.Tensor, np.ndarray)):
        named = [(None, maps)]
    else:
        named = [(None, m) for m in maps]
    columns: list[tuple[str | None, np.ndarray]] = []
    for name, value in named:
        array = as_numpy(value).astype(np.float64)
        if array.ndim == 2 and batch == 1:
            array = array[None]
        if array.ndim == 3:
            columns.append((name, array))
        elif array.ndim == 4:
            columns.extend(
                (None if name is None else f"{name} [{k}]", array[:, k])
                for k in range(array.shape[1])
            )
        else:
            raise ValueError(f"maps must be (B, H, W) or (B, K, H, W), got shape {array.shape}")
        if array.shape[0] != batch:
            raise ValueError(f"{array.shape[0]} maps for {batch} images")
    if titles is not None:
        if len(titles) != len(columns):
            raise ValueError(f"{len(titles)} titles for {len(columns)} columns of maps")
        return [(str(t), a) for t, (_, a) in zip(titles, columns)]
    return [(name or f"map {i}", a) for i, (name, a) in enumerate(columns)]


def show(
    images: ArrayLike,
    maps: Maps,
    titles: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    colorbar: bool = False,
    signed: bool | None = None,
    boxes: ArrayLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    panel_size: float = 2.2,
) -> Figure:
    """A grid of images and their maps: one row per image, one column per map.

    Each sample gets a group of panels: the image, then one panel per column of maps. An
    unsigned map is drawn as an :func:`overlay` on the image; a signed map (one with
    negative values when ``signed=None``, or every map when ``signed=True``) is drawn on
    its own in the diverging colour map :data:`DIVERGING_CMAP`, with limits
    ``-max|map|..max|map|`` so that white is exactly zero.

    Args:
        images: ``(B, C, H, W)`` or ``(B, H, W, C)`` (see the module docstring).
        maps: ``(B, H, W)`` (one column), ``(B, K, H, W)`` (``K`` columns, e.g. targets),
            a list of such, or a dict ``title -> maps``. ``(H, W)`` is accepted for
            ``B = 1``. Maps may be smaller than the images (they are stretched over them).
        titles: one title per column of maps (default: the dict keys, else ``"map i"``).
        ncols: sample groups per figure row (default 1: rows = images); with ``ncols=4``
            eight samples fill two rows of four groups.
        colorbar: add a colour bar to every map panel (for overlays it shows the range of
            the raw map values).
        signed: force (``True``) or forbid (``False``) the diverging display; ``None``
            decides per panel.
        boxes: ``(B, 4)`` ``(x0, y0, x1, y1)`` boxes in image pixels, end exclusive, drawn
            as green rectangles on every panel of the sample.
        mean, std: per-channel normalisation to undo for display.
        alpha, cmap: passed to :func:`overlay`.
        panel_size: size of one panel in inches.

    Returns:
        The :class:`~matplotlib.figure.Figure`; it has exactly ``B * (1 + columns)`` image
        axes (plus one per colour bar).

    Raises:
        ValueError: inconsistent shapes, or a number of titles or boxes that does not
            match.
    """
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 3:
        images = images[None]
    batch = len(images)
    columns = _columns(maps, titles, batch)
    if boxes is not None:
        boxes = as_numpy(boxes)
        if boxes.shape != (batch, 4):
            raise ValueError(f"boxes must have shape ({batch}, 4), got {boxes.shape}")
    groups = 1 if ncols is None else max(1, min(ncols, batch))
    per_group = 1 + len(columns)
    rows = -(-batch // groups)
    fig = Figure(figsize=(panel_size * groups * per_group, panel_size * rows), layout="constrained")
    grid = fig.add_gridspec(rows, groups * per_group)
    for b in range(batch):
        row, first = divmod(b, groups)
        rgb = _rgb(images[b], mean, std)
        height, width = rgb.shape[:2]
        ax = fig.add_subplot(grid[row, first * per_group])
        ax.imshow(rgb, interpolation="nearest")
        if row == 0:
            ax.set_title("image", fontsize=9)
        axes = [ax]
        for c, (title, column) in enumerate(columns):
            heat = column[b]
            ax = fig.add_subplot(grid[row, first * per_group + 1 + c])
            is_signed = bool((heat < 0).any()) if signed is None else signed
            shown: AxesImage | ScalarMappable
            if is_signed:
                limit = symmetric_limit(heat)
                shown = ax.imshow(
                    heat,
                    cmap=DIVERGING_CMAP,
                    vmin=-limit,
                    vmax=limit,
                    extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                    interpolation="nearest",
                )
            else:
                ax.imshow(overlay(rgb, heat, alpha, cmap), interpolation="nearest")
                low, high = float(heat.min()), float(heat.max())
                shown = ScalarMappable(Normalize(low, high if high > low else low + 1.0), cmap)
            if colorbar:
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            if row == 0:
                ax.set_title(title, fontsize=9)
            axes.append(ax)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            if boxes is not None:
                x0, y0, x1, y1 = (float(v) for v in boxes[b])
                ax.add_patch(
                    Rectangle(
                        (x0 - 0.5, y0 - 0.5),
                        x1 - x0,
                        y1 - y0,
                        fill=False,
                        edgecolor="lime",
                        linewidth=1.5,
                    )
                )
    return fig
