"""The check that every attention module ran a kernel AttnLRP's rules can see.

Attention computed by a kernel the function handlers never see (a flash-attention
extension, flex attention, a custom operator) would keep its plain gradient, silently. While
:class:`AttentionKernelCheck` is active, each call of an attention module
(:func:`~gradlens.core.attention.capture.attention_modules`) must see at least one
rule-carrying operation (``scaled_dot_product_attention``, ``nn.MultiheadAttention``'s
functional form, or a product of two input-dependent tensors); otherwise the call raises
:class:`~gradlens.errors.RelevanceError` naming the module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.attention.capture import attention_modules
from ..core.hooks import HookSet
from ..core.lifecycle import Capture
from ..errors import RelevanceError

__all__ = ["AttentionKernelCheck"]


class AttentionKernelCheck(Capture[None]):
    """Raise :class:`RelevanceError` when an attention module's call carries no rule.

    Args:
        model: the model; its attention modules are found by class name (and
            ``nn.MultiheadAttention``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._modules = attention_modules(model)
        self._hooks = HookSet()
        self._frames: list[list[Any]] = []  # [name, saw a rule] per running attention call

    def saw_attention(self) -> None:
        """Called by the rules' handlers: the running attention calls carry a rule."""
        for frame in self._frames:
            frame[1] = True

    def _open(self) -> None:
        self._frames = []
        for name, module in self._modules.items():
            self._hooks.forward_pre(module, self._enter(name))
            self._hooks.forward(module, self._leave, always_call=True)

    def _close(self) -> None:
        self._hooks.remove()
        self._frames = []

    def _selected(self) -> Sequence[str]:
        return list(self._modules)

    def _enter(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self._frames.append([name, False])

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._frames:
            return
        name, seen = self._frames.pop()
        if seen or not torch.is_grad_enabled():
            return
        first = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(first, torch.Tensor) and first.requires_grad:  # None: the call raised
            raise RelevanceError(
                f"attention module {name!r} ({type(module).__name__}) computed its attention "
                "with a kernel AttnLRP's rules cannot see (not F.scaled_dot_product_attention, "
                "nn.MultiheadAttention or torch products of the queries and keys: a flash or "
                "flex-attention kernel, a custom operator); run it with "
                "attn_implementation='sdpa' or 'eager'"
            )
