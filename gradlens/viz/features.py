"""Max-activating examples of an SAE latent as a table: :func:`top_features_table`."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Literal, Union

import numpy as np

from ..sae.top import TopFeatures
from .tokens import _VISIBLE, _token_rows

__all__ = ["top_features_table"]

TokenNames = Union[Callable[[int], str], Sequence[str], None]
"""How a token id becomes text: a function ``id -> str`` (e.g. a tokenizer's ``decode`` of
one id), a vocabulary list, or ``None`` (the id itself)."""


def top_features_table(
    top: TopFeatures,
    tokens: TokenNames = None,
    *,
    format: Literal["html", "markdown"] = "html",
    context: int | None = 8,
) -> str:
    """A table of the windows where a latent fires most (from
    :func:`gradlens.sae.top_features`), one row per window, strongest first.

    Each row gives the rank, the window's row in the cache, the position and value of the
    latent's largest activation there, and the window's tokens around that position: in
    HTML every token coloured by the latent's activation (the sequential colour map of
    :func:`gradlens.viz.text_html`, one scale for the whole table, the top value darkest)
    with the peak token framed; in Markdown the tokens separated by spaces and the peak
    token in bold between ``[[ ]]``. Token strings are escaped (HTML) or have Markdown's
    special characters (backslash, ``|``, ``*``, ``[``, ``]``, ``_``, backquote) and
    line breaks escaped (Markdown).

    Args:
        top: the examples.
        tokens: how token ids become text (see :data:`TokenNames`).
        format: ``"html"`` or ``"markdown"``.
        context: how many tokens to show on each side of the peak; ``None``: the whole
            window.

    Returns:
        The table as a string (in Jupyter: ``IPython.display.HTML(table)``).

    Raises:
        ValueError: an unknown format or a negative ``context``.
    """
    if format not in ("html", "markdown"):
        raise ValueError(f'format must be "html" or "markdown", got {format!r}')
    if context is not None and (isinstance(context, bool) or context < 0):
        raise ValueError(f"context must be a number of tokens >= 0 or None, got {context!r}")
    name = _namer(tokens)
    rows = []
    for rank in range(len(top.values)):
        position = int(top.positions[rank])
        length = top.token_ids.shape[1]
        lo, hi = (
            (0, length)
            if context is None
            else (max(0, position - context), min(length, position + context + 1))
        )
        ids = [int(i) for i in top.token_ids[rank, lo:hi]]
        values = [float(v) for v in top.activations[rank, lo:hi]]
        rows.append((rank, position, [name(i) for i in ids], values, position - lo))
    title = f"latent {top.latent} of {top.hook_point} ({top.windows_read} windows read)"
    if format == "markdown":
        return _markdown(top, rows, title)
    return _html(top, rows, title)


def _namer(tokens: TokenNames) -> Callable[[int], str]:
    if tokens is None:
        return str
    if callable(tokens):
        return lambda i: str(tokens(i))
    vocabulary = list(tokens)
    return lambda i: vocabulary[i] if 0 <= i < len(vocabulary) else f"<{i}>"


Row = tuple[int, int, list[str], list[float], int]


def _markdown(top: TopFeatures, rows: list[Row], title: str) -> str:
    lines = [
        f"**{_md(title)}**",
        "",
        "| # | window | position | activation | tokens |",
        "|---|---|---|---|---|",
    ]
    for rank, position, texts, _, peak in rows:
        shown = " ".join(f"**[[{_md(t)}]]**" if i == peak else _md(t) for i, t in enumerate(texts))
        lines.append(
            f"| {rank + 1} | {int(top.windows[rank])} | {position} | "
            f"{float(top.values[rank]):.4g} | {shown} |"
        )
    return "\n".join(lines)


def _md(text: str) -> str:
    text = text.translate(_VISIBLE)
    for character in "\\|*[]_`":
        text = text.replace(character, "\\" + character)
    return text


def _html(top: TopFeatures, rows: list[Row], title: str) -> str:
    limit = max((float(v) for v in top.values), default=0.0)
    cells = []
    for rank, position, texts, values, peak in rows:
        coloured = (
            _token_rows([texts], np.array([values]), None, False, limit if limit > 0 else None)[0]
            if texts
            else []
        )
        spans = "".join(
            '<span style="display: inline-block; margin: 1px; padding: 0 2px; white-space: pre; '
            f"background-color: {token.background}; color: {token.foreground}"
            + ("; outline: 2px solid #000000" if i == peak else "")
            + f'" title="{token.score:.3g}">{html.escape(token.text)}</span>'
            for i, token in enumerate(coloured)
        )
        cells.append(
            f"<tr><td>{rank + 1}</td><td>{int(top.windows[rank])}</td><td>{position}</td>"
            f"<td>{float(top.values[rank]):.4g}</td>"
            f'<td style="font-family: monospace; line-height: 1.8">{spans}</td></tr>'
        )
    head = "<tr><th>#</th><th>window</th><th>position</th><th>activation</th><th>tokens</th></tr>"
    body = "\n".join(cells)
    return (
        f"<table>\n<caption>{html.escape(title)}</caption>\n<thead>{head}</thead>\n"
        f"<tbody>\n{body}\n</tbody>\n</table>"
    )
