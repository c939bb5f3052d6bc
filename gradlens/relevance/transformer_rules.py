"""Where AttnLRP's rules go in a transformer: the hooks and function handlers of one call.

:func:`attnlrp_hooks` returns the context managers that make a model's backward pass the
AttnLRP relevance pass (in its Gradient × Input form, see :mod:`.gradient_rules`):

* products of two input-dependent tensors (``a * b``, ``a @ b``, ``bmm``, ``baddbmm``,
  two-operand ``einsum``) -- the query-key and probability-value products of eager
  attention and the gates of gated MLPs -- get the uniform rule;
* ``F.scaled_dot_product_attention`` runs on the model's own kernel with the gradients of
  its query and key scaled by 1/4 and of its value by 1/2: its two products under the
  uniform rule and its softmax under the Taylor rule (the plain gradient), exactly;
* ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) runs with the same
  handlers active inside, so its ``scaled_dot_product_attention`` or ``bmm`` calls get them;
* ``F.layer_norm`` and ``F.rms_norm`` run in their maths form with the standard deviation
  (RMS) detached, and inside normalisation modules written out in torch (Llama's, Qwen2's,
  Gemma's RMSNorm) ``rsqrt``, ``sqrt``, ``var`` and ``std`` are detached: the identity rule
  on the normalisation, the mean subtraction staying in the graph;
* elementwise activation modules (GELU, SiLU, tanh-GELU, Tanh...) and the functional
  ``F.gelu``, ``F.silu``, ``F.mish``, ``tanh`` get the identity rule;
* with ``epsilon > 0`` the outputs of linear layers get the ε-rule's stabiliser;
* with ``conv_gamma`` / ``linear_gamma`` convolutions / ``nn.Linear`` layers get the γ-rule
  (:class:`~gradlens.relevance.rules.Gamma`) instead of the ε-rule, as module rules in the
  Gradient × Input form (:func:`gamma_module_rule`).

No model attribute, ``forward`` or attention setting is changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.backward import FunctionHandler, ModuleRule, override_backward, override_functions
from ..core.outputs import replace_outputs
from ..core.selection import named_modules
from .attention_kernels import AttentionKernelCheck
from .gradient_rules import epsilon_gradient, identity_rule, scale_gradient, stabilise
from .layers import AffineLayer
from .rules import Gamma

__all__ = [
    "attnlrp_hooks",
    "activation_modules",
    "norm_modules",
    "linear_modules",
    "gamma_module_rule",
]

_ACTIVATION_NAME = re.compile(r"gelu|silu|swish|mish|tanh", re.IGNORECASE)
_NORM_NAME = re.compile(r"(layer|rms)_?norm", re.IGNORECASE)
_IDENTITY_EPS = 1e-10


def _is_activation(module: nn.Module) -> bool:
    return (
        not list(module.children())
        and not list(module.parameters(recurse=False))
        and bool(_ACTIVATION_NAME.search(type(module).__name__))
    )


def activation_modules(model: nn.Module) -> list[str]:
    """Names of the parameter-free leaf modules whose class names an elementwise activation
    of AttnLRP's identity rule (GELU, SiLU/Swish, Mish, Tanh and the Hugging Face variants
    ``NewGELUActivation``, ``GELUTanh``...)."""
    return [n for n, m in named_modules(model).items() if _is_activation(m)]


def norm_modules(model: nn.Module) -> list[str]:
    """Names of the normalisation modules: ``nn.LayerNorm``, ``nn.RMSNorm`` and every class
    named ``...LayerNorm``/``...RMSNorm`` (Llama's, Qwen2's, Gemma's, timm's)."""
    return [
        n
        for n, m in named_modules(model).items()
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or _NORM_NAME.search(type(m).__name__)
    ]


def linear_modules(model: nn.Module) -> list[str]:
    """Names of the affine layers of the ε-rule: ``nn.Linear`` and convolutions, and
    Hugging Face's ``Conv1D`` (GPT-2's linear layers)."""
    return [
        n
        for n, m in named_modules(model).items()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or type(m).__name__ == "Conv1D"
    ]


def _dependent(value: Any) -> TypeGuard[Tensor]:
    """A tensor that depends on the explained input (parameters are not factors), in a
    computation that is being taped."""
    return (
        torch.is_grad_enabled()
        and isinstance(value, Tensor)
        and value.requires_grad
        and value.is_floating_point()
        and not isinstance(value, nn.Parameter)
    )


class _Handlers:
    """The function handlers of one :func:`attnlrp_hooks` call."""

    def __init__(self, model: nn.Module, check: AttentionKernelCheck) -> None:
        self.model = model
        self.check = check
        products: dict[Callable[..., Any], FunctionHandler] = {
            torch.mul: self.product(0, 1),
            Tensor.mul: self.product(0, 1),
            torch.matmul: self.product(0, 1),
            Tensor.matmul: self.product(0, 1),
            Tensor.__matmul__: self.product(0, 1),
            torch.bmm: self.product(0, 1),
            Tensor.bmm: self.product(0, 1),
            torch.baddbmm: self.product(1, 2),
            Tensor.baddbmm: self.product(1, 2),
        }
        self.table: dict[Callable[..., Any], FunctionHandler] = {
            **products,
            torch.einsum: self.einsum,
            F.scaled_dot_product_attention: self.sdpa,
            F.multi_head_attention_forward: self.inside,
            F.layer_norm: self.layer_norm,
            F.rms_norm: self.rms_norm,
            F.gelu: self.activation,
            F.silu: self.activation,
            F.mish: self.activation,
            torch.tanh: self.activation,
            Tensor.tanh: self.activation,
            F.tanh: self.activation,
        }

    def product(self, i: int, j: int) -> FunctionHandler:
        def handler(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if len(args) <= j or not (_dependent(args[i]) and _dependent(args[j])):
                return NotImplemented
            self.check.saw_attention()
            halved = list(args)
            halved[i], halved[j] = scale_gradient(args[i], 0.5), scale_gradient(args[j], 0.5)
            return func(*halved, **kwargs)

        return handler

    def einsum(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        operands = list(args[1:])
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        if len(operands) != 2 or not all(_dependent(t) for t in operands):
            return NotImplemented
        self.check.saw_attention()
        return func(args[0], *(scale_gradient(t, 0.5) for t in operands), **kwargs)

    def sdpa(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        names = ("query", "key", "value")
        qkv = [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)]
        q, k, v = (_dependent(t) for t in qkv)
        if not (q or k or v):
            return NotImplemented
        self.check.saw_attention()
        # scores = q·kᵀ (uniform when both depend on the input), output = probs·v (uniform
        # when v and the probabilities do); the softmax between them keeps its gradient
        factors = (
            (0.5 if k else 1.0) * (0.5 if v else 1.0),
            (0.5 if q else 1.0) * (0.5 if v else 1.0),
            0.5 if (q or k) else 1.0,
        )
        scaled = [
            scale_gradient(t, f) if _dependent(t) and f != 1.0 else t for t, f in zip(qkv, factors)
        ]
        new_args = list(args)
        new_kwargs = dict(kwargs)
        for i, (name, tensor) in enumerate(zip(names, scaled)):
            if i < len(args):
                new_args[i] = tensor
            else:
                new_kwargs[name] = tensor
        return func(*new_args, **new_kwargs)

    def inside(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run a composite function (``F.multi_head_attention_forward``) with these handlers
        active inside it (the mode is off while a handler runs)."""
        with override_functions(self.model, self.table):
            # skip the dispatch of this call to the mode, keep it for the calls inside
            return torch.overrides.redispatch_function(func, (), args, kwargs)

    def layer_norm(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        named = dict(zip(("input", "normalized_shape", "weight", "bias", "eps"), args), **kwargs)
        x = named["input"]
        if not _dependent(x):
            return NotImplemented
        dims = tuple(range(-len(tuple(named["normalized_shape"])), 0))
        centred = x - x.mean(dim=dims, keepdim=True)
        variance = centred.pow(2).mean(dim=dims, keepdim=True)
        y = centred * torch.rsqrt(variance + named.get("eps", 1e-5)).detach()
        if named.get("weight") is not None:
            y = y * named["weight"]
        if named.get("bias") is not None:
            y = y + named["bias"]
        return y

    def rms_norm(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        named = dict(zip(("input", "normalized_shape", "weight", "eps"), args), **kwargs)
        x = named["input"]
        if not _dependent(x):
            return NotImplemented
        dims = tuple(range(-len(tuple(named["normalized_shape"])), 0))
        eps = named.get("eps")
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        y = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps).detach()
        return y if named.get("weight") is None else y * named["weight"]

    def activation(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not args or not _dependent(args[0]):
            return NotImplemented
        rest = args[1:]
        return identity_rule(lambda t: func(t, *rest, **kwargs), args[0], _IDENTITY_EPS)


def _detached(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = func(*args, **kwargs)
    if isinstance(result, tuple):
        return tuple(r.detach() if isinstance(r, Tensor) else r for r in result)
    return result.detach() if isinstance(result, Tensor) else result


_STATISTICS: dict[Callable[..., Any], FunctionHandler] = {
    f: _detached
    for f in (
        torch.rsqrt,
        Tensor.rsqrt,
        torch.sqrt,
        Tensor.sqrt,
        torch.var,
        Tensor.var,
        torch.std,
        Tensor.std,
        torch.var_mean,
        torch.std_mean,
    )
}


def _identity_module(
    module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor | None, grad: Tensor
) -> tuple[Tensor | None, ...]:
    (x, *others) = inputs
    assert output is not None  # registered with keep_output=True
    return (grad * output / stabilise(x, _IDENTITY_EPS), *(None for _ in others))


def gamma_module_rule(gamma: float) -> ModuleRule:
    """The γ-rule (:class:`~gradlens.relevance.rules.Gamma`) of an ``nn.Linear`` or
    convolution as an :func:`~gradlens.core.backward.override_backward` rule in the
    Gradient × Input form: the gradient ``g_z`` arriving at the output ``z`` is the
    relevance ``R_z = z ⊙ g_z``, the γ-rule gives the input's ``R_x``, and the input is
    handed ``R_x / x`` (stabilised by ``1e-10·sign(x)``), so that ``x ⊙ g_x = R_x``."""
    rule = Gamma(gamma)

    def apply(
        module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor | None, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        (x, *others) = inputs
        assert output is not None  # registered with keep_output=True
        relevance = rule.propagate(AffineLayer.of(module, x, output), x, grad * output)
        return (relevance / stabilise(x, _IDENTITY_EPS), *(None for _ in others))

    return apply


def _convolutions(model: nn.Module) -> list[str]:
    return [
        n
        for n, m in named_modules(model).items()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    ]


def _linears(model: nn.Module) -> list[str]:
    return [n for n, m in named_modules(model).items() if isinstance(m, nn.Linear)]


def attnlrp_hooks(
    model: nn.Module,
    *,
    epsilon: float = 0.0,
    conv_gamma: float | None = None,
    linear_gamma: float | None = None,
) -> list[AbstractContextManager[Any]]:
    """The context managers that turn the model's backward pass into AttnLRP's.

    Args:
        model: the transformer (not modified).
        epsilon: the ε of the ε-rule on linear layers; 0 is the plain gradient.
        conv_gamma: the γ of the γ-rule on convolutions (``nn.Conv1d/2d/3d``, a ViT's
            patch embedding); ``None``: the ε-rule.
        linear_gamma: the γ of the γ-rule on ``nn.Linear`` modules; ``None``: the ε-rule.

    Returns:
        Context managers to enter, in order, around one forward and backward pass.
    """
    gammas: dict[str, float] = {}
    if conv_gamma is not None:
        gammas.update(dict.fromkeys(_convolutions(model), conv_gamma))
    if linear_gamma is not None:
        gammas.update(dict.fromkeys(_linears(model), linear_gamma))
    check = AttentionKernelCheck(model)
    handlers = _Handlers(model, check)
    hooks: list[AbstractContextManager[Any]] = []
    norms = norm_modules(model)
    if norms:
        hooks.append(override_functions(model, _STATISTICS, within=norms))
    activations = activation_modules(model)
    if activations:
        hooks.append(override_backward(model, dict.fromkeys(activations, _identity_module)))
    if gammas:
        hooks.append(override_backward(model, {n: gamma_module_rule(g) for n, g in gammas.items()}))
    if epsilon > 0:
        linear = [n for n in linear_modules(model) if n not in gammas]
        if linear:
            hooks.append(
                replace_outputs(
                    model,
                    lambda name, module, out: epsilon_gradient(out, epsilon),
                    layers=linear,
                )
            )
    hooks.append(check)
    hooks.append(override_functions(model, handlers.table, within=model))
    return hooks
