"""Forward passes that leave the model's buffers as they were: :func:`preserve_buffers`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["preserve_buffers"]


@contextmanager
def preserve_buffers(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s buffers on exit, also when the block raises.

    Train-mode forwards update buffers (BatchNorm's running statistics and batch count);
    every gradlens call that runs the model wraps its forwards in this, so the model's
    state afterwards is what it was before. Buffers are copied back in place, so tensors
    that alias them stay valid. Models with no module in training mode have nothing to
    restore, and nothing is copied.

    Args:
        model: the model whose buffers to keep.

    Yields:
        Nothing; use ``with preserve_buffers(model): model(x)``.
    """
    if not any(module.training for module in model.modules()):
        yield
        return
    with torch.inference_mode(False):
        saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
