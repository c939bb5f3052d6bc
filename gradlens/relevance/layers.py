"""What a relevance rule sees of a module: :class:`AffineLayer` (a convolution, a linear
layer or a BatchNorm as the affine map ``z = W x + b`` it computes, with any BatchNorm folded
in) and :class:`FunctionLayer` (any other module, as the function its ``forward`` computes).

Both give the rules the two operations every LRP rule is made of: the layer's map with
modified parameters, ``forward(x, weight, bias)``, and its transpose,
``vjp(x, weight, grad) = W^T grad`` (the vector-Jacobian product of the linear part, shaped
like ``x``). They call ``module.forward`` or the functional operations directly, never the
module itself, so no hook runs inside a rule.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv1d_input, conv2d_input, conv3d_input

__all__ = [
    "AffineLayer",
    "FunctionLayer",
    "Layer",
    "batchnorm_affine",
    "is_affine",
    "uses_batch_statistics",
]

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_INPUT_GRADIENT = {1: conv1d_input, 2: conv2d_input, 3: conv3d_input}


def is_affine(module: nn.Module) -> bool:
    """A convolution (1-, 2- or 3-d), a linear layer or a BatchNorm: the modules the
    weight-based rules (z⁺, γ, αβ, flat, w², z^B) apply to."""
    return isinstance(module, (nn.Linear, *_CONVOLUTIONS, *_BATCHNORMS))


def uses_batch_statistics(norm: nn.Module) -> bool:
    """A BatchNorm that normalises with the batch's statistics (train mode, or no running
    estimates), so its affine map depends on its input."""
    return bool(norm.training or getattr(norm, "running_mean", None) is None)


def batchnorm_affine(
    norm: nn.Module, x: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The per-channel ``(scale, shift)`` of a BatchNorm, so that
    ``norm(x) = scale * x + shift`` channel-wise.

    The statistics are the ones the BatchNorm's forward uses: the running estimates in
    eval mode, the batch's (mean and biased variance of its input ``x`` over every dim but
    the channels) in train mode or without running estimates (``x`` is needed then only).
    """
    assert isinstance(norm, nn.modules.batchnorm._BatchNorm)
    if uses_batch_statistics(norm):
        assert x is not None, "batch statistics need the BatchNorm's input"
        dims = [d for d in range(x.ndim) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        assert norm.running_mean is not None and norm.running_var is not None
        mean, var = norm.running_mean.to(dtype), norm.running_var.to(dtype)
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.to(dtype)
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.to(dtype)
    return scale, shift


def _per_channel(values: Tensor, ndim: int) -> Tensor:
    """``(C,)`` as ``(C, 1, ..., 1)`` broadcasting over a ``(B, C, ...)`` tensor's trailing
    dims (``ndim`` dims in all)."""
    return values.view(-1, *([1] * (ndim - 2)))


class AffineLayer:
    """A convolution, linear layer or BatchNorm as the affine map ``z = W x + b``.

    Attributes:
        module: the module.
        weight: ``W`` (with a folded BatchNorm's scale), or for a BatchNorm its per-channel
            scale ``(C,)``.
        bias: ``b`` (with a folded BatchNorm's shift), ``None`` for none.
        output: ``z`` as the forward computed it (after a folded BatchNorm), or ``None``
            when it was not kept; :meth:`output_for` recomputes it then.
    """

    def __init__(
        self, module: nn.Module, weight: Tensor, bias: Tensor | None, output: Tensor | None
    ) -> None:
        self.module, self.weight, self.bias, self.output = module, weight, bias, output

    @classmethod
    def of(
        cls, module: nn.Module, x: Tensor, output: Tensor | None, folded: nn.Module | None = None
    ) -> AffineLayer:
        """The view of ``module`` for its input ``x`` and ``output``, with the BatchNorm
        ``folded`` (which runs right after it) folded in: ``W' = s W``, ``b' = s b + t``
        for the BatchNorm's ``(s, t)`` (its batch statistics are those of ``output``)."""
        if isinstance(module, _BATCHNORMS):
            scale, shift = batchnorm_affine(module, x, x.dtype)
            return cls(module, scale, shift, output)
        weight = cast(Tensor, module.weight).to(x.dtype)
        bias = None if module.bias is None else cast(Tensor, module.bias).to(x.dtype)
        if folded is None:
            return cls(module, weight, bias, output)
        scale, shift = batchnorm_affine(folded, output, x.dtype)
        weight = weight * scale.view(-1, *([1] * (weight.ndim - 1)))
        bias = shift if bias is None else bias * scale + shift
        if output is not None:
            output = output * _per_channel(scale, output.ndim) + _per_channel(shift, output.ndim)
        return cls(module, weight, bias, output)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``weight x + bias`` computed the way the module computes its map."""
        module = self.module
        if isinstance(module, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(module, _CONVOLUTIONS):
            result: Tensor = module._conv_forward(x, weight, bias)  # the module's padding mode
            return result
        out = x * _per_channel(weight, x.ndim)
        return out if bias is None else out + _per_channel(bias, x.ndim)

    def vjp(self, x: Tensor, weight: Tensor, grad: Tensor) -> Tensor:
        """``weight^T grad``: the gradient of ``<grad, weight x>`` with respect to ``x``."""
        module = self.module
        if isinstance(module, nn.Linear):
            return grad @ weight
        if isinstance(module, _BATCHNORMS):
            return grad * _per_channel(weight, grad.ndim)
        if _transposable(module):
            return _transposed_convolution(module, x, weight, grad)
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (result,) = torch.autograd.grad(self.forward(leaf, weight), leaf, grad)
        return result

    def output_for(self, x: Tensor) -> Tensor:
        """``z``: the kept output, or the map recomputed on ``x``."""
        return self.output if self.output is not None else self.forward(x, self.weight, self.bias)


class FunctionLayer:
    """A module without a weight-based rule (pooling, activations), as the function its
    ``forward`` computes; ``weight`` and ``bias`` are ``None``.

    Attributes:
        module: the module.
        output: its output, or ``None`` when it was not kept.
    """

    weight: Any = None
    bias: Any = None

    def __init__(self, module: nn.Module, output: Tensor | None) -> None:
        self.module, self.output = module, output

    def forward(self, x: Tensor, weight: Any = None, bias: Any = None) -> Tensor:
        """The module's function (``module.forward``: no hooks)."""
        result: Tensor = self.module.forward(x)
        return result

    def vjp(self, x: Tensor, weight: Any, grad: Tensor) -> Tensor:
        """The gradient of ``<grad, f(x)>`` with respect to ``x``."""
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (result,) = torch.autograd.grad(self.forward(leaf), leaf, grad)
        return result

    def output_for(self, x: Tensor) -> Tensor:
        """The kept output, or the function recomputed on ``x``."""
        return self.output if self.output is not None else self.forward(x)


Layer = AffineLayer | FunctionLayer
"""What a rule propagates through."""


def _transposable(module: nn.Module) -> bool:
    return (
        isinstance(module, _CONVOLUTIONS)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _transposed_convolution(module: Any, x: Tensor, weight: Tensor, grad: Tensor) -> Tensor:
    """``weight^T grad`` of a zero-padded convolution: the convolution's input-gradient
    kernel (``torch.nn.grad.conv2d_input``, the one autograd runs; no forward needed). It
    batches under ``vmap``, so K targets stay one backward; on CPU it is several times
    faster than ``conv_transpose2d`` for 1x1 kernels."""
    input_gradient = _INPUT_GRADIENT[x.ndim - 2]
    result: Tensor = input_gradient(
        x.shape,
        weight,
        grad,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
    )
    return result
