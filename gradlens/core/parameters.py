"""A model's parameters off the autograd tape for a block: :func:`parameters_without_grad`.

Used by the :class:`~gradlens.Recorder` with ``parameter_grads=False``, which is how every
gradlens gradient method records (through :func:`gradlens.passes.differentiate` and the
gradient attention rollout); it imports nothing from gradlens, so any module can use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["parameters_without_grad"]


@contextmanager
def parameters_without_grad(model: nn.Module) -> Iterator[None]:
    """Switch ``requires_grad`` off on the model's parameters for the block, and back on
    exit (also when the block raises).

    A method that needs gradients with respect to activations or inputs only has no use
    for parameter gradients. With the parameters off the tape, autograd keeps no layer
    inputs for them (e.g. a linear layer's input, saved for its weight gradient): less
    memory is written and held during the forward, and the gradients with respect to
    everything else are the same.

    Only parameters that require grad on entry are switched (tied parameters are one
    parameter); frozen ones are left alone, and so are parameters created under
    :func:`torch.inference_mode`, whose flag could not be switched back on outside it.
    A model dispatched by ``accelerate`` with offloading swaps its parameters inside each
    forward, and the new ones take the flag of those they replace: the flag is switched
    back on for the parameter found in each switched parameter's place on exit as well.

    Args:
        model: the model whose parameters to switch.

    Yields:
        Nothing; the flags are restored when the block ends.
    """
    switched = [
        (module._parameters, name, parameter)
        for module in model.modules()
        for name, parameter in module._parameters.items()
        if parameter is not None and parameter.requires_grad and not parameter.is_inference()
    ]
    try:
        for _, _, parameter in switched:
            parameter.requires_grad_(False)
        yield
    finally:
        for slots, name, parameter in switched:
            parameter.requires_grad_(True)
            now = slots.get(name)
            if now is not None and now is not parameter and not now.is_inference():
                now.requires_grad_(True)
