"""Pictures of explanations (matplotlib only).

One file per kind of picture:

* :mod:`~gradlens.viz.images` -- images and their maps: heatmap :func:`overlay` and grids
  of images x maps (:func:`show`);
* :mod:`~gradlens.viz.tokens` -- token scores as coloured text: a figure (:func:`text`)
  or HTML for notebooks (:func:`text_html`);
* :mod:`~gradlens.viz.patching` -- layer x position heat maps of patching results
  (:func:`patching_heatmap`);
* :mod:`~gradlens.viz.features` -- the max-activating examples of an SAE latent as an
  HTML or Markdown table (:func:`top_features_table`);
* :mod:`~gradlens.viz.files` -- :func:`save` writes any figure;
* :mod:`~gradlens.viz.colours` -- the colour maps they share (:data:`DIVERGING_CMAP`,
  :data:`SEQUENTIAL_CMAP`).

Figures are built as :class:`matplotlib.figure.Figure` objects directly, never through
``pyplot``, so nothing here needs a GUI, selects a backend or opens a window; a figure
shows up in a notebook when it is the cell's value, and :func:`save` writes it to disk.
"""

from __future__ import annotations

from .colours import DIVERGING_CMAP, SEQUENTIAL_CMAP
from .features import top_features_table
from .files import save
from .images import overlay, show
from .patching import patching_heatmap
from .tokens import text, text_html

__all__ = [
    "DIVERGING_CMAP",
    "SEQUENTIAL_CMAP",
    "overlay",
    "patching_heatmap",
    "save",
    "show",
    "text",
    "text_html",
    "top_features_table",
]
