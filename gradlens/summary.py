"""Listing layers (:func:`layers`) and choosing the default CAM layer (:func:`default_layer`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._inputs import Inputs, ModelInput
from .errors import LayerNotFoundError
from .recorder import Recorder
from .selection import named_modules

__all__ = ["LayerInfo", "LayerTable", "layers", "default_layer"]


@dataclass(frozen=True)
class LayerInfo:
    """One row of :func:`layers`.

    Attributes:
        name: dotted module name.
        type: the module's class name.
        output_shape: the shape of its (last) output for the example input, a tuple of
            shapes for structured outputs, or ``None`` without an example (or if it did not run).
        calls: how many times it ran for the example input (``None`` without one).
        default: ``True`` for the layer a CAM method would pick with ``layer=None``.
    """

    name: str
    type: str
    output_shape: Any = None
    calls: int | None = None
    default: bool = False


class LayerTable(list[LayerInfo]):
    """A list of :class:`LayerInfo` that prints as a table."""

    def __str__(self) -> str:
        rows = [("name", "type", "output shape", "")]
        for info in self:
            shape = "" if info.output_shape is None else _format_shape(info.output_shape)
            rows.append(
                (info.name, info.type, shape, "<- default CAM layer" if info.default else "")
            )
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(
            f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
            for r in rows
        )

    def names(self) -> list[str]:
        """The layer names, in model order."""
        return [info.name for info in self]


def _format_shape(shape: Any) -> str:
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return "(" + ", ".join(map(str, shape)) + ")"
    if isinstance(shape, (tuple, list)):
        return "[" + ", ".join(_format_shape(s) for s in shape) + "]"
    return str(shape)


def _signature(t: Tensor) -> tuple[Any, ...]:
    # shape, storage, strides and version identify "the same tensor value" across modules
    return (
        tuple(t.shape),
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        t.stride(),
        t._version,
    )


def _probe(model: nn.Module, x: Inputs, forward_kwargs: Mapping[str, Any] | None) -> Recorder:
    recorder = Recorder(model, lambda name, module: name != "", reduce=_signature)
    # outside inference mode: the signature needs version counters, which inference tensors lack
    with torch.inference_mode(False), torch.no_grad(), recorder:
        args, kwargs = ModelInput.parse(x, forward_kwargs).bind()
        recorder.forward(*args, **kwargs)
    return recorder


def _shape_of(signature: Any) -> Any:
    if isinstance(signature, tuple) and len(signature) == 5 and isinstance(signature[0], tuple):
        return signature[0]
    if isinstance(signature, (tuple, list)):
        return tuple(_shape_of(s) for s in signature)
    if isinstance(signature, Mapping):
        return tuple(_shape_of(s) for s in signature.values())
    return None


def _default_from(recorder: Recorder) -> str | None:
    calls = [c for c in recorder.all_calls() if _is_spatial(c.activation)]
    if not calls:
        return None
    last = calls[-1].activation
    same = [c.name for c in calls if c.activation == last]
    return min(same, key=lambda n: (len(n), n))


def _is_spatial(signature: Any) -> bool:
    shape = _shape_of(signature)
    return (
        isinstance(shape, tuple)
        and len(shape) == 4
        and all(isinstance(s, int) for s in shape)
        and shape[2] * shape[3] > 1
    )


def layers(
    model: nn.Module,
    example_input: Inputs | None = None,
    *,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> LayerTable:
    """List a model's layers: names and types, and with an example input their output shapes.

    Args:
        model: the model.
        example_input: optional input (a tuple for several positional inputs); with it,
            one forward pass without tape gives each layer's output shape and call count,
            and marks the layer that CAM methods pick with ``layer=None``.
        forward_kwargs: keyword inputs for that forward pass.

    Returns:
        A :class:`LayerTable` (a list of :class:`LayerInfo`; ``print`` it for a table).
    """
    named = [(n, m) for n, m in named_modules(model).items() if n]
    if example_input is None:
        return LayerTable(LayerInfo(n, type(m).__name__) for n, m in named)
    recorder = _probe(model, example_input, forward_kwargs)
    default = _default_from(recorder)
    calls_of: dict[str, list[Any]] = {}
    for call in recorder.all_calls():
        calls_of.setdefault(call.name, []).append(call)
    table = LayerTable()
    for name, module in named:
        calls = calls_of.get(name, [])
        shape = _shape_of(calls[-1].activation) if calls else None
        table.append(LayerInfo(name, type(module).__name__, shape, len(calls), name == default))
    return table


def default_layer(
    model: nn.Module, x: Inputs, *, forward_kwargs: Mapping[str, Any] | None = None
) -> str:
    """The layer CAM methods use when ``layer=None``.

    It is the last module, in the order modules finish, whose output is 4-D with more
    than one spatial position (so not a global pool); among modules returning that same
    tensor (``layer4``, ``layer4.1``, ``layer4.1.relu``) the shortest name. One forward pass
    without tape on the first sample of ``x`` finds it.

    Raises:
        LayerNotFoundError: no module produces such an output (e.g. a transformer:
            name the layer explicitly).
    """
    first = ModelInput.parse(x, forward_kwargs).take(torch.zeros(1, dtype=torch.long))
    recorder = _probe(model, first, None)
    name = _default_from(recorder)
    if name is None:
        raise LayerNotFoundError(
            f"{type(model).__name__} has no layer with a 4-D output of more than one spatial "
            "position, so no CAM layer can be chosen automatically; pass layer= "
            "(gradlens.layers(model, x) lists the layers and their output shapes)"
        )
    return name
