"""The one place where a method's ``layer=`` becomes module names.

A layer spec (a name, glob, type, module or filter; see :mod:`gradlens.core.selection`)
selects modules; ``None`` asks for the default CAM layer (:func:`default_layer`).
"""

from __future__ import annotations

from torch import nn

from ..core.inputs import ModelInput
from ..core.selection import Layers, select_layers
from .discovery import default_layer

__all__ = ["resolve_layers", "single_layer"]


def resolve_layers(model: nn.Module, inputs: ModelInput, layer: Layers | None) -> list[str]:
    """The names of the layers ``layer`` selects, in model order; for ``None`` the one
    default CAM layer of ``model`` on this input (:func:`default_layer`).

    Raises:
        LayerNotFoundError: the spec selects nothing, or ``None`` finds no default layer.
    """
    if layer is None:
        return [default_layer(model, inputs.x, forward_kwargs=inputs.kwargs)]
    return list(select_layers(model, layer))


def single_layer(model: nn.Module, layer: Layers) -> str:
    """The name of the one module ``layer`` selects.

    Raises:
        LayerNotFoundError: it selects nothing.
        ValueError: it selects several modules.
    """
    selected = list(select_layers(model, layer))
    if len(selected) != 1:
        raise ValueError(
            f"layer must select exactly one module; {layer!r} selects {len(selected)}: "
            f"{', '.join(map(repr, selected[:5]))}{', ...' if len(selected) > 5 else ''}"
        )
    return selected[0]
