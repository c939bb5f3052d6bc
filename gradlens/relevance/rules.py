"""The LRP rules: how a layer hands the relevance of its outputs to its inputs.

Layer-wise relevance propagation (Bach et al. 2015, "On Pixel-Wise Explanations for
Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation"; Montavon et al. 2019,
"Layer-Wise Relevance Propagation: An Overview") runs the network forward, starts from the
explained score and, layer by layer towards the input, redistributes each output's
relevance `R_k` over the inputs `a_j` in proportion to their contributions `z_jk`:
`R_j = Σ_k z_jk / Σ_j' z_j'k · R_k`. The rules differ in the contributions; for an affine
layer `z_k = Σ_j a_j w_jk + b_k`, with `x⁺ = max(x, 0)`, `x⁻ = min(x, 0)` and the
stabilised denominator `st(z) = z + ε·sign(z)` (`sign(0) = 1`, zennit's and Captum's
convention; `ε` is the rule's `stabilizer`, 1e-6, or the ε rule's `epsilon`):

| rule | contribution `z_jk` of input `j` to output `k` |
| --- | --- |
| `Epsilon(ε)` | `a_j w_jk` (the bias in the denominator) |
| `ZPlus()` | `a_j⁺ w_jk⁺ + a_j⁻ w_jk⁻` (denominator with `b_k⁺`) |
| `AlphaBeta(α, β)` | `α`·(`a⁺w⁺ + a⁻w⁻`) − `β`·(`a⁺w⁻ + a⁻w⁺`), each part over its own sum |
| `Gamma(γ)` | `a⁺(w+γw⁺) + a⁻(w+γw⁻)` where `z_k > 0`, `a⁺(w+γw⁻) + a⁻(w+γw⁺)` where `z_k < 0` |
| `Flat()` | `1` for every input in output `k`'s receptive field |
| `WSquare()` | `w_jk²` |
| `ZBox(l, h)` | `a_j w_jk − l_j w_jk⁺ − h_j w_jk⁻` for inputs with `l ≤ a ≤ h` |
| `Norm()` | `a_j ∂z_k/∂a_j` of a parameter-free map (average pooling, a residual sum) |
| `Pass()` | the output's relevance unchanged (elementwise modules) |

Every rule is linear in the incoming relevance, so the ``K`` targets of a sample are one
batched backward. The rules are applied through :func:`gradlens.lrp` (``gradlens.lrp.Epsilon``
and the others are these classes); the page "Relevance propagation" has the formulas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .layers import AffineLayer, Layer

__all__ = [
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "Norm",
    "Pass",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "stabilize",
]

Bound = float | Tensor
"""A ``ZBox`` bound: a number, a per-channel ``(C,)`` tensor or an input-shaped tensor
(one sample ``(C, H, W)`` or the batch ``(B, C, H, W)``)."""


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + ε sign(z)`` with ``sign(0) = 1``: moves every denominator away from zero.
    Returns a new tensor; one float allocation beside the sign mask, because on CPU the
    rules' elementwise time goes mostly to faulting in fresh large tensors."""
    shift = (z >= 0).to(z.dtype).mul_(2 * epsilon).sub_(epsilon)  # exactly ±ε
    return shift.add_(z)


class Rule:
    """A relevance rule. Subclasses implement :meth:`propagate`.

    Class attributes:
        needs_output: the rule reads the layer's output (its forward keeps it).
        needs_input: the rule reads the input values or the layer's weights (the forward
            keeps the inputs; otherwise ``x`` is a ``meta`` tensor of the input's shape and
            the layer a :class:`~gradlens.relevance.layers.FunctionLayer`).
        needs_weights: the rule needs a weight (a convolution, linear layer or BatchNorm).
    """

    needs_output: ClassVar[bool] = False
    needs_input: ClassVar[bool] = True
    needs_weights: ClassVar[bool] = True

    def propagate(self, layer: Layer, x: Tensor, relevance: Tensor) -> Tensor:
        """The relevance of the input ``x`` given the relevance of the layer's output
        (both ``(B, ...)``)."""
        raise NotImplementedError


def _weights(layer: Layer) -> tuple[AffineLayer, Tensor, Tensor | None]:
    if not isinstance(layer, AffineLayer):
        raise TypeError(f"this rule needs a weight, and {type(layer.module).__name__} has none")
    return layer, layer.weight, layer.bias


