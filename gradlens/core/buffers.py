"""Forward passes that leave the model's buffers as they were: :func:`preserve_buffers`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["preserve_buffers"]


@contextmanager
def preserve_buffers(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s buffers on exit, also when the block raises.

    Train-mode forwards update buffers (BatchNorm's running statistics and batch count);
    every gradlens call that runs the model wraps its forwards in this, so the model's
    state afterwards is what it was before. Buffers are copied back in place, so tensors
    that alias them stay valid. Models with no module in training mode have no buffer
    values to restore, and nothing is copied.

    Parameters and buffers on the ``meta`` device are placeholders for weights kept
    elsewhere: a model dispatched by ``accelerate`` with CPU or disk offload loads them
    inside each module's forward and afterwards puts a new placeholder in their place,
    made with the grad mode and ``requires_grad`` in force then (under
    ``torch.inference_mode()`` an inference tensor; a forward that raises leaves the
    loaded weight). The placeholders found on entry are put back on exit, so the model
    holds the same objects, still offloaded. The values of offloaded buffers are where
    ``accelerate`` keeps them, out of reach here: a train-mode forward of a model
    dispatched with ``offload_buffers=True`` updates them for good (``accelerate`` keeps
    buffers on the execution device by default, and those are restored).

    Args:
        model: the model whose buffers to keep.

    Yields:
        Nothing; use ``with preserve_buffers(model): model(x)``.
    """
    placeholders = [
        (slots, name, tensor)
        for module in model.modules()
        for slots in (module._parameters, module._buffers)
        for name, tensor in slots.items()
        if tensor is not None and tensor.is_meta
    ]
    saved: list[tuple[Tensor, Tensor]] = []
    if any(module.training for module in model.modules()):
        with torch.inference_mode(False):
            saved = [(b, b.detach().clone()) for b in model.buffers() if not b.is_meta]
    try:
        yield
    finally:
        for slots, name, tensor in placeholders:
            slots[name] = tensor  # type: ignore[assignment]
        if saved:
            with torch.inference_mode(False), torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
