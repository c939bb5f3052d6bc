"""Capturing attention probabilities under any attention kernel: :func:`capture_attention`.

Most attention code never materialises its probabilities: ``nn.MultiheadAttention`` called
with ``need_weights=False`` (torchvision's ViT, ``nn.TransformerEncoder``), Hugging Face
models with ``attn_implementation="sdpa"`` and timm models with ``fused_attn`` all call a
fused ``scaled_dot_product_attention`` kernel. While an :class:`AttentionCapture` is active,
attention inside the captured modules runs through a path that does materialise them,
without changing the model:

* a :class:`torch.overrides.TorchFunctionMode` computes every
  :func:`~torch.nn.functional.scaled_dot_product_attention` call in its maths form,
  ``softmax(Q K^T * scale + mask) [-> dropout] @ V``, and records the softmax output;
* ``nn.MultiheadAttention`` (its functional form, ``multi_head_attention_forward``) is run
  with ``need_weights=False``, which routes it through ``scaled_dot_product_attention``;
  a caller that asked for weights still gets them, as PyTorch would have returned them;
  the fast path of ``nn.TransformerEncoderLayer``/``nn.MultiheadAttention``, which skips the
  module's Python code, is switched off (``torch.backends.mha``) while capturing (and the
  zeros ``nn.TransformerEncoder``'s nested-tensor path leaves at padded positions are put
  back);
* eager attention (Hugging Face ``attn_implementation="eager"``, timm with
  ``fused_attn=False``) is recognised by its softmax over the last dim of a 4-D
  ``(B, heads, N_query, N_key)`` tensor, whose output is recorded as it is.

Each map is recorded under the dotted name of the innermost running captured module. The
recorded tensor is the one the attention output is computed from, so gradients with
respect to it are exact. Nothing about the model is changed: the hooks come off, the
fast-path setting is restored, buffers that train-mode forwards in the block update are
restored (``restore_buffers``), and no attention-implementation setting or flag is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import (
    AttentionCaptureError,
    GradientNotAvailableError,
)
from ..buffers import preserve_buffers
from ..checks import check_model
from ..hooks import HookSet
from ..lifecycle import Capture
from ..selection import Layers, named_modules, select_layers
from .encoder import padded_output_hooks
from .maths import as_heads
from .mode import AttentionMode
from .records import AttentionCall, Frame

__all__ = ["AttentionCall", "AttentionCapture", "attention_modules", "capture_attention"]

_TRIED = (
    "gradlens captures attention computed by F.scaled_dot_product_attention (recomputed in "
    "its maths form), by nn.MultiheadAttention (F.multi_head_attention_forward), or as a "
    "softmax over the last dim of a 4-D (B, heads, N_query, N_key) tensor (eager attention)"
)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules gradlens treats as attention when no layers are named.

    Those are every ``nn.MultiheadAttention`` and every module whose class name contains
    ``"Attention"`` (case-insensitive): torchvision's ``MultiheadAttention``, timm's
    ``Attention``, Hugging Face's ``ViTAttention``, ``BertSelfAttention``, ``GPT2Attention``
    and so on. An attention module nested in another (``BertSelfAttention`` in
    ``BertAttention``) records its maps under its own, innermost name.

    Args:
        model: the model.

    Returns:
        ``{dotted name: module}`` in the order of ``model.named_modules()``; empty when the
        model has none.
    """
    return {
        name: module
        for name, module in named_modules(model).items()
        if isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()
    }


