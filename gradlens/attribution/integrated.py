"""Integrated Gradients: :func:`integrated_gradients`, :func:`layer_integrated_gradients`,
and the quadrature rules they share (:func:`quadrature`).

Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks":

    IG_i(x) = (x_i - x'_i) * integral_0^1 d f(x' + a (x - x')) / d x_i  da

for a baseline ``x'``, approximated by ``sum_s w_s * gradient at a_s`` with the nodes ``a_s``
and weights ``w_s`` of a quadrature rule on ``[0, 1]``. *Completeness*: the attributions sum
to ``f(x) - f(x')`` up to the quadrature error, returned on request as ``delta``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.chunks import chunks, copies_per_chunk
from ..core.extract import extract
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.outputs import Replacement, replace_outputs
from ..core.selection import Layers
from ..layering.resolve import single_layer
from ..passes import clean_pass, differentiate
from ..registry import register
from ..targets.parse import check_target, repeat_target
from ..targets.scoring import Target
from ._common import (
    Attribution,
    as_result,
    broadcast_to_input,
    gradient_or_zeros,
    require_float_inputs,
    targets_first_to_dim1,
)

__all__ = ["RULES", "quadrature", "integrated_gradients", "layer_integrated_gradients"]

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
"""The quadrature rules accepted as ``rule=``."""

DEFAULT_RULE = "gausslegendre"

Baseline = Union[None, float, Tensor, Callable[[Tensor], Tensor]]
Baselines = Union[Baseline, tuple[Baseline, ...]]


def quadrature(rule: str, steps: int) -> tuple[Tensor, Tensor]:
    """Nodes ``a_s`` and weights ``w_s`` (float64, shape ``(steps,)``) of a rule on ``[0, 1]``.

    * ``"gausslegendre"``: the Gauss-Legendre nodes and weights of
      :func:`numpy.polynomial.legendre.leggauss`, mapped from ``[-1, 1]`` to ``[0, 1]``
      (exact for polynomials of degree ``2 * steps - 1``).
    * ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``: ``a_s = s/n``,
      ``(s+1)/n``, ``(s+1/2)/n``, weights ``1/n``.
    * ``"riemann_trapezoid"``: ``a_s = s/(n-1)`` (both ends included), weights ``1/(n-1)``
      halved at the ends -- the trapezoid rule, whose weights sum to one. (Captum's
      ``riemann_trapezoid`` uses the same nodes with weights ``1/n``, halved at the ends,
      which sum to ``(n-1)/n``: its attributions are ours times ``(n-1)/n``.)

    Raises:
        ValueError: an unknown rule, fewer than one step (two for the trapezoid).
    """
    if rule not in RULES:
        raise ValueError(f"unknown integration rule {rule!r}; choose one of {', '.join(RULES)}")
    minimum = 2 if rule == "riemann_trapezoid" else 1
    if steps < minimum:
        raise ValueError(f"{rule} needs at least {minimum} step(s), got steps={steps}")
    n = steps
    if rule == "gausslegendre":
        gauss_nodes, gauss_weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy((gauss_nodes + 1) / 2), torch.from_numpy(gauss_weights / 2)
    index = torch.arange(n, dtype=torch.float64)
    uniform = torch.full((n,), 1 / n, dtype=torch.float64)
    if rule == "riemann_left":
        return index / n, uniform
    if rule == "riemann_right":
        return (index + 1) / n, uniform
    if rule == "riemann_middle":
        return (index + 0.5) / n, uniform
    weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
    weights[[0, -1]] /= 2
    return index / (n - 1), weights


@register(
    "integrated_gradients",
    "attribution",
    needs_layer=False,
    multi_target=True,
    quick_options={"steps": 8},
)
@entry_point
def integrated_gradients(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    baselines: Baselines = None,
    steps: int = 50,
    rule: str = DEFAULT_RULE,
    batch_size: int | None = 32,
    return_delta: bool = False,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    method: str | None = None,
) -> Attribution | tuple[Attribution, Tensor]:
    """Integrated Gradients (Sundararajan et al. 2017) with respect to the inputs.

    ``(x - x') * sum_s w_s * grad f(x' + a_s (x - x'))`` with the rule's nodes and weights
    (:func:`quadrature`). The ``steps * B`` interpolated inputs are evaluated
    ``batch_size`` at a time (one forward and backward per chunk); same rule and steps give
    Captum's ``IntegratedGradients`` (except the trapezoid weights, see :func:`quadrature`).

    Args:
        model: the model.
        x: its input, or a tuple of positional inputs; floating-point inputs are
            interpolated, the others (token ids, masks) are passed unchanged.
        target: see :mod:`gradlens.targets`; ``None`` is fixed to each sample's top class
            on ``x`` (one inference forward) for every step.
        baselines: ``x'``: ``None`` (zeros), a number, a tensor shaped like one sample, a
            one-sample batch or the whole batch, or a callable ``x -> baseline``; for a tuple
            input, one such value for all floating-point inputs or a tuple of them.
        steps: the number of integration steps.
        rule: the quadrature rule (:data:`RULES`).
        batch_size: interpolated inputs per forward (``batch_size // B`` steps at a time, at
            least one); ``None``: all steps at once.
        return_delta: also return the completeness error.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model; tensors whose dim 0 is the batch are
            repeated for the stacked steps.
        method: deprecated name of ``rule`` (it clashed with the ``method=`` of
            :func:`smoothgrad`, which could then not pass the rule on).

    Returns:
        The attributions, shaped like the input (``(B, K, ...)`` for ``K`` targets per
        sample; a tuple for tuple inputs, ``None`` for non-float inputs); with
        ``return_delta``, ``(attributions, delta)`` where ``delta`` of shape ``(B,)`` (or
        ``(B, K)``) is the sum of all attributions minus ``f(x) - f(x')``, from one extra
        inference forward of ``x`` and ``x'``.

    Raises:
        ValueError: an unknown rule, too few steps, a baseline that does not fit.
        TargetError: a target that does not fit the output.
        TypeError: no floating-point input, or both ``rule`` and ``method`` given.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    positions = require_float_inputs(inputs.args, "integrated_gradients")
    batch = inputs.batch_size
    target = check_target(target, batch)
    alphas, weights = quadrature(_rule(rule, method), steps)
    start_points = _baselines(baselines, inputs.args, positions)
    endpoint_scores = None
    if return_delta:
        both = inputs.tile(2).with_args(
            {i: torch.cat([inputs.args[i], start_points[i]]) for i in positions}
        )
        clean = clean_pass(model, both, target, output=output, copies=2)
        endpoint_scores, target = clean.scores, clean.target
    elif target is None:
        target = clean_pass(model, inputs, None, output=output).target

    def differentiate_path(points: Tensor) -> tuple[dict[int, Tensor], bool]:
        path = inputs.tile(len(points))
        path = path.with_args(
            {i: _interpolate(start_points[i], inputs.args[i], points) for i in positions}
        )
        result = differentiate(
            model,
            path,
            repeat_target(target, batch, len(points)),
            wrt_inputs=True,
            output=output,
        )
        gradients = {
            i: gradient_or_zeros(result.input_gradients[i], path.args[i], result.scores)
            for i in positions
        }
        return gradients, result.scores.ndim == 2

    totals, multi = _integrate(differentiate_path, alphas, weights, batch, batch_size)
    attributions = {}
    for i in positions:
        difference = inputs.args[i] - start_points[i]
        attributions[i] = (difference.unsqueeze(1) if multi else difference) * totals[i]
    result = as_result(inputs, attributions)
    if not return_delta:
        return result
    assert endpoint_scores is not None  # the clean pass above ran because of return_delta
    return result, _delta(attributions, endpoint_scores, batch, multi)


@entry_point
def layer_integrated_gradients(
    model: nn.Module,
    x: Inputs,
    layer: Layers,
    target: Target = None,
    *,
    baselines: Baselines = None,
    steps: int = 50,
    rule: str = DEFAULT_RULE,
    batch_size: int | None = 32,
    return_delta: bool = False,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    method: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrated Gradients with respect to the output of a layer (e.g. a text model's
    ``nn.Embedding``), as Captum's ``LayerIntegratedGradients`` defines it.

    With ``L(x)`` the layer's output for input ``x`` and ``x'`` the baseline *input* (e.g.
    all-padding token ids), the path runs from ``L(x')`` to ``L(x)``: the model is run on
    ``x`` with the layer's output replaced by ``L(x') + a_s (L(x) - L(x'))``, and the result
    is ``(L(x) - L(x')) * sum_s w_s * d f / d L`` at those points. ``L(x)`` and ``L(x')``
    come from one inference forward of ``x`` and ``x'`` (stopped at the layer unless
    ``target=None`` or ``return_delta`` need the scores); each chunk of steps then costs a
    forward whose tape starts at the layer, and a backward through the rest.

    Args:
        model: the model.
        x: its input (any dtype, e.g. token ids), or a tuple of positional inputs.
        layer: the layer (a name, module or spec selecting exactly one module); it must
            run once per forward and return a tensor.
        target: see :mod:`gradlens.targets`; ``None`` is fixed to the top class on ``x``.
        baselines: the baseline *inputs* ``x'`` (same forms as for
            :func:`integrated_gradients`, applied to every tensor input, integer ones
            included: the default zeros are token id 0).
        steps, rule, batch_size, output, forward_kwargs, method: as for
            :func:`integrated_gradients`.
        return_delta: also return ``sum of attributions - (f(x) - f(x'))`` per sample.

    Returns:
        Attributions shaped like the layer's output ``(B, ...)`` (``(B, K, ...)`` for ``K``
        targets per sample); with ``return_delta``, ``(attributions, delta)``.

    Raises:
        LayerNotFoundError: ``layer`` selects nothing.
        LayerNotExecutedError: ``layer`` exists but did not run in the forward pass.
        ValueError: it selects several modules, runs more than once per forward, or does not
            return one floating-point tensor; or the rule or steps are invalid.
        TargetError: a target that does not fit the output.
        TypeError: both ``rule`` and ``method`` given.
    """
    name = single_layer(model, layer)
    inputs = ModelInput.parse(x, forward_kwargs)
    batch = inputs.batch_size
    target = check_target(target, batch)
    alphas, weights = quadrature(_rule(rule, method), steps)
    tensors = [i for i, a in enumerate(inputs.args) if isinstance(a, Tensor)]
    start_points = _baselines(baselines, inputs.args, tensors)
    both = inputs.tile(2).with_args(
        {i: torch.cat([inputs.args[i], start_points[i]]) for i in start_points}
    )

    endpoint_scores = None
    if return_delta or target is None:
        clean = clean_pass(model, both, target, output=output, layers=name, copies=2)
        endpoint_scores, target, layer_out = clean.scores, clean.target, clean.activations[name]
    else:
        layer_out = extract(model, both.x, name, forward_kwargs=both.kwargs)[name]
    if not isinstance(layer_out, Tensor) or not layer_out.is_floating_point():
        kind = layer_out.dtype if isinstance(layer_out, Tensor) else type(layer_out).__name__
        raise ValueError(
            f"layer {name!r} returns {kind}; layer_integrated_gradients needs a layer whose "
            "output is one floating-point tensor"
        )
    end, start = layer_out[:batch], layer_out[batch:]

    def differentiate_path(points: Tensor) -> tuple[dict[int, Tensor], bool]:
        k = len(points)
        with torch.inference_mode(False):  # an ordinary tensor: the tape starts on it
            substitute = Replacement(_interpolate(start, end, points), once=True, hint=_ONE_PATH)
        result = differentiate(
            model,
            inputs.tile(k),
            repeat_target(target, batch, k),
            layers=name,
            output=output,
            hooks=[replace_outputs(model, {name: substitute})],
        )
        return {0: result.gradients[name]}, result.scores.ndim == 2

    totals, multi = _integrate(differentiate_path, alphas, weights, batch, batch_size)
    difference = end - start
    attributions = (difference.unsqueeze(1) if multi else difference) * totals[0]
    if not return_delta:
        return attributions
    assert endpoint_scores is not None  # the clean pass above ran because of return_delta
    return attributions, _delta({0: attributions}, endpoint_scores, batch, multi)


# -- helpers ---------------------------------------------------------------------------

_ONE_PATH = (
    "layer_integrated_gradients integrates along one path of the layer's output, stacked "
    "for the steps: choose a layer that runs once per forward pass and returns one tensor "
    "whose dim 0 is the batch"
)


def _rule(rule: str, method: str | None) -> str:
    """The quadrature rule, from ``rule=`` or its deprecated name ``method=``."""
    if method is None:
        return rule
    if rule != DEFAULT_RULE:
        raise TypeError(
            f"got rule={rule!r} and method={method!r}; method= is the deprecated name of "
            "rule=, pass only rule="
        )
    warnings.warn(
        "method= is deprecated as the name of the integration rule; pass rule= instead",
        DeprecationWarning,
        stacklevel=3,
    )
    return method


def _baselines(
    baselines: Baselines, args: tuple[Any, ...], positions: list[int]
) -> dict[int, Tensor]:
    """``{input position: baseline tensor shaped like that input}``."""
    if isinstance(baselines, tuple):
        if len(baselines) != len(args):
            raise ValueError(
                f"baselines has {len(baselines)} entries but the model takes {len(args)} "
                "positional inputs; give one per input (None where there is nothing to attribute)"
            )
        specs = dict(enumerate(baselines))
    else:
        specs = dict.fromkeys(positions, baselines)
    result = {}
    for i in positions:
        spec = specs[i]
        if spec is None:
            spec = 0
        if callable(spec) and not isinstance(spec, Tensor):
            spec = spec(args[i])
        result[i] = broadcast_to_input(spec, args[i], f"the baseline of input {i}")
    return result


def _interpolate(start: Tensor, end: Tensor, points: Tensor) -> Tensor:
    """``start + a (end - start)`` for each node ``a``, stacked node-major: ``(k * B, ...)``."""
    return torch.cat([start + float(a) * (end - start) for a in points])


def _integrate(
    differentiate_path: Callable[[Tensor], tuple[dict[int, Tensor], bool]],
    alphas: Tensor,
    weights: Tensor,
    batch: int,
    batch_size: int | None,
) -> tuple[dict[int, Tensor], bool]:
    """``sum_s w_s * gradient(a_s)`` per input, evaluating the nodes in chunks.

    ``differentiate_path(nodes)`` returns ``{position: gradient}`` for the ``k`` nodes stacked
    node-major (``(k * B, ...)``, or ``(K, k * B, ...)`` for ``K`` targets) and whether the
    targets are multiple. Returns ``{position: (B, ...) or (B, K, ...)}``.
    """
    per_chunk = copies_per_chunk(batch_size, batch, len(alphas))
    totals: dict[int, Tensor] = {}
    multi = False
    for nodes in chunks(len(alphas), per_chunk):
        points = alphas[nodes]
        gradients, multi = differentiate_path(points)
        for i, grad in gradients.items():
            k = len(points)
            w = weights[nodes].to(grad.dtype).to(grad.device)
            if multi:  # (K, k * B, ...) -> (K, B, ...)
                part = torch.einsum(
                    "s,ks...->k...", w, grad.reshape(grad.shape[0], k, batch, *grad.shape[2:])
                )
            else:
                part = torch.einsum("s,s...->...", w, grad.reshape(k, batch, *grad.shape[1:]))
            part = targets_first_to_dim1(part, multi)
            totals[i] = part + totals[i] if i in totals else part
    return totals, multi


def _delta(
    attributions: Mapping[int, Tensor], endpoint_scores: Tensor, batch: int, multi: bool
) -> Tensor:
    """Sum of the attributions minus ``f(x) - f(x')`` per sample (and target)."""
    keep = 2 if multi else 1
    total = sum(a.flatten(keep).sum(-1) for a in attributions.values())
    return total - (endpoint_scores[:batch] - endpoint_scores[batch:])
