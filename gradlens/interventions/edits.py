"""Edits of a layer's output for :func:`gradlens.patch`: zero, mean, add, replace, resample.

Each helper returns an :class:`Edit`, a callable ``edit(name, output) -> new output``
applied to one layer's output tensor (the tensor picked by ``select=`` for structured
outputs). Every helper can act on the whole output or only on some ``positions``: indices
along dimension 1, the token dimension of a ``(B, T, D)`` transformer activation (the
channel dimension of a ``(B, C, H, W)`` feature map).

A value given to an edit (a replacement, a steering vector) must broadcast to the layer's
output shape; with ``positions`` it may instead broadcast to the shape of the selected
part, ``output[:, positions]``. The edited output is always a new tensor: later in-place
operations of the model (``ReLU(inplace=True)``, ``out += identity``) can change neither
the value given nor the module's original output.

Example::

    with gradlens.patch(model, {"transformer.h.3": gradlens.edits.add(vector, scale=4.0)}):
        steered = model.generate(ids, max_new_tokens=20)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from ..core.outputs import fit_replacement
from ..errors import InterventionError, OutputSelectionError

__all__ = ["Edit", "Positions", "add", "as_edit", "mean", "replace", "resample", "zero"]

Positions = Union[int, Sequence[int], slice, Tensor, None]
Value = Union[Tensor, float]


class Edit:
    """An edit of one layer's output: ``edit(name, output) -> new output``.

    Built by :func:`zero`, :func:`mean`, :func:`add`, :func:`replace` and :func:`resample`;
    :func:`gradlens.patch` turns a tensor or a plain function into one (:func:`as_edit`).
    Subclasses implement :meth:`apply`; calling the edit first checks that the output is a
    tensor.
    """

    def __init__(self, positions: Positions = None) -> None:
        self.positions = positions

    def __call__(self, name: str, output: Any) -> Any:
        """The edited output of layer ``name``.

        Raises:
            OutputSelectionError: the layer returned a structure (tuple, dict, dataclass)
                and no ``select=`` picked one of its tensors.
            InterventionError: see :meth:`apply`.
        """
        if not isinstance(output, Tensor):
            raise OutputSelectionError(
                f"layer {name!r} returned a {type(output).__name__}, not a tensor: pass "
                f"select= to gradlens.patch (an index, a key or a function) to say which of "
                f"its tensors {self!r} edits"
            )
        return self.apply(name, output)

    def apply(self, name: str, output: Tensor) -> Tensor:
        """Return the edited copy of ``output`` (never ``output`` itself, nor a view of it).

        Raises:
            InterventionError: a value does not broadcast to the output, or a position is
                out of range.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        where = "" if self.positions is None else f"positions={_describe(self.positions)}"
        arguments = ", ".join(a for a in (self._describe_args(), where) if a)
        return f"{self._kind()}({arguments})"

    def _kind(self) -> str:
        return type(self).__name__.lstrip("_").lower()

    def _describe_args(self) -> str:
        return ""


class _Zero(Edit):
    def apply(self, name: str, output: Tensor) -> Tensor:
        return _put(name, output, torch.zeros((), dtype=output.dtype), self.positions, _take)


class _Mean(Edit):
    def __init__(self, over: int | Sequence[int], positions: Positions) -> None:
        super().__init__(positions)
        self.over = (over,) if isinstance(over, int) else tuple(over)

    def apply(self, name: str, output: Tensor) -> Tensor:
        bad = [d for d in self.over if not -output.ndim <= d < output.ndim]
        if bad or not self.over:
            raise InterventionError(
                f"mean(over={self.over}) for layer {name!r}: the output has shape "
                f"{tuple(output.shape)}, so over= must name dimensions in "
                f"-{output.ndim}..{output.ndim - 1}"
            )
        average = output.mean(dim=self.over, keepdim=True)
        return _put(name, output, average, self.positions, _take)

    def _describe_args(self) -> str:
        return f"over={self.over}"


class _Add(Edit):
    def __init__(self, vector: Value, scale: float, positions: Positions) -> None:
        super().__init__(positions)
        self.vector = vector
        self.scale = scale

    def apply(self, name: str, output: Tensor) -> Tensor:
        return _put(name, output, _as_tensor(self.vector) * self.scale, self.positions, _sum)

    def _describe_args(self) -> str:
        return f"vector of shape {_shape(self.vector)}, scale={self.scale}"


