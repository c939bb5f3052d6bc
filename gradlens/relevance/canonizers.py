"""Canonizers: the rewrites LRP needs before its rules apply, done through hooks.

* **BatchNorm folding.** A BatchNorm right after a convolution or linear layer is, for a
  given set of statistics, an affine map per channel; LRP explains the pair as the one
  affine layer it computes, ``W' = s W``, ``b' = s b + t`` (Montavon et al. 2019, section
  10.2; zennit's ``SequentialMergeBatchNorm``). Nothing is folded in the model or in a copy:
  :func:`batchnorm_pairs` finds the pairs, the BatchNorm passes relevance on unchanged and
  the preceding layer's rule reads the folded weights
  (:meth:`gradlens.relevance.layers.AffineLayer.of`). So the model is never written to (no
  copy of the weights, no restore), and a BatchNorm in train mode folds with the batch
  statistics its forward used.
* **Residual additions.** ``out += identity`` (torchvision's ``BasicBlock`` and
  ``Bottleneck``) and ``a + b`` of two tensors on the tape: the plain gradient would give
  both summands the whole relevance. :func:`residual_sums` reroutes them (through
  :func:`gradlens.core.backward.override_functions`) to a sum whose backward is the
  :class:`~gradlens.relevance.rules.Norm` rule, ``R_a = a R / st(a + b)``, which conserves
  relevance (zennit's ``ResNetCanonizer``).
* **Scaling by a constant** (``logits * scale``, ``x / temperature`` with a number or a
  tensor off the tape, shapes unchanged) passes relevance on, as an elementwise module
  does; its gradient would scale it.
* **Concatenations** need nothing: the gradient of ``torch.cat`` hands each input its
  slice of the relevance, which conserves it; nor do reshapes, indexing and max pooling
  (the winner gets the relevance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..core.backward import FunctionOverride, override_functions
from .rules import stabilize

__all__ = ["STABILIZER", "batchnorm_pairs", "residual_sums"]

STABILIZER = 1e-6
"""The stabiliser of the residual sums' Norm rule (zennit's)."""

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_pairs(model: nn.Module) -> dict[str, str]:
    """``{BatchNorm name: name of the layer it folds into}``.

    A BatchNorm folds into the convolution or linear layer registered right before it in
    the same parent module (a ``Sequential``'s order, or the order of ``__init__``'s
    assignments in torchvision's blocks) when its channels are that layer's outputs --
    the convention of zennit's ``SequentialMergeBatchNorm``. A model whose forward calls
    its modules in another order than it registers them needs the BatchNorm in the
    composite instead.
    """
    pairs: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        previous: tuple[str, nn.Module] | None = None
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, _BATCHNORMS) and previous is not None:
                layer_name, layer = previous
                channels = (
                    layer.out_features if isinstance(layer, nn.Linear) else (layer.out_channels)
                )
                if isinstance(layer, _FOLDABLE) and channels == child.num_features:
                    pairs[name] = layer_name
            previous = (name, child)
    return pairs


def _proportional_shares(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """``(a R / st(a + b), b R / st(a + b))``: the Norm rule of a sum of two summands."""
    scaled = relevance / stabilize(a + b, STABILIZER)
    return a * scaled, scaled.mul_(b)


class _ProportionalSum(torch.autograd.Function):
    """``a + b`` forwards; backwards each summand gets ``its value * R / st(a + b)``."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx: Any, relevance: Tensor) -> tuple[Tensor, Tensor]:
        a, b = ctx.saved_tensors
        return _proportional_shares(a, b, relevance)


class _ProportionalSumInPlace(torch.autograd.Function):
    """``a += b`` in place (so ``a.add_(b)`` as a statement keeps working), with the
    backward of :class:`_ProportionalSum`; ``a``'s old value is kept for it."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a.detach().clone(), b)
        a.add_(b)
        ctx.mark_dirty(a)
        return a

    @staticmethod
    def backward(ctx: Any, relevance: Tensor) -> tuple[Tensor, Tensor]:
        a, b = ctx.saved_tensors
        return _proportional_shares(a, b, relevance)


def _summands(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
    """The two summands of a residual addition, or ``None`` for any other ``add``."""
    if len(args) != 2 or set(kwargs) - {"alpha"} or kwargs.get("alpha", 1) != 1:
        return None
    a, b = args
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        return None
    if a.shape != b.shape or not (a.is_floating_point() and b.is_floating_point()):
        return None
    if not torch.is_grad_enabled() or not (a.requires_grad and b.requires_grad):
        return None
    return a, b


def _sum(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    summands = _summands(args, kwargs)
    return NotImplemented if summands is None else _ProportionalSum.apply(*summands)


def _sum_in_place(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    summands = _summands(args, kwargs)
    if summands is None or summands[0].is_leaf:
        return NotImplemented
    return _ProportionalSumInPlace.apply(*summands)


class _PassScaled(torch.autograd.Function):
    """``func(a, constant)`` forwards; the relevance passes to ``a`` unchanged."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, result: Tensor) -> Tensor:
        return result

    @staticmethod
    def backward(ctx: Any, relevance: Tensor) -> tuple[Tensor, None]:
        return relevance, None


def _scaled(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) != 2 or kwargs or not torch.is_grad_enabled():
        return NotImplemented
    a, c = args
    if not (isinstance(a, Tensor) and a.requires_grad and a.is_floating_point()):
        return NotImplemented
    if isinstance(c, Tensor) and c.requires_grad:
        return NotImplemented
    result = func(a.detach(), c)
    if not isinstance(result, Tensor) or result.shape != a.shape:
        return NotImplemented
    return _PassScaled.apply(a, result)


def residual_sums(model: nn.Module) -> FunctionOverride:
    """A context in which, inside the model's forward, every addition of two same-shaped
    tensors on the tape (``a + b``, ``a += b``, ``torch.add(a, b)``) propagates relevance by
    the Norm rule and every multiplication or division of a tensor by a constant
    (``x * c``, ``x / c``, shapes unchanged) passes it on. Additions of a constant,
    broadcasting operations and arithmetic outside the forward (the rules' own, in the
    backward) are left alone.
    """
    return override_functions(
        model,
        {
            Tensor.add: _sum,
            Tensor.__add__: _sum,
            torch.add: _sum,
            Tensor.add_: _sum_in_place,
            Tensor.mul: _scaled,
            Tensor.__mul__: _scaled,
            torch.mul: _scaled,
            Tensor.div: _scaled,
            Tensor.__truediv__: _scaled,
            torch.div: _scaled,
        },
        within=model,
    )
