"""Heat maps of patching results, layer x position: :func:`patching_heatmap`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ._arrays import ArrayLike, as_numpy, symmetric_limit
from .colours import DIVERGING_CMAP

__all__ = ["patching_heatmap"]


def patching_heatmap(
    results: ArrayLike | Mapping[str, ArrayLike],
    layers: Sequence[str] | None = None,
    positions: Sequence[str] | None = None,
    *,
    title: str | None = None,
    panel_size: float = 3.0,
) -> Figure:
    """Heat maps of patching results, layer x position, one panel per result.

    For :func:`gradlens.activation_patching` and :func:`gradlens.attribution_patching`:
    pass ``{"activation patching": ap, "attribution patching": atp}`` to see the
    estimate beside the measured effect. Each panel has its own colour scale, symmetric
    around 0 (blue negative, white 0, red positive) with a colour bar.

    Args:
        results: an ``(L, P)`` array, or ``{panel title: (L, P) array}``; all of one shape.
        layers: the ``L`` row labels (e.g. the layer names); default ``0..L-1``.
        positions: the ``P`` column labels (e.g. the tokens); default ``0..P-1``.
        title: a title above the panels.
        panel_size: the height of a panel in inches; panels are wider for more
            positions, up to three times that.

    Returns:
        The :class:`~matplotlib.figure.Figure`.

    Raises:
        ValueError: a result is not 2-D, the results differ in shape, or a label list
            has the wrong length.
    """
    panels = dict(results) if isinstance(results, Mapping) else {"": results}
    arrays = {name: as_numpy(value).astype(np.float64) for name, value in panels.items()}
    shapes = {name: array.shape for name, array in arrays.items()}
    if any(len(shape) != 2 for shape in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(
            f"patching results must be 2-D arrays (layers, positions) of one shape; got {shapes}"
        )
    n_layers, n_positions = next(iter(shapes.values()))
    row_labels = [str(label) for label in (range(n_layers) if layers is None else layers)]
    column_labels = [str(p) for p in (range(n_positions) if positions is None else positions)]
    if len(row_labels) != n_layers or len(column_labels) != n_positions:
        raise ValueError(
            f"{len(row_labels)} layer and {len(column_labels)} position labels for results "
            f"of shape ({n_layers}, {n_positions})"
        )
    width = min(max(1.5 + 0.3 * n_positions, panel_size), 3 * panel_size)  # per panel
    fig = Figure(figsize=(width * len(arrays), panel_size + 0.6), layout="constrained")
    for k, (name, array) in enumerate(arrays.items()):
        ax = fig.add_subplot(1, len(arrays), k + 1)
        limit = symmetric_limit(array)
        shown = ax.imshow(
            array,
            cmap=DIVERGING_CMAP,
            vmin=-limit,
            vmax=limit,
            aspect="auto",
            interpolation="nearest",
        )
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        ax.set_xticks(range(n_positions), column_labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n_layers), row_labels if k == 0 else [""] * n_layers, fontsize=7)
        ax.set_xlabel("position", fontsize=8)
        if name:
            ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
