"""Token scores as coloured text: a figure (:func:`text`) or HTML for notebooks (:func:`text_html`).

Both take the same inputs and colour every token the same way:

* ``tokens``: one list of ``T`` strings per sample (``B`` lists), or one list for ``B = 1``;
* ``scores``: ``(B, T)`` (``(T,)`` for one sample), a tensor or an array, one score per token
  (e.g. :func:`gradlens.token_attributions`);
* ``mask``: optional ``(B, T)``, nonzero for the tokens to show (an ``attention_mask``):
  padding is not drawn.

Colours: signed scores (some negative, or ``signed=True``) use the diverging
:data:`~gradlens.viz.colours.DIVERGING_CMAP` centred on 0 (blue negative, white 0, red
positive); non-negative scores use :data:`~gradlens.viz.colours.SEQUENTIAL_CMAP` (near-white
at 0, dark red at the largest score). Each sample is scaled by its own largest ``|score|``
over the shown tokens, unless ``limit=`` fixes one scale for all; scores beyond the limit
get the end colours. The text is white on dark backgrounds, black otherwise.

Token strings are shown as they are -- a leading space stays -- except that line breaks and
tabs appear as ``\\n``, ``\\r`` and ``\\t``. They are never read as markup: the figure turns
off matplotlib's mathtext and TeX for them (``$x$`` shows the dollars), and the HTML escapes
them.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import matplotlib
import numpy as np
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from ._arrays import ArrayLike, as_numpy, symmetric_limit
from .colours import DIVERGING_CMAP, SEQUENTIAL_CMAP

__all__ = ["text", "text_html", "wrap"]

Tokens = Union[Sequence[str], Sequence[Sequence[str]]]

_CHAR_WIDTH = 0.6  # the advance of a monospace character, in font sizes
_LINE_HEIGHT = 1.8  # the distance between two lines of tokens, in font sizes
_SAMPLE_GAP = 0.6  # extra space after each sample, in lines
_VISIBLE = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


@dataclass(frozen=True)
class _Token:
    """One shown token: its display string, score and colours (``#rrggbb``)."""

    text: str
    score: float
    background: str
    foreground: str


def _token_rows(
    tokens: Tokens,
    scores: ArrayLike,
    mask: ArrayLike | None,
    signed: bool | None,
    limit: float | None,
) -> list[list[_Token]]:
    """The shown tokens of every sample, coloured (the rules of the module docstring)."""
    if isinstance(tokens, str):
        raise TypeError("tokens must be a list of strings (or a list of such lists), not a str")
    values = np.nan_to_num(as_numpy(scores).astype(np.float64))
    if all(isinstance(token, str) for token in tokens):
        rows = [list(tokens)]
        if values.ndim == 1:
            values = values[None]
    else:
        rows = [list(row) for row in tokens]
    if values.ndim != 2:
        raise ValueError(f"scores must have shape (B, T), got {values.shape}")
    if len(rows) != values.shape[0]:
        raise ValueError(f"{len(rows)} token lists for {values.shape[0]} rows of scores")
    for b, row in enumerate(rows):
        if len(row) != values.shape[1]:
            raise ValueError(
                f"sample {b} has {len(row)} tokens, but the scores have T = {values.shape[1]} "
                "per sample (pad the token lists to T and pass mask= to hide the padding)"
            )
    shown = np.ones(values.shape, dtype=bool) if mask is None else as_numpy(mask).astype(bool)
    if shown.shape != values.shape:
        raise ValueError(f"mask has shape {shown.shape}, the scores {values.shape}")
    if limit is not None and not limit > 0:
        raise ValueError(f"limit must be a positive number, got {limit}")
    is_signed = bool((values[shown] < 0).any()) if signed is None else signed
    cmap = matplotlib.colormaps[DIVERGING_CMAP if is_signed else SEQUENTIAL_CMAP]
    coloured = []
    for row, row_values, row_shown in zip(rows, values, shown):
        scale = limit or symmetric_limit(row_values[row_shown])
        positions = 0.5 + 0.5 * row_values / scale if is_signed else row_values / scale
        coloured.append(
            [
                _token(str(token), float(value), cmap(float(np.clip(position, 0.0, 1.0))))
                for token, value, position, keep in zip(row, row_values, positions, row_shown)
                if keep
            ]
        )
    return coloured


def _token(token: str, score: float, colour: Any) -> _Token:
    red, green, blue = to_rgb(colour)
    dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
    return _Token(
        text=token.translate(_VISIBLE),
        score=score,
        background=to_hex(colour),
        foreground="#ffffff" if dark else "#000000",
    )


def _titles(titles: Sequence[str] | None, samples: int) -> list[str | None]:
    if titles is None:
        return [None] * samples
    if isinstance(titles, str) or len(titles) != samples:
        raise ValueError(f"titles must be a list of one title per sample ({samples})")
    return [str(title) for title in titles]


def wrap(lengths: Sequence[int], line_width: int) -> list[list[int]]:
    """Greedy line breaking: which tokens go on which line.

    A token takes ``max(length, 1)`` characters, and one space separates two tokens on a
    line; a line is broken before a token that would end past ``line_width``. A token longer
    than the line gets a line of its own (it is not split).

    Args:
        lengths: the number of characters of each token.
        line_width: the characters a line holds.

    Returns:
        The token indices of each line, in order (no line for no tokens).

    Raises:
        ValueError: ``line_width`` is less than 1.
    """
    if line_width < 1:
        raise ValueError(f"line_width must be at least 1, got {line_width}")
    lines: list[list[int]] = []
    column = 0
    for index, length in enumerate(lengths):
        width = max(length, 1)
        if lines and column + 1 + width <= line_width:
            lines[-1].append(index)
            column += 1 + width
        else:
            lines.append([index])
            column = width
    return lines


def text(
    tokens: Tokens,
    scores: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    signed: bool | None = None,
    limit: float | None = None,
    titles: Sequence[str] | None = None,
    line_width: int = 80,
    font_size: float = 10.0,
) -> Figure:
    """Tokens on coloured backgrounds, one block of lines per sample.

    Tokens are set in a monospace font and wrapped at ``line_width`` characters
    (:func:`wrap`); each sample starts on a new line, under its title if ``titles`` are
    given. The figure has one axes per sample, stacked top to bottom, whose texts are the
    shown tokens (and the title) -- the token backgrounds are their boxes.

    Args:
        tokens: ``B`` lists of ``T`` strings, or one list of ``T`` strings for ``B = 1``.
        scores: ``(B, T)`` (or ``(T,)``), a tensor or an array.
        mask: optional ``(B, T)``; tokens where it is 0 / ``False`` (padding) are not drawn.
        signed: force the diverging (``True``) or the sequential (``False``) colour map;
            ``None`` takes the diverging one when a shown score is negative.
        limit: the ``|score|`` that gets the full colour, for all samples; ``None`` scales
            each sample by its own largest ``|score|``.
        titles: one title per sample, drawn above it.
        line_width: characters per line.
        font_size: in points.

    Returns:
        The :class:`~matplotlib.figure.Figure`, ``line_width`` characters wide.

    Raises:
        TypeError: ``tokens`` is a string.
        ValueError: the shapes of ``tokens``, ``scores`` and ``mask`` disagree (the number
            of samples or of tokens per sample), ``scores`` is not 1-D or 2-D, a number of
            titles that is not ``B``, or a ``limit`` or ``line_width`` that is not positive.
    """
    rows = _token_rows(tokens, scores, mask, signed, limit)
    names = _titles(titles, len(rows))
    layouts = [wrap([len(token.text) for token in row], line_width) for row in rows]
    heights = [
        max(len(lines), 1) + (name is not None) + _SAMPLE_GAP for lines, name in zip(layouts, names)
    ]
    char_width, line_height = _CHAR_WIDTH * font_size, _LINE_HEIGHT * font_size  # points
    fig = Figure(figsize=((line_width + 1) * char_width / 72, sum(heights) * line_height / 72))
    grid = fig.add_gridspec(
        len(rows), 1, height_ratios=heights, left=0, right=1, top=1, bottom=0, hspace=0
    )
    style: dict[str, Any] = dict(fontsize=font_size, family="monospace", va="center", ha="left")
    for b, (row, lines, name, height) in enumerate(zip(rows, layouts, names, heights)):
        ax = fig.add_subplot(grid[b])
        ax.set_axis_off()
        ax.set_xlim(-0.5, line_width + 0.5)  # in characters
        ax.set_ylim(height - 0.5, -0.5)  # in lines, top down
        first_line = 0
        if name is not None:
            ax.text(0, 0, name, fontweight="bold", parse_math=False, usetex=False, **style)
            first_line = 1
        for line_number, line in enumerate(lines, start=first_line):
            column = 0
            for index in line:
                token = row[index]
                ax.text(
                    column,
                    line_number,
                    token.text,
                    color=token.foreground,
                    bbox=dict(boxstyle="square,pad=0.15", facecolor=token.background, lw=0),
                    parse_math=False,  # '$' and '\' in tokens are characters, not markup
                    usetex=False,
                    **style,
                )
                column += max(len(token.text), 1) + 1
    return fig


def text_html(
    tokens: Tokens,
    scores: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    signed: bool | None = None,
    limit: float | None = None,
    titles: Sequence[str] | None = None,
) -> str:
    """The picture of :func:`text` as HTML with inline styles, for notebooks and reports.

    One ``<div>`` per sample (its title in bold first, if given) holds one ``<span>`` per
    shown token, with the token's colours and its score as the hover ``title``; the browser
    wraps long sequences between tokens. Token strings and titles are HTML-escaped. In
    Jupyter, show it with ``IPython.display.HTML(text_html(...))``.

    Args:
        tokens, scores, mask, signed, limit, titles: as for :func:`text`.

    Returns:
        The HTML string.

    Raises:
        TypeError: ``tokens`` is a string.
        ValueError: as for :func:`text`.
    """
    rows = _token_rows(tokens, scores, mask, signed, limit)
    samples = []
    for row, name in zip(rows, _titles(titles, len(rows))):
        heading = (
            "" if name is None else f'<div style="font-weight: bold">{html.escape(name)}</div>'
        )
        spans = "".join(
            '<span style="display: inline-block; margin: 1px; padding: 0 2px; '
            f'white-space: pre; background-color: {token.background}; color: {token.foreground}" '
            f'title="{token.score:.3g}">{html.escape(token.text)}</span>'
            for token in row
        )
        samples.append(f'<div style="margin-bottom: 0.6em">{heading}{spans}</div>')
    body = "\n".join(samples)
    return f'<div style="font-family: monospace; line-height: 1.8">\n{body}\n</div>'
