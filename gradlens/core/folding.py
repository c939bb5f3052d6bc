"""A throw-away inference copy of a model with each BatchNorm folded into the layer before it.

In eval mode a BatchNorm after a convolution is an affine map per channel, so it can be
folded into the convolution's weights and bias: one layer instead of two, the same
function up to float rounding, and a faster one for methods that run the same model
hundreds of times without gradients (Score-CAM's masked forwards; the documentation's
Performance page has the gain). The copy is made with
:func:`torch.fx.experimental.optimization.fuse`; the model itself is never changed.
"""

from __future__ import annotations

import warnings

from torch import nn
from torch.nn.modules import module as module_hooks


def folded_copy(model: nn.Module) -> nn.Module | None:
    """A deep copy of ``model`` with Conv/Linear + BatchNorm pairs folded, or ``None``.

    ``None`` (use the model itself) when folding cannot be trusted to call the same
    function, or would gain nothing: a module is in train mode (BatchNorm then uses batch
    statistics), the model has no BatchNorm, a module or the global registry carries
    forward hooks (tracing inlines containers, whose hooks would no longer fire), or
    :func:`torch.fx.symbolic_trace` fails on the model. Callers should still compare the
    copy's output with the model's once, since tracing records one path through Python
    control flow.
    """
    modules = list(model.modules())
    if any(m.training for m in modules):
        return None
    batchnorms = _count_batchnorms(model)
    if batchnorms == 0:
        return None
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in modules):
        return None
    from torch.fx.experimental.optimization import fuse

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folded = fuse(model, inplace=False)
    except Exception:  # untraceable Python control flow, unsupported modules, ...
        return None
    if _count_batchnorms(folded) == batchnorms:
        return None  # nothing folded (no BatchNorm directly after a conv or linear layer)
    return folded.eval()


def _count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