class _Replace(Edit):
    def __init__(self, value: Value | Mapping[str, Tensor], positions: Positions) -> None:
        super().__init__(positions)
        self.value = value

    def apply(self, name: str, output: Tensor) -> Tensor:
        value = self.value
        if isinstance(value, Mapping):
            if name not in value:
                raise InterventionError(
                    f"resample() holds no activation for layer {name!r}; it holds "
                    f"{', '.join(map(repr, value)) or 'none'} (pass a tensor, or a mapping "
                    f"with this layer's name, e.g. from gradlens.extract on another input)"
                )
            value = value[name]
        return _put(name, output, _as_tensor(value), self.positions, _take)

    def _describe_args(self) -> str:
        if isinstance(self.value, Mapping):
            return f"activations of {list(self.value)}"
        return f"value of shape {_shape(self.value)}"

    def _kind(self) -> str:
        return "resample" if isinstance(self.value, Mapping) else "replace"


class _Function(Edit):
    """A user function ``output -> new output``; it may receive and return a structure."""

    def __init__(self, function: Callable[[Any], Any]) -> None:
        super().__init__(None)
        self.function = function

    def __call__(self, name: str, output: Any) -> Any:
        return self.function(output)

    def __repr__(self) -> str:
        return f"function {getattr(self.function, '__name__', self.function)!r}"


def zero(*, positions: Positions = None) -> Edit:
    """Zero-ablation: replace the output (or its ``positions``) with zeros.

    Args:
        positions: indices along dimension 1 to zero (an int, a sequence of ints, a slice
            or an integer tensor); ``None`` zeros the whole output.

    Returns:
        An :class:`Edit`; the edited output has the output's shape.
    """
    return _Zero(positions)


def mean(over: int | Sequence[int] = (0,), *, positions: Positions = None) -> Edit:
    """Mean-ablation: replace the output with its mean over dimensions ``over`` of the current
    batch (broadcast back to the output's shape).

    Args:
        over: the dimensions to average over; ``(0,)`` (default) replaces every sample's
            activation with the batch mean, ``(0, 1)`` with the mean over samples and tokens.
        positions: only replace these indices of dimension 1 (the mean is still taken over
            the whole output).

    Returns:
        An :class:`Edit`.

    Raises:
        InterventionError: (when applied) ``over`` names a dimension the output lacks.
    """
    return _Mean(over, positions)


def add(vector: Value, scale: float = 1.0, *, positions: Positions = None) -> Edit:
    """Steering: add ``scale * vector`` to the output, at every position or at ``positions``.

    Args:
        vector: broadcasts to the output, e.g. ``(D,)`` for a ``(B, T, D)`` residual
            stream (Turner et al. 2023, "Activation Addition"), or to
            ``output[:, positions]``.
        scale: multiplies the vector.
        positions: indices along dimension 1 to add to; ``None`` adds everywhere.

    Returns:
        An :class:`Edit`.

    Raises:
        InterventionError: (when applied) the vector does not broadcast, or a position is
            out of range.
    """
    return _Add(vector, scale, positions)


def replace(value: Value, *, positions: Positions = None) -> Edit:
    """Replace the output, or only its ``positions``, with ``value``.

    Args:
        value: broadcasts to the output's shape (e.g. the same layer's activation on another
            input, whose ``positions`` are then copied), or to ``output[:, positions]``.
        positions: indices along dimension 1 to replace; ``None`` replaces everything.

    Returns:
        An :class:`Edit`. A bare tensor given to :func:`gradlens.patch` is ``replace(tensor)``.

    Raises:
        InterventionError: (when applied) the value does not broadcast, or a position is
            out of range.
    """
    return _Replace(value, positions)


def resample(activations: Tensor | Mapping[str, Tensor], *, positions: Positions = None) -> Edit:
    """Resample-ablation: replace the output with a stored activation, e.g. the same layer's
    output on another input from :func:`gradlens.extract`.

    Args:
        activations: a tensor, or ``{layer name: tensor}`` (the dict :func:`gradlens.extract`
            returns), so that one edit serves every layer a pattern selects.
        positions: indices along dimension 1 to replace; ``None`` replaces everything.

    Returns:
        An :class:`Edit`.

    Raises:
        InterventionError: (when applied) the mapping has no entry for the layer, or the
            stored activation does not broadcast to the output.
    """
    return _Replace(activations, positions)


