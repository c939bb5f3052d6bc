"""The torch-function mode behind :class:`~gradlens.attention.AttentionCapture`.

While the capture is active, every torch call passes through :class:`AttentionMode`;
inside a running captured module it

* computes ``F.scaled_dot_product_attention`` in its maths form and records the softmax,
* runs ``F.multi_head_attention_forward`` with ``need_weights=False`` (which calls
  ``scaled_dot_product_attention``) and hands the caller the weights it asked for,
* records the output of a softmax over the last dim of a 4-D tensor (eager attention),

and notes any other attention-named kernel it sees, for the error message of a module whose
attention could not be captured. Everything else runs unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ...errors import AttentionCaptureError
from .maths import Attended, attention_with_probabilities
from .records import AttentionCall, Frame

__all__ = ["AttentionMode", "CaptureState"]

_SDPA_ARGUMENTS = (
    "query",
    "key",
    "value",
    "attn_mask",
    "dropout_p",
    "is_causal",
    "scale",
    "enable_gqa",
)
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
_SOFTMAX_FUNCTIONS = (torch.softmax, F.softmax, Tensor.softmax, torch.special.softmax)


class CaptureState(Protocol):
    """What :class:`AttentionMode` reads and writes of the capture it serves
    (:class:`~gradlens.core.attention.capture.AttentionCapture`)."""

    _frames: list[Frame]
    _calls: list[AttentionCall]
    _select_all: bool
    _mha_weights: list[Tensor] | None

    def _target(self) -> Frame | None: ...

    def _record(self, target: Frame, probs: Tensor, kernel: str) -> Tensor: ...


class AttentionMode(TorchFunctionMode):
    """Reroutes attention computed inside an :class:`AttentionCapture`'s running modules
    through :func:`~gradlens.core.attention.maths.attention_with_probabilities`, and records
    eager attention's softmax."""

    def __init__(self, capture: CaptureState) -> None:
        super().__init__()
        self.capture = capture

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        capture = self.capture
        if not capture._frames:
            if capture._select_all and (
                func is F.scaled_dot_product_attention or func is F.multi_head_attention_forward
            ):
                raise AttentionCaptureError(
                    f"{func.__name__} ran outside every module gradlens recognises as "
                    "attention (nn.MultiheadAttention or a class named '...Attention'), so "
                    "its probabilities would be missing; name the module that calls it "
                    "with layers=..."
                )
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return self._sdpa(func, args, kwargs)
        if func is F.multi_head_attention_forward:
            return self._multi_head(func, types, args, kwargs)
        if func in _SOFTMAX_FUNCTIONS:
            return self._softmax(func, args, kwargs)
        name = getattr(func, "__name__", "")
        if "attention" in name or "attn" in name:
            capture._frames[-1].uncaptured.append(str(getattr(func, "__qualname__", name)))
        return func(*args, **kwargs)

    def _sdpa(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        capture = self.capture
        target = capture._target()
        if target is None or len(args) > len(_SDPA_ARGUMENTS):
            return func(*args, **kwargs)
        named = dict(zip(_SDPA_ARGUMENTS, args))
        if set(kwargs) - set(_SDPA_ARGUMENTS) or set(kwargs) & set(named):
            return func(*args, **kwargs)  # an argument this PyTorch added: let it decide
        named.update(kwargs)
        attended: Attended = attention_with_probabilities(
            **named,
            probs_hook=lambda probs: capture._record(target, probs, "scaled_dot_product_attention"),
        )
        if capture._mha_weights is not None:
            capture._mha_weights.append(attended.weights)
        return attended.output

    def _multi_head(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        capture = self.capture
        if capture._target() is None:
            return func(*args, **kwargs)
        bound = _MHA_SIGNATURE.bind(*args, **kwargs)
        need_weights = bound.arguments.get("need_weights", True)
        average = bound.arguments.get("average_attn_weights", True)
        # need_weights=False makes F.multi_head_attention_forward call
        # scaled_dot_product_attention, which this mode computes in its maths form
        bound.arguments["need_weights"] = False
        collected: list[Tensor] = []
        capture._mha_weights = collected
        try:
            with self:
                output, _ = torch.overrides.redispatch_function(
                    func, types, tuple(bound.args), dict(bound.kwargs)
                )
        finally:
            capture._mha_weights = None
        weights = collected[-1] if collected else None
        if capture._calls and capture._calls[-1].kernel == "scaled_dot_product_attention":
            capture._calls[-1].kernel = "multi_head_attention_forward"
        if not need_weights or weights is None:
            return output, None
        # what PyTorch returns for need_weights=True: the weights after dropout, per head
        # or averaged over heads, without the batch dim for unbatched inputs
        if average:
            weights = weights.mean(dim=1)
        if bound.arguments["query"].dim() == 2:
            weights = weights.squeeze(0)
        return output, weights

    def _softmax(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        output = func(*args, **kwargs)
        target = self.capture._target()
        if target is None or not isinstance(output, Tensor) or output.ndim != 4:
            return output
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim not in (-1, 3):
            return output
        return self.capture._record(target, output, "softmax")
