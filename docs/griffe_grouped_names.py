"""A griffe extension for the API reference: grouped names and Sphinx roles in docstrings.

gradlens docstrings document parameters that share a description on one line::

    Args:
        model, x, layer, target: as for :func:`gradlens.cam.cam`.

Google style has no such form, so griffe would read ``model, x, layer, target`` as one
(unknown) parameter. Before the docstrings are parsed, this extension rewrites each grouped
entry of an ``Args``/``Attributes``/``Raises``-like section as one entry per name, each with
the shared description, so that every name is checked against the signature and rendered
with its own type. Entries whose list of names wraps onto the next line are joined first.

It also turns Sphinx cross-reference roles (``:class:`~gradlens.Recorder```), which Markdown
would show literally, into inline code (```Recorder```).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

SECTIONS = {
    "args",
    "arguments",
    "params",
    "parameters",
    "keyword args",
    "keyword arguments",
    "other args",
    "other arguments",
    "other params",
    "other parameters",
    "attributes",
    "raises",
    "exceptions",
}
NAMES = r"\*{0,2}[A-Za-z_][\w.]*"
GROUP = re.compile(rf"^(?P<names>{NAMES}(?:\s*,\s*{NAMES})+)\s*:(?P<rest>.*)$")
OPEN_GROUP = re.compile(rf"^{NAMES}(?:\s*,\s*{NAMES})*\s*,$")
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def plain_roles(text: str) -> str:
    """``:class:`~a.b.C``` -> ```C```, ``:func:`a.f``` -> ```a.f```."""
    return ROLE.sub(
        lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text
    )


def split_grouped_entries(text: str) -> str:
    """``text`` with every grouped entry of a names section split into one entry per name."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    section_indent: int | None = None
    entry_indent: int | None = None
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.endswith(":") and stripped[:-1].lower() in SECTIONS:
            section_indent, entry_indent = indent, None
            out.append(line)
            i += 1
            continue
        if section_indent is not None and stripped and indent <= section_indent:
            section_indent = entry_indent = None  # the section ended
        if section_indent is None or not stripped:
            out.append(line)
            i += 1
            continue
        if entry_indent is None:
            entry_indent = indent
        if indent != entry_indent:  # a continuation line of the previous entry
            out.append(line)
            i += 1
            continue
        # an entry: join a list of names that wraps onto the next lines
        head, j = stripped, i
        while OPEN_GROUP.match(head) and j + 1 < len(lines):
            j += 1
            head = f"{head} {lines[j].strip()}"
        match = GROUP.match(head)
        if not match:
            out.append(line)
            i += 1
            continue
        k = j + 1
        while (
            k < len(lines)
            and lines[k].strip()
            and len(lines[k]) - len(lines[k].lstrip()) > entry_indent
        ):
            k += 1
        continuation = lines[j + 1 : k]
        for name in re.split(r"\s*,\s*", match.group("names")):
            out.append(f"{' ' * entry_indent}{name}:{match.group('rest')}")
            out.extend(continuation)
        i = k
    return "\n".join(out)


class GroupedNames(Extension):
    """Split grouped docstring entries (``a, b: description``) and plain Sphinx roles
    before griffe parses the docstrings."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(split_grouped_entries(obj.docstring.value))
