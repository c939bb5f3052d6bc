"""Layer attributions: :func:`layer_gradient_x_activation` (and, in :mod:`.integrated`,
:func:`~gradlens.attribution.layer_integrated_gradients`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.inputs import Inputs
from ..core.output_selection import OutputSpec
from ..core.selection import Layers
from ..layering.resolve import single_layer
from ..passes import differentiate
from ..targets.scoring import Target
from ._common import targets_first_to_dim1

__all__ = ["layer_gradient_x_activation"]


@entry_point
def layer_gradient_x_activation(
    model: nn.Module,
    x: Inputs,
    layer: Layers,
    target: Target = None,
    *,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Gradient × activation at a layer's output (Input × Gradient applied to a layer).

    Shrikumar et al. (2016), "Not Just a Black Box"; equal to Captum's
    ``LayerGradientXActivation``: ``A * d score / d A`` for the layer's output ``A``, e.g.
    per-token attributions from a text model's embedding layer (sum over the last dim).
    One forward whose tape starts at the layer and one backward through the rest.

    Args:
        model: the model.
        x: its input (any dtype, e.g. token ids), or a tuple of positional inputs.
        layer: the layer (a name, module or spec selecting exactly one module; its output
            must be a tensor; for a module run several times, its last call).
        target: see :mod:`gradlens.targets`.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.

    Returns:
        Shaped like the layer's output ``(B, ...)``, ``(B, K, ...)`` for ``K`` targets per sample.

    Raises:
        LayerNotFoundError: ``layer`` selects nothing.
        LayerNotExecutedError: ``layer`` exists but did not run in the forward pass.
        ValueError: it selects several modules, or its output is not a tensor.
        TargetError: a target that does not fit the output.
    """
    name = single_layer(model, layer)
    result = differentiate(
        model, x, target, layers=name, output=output, forward_kwargs=forward_kwargs
    )
    activation, gradient = result.activations[name], result.gradients[name]
    if not isinstance(activation, Tensor):
        raise ValueError(f"layer {name!r} returns a {type(activation).__name__}, not a tensor")
    multi = result.scores.ndim == 2
    return targets_first_to_dim1(gradient, multi) * (
        activation.unsqueeze(1) if multi else activation
    )