def _positive(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _negative(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε (Bach et al. 2015): relevance in proportion to ``a_j w_jk``, the bias in the
    denominator, which ``ε sign(z)`` keeps away from zero.

    Works on any module (through its function when it has no weight, as Captum's rule
    on pooling layers).

    Args:
        epsilon: the stabiliser; larger values absorb the relevance of weak, contradictory
            contributions (0 gives LRP-0).
    """

    epsilon: float = 1e-6
    needs_output: ClassVar[bool] = True
    needs_weights: ClassVar[bool] = False

    def propagate(self, layer: Layer, x: Tensor, relevance: Tensor) -> Tensor:
        """See :class:`Rule`."""
        scaled = relevance / stabilize(layer.output_for(x), self.epsilon)
        return _times(x, layer.vjp(x, layer.weight, scaled), layer)


@dataclass(frozen=True)
class Norm(Epsilon):
    """The ε rule with ε only a stabiliser, for parameter-free maps (average pooling, a
    residual sum): each input gets the share of the output it contributed.

    Args:
        epsilon: the stabiliser.
    """


@dataclass(frozen=True)
class Pass(Rule):
    """The output's relevance passed unchanged to the input, for elementwise modules
    (activations)."""

    needs_input: ClassVar[bool] = False
    needs_weights: ClassVar[bool] = False

    def propagate(self, layer: Layer, x: Tensor, relevance: Tensor) -> Tensor:
        """See :class:`Rule`."""
        if relevance.shape[-x.ndim :] != x.shape:
            raise ValueError(
                f"the Pass rule needs an elementwise module; {type(layer.module).__name__} "
                f"maps {tuple(x.shape)} to {tuple(relevance.shape[-x.ndim :])}"
            )
        return relevance


@dataclass(frozen=True)
class ZPlus(Rule):
    """The z⁺ rule (Montavon et al. 2017; αβ with α=1, β=0): only positive contributions
    ``a⁺w⁺ + a⁻w⁻`` (and a positive bias) share the relevance.

    Args:
        stabilizer: keeps the denominator away from zero.
    """

    stabilizer: float = 1e-6

    def propagate(self, layer: Layer, x: Tensor, relevance: Tensor) -> Tensor:
        """See :class:`Rule`."""
        affine, weight, bias = _weights(layer)
        return _favoured(
            affine,
            x,
            relevance,
            weight.clamp(min=0),
            lambda: weight.clamp(max=0),
            _positive(bias),
            self.stabilizer,
        )


def _favoured(
    layer: AffineLayer,
    x: Tensor,
    relevance: Tensor,
    on_positive: Tensor,
    on_negative: Callable[[], Tensor],
    bias: Tensor | None,
    stabilizer: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Relevance by the contributions ``x⁺ on_positive + x⁻ on_negative()`` (+ ``bias`` in
    the denominator), restricted to the outputs in ``mask``. The negative inputs' terms
    (and ``on_negative``'s weights) are skipped when there are none, as after a ReLU,
    which leaves the result unchanged."""
    negative_inputs = bool(x.amin() < 0)
    positive = x.clamp(min=0) if negative_inputs else x
    z = layer.forward(positive, on_positive, bias)
    if negative_inputs:
        negative_weight = on_negative()
        z = z + layer.forward(x.clamp(max=0), negative_weight)
    scaled = relevance / stabilize(z, stabilizer)
    del z
    if mask is not None:
        scaled.mul_(mask)
    result = layer.vjp(x, on_positive, scaled).mul_(positive)
    if negative_inputs:
        result += layer.vjp(x, negative_weight, scaled).mul_(x.clamp(max=0))
    return result


def _times(x: Tensor, gradient: Tensor, layer: Layer) -> Tensor:
    """``x * gradient``, in place in ``gradient`` where the layer's ``vjp`` made it (an
    affine layer's; a function's autograd may hand back a view of the incoming relevance)."""
    return gradient.mul_(x) if isinstance(layer, AffineLayer) else x * gradient


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """The αβ rule (Bach et al. 2015): ``α`` times the relevance shared by the positive
    contributions minus ``β`` times that shared by the negative ones.

    Args:
        alpha: weight of the positive contributions (``α ≥ 0``).
        beta: weight of the negative contributions (``β ≥ 0``); ``α − β = 1`` conserves
            relevance.
        stabilizer: keeps the denominators away from zero.

    Raises:
        ValueError: ``α`` or ``β`` negative, or ``α − β ≠ 1``.
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(
                f"AlphaBeta needs alpha >= 0, beta >= 0 and alpha - beta = 1 (conservation); "
                f"got alpha={self.alpha}, beta={self.beta}"
            )

    def propagate(self, layer: Layer, x: Tensor, relevance: Tensor) -> Tensor:
        """See :class:`Rule`."""
        affine, weight, bias = _weights(layer)
        plus, minus = weight.clamp(min=0), weight.clamp(max=0)
        result = self.alpha * _favoured(
            affine, x, relevance, plus, lambda: minus, _positive(bias), self.stabilizer
        )
        if self.beta:
            result = result - self.beta * _favoured(
                affine, x, relevance, minus, lambda: plus, _negative(bias), self.stabilizer
            )
        return result


@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-γ (Montavon et al. 2019): the ε rule with the positive weights enlarged by
    ``γ w⁺``, which favours positive contributions; generalised to negative inputs and
    outputs (Andéol et al. 2021): an output ``z > 0`` shares its relevance by
    ``a⁺(w + γw⁺) + a⁻(w + γw⁻)`` (bias ``b + γb⁺``), an output ``z < 0`` by
    ``a⁺(w + γw⁻) + a⁻(w + γw⁺)`` (bias ``b + γb⁻``).

    Args:
        gamma: how much the favoured weights are enlarged (0 gives LRP-0 up to the
            stabiliser, large values approach z⁺).
        stabilizer: keeps the denominators away from zero.
    """

    gamma: float = 0.25
    stabilizer: float = 1e-6
    needs_output: ClassVar[bool] = True

    def propagate(self, layer: Layer, x: Tensor, relevance: Tensor) -> Tensor:
        """See :class:`Rule`."""
        affine, weight, bias = _weights(layer)
        z = affine.output_for(x)
        up = weight + self.gamma * weight.clamp(min=0)
        down = weight + self.gamma * weight.clamp(max=0)
        up_bias = None if bias is None else bias + self.gamma * bias.clamp(min=0)
        down_bias = None if bias is None else bias + self.gamma * bias.clamp(max=0)
        positive = _favoured(
            affine, x, relevance, up, lambda: down, up_bias, self.stabilizer, z > 0
        )
        negative = _favoured(
            affine, x, relevance, down, lambda: up, down_bias, self.stabilizer, z < 0
        )
        return positive + negative


@dataclass(frozen=True)
class Flat(Rule):
    """The flat rule (Lapuschkin et al. 2019): each output's relevance spread evenly over
    the inputs it sees, whatever their values and weights.

    Args:
        stabilizer: keeps the denominator away from zero.
    """

    stabilizer: float = 1e-6

    def propagate(self, layer: Layer, x: Tensor, relevance: Tensor) -> Tensor:
        """See :class:`Rule`."""
        affine, weight, _ = _weights(layer)
        return _squared_or_flat(affine, x, relevance, torch.ones_like(weight), self.stabilizer)


@dataclass(frozen=True)
class WSquare(Rule):
    """The w² rule (Montavon et al. 2017): relevance in proportion to the squared weights,
    whatever the input values (for the input layer of unbounded inputs). The bias does not
    enter (zennit squares it into the denominator).

    Args:
        stabilizer: keeps the denominator away from zero.
    """

    stabilizer: float = 1e-6

    def propagate(self, layer: Layer, x: Tensor, relevance: Tensor) -> Tensor:
        """See :class:`Rule`."""
        affine, weight, _ = _weights(layer)
        return _squared_or_flat(affine, x, relevance, weight * weight, self.stabilizer)


def _squared_or_flat(
    layer: AffineLayer, x: Tensor, relevance: Tensor, weight: Tensor, stabilizer: float
) -> Tensor:
    z = layer.forward(torch.ones_like(x), weight)
    return layer.vjp(x, weight, relevance / stabilize(z, stabilizer))


@dataclass(frozen=True)
class ZBox(Rule):
    """The z^B rule (Montavon et al. 2017) for inputs bounded by ``low <= x <= high``
    (the input layer of images): the contributions ``x w − l w⁺ − h w⁻``.

    Args:
        low: the lowest input values: a number, a per-channel ``(C,)`` tensor, or an
            input-shaped tensor (one sample or the batch).
        high: the highest input values, shaped as ``low``.
        stabilizer: keeps the denominator away from zero.

    Raises:
        TypeError: a bound that is neither a number nor a tensor.
    """

    low: Bound
    high: Bound
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
                raise TypeError(
                    f"ZBox's {name} must be a number or a tensor, got {type(value).__name__}"
                )

    def bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(low, high)`` broadcast to ``x`` ``(B, C, ...)``.

        Raises:
            ValueError: a bound that is neither a number, ``(C,)``, one sample nor the batch.
        """
        return _bound(self.low, x, "low"), _bound(self.high, x, "high")

    def propagate(self, layer: Layer, x: Tensor, relevance: Tensor) -> Tensor:
        """See :class:`Rule`."""
        affine, weight, _ = _weights(layer)
        low, high = self.bounds(x)
        plus, minus = weight.clamp(min=0), weight.clamp(max=0)
        z = affine.forward(x, weight) - affine.forward(low, plus) - affine.forward(high, minus)
        scaled = relevance / stabilize(z, self.stabilizer)
        return (
            x * affine.vjp(x, weight, scaled)
            - low * affine.vjp(x, plus, scaled)
            - high * affine.vjp(x, minus, scaled)
        )


def _bound(value: Bound, x: Tensor, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        return torch.full_like(x, float(value))
    tensor = value.to(device=x.device, dtype=x.dtype)
    if tensor.ndim == 1 and x.ndim > 2 and tensor.shape[0] == x.shape[1]:
        tensor = tensor.view(1, -1, *([1] * (x.ndim - 2)))
    elif tensor.shape == x.shape[1:]:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 0:
        pass
    elif tensor.shape not in (x.shape, (1, *x.shape[1:])):
        raise ValueError(
            f"ZBox's {name} of shape {tuple(value.shape)} does not fit the input layer's "
            f"input {tuple(x.shape)}: give a number, one value per channel "
            f"({x.shape[1]},), one sample {tuple(x.shape[1:])} or the batch {tuple(x.shape)}"
        )
    return tensor.expand_as(x)