class AttentionCapture(Capture[AttentionCall]):
    """Record the attention probabilities of attention modules while the context is active.

    Example::

        with gradlens.capture_attention(model) as attention:
            model(x)
        attention.probs["blocks.0.attn"].shape     # (B, heads, N, N)

        with gradlens.capture_attention(model, grad=True) as attention:
            model(x)[:, 3].sum().backward()
        attention.gradients["blocks.0.attn"]       # d score / d probs, same shape

    Args:
        model: the model.
        layers: the attention modules to capture (names, glob patterns, types, filters;
            see :mod:`gradlens.selection`); ``None`` captures every module of
            :func:`attention_modules`. When the selection contains attention modules, only
            those are captured (``"blocks.0.*"`` means ``blocks.0.attn``); a selection
            without any (a transformer block of a model whose attention class is not
            recognised) captures the attention computed inside the selected modules.
        grad: keep the probabilities in the autograd graph so that their gradients can be
            taken: a ``backward()`` inside the block fills :attr:`gradients` (and
            :class:`~gradlens.Recorder` uses :meth:`graph_tensors` for ``rec.grad``).
            Probabilities computed without a tape (a frozen model, or the tape switched
            off, as ``Recorder(tape_from_layers=True)`` does) become leaves that require
            grad, and the tape runs from there; the grad mode of entry is restored on exit.
        stop_early: end the forward pass once every selected module has been captured
            (call the model inside the block: the block then ends there without an error).
        reduce: a function applied to each stored (detached) probabilities tensor as it is
            captured, e.g. ``lambda p: p[:, :, 0]`` to keep only the first query's row, or
            a copy to another device; gradients still refer to the full probabilities.
        restore_buffers: restore the model's buffers on exit (BatchNorm running statistics
            that train-mode forwards inside the block update), as the
            :class:`~gradlens.Recorder` does; see :func:`gradlens.core.buffers.preserve_buffers`.

    Raises:
        AttentionCaptureError: ``layers=None`` and the model has no attention module
            (raised at construction); while the model runs inside the block, a selected
            module ran but none of its attention could be captured (a flash or flex
            attention kernel, a custom operator), or, with ``layers=None``, attention ran
            outside every attention module.
        LayerNotFoundError: a layer spec selects nothing (raised at construction).
    """

    _what = "captured"

    def __init__(
        self,
        model: nn.Module,
        layers: Layers | None = None,
        *,
        grad: bool = False,
        stop_early: bool = False,
        reduce: Callable[[Tensor], Tensor] | None = None,
        restore_buffers: bool = True,
    ) -> None:
        check_model(model)
        super().__init__()
        self.model = model
        self.grad = grad
        self.stop_early = stop_early
        self.reduce = reduce
        self.restore_buffers = restore_buffers
        self._buffer_guard = ExitStack()
        found = attention_modules(model)
        if layers is None:
            if not found:
                raise AttentionCaptureError(
                    f"{type(model).__name__} has no attention module: gradlens looks for "
                    "nn.MultiheadAttention and modules whose class name contains "
                    "'Attention'. If attention is computed inside another module, name "
                    "that module with layers=... (gradlens.layers(model) lists them)"
                )
            self.modules = found
        else:
            chosen = select_layers(model, layers)
            # a spec that spans a range of layers ("blocks.0.*") means the attention among
            # them; one that selects no attention module names where attention is computed
            self.modules = {n: m for n, m in chosen.items() if n in found} or chosen
        self._select_all = layers is None
        everything = named_modules(model)
        self._tracked = {n: m for n, m in everything.items() if n in found or n in self.modules}
        self._calls: list[AttentionCall] = []
        self._frames: list[Frame] = []
        self._covered: set[str] = set()
        self._hooks = HookSet()
        self._tensor_hooks = HookSet()
        self._mode: AttentionMode | None = None
        self._fastpath = True
        self._entry_grad_mode = True
        self._tape_started = False
        self._collect = True
        self._mha_weights: list[Tensor] | None = None  # collects weights inside MHA

    # -- context management -------------------------------------------------------------

    def __enter__(self) -> AttentionCapture:
        result: AttentionCapture = super().__enter__()
        return result

    def _open(self) -> None:
        self._calls = []
        self._frames = []
        self._covered = set()
        self._entry_grad_mode = torch.is_grad_enabled()
        self._tape_started = False
        # The fast path of nn.TransformerEncoderLayer / nn.MultiheadAttention calls a
        # fused kernel without running the module's Python code.
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        if self.restore_buffers:
            self._buffer_guard.enter_context(preserve_buffers(self.model))
        for name, module in self._tracked.items():
            selected = name in self.modules
            self._hooks.forward_pre(module, self._push_hook(name, selected))
            self._hooks.forward(module, self._pop_hook, always_call=True)
        torch.backends.mha.set_fastpath_enabled(False)
        padded_output_hooks(self.model, self._fastpath, self._hooks)
        self._mode = AttentionMode(self)
        self._mode.__enter__()

    def _close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        torch.backends.mha.set_fastpath_enabled(self._fastpath)
        self._hooks.remove()
        self._buffer_guard.close()
        if self._tape_started:
            torch.set_grad_enabled(self._entry_grad_mode)
        self._frames = []
        self._mha_weights = None
        self._tensor_hooks.remove()  # a backward after the block stores nothing
        for call in self._calls:
            call._live = None  # the graph is freed with the block

    # -- module tracking ----------------------------------------------------------------

    def _push_hook(self, name: str, selected: bool) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            self._frames.append(Frame(name, module, selected))

        return hook

    def _pop_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        # always_call: also runs when the forward raised (output is then None)
        while self._frames:
            frame = self._frames.pop()
            if frame.module is module:
                break
        else:
            return
        if output is None:
            return
        if frame.selected and not frame.produced:
            raise AttentionCaptureError(self._not_captured_message(frame))
        if self.stop_early and all(name in self._covered for name in self.modules):
            self._stop_forward()

    def _not_captured_message(self, frame: Frame) -> str:
        seen = ""
        if frame.uncaptured:
            kernels = ", ".join(dict.fromkeys(frame.uncaptured))
            seen = f"; it called {kernels}, which gradlens cannot read probabilities from"
        return (
            f"{type(frame.module).__name__} module {frame.name!r} ran, but no attention "
            f"probabilities could be captured from it{seen}. {_TRIED}. Use an attention "
            "implementation that goes through one of these (Hugging Face: "
            "attn_implementation='sdpa' or 'eager'; timm: fused_attn on or off both work), "
            "or leave this module out of layers=..."
        )

    def _target(self) -> Frame | None:
        """The innermost running selected module, which a capture now belongs to."""
        for frame in reversed(self._frames):
            if frame.selected:
                return frame
        return None

    # -- recording ----------------------------------------------------------------------

    def _record(self, target: Frame, probs: Tensor, kernel: str) -> Tensor:
        """Record ``probs`` for ``target``; returns the tensor the attention must go on with."""
        for frame in self._frames:
            frame.produced = True
            if frame.selected:
                self._covered.add(frame.name)
        live = as_heads(probs)
        if self.grad and not live.requires_grad and not torch.is_inference_mode_enabled():
            # no tape so far (frozen model, or switched off): it starts here
            live = live.detach().requires_grad_(True)
            if not torch.is_grad_enabled():
                torch.set_grad_enabled(True)
                self._tape_started = True
        call = AttentionCall(
            name=target.name,
            index=len(self._calls),
            probs=self.reduce(live.detach()) if self.reduce else live.detach(),
            kernel=kernel,
        )
        if self.grad and live.requires_grad:
            call._live = live
            self._tensor_hooks.tensor(live, self._gradient_hook(call))
        self._calls.append(call)
        return live if live.shape == probs.shape else live.view(probs.shape)

    def _gradient_hook(self, call: AttentionCall) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            if self._collect and self._active:
                call.gradient = grad.detach()

        return hook

    # -- gradients for Recorder.grad ----------------------------------------------------

    def graph_tensors(self) -> list[Tensor]:
        """The captured probabilities that are part of the autograd graph (``grad=True``),
        in capture order: differentiate a score with respect to these, then hand the
        results to :meth:`store_gradients`."""
        return [call._live for call in self._calls if call._live is not None]

    def store_gradients(self, gradients: Sequence[Tensor | None]) -> None:
        """Store gradients computed for :meth:`graph_tensors` (same order)."""
        calls = [call for call in self._calls if call._live is not None]
        for call, gradient in zip(calls, gradients):
            if gradient is not None:
                call.gradient = gradient.detach()

    def hooks_paused(self) -> AbstractContextManager[None]:
        """A context in which backward passes do not store gradients through the tensor
        hooks (for a caller that stores the results of ``torch.autograd.grad`` itself)."""
        return _PausedHooks(self)

    # -- reading records ----------------------------------------------------------------

    @property
    def probs(self) -> Mapping[str, Tensor]:
        """``{name: probabilities of the module's last call}``, in the order the modules
        were first captured; each ``(B, heads, N_query, N_key)``."""
        return _CallView(self, "probs")

    @property
    def gradients(self) -> Mapping[str, Tensor]:
        """``{name: gradient w.r.t. the last call's probabilities}`` (``grad=True``, after a
        backward); raises :class:`~gradlens.errors.GradientNotAvailableError` before."""
        return _CallView(self, "gradient")

    def calls(self, name: str | None = None) -> list[AttentionCall]:
        """Every capture, in order; only those of module ``name`` when it is given
        (a module that runs several times in one pass has several)."""
        if name is None:
            return list(self._calls)
        return list(self._calls_of(name))

    @property
    def covered(self) -> set[str]:
        """The selected modules that ran with attention captured inside them (by themselves
        or by an attention module nested in them)."""
        return set(self._covered)

    @property
    def names(self) -> list[str]:
        """The names of the modules captured so far, in the order of their first capture."""
        return list(dict.fromkeys(call.name for call in self._calls))

    def _records_named(self, name: str) -> list[AttentionCall]:
        return [call for call in self._calls if call.name == name]

    def _selected(self) -> list[str]:
        return list(self.modules)

    def _recorded(self) -> list[str]:
        return self.names

    def _not_run_message(self, name: str) -> str:
        return (
            f"{name!r} was selected, but no attention was captured under it: it did not run "
            "(or its attention was captured by an attention module nested inside it, "
            f"under that module's name: {', '.join(map(repr, self.names)) or 'none'})"
        )

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"AttentionCapture({type(self.model).__name__}, {len(self._calls)} maps, {state})"


