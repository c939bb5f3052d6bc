"""Vanilla gradients: :func:`saliency` and :func:`input_x_gradient`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..passes import Differentiated, differentiate
from ..registry import register
from ..targets.scoring import Target
from ._common import (
    Attribution,
    as_result,
    float_positions,
    gradient_or_zeros,
    require_float_inputs,
    targets_first_to_dim1,
)

__all__ = ["saliency", "input_x_gradient", "input_gradients"]


def input_gradients(
    model: nn.Module,
    inputs: ModelInput,
    target: Target = None,
    *,
    output: OutputSpec = None,
    hooks: Sequence[AbstractContextManager[Any]] = (),
) -> tuple[Differentiated, dict[int, Tensor]]:
    """Gradients of the target scores with respect to each floating-point input.

    One forward and one (batched) backward through :func:`gradlens.passes.differentiate`.

    Returns:
        ``(result, gradients)``: the :class:`~gradlens.passes.Differentiated` record, and
        ``{input position: gradient}`` shaped like that input, or ``(B, K, *input.shape[1:])``
        for ``K`` targets per sample (zeros for an input the scores do not depend on).

    Raises:
        TypeError: no floating-point input.
    """
    require_float_inputs(inputs.args, "a gradient attribution")
    result = differentiate(model, inputs, target, wrt_inputs=True, output=output, hooks=hooks)
    multi = result.scores.ndim == 2
    gradients = {}
    for i in float_positions(result.inputs):
        grad = gradient_or_zeros(result.input_gradients[i], result.inputs[i], result.scores)
        gradients[i] = targets_first_to_dim1(grad, multi)
    return result, gradients


@register("saliency", "attribution", needs_layer=False, multi_target=True)
@entry_point
def saliency(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    abs: bool = True,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Attribution:
    """Saliency map: the gradient of the target score with respect to each input element.

    Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks: Visualising
    Image Classification Models and Saliency Maps": the magnitude ``|d score / d x|`` per
    input element (``abs=True``, as in the paper and Captum's ``Saliency``); the paper's
    image map is the maximum over channels, ``result.amax(1)``.

    Args:
        model: the model.
        x: its input ``(B, ...)``, or a tuple of positional inputs.
        target: see :mod:`gradlens.targets`; ``None`` explains each sample's top class.
        abs: take the absolute value of the gradient (``False``: the signed gradient).
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model (e.g. an attention mask).

    Returns:
        A tensor shaped like ``x`` (``(B, K, *x.shape[1:])`` for ``K`` targets per sample);
        for a tuple input, a tuple with one such tensor per floating-point input and
        ``None`` for the others (e.g. token ids); for a mapping input (e.g. a
        ``BatchEncoding``), a dict with its keys.

    Raises:
        TargetError: a target that does not fit the output (see :mod:`gradlens.targets`).
        OutputSelectionError: a structured output without ``output=``.
        TypeError: no floating-point input.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    _, grads = input_gradients(model, inputs, target, output=output)
    return as_result(inputs, {i: g.abs() if abs else g for i, g in grads.items()})


@register("input_x_gradient", "attribution", needs_layer=False, multi_target=True)
@entry_point
def input_x_gradient(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Attribution:
    """Input × Gradient: each input element times the gradient of the target score there.

    Shrikumar et al. (2016), "Not Just a Black Box: Learning Important Features Through
    Propagating Activation Differences" (the gradient ⊙ input baseline); equal to Captum's
    ``InputXGradient``. For a model that is linear in its input the attributions sum to
    the score minus the score at zero input.

    Args:
        model, x, target, output, forward_kwargs: as for :func:`saliency`.

    Returns:
        ``x * d score / d x``, shaped as for :func:`saliency`.

    Raises:
        TargetError: a target that does not fit the output.
        OutputSelectionError: a structured output without ``output=``.
        TypeError: no floating-point input.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    result, grads = input_gradients(model, inputs, target, output=output)
    multi = result.scores.ndim == 2
    return as_result(
        inputs,
        {
            i: g * (result.inputs[i].unsqueeze(1) if multi else result.inputs[i])
            for i, g in grads.items()
        },
    )
