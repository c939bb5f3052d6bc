"""The one place where gradlens registers hooks: :class:`HookSet`.

A HookSet registers forward, forward-pre, full-backward and tensor hooks and keeps every
handle, so that all of them come off together when the set is closed -- on exit of a
``with`` block, also when the block raises. :class:`~gradlens.Recorder` and
:func:`gradlens.core.outputs.replace_outputs` are built on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["HookSet"]


class HookSet:
    """Hooks on modules and tensors that are removed together.

    Example::

        with HookSet() as hooks:
            hooks.forward(model.layer4, lambda module, args, output: output * 0)
            model(x)          # runs with the hook
        model(x)              # runs without it, also if the block raised

    A HookSet can be closed and filled again; :meth:`remove` is idempotent.
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def forward(
        self, module: nn.Module, hook: Callable[..., Any], *, always_call: bool = False
    ) -> None:
        """Register ``hook(module, args, output) -> new output or None`` on ``module``
        (``always_call``: also when the module raises)."""
        self._handles.append(module.register_forward_hook(hook, always_call=always_call))

    def forward_pre(
        self, module: nn.Module, hook: Callable[..., Any], *, with_kwargs: bool = False
    ) -> None:
        """Register ``hook(module, args) -> new args or None``, run before ``module``
        (``with_kwargs``: ``hook(module, args, kwargs) -> (args, kwargs) or None``)."""
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))

    def full_backward(self, module: nn.Module, hook: Callable[[nn.Module, Any, Any], Any]) -> None:
        """Register ``hook(module, grad_input, grad_output)`` on ``module``.

        PyTorch decides at forward time which full backward hooks a pass calls, so a
        backward run after :meth:`remove` through a graph built before it still calls
        ``hook``: hooks must check that their owner is still active.
        """
        self._handles.append(module.register_full_backward_hook(hook))

    def tensor(self, tensor: Tensor, hook: Callable[[Tensor], Any]) -> None:
        """Register ``hook(grad)`` on ``tensor`` (it must require grad)."""
        self._handles.append(tensor.register_hook(hook))

    def remove(self) -> None:
        """Remove every hook registered so far (latest first)."""
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