def as_edit(edit: Edit | Tensor | Callable[[Any], Any]) -> Edit:
    """The :class:`Edit` for one value of :func:`gradlens.patch`'s ``edits``.

    Args:
        edit: an :class:`Edit` (returned as is); a tensor (``replace(tensor)``); or a
            function ``output -> new output``, which receives the layer's output (the
            tensor ``select=`` picks, else the module's output as it is) and returns its
            replacement.

    Returns:
        An :class:`Edit`.

    Raises:
        TypeError: anything else.
    """
    if isinstance(edit, Edit):
        return edit
    if isinstance(edit, Tensor):
        return _Replace(edit, None)
    if callable(edit):
        return _Function(edit)
    raise TypeError(
        "an edit is a tensor (the new output), a function output -> new output, or a "
        f"gradlens.edits helper (zero(), mean(), add(), replace(), resample()); got "
        f"{type(edit).__name__}"
    )


# -- applying a value at positions ---------------------------------------------------------


def _take(part: Tensor, value: Tensor) -> Tensor:
    return value.expand(part.shape).clone()


def _sum(part: Tensor, value: Tensor) -> Tensor:
    return part + value


def _put(
    name: str,
    output: Tensor,
    value: Tensor,
    positions: Positions,
    combine: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``output`` with ``combine(part, value)`` in place of the part at ``positions``."""
    if positions is None:
        # the value checked, cast and expanded into a new tensor of the output's shape
        whole = fit_replacement(name, output, value, fit="broadcast")
        return whole if combine is _take else combine(output, whole)
    value = value.to(device=output.device, dtype=output.dtype)
    index = position_index(name, output, positions)
    part = output[:, index]
    if _broadcasts(value.shape, output.shape):
        value = value.expand(output.shape)[:, index]
    elif not _broadcasts(value.shape, part.shape):
        raise InterventionError(
            f"the value for layer {name!r} has shape {tuple(value.shape)}, which broadcasts "
            f"neither to the layer's output shape {tuple(output.shape)} nor to the shape "
            f"{tuple(part.shape)} of output[:, {_describe(positions)}]"
        )
    edited = output.clone()
    edited[:, index] = combine(part, value)
    return edited


def position_index(name: str, output: Tensor, positions: Positions) -> Tensor:
    """``positions`` as an int64 index into dimension 1 of ``output``, checked.

    Raises:
        InterventionError: the output has no dimension 1, or a position is out of range.
    """
    if output.ndim < 2:
        raise InterventionError(
            f"positions={_describe(positions)} index dimension 1, but layer {name!r} returned "
            f"shape {tuple(output.shape)}"
        )
    size = output.shape[1]
    if isinstance(positions, slice):
        return torch.arange(size, device=output.device)[positions]
    index = torch.as_tensor(positions, dtype=torch.long, device=output.device).reshape(-1)
    bad = index[(index >= size) | (index < -size)]
    if bad.numel():
        raise InterventionError(
            f"position {int(bad[0])} is out of range for layer {name!r}, whose output "
            f"{tuple(output.shape)} has {size} positions along dimension 1 "
            f"(valid: 0..{size - 1}, or -{size}..-1 from the end); in cached generation "
            "each step after the first sees one new position only"
        )
    return index % size


def _broadcasts(source: torch.Size, target: torch.Size) -> bool:
    try:
        return bool(torch.broadcast_shapes(source, target) == target)
    except RuntimeError:
        return False


def _as_tensor(value: Value) -> Tensor:
    return value if isinstance(value, Tensor) else torch.as_tensor(value)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, Tensor) else ()


def _describe(positions: Positions) -> str:
    if isinstance(positions, Tensor):
        return str(positions.tolist())
    if isinstance(positions, slice):
        parts = [positions.start, positions.stop]
        text = ":".join("" if p is None else str(p) for p in parts)
        return text + (f":{positions.step}" if positions.step is not None else "")
    return repr(list(positions) if isinstance(positions, Sequence) else positions)