class _PausedHooks(AbstractContextManager[None]):
    """Switches the tensor hooks of an AttentionCapture off for its duration."""

    def __init__(self, capture: AttentionCapture) -> None:
        self.capture = capture

    def __enter__(self) -> None:
        self.capture._collect = False

    def __exit__(self, *exc: Any) -> None:
        self.capture._collect = True


class _CallView(Mapping[str, Tensor]):
    """Read-only mapping ``name -> field of the last capture`` of an AttentionCapture."""

    def __init__(self, capture: AttentionCapture, attr: str) -> None:
        self._capture = capture
        self._attr = attr

    def __getitem__(self, name: str) -> Tensor:
        value: Tensor | None = getattr(self._capture._calls_of(name)[-1], self._attr)
        if value is None:
            raise GradientNotAvailableError(
                f"no gradient has reached the attention probabilities of {name!r}: capture "
                "with grad=True and run score.backward() (or Recorder.grad) inside the block "
                "first, with grad enabled for the forward"
            )
        return value

    def __iter__(self) -> Iterator[str]:
        names = self._capture.names
        if self._attr == "gradient":
            names = [n for n in names if self._capture._calls_of(n)[-1].gradient is not None]
        return iter(names)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"<attention {self._attr} of {list(self)}>"


def capture_attention(
    model: nn.Module,
    layers: Layers | None = None,
    *,
    grad: bool = False,
    stop_early: bool = False,
    reduce: Callable[[Tensor], Tensor] | None = None,
    restore_buffers: bool = True,
) -> AttentionCapture:
    """Create an :class:`AttentionCapture`: ``with gradlens.capture_attention(model) as a: ...``.

    Args:
        model: the model.
        layers: the attention modules to capture; ``None`` for all of them.
        grad: keep the probabilities in the autograd graph, for their gradients.
        stop_early: end the forward once every selected module has been captured.
        reduce: a function applied to each stored probabilities tensor.
        restore_buffers: restore the model's buffers on exit.

    Returns:
        The (not yet entered) :class:`AttentionCapture`.

    Raises:
        AttentionCaptureError: ``layers=None`` and the model has no attention module.
        LayerNotFoundError: a layer spec selects nothing.
    """
    return AttentionCapture(
        model,
        layers,
        grad=grad,
        stop_early=stop_early,
        reduce=reduce,
        restore_buffers=restore_buffers,
    )
