"""Taking a structured module output apart and putting it back together.

Modules return tensors, but also tuples (LSTM), dicts, dataclasses (Hugging Face outputs)
and nestings of them. :func:`flatten` lists the leaves of such a structure and gives a
function that builds the same structure from new leaves; :func:`selected_positions` finds
the leaf that a ``select=`` spec picks. The Recorder uses them to record (and hand on) the
tensors of a structured output, :mod:`gradlens.outputs` to replace one of them.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from ..errors import OutputSelectionError
from .output_selection import OutputSpec, select_output

__all__ = ["Rebuild", "flatten", "partial_rebuild", "selected_positions"]

Rebuild = Callable[[list[Any]], Any]
"""Builds a structure from a list of leaves (as many as :func:`flatten` returned)."""


def flatten(obj: Any) -> tuple[list[Any], Rebuild]:
    """The leaves of a (nested) tensor/tuple/list/dict/dataclass structure, and its rebuilder.

    Args:
        obj: a tensor, or a tuple (named tuples included), list, mapping or dataclass
            instance of such values, nested to any depth; anything else is a leaf.

    Returns:
        ``(leaves, rebuild)``: the leaves in depth-first order, and a function that takes a
        list of the same length and returns a copy of the structure holding those values
        (``rebuild(leaves)`` is equal to ``obj``). Mappings are shallow-copied, so their
        type (``OrderedDict``, a Hugging Face ``ModelOutput``) is kept; dataclasses are
        rebuilt with :func:`dataclasses.replace`.
    """
    if isinstance(obj, Tensor):
        return [obj], lambda leaves: leaves[0]
    if isinstance(obj, (tuple, list)):
        return _flatten_children(list(obj), lambda items: _same_sequence(obj, items))
    if isinstance(obj, Mapping):
        keys = list(obj.keys())

        def rebuild_mapping(items: list[Any]) -> Any:
            new: Any = copy.copy(obj)
            for key, value in zip(keys, items):
                new[key] = value
            return new

        return _flatten_children([obj[k] for k in keys], rebuild_mapping)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj) if f.init]
        return _flatten_children(
            [getattr(obj, n) for n in names],
            lambda items: dataclasses.replace(obj, **dict(zip(names, items))),
        )
    return [obj], lambda leaves: leaves[0]


def partial_rebuild(rebuild: Rebuild, leaves: list[Any], positions: list[int]) -> Rebuild:
    """A rebuilder that takes values for ``positions`` only and keeps the other ``leaves``.

    Args:
        rebuild: the rebuilder :func:`flatten` returned with ``leaves``.
        leaves: all leaves (typically with the tensors replaced by ``None``, so that the
            returned function keeps no tensor, and no autograd graph, alive).
        positions: the indices into ``leaves`` that the returned function fills, in order.

    Returns:
        ``values -> structure`` with ``values[i]`` at ``positions[i]``.
    """

    def rebuild_some(values: list[Any]) -> Any:
        flat = list(leaves)
        for pos, value in zip(positions, values):
            flat[pos] = value
        return rebuild(flat)

    return rebuild_some


def selected_positions(output: Any, leaves: list[Any], spec: OutputSpec, name: str) -> list[int]:
    """The positions in ``leaves`` (from ``flatten(output)``) of the tensors ``spec`` selects.

    Args:
        output: a module's output.
        leaves: ``flatten(output)[0]``.
        spec: ``None`` for every tensor leaf, or a ``select=`` spec (an index, a key or a
            function ``output -> tensor``, as for :func:`gradlens.targets.select_output`)
            that picks one of them.
        name: the module's name, for error messages.

    Returns:
        The indices of the tensor leaves: all of them for ``spec=None``, else those that
        hold the selected tensor (one, unless the output holds that tensor twice).

    Raises:
        OutputSelectionError: ``spec`` names nothing in the output, or picks a tensor that
            is not one of the output's own (e.g. a function that computes a new tensor).
    """
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
    if spec is None:
        return positions
    chosen = select_output(output, spec)
    positions = [i for i in positions if leaves[i] is chosen]
    if not positions:
        raise OutputSelectionError(
            f"select={spec!r} for layer {name!r} must pick one of the tensors the "
            "module returned, not a tensor computed from them"
        )
    return positions


def _flatten_children(children: list[Any], build: Rebuild) -> tuple[list[Any], Rebuild]:
    parts = [flatten(c) for c in children]
    sizes = [len(leaves) for leaves, _ in parts]
    leaves = [leaf for part, _ in parts for leaf in part]

    def rebuild(flat: list[Any]) -> Any:
        items, start = [], 0
        for (_, sub_rebuild), size in zip(parts, sizes):
            items.append(sub_rebuild(flat[start : start + size]))
            start += size
        return build(items)

    return leaves, rebuild


def _same_sequence(template: tuple[Any, ...] | list[Any], items: list[Any]) -> Any:
    if isinstance(template, list):
        return items
    if hasattr(template, "_fields"):  # namedtuple
        return type(template)(*items)
    try:
        return type(template)(items)
    except TypeError:
        return tuple(items)
