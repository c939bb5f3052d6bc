"""Relevance rules written as modified gradients (the Gradient × Input form of LRP).

When every operation of a network passes back ``g_in = R_in / in`` given
``g_out = R_out / out``, the input's relevance is ``R_x = x * g_x``: Input × Gradient with
modified backward passes. Each rule of AttnLRP (Achtibat et al. 2024) is then a small change
of one gradient:

* **ε-rule** on an affine map ``y = W x + b``: ``R_x = x ⊙ Wᵀ (R_y / (y + ε))``, so
  ``g_x = Wᵀ (g_y ⊙ y / (y + ε))``; with ``ε = 0`` this is the plain gradient (the bias
  keeps its share of the relevance): :func:`epsilon_gradient` scales ``g_y`` for ``ε > 0``.
* **identity rule** on an elementwise ``y = f(x)``: ``R_x = R_y``, so ``g_x = g_y ⊙ y / x``
  (:func:`identity_rule`).
* **uniform rule** on a product of two input-dependent factors ``c = a · b`` (elementwise
  or a matrix product): each factor gets half the relevance, ``R_a = R_b = R_c / 2``, which
  is half the plain gradient at each factor (:func:`scale_gradient` with ``0.5``).

Everything else (sums, the softmax's first-order Taylor rule at its input, the linear maps of
a normalisation with its statistic held constant) is the plain gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["scale_gradient", "identity_rule", "epsilon_gradient", "stabilise"]


def stabilise(x: Tensor, eps: float) -> Tensor:
    """``x + ε·sign(x)`` with ``sign(0) = 1``: a denominator that is never 0."""
    return torch.where(x >= 0, x + eps, x - eps)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` forwards (a view); its gradient times ``factor`` backwards."""
    result: Tensor = _ScaleGradient.apply(x, factor)
    return result


class _IdentityRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, function: Callable[[Tensor], Tensor], x: Tensor, eps: float) -> Tensor:
        y = function(x)
        ctx.save_for_backward(y / stabilise(x, eps))
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return None, grad * ratio, None


def identity_rule(function: Callable[[Tensor], Tensor], x: Tensor, eps: float = 1e-10) -> Tensor:
    """``function(x)`` forwards; backwards ``g_x = g_y ⊙ y / (x + ε·sign(x))``, so that the
    relevance passes through unchanged (``R_x = R_y``, the identity rule)."""
    result: Tensor = _IdentityRule.apply(function, x, eps)
    return result


class _EpsilonGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(y)
        ctx.eps = eps
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad * y / stabilise(y, ctx.eps), None


def epsilon_gradient(y: Tensor, eps: float) -> Tensor:
    """``y`` forwards; backwards ``g ⊙ y / (y + ε·sign(y))``: applied to the output of an
    affine layer, its plain backward then computes the ε-rule."""
    result: Tensor = _EpsilonGradient.apply(y, eps)
    return result
