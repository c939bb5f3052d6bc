"""Keeping ``nn.TransformerEncoder``'s outputs at padded positions while its fast path is off.

In inference, ``nn.TransformerEncoder`` (with ``enable_nested_tensor=True``, the default)
turns a padded batch into a nested tensor, runs its layers on the real tokens only, and
pads the result with zeros (then applies its final norm): its outputs at padded positions
are ``norm(0)``. The attention capture turns that fast path off, so the layers compute
values at padded positions too. :func:`padded_output_hooks` puts back what the fast path
would have returned there, so that the model's outputs do not change while capturing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..hooks import HookSet

__all__ = ["padded_output_hooks"]

_SIGNATURE = inspect.signature(nn.TransformerEncoder.forward)
_DEVICES = ("cpu", "cuda", "xpu")


def padded_output_hooks(model: nn.Module, fastpath_enabled: bool, hooks: HookSet) -> None:
    """Hook every ``nn.TransformerEncoder`` of ``model`` that may use the nested-tensor path.

    Args:
        model: the model.
        fastpath_enabled: whether ``torch.backends.mha`` allowed the fast path before the
            capture switched it off.
        hooks: where the hooks go (the capture removes them on exit); none are added when
            the fast path was off anyway.
    """
    if not fastpath_enabled:
        return
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and getattr(
            module, "use_nested_tensor", False
        ):
            pending: list[Tensor | None] = []
            hooks.forward_pre(module, _remember(pending), with_kwargs=True)
            hooks.forward(module, _restore(pending), always_call=True)


def _remember(pending: list[Tensor | None]) -> Callable[..., None]:
    def hook(module: nn.TransformerEncoder, args: Any, kwargs: dict[str, Any]) -> None:
        bound = _SIGNATURE.bind(module, *args, **kwargs).arguments
        src, padding = bound["src"], bound.get("src_key_padding_mask")
        pending.append(padding if _would_nest(module, src, padding, bound.get("mask")) else None)

    return hook


def _restore(pending: list[Tensor | None]) -> Callable[..., Any]:
    def hook(module: nn.TransformerEncoder, args: Any, output: Any) -> Any:
        padding = pending.pop() if pending else None
        if padding is None or not isinstance(output, Tensor):
            return None
        if not module.layers[0].self_attn.batch_first:
            padding = padding.transpose(0, 1)
        fill = output.new_zeros(output.shape[-1])
        if module.norm is not None:
            fill = module.norm(fill)
        return torch.where(padding[..., None].bool(), fill, output)

    return hook


def _would_nest(
    module: nn.TransformerEncoder, src: Tensor, padding: Tensor | None, mask: Tensor | None
) -> bool:
    """The conditions under which ``nn.TransformerEncoder.forward`` converts ``src`` to a
    nested tensor (PyTorch's own checks, with the fast path and no torch-function mode)."""
    first = module.layers[0]
    if first.training or src.dim() != 3 or padding is None or mask is not None:
        return False
    if src.is_nested or torch.is_autocast_enabled() or src.device.type not in _DEVICES:
        return False
    if getattr(module, "mask_check", True):
        if torch.compiler.is_compiling():
            return False
        if not torch._nested_tensor_from_mask_left_aligned(src, padding.logical_not()):
            return False
    weights = [
        src,
        first.self_attn.in_proj_weight,
        first.self_attn.in_proj_bias,
        first.self_attn.out_proj.weight,
        first.self_attn.out_proj.bias,
        first.norm1.weight,
        first.norm1.bias,
        first.norm2.weight,
        first.norm2.bias,
        first.linear1.weight,
        first.linear1.bias,
        first.linear2.weight,
        first.linear2.bias,
    ]
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in weights))
