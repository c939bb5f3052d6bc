"""Writing figures to disk: :func:`save`."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["save"]


def save(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path``; the format follows the suffix (``.png``, ``.pdf``, ``.svg``, ...).

    Missing parent folders are created.

    Args:
        fig: the figure.
        path: where to write it.
        dpi: the resolution of raster formats, in dots per inch.

    Returns:
        The path written, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: the path has no suffix, or matplotlib does not know the format.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(
            f"cannot tell the format of {str(path)!r}: give it a suffix such as .png or .pdf"
        )
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"unsupported format {fmt!r}; matplotlib writes {', '.join(sorted(supported))}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=dpi)
    return path
