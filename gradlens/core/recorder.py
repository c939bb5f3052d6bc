"""The capture engine: :class:`Recorder` and :func:`record`.

Every gradlens method that needs activations or gradients gets them from a Recorder.
A Recorder is a context manager that, while active, hooks the selected modules of a model
and records for every call of each module:

* its output (the *activation*), as the module produced it -- in-place operations that
  run later (``ReLU(inplace=True)``, ``out += identity``) cannot change the record,
  because the module's consumers receive a clone while the record keeps the original;
* optionally its inputs;
* the gradient of a score with respect to that output, either from a ``backward()``
  the user runs inside the block (captured by a tensor hook on the recorded output),
  or from :meth:`Recorder.grad`, which calls :func:`torch.autograd.grad` with respect to
  the recorded outputs only (no parameter gradient is computed or stored).

Its hooks (module hooks, and tensor hooks on recorded outputs and watched tensors) are
registered through ``gradlens.core.hooks.HookSet`` and all come off on exit, also when the
block raises; buffers changed by train-mode forwards inside the block are restored with
:func:`gradlens.core.buffers.preserve_buffers` (``restore_buffers=True``). Replacing module
outputs is the job of :func:`gradlens.core.outputs.replace_outputs`, on the same hook core.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import (
    GradientNotAvailableError,
    InPlaceBackwardHookError,
    LayerNotExecutedError,
    NotRecordedError,
    RecorderStateError,
)
from .batched_grad import batched_grad
from .buffers import preserve_buffers
from .checks import check_model
from .hooks import HookSet
from .lifecycle import Capture, StopForward
from .output_selection import OutputSpec
from .parameters import parameters_without_grad
from .pytree import flatten, partial_rebuild, selected_positions
from .selection import Layers, select_layers

if TYPE_CHECKING:
    from .attention.capture import AttentionCapture

__all__ = ["Call", "Recorder", "record"]


@dataclass
class Call:
    """What was recorded for one call of one module.

    Attributes:
        name: the module's dotted name.
        index: the order in which this call finished among all recorded calls (0, 1, ...).
        activation: the output as stored (detached, reduced, moved, cast as the Recorder
            was told); a tensor, or the module's tuple/dict/dataclass with stored tensors.
        inputs: the positional inputs (detached copies) when ``inputs=True``, else ``None``.
        gradient: the gradient of the last score with respect to the output, same
            structure as ``activation`` (``None`` where no gradient reached); for a
            ``(B, K)`` score each gradient has a leading dimension ``K``.
        input_gradient: gradients with respect to the inputs (``backward_hooks=True`` only).
    """

    name: str
    index: int
    activation: Any
    inputs: tuple[Any, ...] | None = None
    gradient: Any = None
    input_gradient: Any = None
    _live: list[Tensor | None] = field(default_factory=list, repr=False)
    _rebuild: Callable[[list[Any]], Any] | None = field(default=None, repr=False)
    _grads: list[Tensor | None] = field(default_factory=list, repr=False)

    def _set_gradient(self, position: int, grad: Tensor) -> None:
        if len(self._grads) != len(self._live):
            self._grads = [None] * len(self._live)
        self._grads[position] = grad
        self.gradient = self._rebuild(self._grads) if self._rebuild else self._grads[0]


class Recorder(Capture[Call]):
    """Record activations and gradients of selected modules while the context is active.

    Example::

        with gradlens.record(model, ["layer4"]) as rec:
            out = model(x)
            rec.grad(out[:, 3])            # d out[b, 3] / d layer4, per sample
        rec["layer4"].shape, rec.gradients["layer4"].shape

    Args:
        model: the model to hook.
        layers: which modules to record (names, glob patterns, types, filters; see
            :mod:`gradlens.selection`); ``None`` records no module (use :meth:`watch`).
        inputs: also store each call's positional inputs.
        detach: store detached tensors (default). With ``False`` the stored activations
            stay attached to the autograd graph (as :class:`~gradlens.Extractor` needs).
        device: move stored tensors there (e.g. ``"cpu"`` to offload GPU activations).
        dtype: cast stored floating-point tensors to this dtype.
        reduce: a function applied inside the hook to every stored activation and
            gradient tensor (e.g. ``lambda t: t.mean((2, 3))`` to keep only pooled
            features); gradients are still taken with respect to the full output.
        select: pick one tensor of a structured module output (an index, a key, or a
            function returning one of the output's tensors), for all layers or as a
            dict ``{name: spec}``; only that tensor is recorded.
        tape_from_layers: run the forward without an autograd tape until the first
            selected layer has run, and start the tape there: that layer's output becomes
            a leaf requiring grad. Gradients with respect to recorded activations then
            cost a backward through the rest of the network only, and the model and
            input need not require grad. The grad mode in force before is restored when
            the model's forward returns, and on exit.
        backward_hooks: capture gradients with ``register_full_backward_hook`` instead
            of tensor hooks, which also gives gradients with respect to each module's
            inputs (``rec.input_gradients``). PyTorch cannot hook a module whose input or
            output is modified in place (``ReLU(inplace=True)``, ``out += identity``):
            such modules raise :class:`~gradlens.errors.InPlaceBackwardHookError`.
        stop_early: end the forward pass as soon as every selected layer has run once
            (use :meth:`forward`, or call the model inside the block: the block then ends
            there without an error). The stop passes through ``except Exception`` clauses
            and through other Recorders' ``forward`` and blocks, up to this Recorder.
        restore_buffers: restore the model's buffers on exit (BatchNorm running
            statistics that train-mode forwards inside the block updated), with
            :func:`gradlens.core.buffers.preserve_buffers`.
        attention: also capture attention probabilities, whatever kernel computes them
            (see :mod:`gradlens.attention`): ``True`` for every attention module, or a layer
            spec selecting some. They are read from :attr:`attentions`, and their
            gradients, after ``backward()`` or :meth:`grad` (with the ``K`` leading
            dimension of ``(B, K)`` scores), from :attr:`attention_gradients`; ``reduce``,
            ``device`` and ``dtype`` do not apply to them. Probabilities computed without a
            tape (``tape_from_layers``, a frozen model) start the tape.
        parameter_grads: keep the model's parameters on the autograd tape (default), so
            that a ``backward()`` run inside the block fills their ``.grad`` as usual. With
            ``False`` their ``requires_grad`` is switched off while the block runs and back
            on when it ends, also on an exception or an early stop (frozen parameters stay
            frozen; see :func:`gradlens.core.parameters.parameters_without_grad`): autograd
            then keeps no layer inputs for parameter gradients, which lowers the memory of
            the forward, and the gradients with respect to recorded activations and
            watched tensors are the same. Something before the score must then require
            grad -- a watched input, or the first recorded layer with ``tape_from_layers``
            -- as for a frozen model. gradlens' gradient methods record this way.

    Raises:
        LayerNotFoundError: a layer spec selects nothing (raised at construction).
        AttentionCaptureError: ``attention=True`` and the model has no attention module
            (raised at construction), or an attention module's attention could not be
            captured.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Layers | None = None,
        *,
        inputs: bool = False,
        detach: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        reduce: Callable[[Tensor], Any] | None = None,
        select: OutputSpec | Mapping[str, OutputSpec] = None,
        tape_from_layers: bool = False,
        backward_hooks: bool = False,
        stop_early: bool = False,
        restore_buffers: bool = True,
        attention: bool | Layers = False,
        parameter_grads: bool = True,
    ) -> None:
        check_model(model)
        super().__init__()
        self.model = model
        self.modules = select_layers(model, layers) if layers is not None else {}
        self.record_inputs = inputs
        self.detach = detach
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.reduce = reduce
        self.select = select
        self.tape_from_layers = tape_from_layers
        self.backward_hooks = backward_hooks
        self.stop_early = stop_early
        self.restore_buffers = restore_buffers
        self.parameter_grads = parameter_grads
        self._calls: dict[str, list[Call]] = {}
        self._hooks = HookSet()
        self._session: object | None = None  # a new token per entry; hooks check theirs
        self._counter = itertools.count()
        self._collect_hook_grads = True
        self._grad_mode_stack: list[bool] = []
        self._entry_grad_mode = True
        self._guards = ExitStack()  # restore the model's buffers / requires_grad on exit
        self._pending_backward: dict[str, list[Call]] = {}
        self._pending_inputs: dict[str, list[tuple[Any, ...]]] = {}
        self._attention: AttentionCapture | None = None
        if attention is not False and attention is not None:
            from .attention.capture import AttentionCapture  # the attention package uses methods

            spec = None if attention is True else attention
            # the Recorder restores the buffers itself (or not: restore_buffers=False)
            self._attention = AttentionCapture(model, spec, grad=True, restore_buffers=False)

    # -- context management -------------------------------------------------------------

    def __enter__(self) -> Recorder:
        result: Recorder = super().__enter__()
        return result

    def _open(self) -> None:
        self._entry_grad_mode = torch.is_grad_enabled()
        if self.backward_hooks:
            inplace = [n for n, m in self.modules.items() if getattr(m, "inplace", False)]
            if inplace:
                raise InPlaceBackwardHookError(
                    f"backward_hooks=True cannot hook {', '.join(map(repr, inplace))}: "
                    "it works in place (inplace=True), which PyTorch's full backward hooks "
                    "do not allow; use the default tensor-hook capture (backward_hooks=False)"
                )
        self._calls = {name: [] for name in self.modules}
        self._pending_backward = {name: [] for name in self.modules}
        self._pending_inputs = {name: [] for name in self.modules}
        self._counter = itertools.count()
        self._grad_mode_stack = []
        self._session = object()
        if self.restore_buffers:
            self._guards.enter_context(preserve_buffers(self.model))
        if not self.parameter_grads:
            self._guards.enter_context(parameters_without_grad(self.model))
        for name, module in self.modules.items():
            if self.record_inputs:
                self._hooks.forward_pre(module, self._input_hook(name))
            self._hooks.forward(module, self._forward_hook(name))
            if self.backward_hooks:
                self._hooks.full_backward(module, self._backward_hook(name))
        if self.tape_from_layers:
            self._hooks.forward_pre(self.model, self._tape_off)
            self._hooks.forward(self.model, self._tape_restore)
        if self._attention is not None:
            self._attention.__enter__()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if super().__exit__(exc_type, exc, tb):
            return True
        if (
            self.backward_hooks
            and isinstance(exc, RuntimeError)
            and "BackwardHookFunction" in str(exc)
        ):
            raise InPlaceBackwardHookError(
                "a module recorded with backward_hooks=True had its input or output modified "
                "in place (e.g. ReLU(inplace=True) or 'out += identity' downstream), which "
                "PyTorch's full backward hooks cannot handle; record without "
                "backward_hooks (tensor hooks handle in-place operations)"
            ) from exc
        return False

    def _close(self) -> None:
        if self._attention is not None and self._attention._active:
            self._attention.__exit__(None, None, None)
        self._hooks.remove()
        if self.tape_from_layers:
            torch.set_grad_enabled(self._entry_grad_mode)
        self._guards.close()
        for calls in self._calls.values():
            for call in calls:
                call._live = [None] * len(call._live)
        self._pending_backward = {}
        self._pending_inputs = {}
        self._session = None

    # -- running the model --------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the model; with ``stop_early`` return ``None`` when the pass was cut short."""
        self._require_active("forward")
        try:
            return self.model(*args, **kwargs)
        except StopForward as stop:
            if stop.owner is not self:
                raise
            return None

    __call__ = forward

    def watch(self, name: str, tensor: Tensor) -> Tensor:
        """Record an arbitrary tensor (a model input, a value computed in the block).

        Its gradient is then captured like a layer's (by ``backward()`` or :meth:`grad`).
        Returns ``tensor`` unchanged. The tensor must require grad for a gradient to exist.
        """
        self._require_active("watch")
        call = self._new_call(name)
        call._rebuild = None
        call._live = [tensor if tensor.requires_grad else None]
        call.activation = self._stored(tensor, copy_if_shared=False)
        if tensor.requires_grad:
            self._hooks.tensor(tensor, self._grad_hook(call, 0))
        return tensor

    # -- hooks --------------------------------------------------------------------------

    def _tape_off(self, module: nn.Module, args: Any) -> None:
        self._grad_mode_stack.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def _tape_restore(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._grad_mode_stack:
            torch.set_grad_enabled(self._grad_mode_stack.pop())

    def _input_hook(self, name: str) -> Callable[[nn.Module, Any], None]:
        # inputs are copied before the module runs: it may modify them in place
        def hook(module: nn.Module, args: Any) -> None:
            self._pending_inputs[name].append(
                tuple(
                    self._stored(a, copy_if_shared=True) if isinstance(a, Tensor) else a
                    for a in args
                )
            )

        return hook

    def _forward_hook(self, name: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            output = self._record_call(name, args, output)
            if self.stop_early and all(self._calls[n] for n in self.modules):
                self._stop_forward()
            return output

        return hook

    def _record_call(self, name: str, args: Any, output: Any) -> Any:
        leaves, rebuild = flatten(output)
        spec = self.select.get(name) if isinstance(self.select, Mapping) else self.select
        positions = selected_positions(output, leaves, spec, name)
        call = self._new_call(name)
        if self.record_inputs and self._pending_inputs[name]:
            call.inputs = self._pending_inputs[name].pop()
        new_leaves = list(leaves)
        stored: list[Any] = []
        live: list[Tensor | None] = []
        for pos in positions:
            tensor = leaves[pos]
            if self.tape_from_layers and tensor.is_floating_point() and not tensor.requires_grad:
                torch.set_grad_enabled(True)  # the tape starts here
                tensor = tensor.detach().requires_grad_(True)
                new_leaves[pos] = tensor
            if tensor.requires_grad:
                # Consumers get a clone, so the recorded tensor (and hence the stored
                # value and the gradient taken w.r.t. it) is immune to later in-place ops.
                with torch.enable_grad():
                    new_leaves[pos] = tensor.clone()
                self._hooks.tensor(tensor, self._grad_hook(call, len(live)))
                stored.append(self._stored(tensor, copy_if_shared=False))
                live.append(tensor)
            else:
                stored.append(self._stored(tensor, copy_if_shared=True))
                live.append(None)
        call._live = live
        if spec is not None:
            call.activation = stored[0]
            call._rebuild = None
        else:
            # rebuild records from a skeleton without tensors, so that no closure keeps
            # the module's live outputs (and their graph) alive after the block
            skeleton = [None if isinstance(leaf, Tensor) else leaf for leaf in leaves]
            _, skeleton_rebuild = flatten(rebuild(skeleton))
            call._rebuild = partial_rebuild(skeleton_rebuild, skeleton, positions)
            call.activation = call._rebuild(stored)
        if self.backward_hooks:
            self._pending_backward[name].append(call)
        if any(a is not b for a, b in zip(new_leaves, leaves)):
            return rebuild(new_leaves)
        return output

    def _grad_hook(self, call: Call, position: int) -> Callable[[Tensor], None]:
        session = self._session

        def hook(grad: Tensor) -> None:
            if session is self._session and self._collect_hook_grads and not self.backward_hooks:
                call._set_gradient(position, self._stored(grad, copy_if_shared=False))

        return hook

    def _backward_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        session = self._session

        def hook(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
            # PyTorch picks a forward's full backward hooks when the forward runs, so this
            # may fire after exit, or in a later session of this Recorder: then it does nothing
            pending = self._pending_backward.get(name)
            if session is not self._session or not pending or not self._collect_hook_grads:
                return
            call = pending.pop()
            for pos, g in enumerate(grad_output[: len(call._live)]):
                if g is not None:
                    call._set_gradient(pos, self._stored(g, copy_if_shared=False))
            call.input_gradient = tuple(
                self._stored(g, copy_if_shared=False) if isinstance(g, Tensor) else g
                for g in grad_input
            )

        return hook

    def _new_call(self, name: str) -> Call:
        call = Call(name=name, index=next(self._counter), activation=None)
        self._calls.setdefault(name, []).append(call)
        return call

    def _stored(self, tensor: Tensor, *, copy_if_shared: bool) -> Any:
        """The stored form of ``tensor``: reduced, detached, moved, cast -- never aliasing
        a tensor that may still be modified in place when ``copy_if_shared``."""
        value = self.reduce(tensor) if self.reduce is not None else tensor
        if not isinstance(value, Tensor):
            return value
        if self.detach:
            value = value.detach()
        dtype = self.dtype if (self.dtype is not None and value.is_floating_point()) else None
        if self.device is not None or dtype is not None:
            value = value.to(device=self.device, dtype=dtype)
        if value.is_inference():
            # records are ordinary tensors, usable by autograd after the block
            with torch.inference_mode(False):
                value = value.clone()
        elif copy_if_shared and _shares_storage(value, tensor):
            value = value.clone()
        return value

    # -- gradients ----------------------------------------------------------------------

    def grad(self, score: Tensor, *, retain_graph: bool = False) -> dict[str, Any]:
        """Gradients of ``score`` with respect to the recorded activations, and only those.

        Args:
            score: a scalar; or a per-sample score of shape ``(B,)`` (its sum is
                differentiated, which gives each sample's own gradient when samples do
                not interact, as in eval mode); or ``(B, K)`` for ``K`` scores per sample,
                differentiated in one batched backward -- each gradient then has a
                leading dimension ``K``. A backward that cannot be batched falls back to
                ``K`` backwards; for that the batched backward keeps the graph (see
                :func:`gradlens.core.batched_grad.batched_grad`).
            retain_graph: keep the graph for another backward.

        Returns:
            ``{name: gradient of the last call}``; every call's gradient is also stored
            (``rec.gradients``, ``rec.calls(name)[i].gradient``).

        Raises:
            LayerNotExecutedError: no recorded activation is part of the score's graph
                and a selected layer did not run (named in the message).
            GradientNotAvailableError: ``score`` has another shape, or no recorded
                activation is part of its autograd graph although every layer ran.
            RecorderStateError: called outside the ``with`` block.
        """
        self._require_active("grad")
        if not isinstance(score, Tensor) or score.ndim > 2:
            shape = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
            raise GradientNotAvailableError(
                f"score must be a scalar, a per-sample score of shape (B,) or (B, K); got {shape}. "
                "Reduce it first, e.g. output[:, class_index] or output.sum()"
            )
        entries = [
            (call, pos, t)
            for calls in self._calls.values()
            for call in calls
            for pos, t in enumerate(call._live)
            if t is not None
        ]
        attention = self._attention.graph_tensors() if self._attention is not None else []
        if not (entries or attention) or not score.requires_grad:
            not_run = [name for name in self.modules if not self._calls[name]]
            if not_run:
                raise LayerNotExecutedError(
                    f"cannot differentiate with respect to {_names(not_run)}: selected but "
                    "did not run during the forward pass (is it used by the model's "
                    "forward() for this input? was the pass stopped early?)"
                )
            raise GradientNotAvailableError(
                "no recorded activation is part of the score's autograd graph: the forward "
                "ran without grad (torch.no_grad / inference_mode, a frozen model and an "
                "input without requires_grad?). Record with tape_from_layers=True, or "
                "enable grad for the forward"
            )
        tensors = [t for _, _, t in entries]
        self._collect_hook_grads = False
        try:
            if self._attention is not None:
                with self._attention.hooks_paused():
                    grads = batched_grad(score, tensors + attention, retain_graph=retain_graph)
                self._attention.store_gradients(grads[len(tensors) :])
            else:
                grads = batched_grad(score, tensors, retain_graph=retain_graph)
        finally:
            self._collect_hook_grads = True
        for (call, pos, _), g in zip(entries, grads):
            if g is not None:
                call._set_gradient(pos, self._stored(g, copy_if_shared=False))
        return {name: calls[-1].gradient for name, calls in self._calls.items() if calls}

    # -- reading records ----------------------------------------------------------------

    @property
    def activations(self) -> _RecordView:
        """``{name: activation of the module's last call}`` (see :class:`Call`)."""
        return _RecordView(self, "activation")

    @property
    def gradients(self) -> _RecordView:
        """``{name: gradient w.r.t. the module's last output}``; raises
        :class:`~gradlens.errors.GradientNotAvailableError` before any backward."""
        return _RecordView(self, "gradient")

    @property
    def inputs(self) -> _RecordView:
        """``{name: positional inputs of the last call}``; raises
        :class:`~gradlens.errors.NotRecordedError` without ``inputs=True``."""
        return _RecordView(self, "inputs")

    @property
    def input_gradients(self) -> _RecordView:
        """``{name: gradients w.r.t. the last call's inputs}``; raises
        :class:`~gradlens.errors.NotRecordedError` without ``backward_hooks=True``."""
        return _RecordView(self, "input_gradient")

    @property
    def attentions(self) -> Mapping[str, Tensor]:
        """``{attention module name: probabilities (B, heads, N_query, N_key)}`` of each
        module's last call, in execution order (``attention=`` only)."""
        return self._attention_capture().probs

    @property
    def attention_gradients(self) -> Mapping[str, Tensor]:
        """``{attention module name: gradient w.r.t. the last call's probabilities}``, after
        ``backward()`` or :meth:`grad` (``attention=`` only)."""
        return self._attention_capture().gradients

    def _attention_capture(self) -> AttentionCapture:
        if self._attention is None:
            raise RecorderStateError(
                "this Recorder does not capture attention: create it with attention=True "
                "(or attention=<layer spec>)"
            )
        return self._attention

    def __getitem__(self, name: str) -> Any:
        return self.activations[name]

    def calls(self, name: str) -> list[Call]:
        """Every recorded call of a module, in call order (shared modules, loops, RNN cells)."""
        return list(self._calls_of(name))

    def all_calls(self) -> list[Call]:
        """Every recorded call of every module, in the order the calls finished."""
        return sorted((c for calls in self._calls.values() for c in calls), key=lambda c: c.index)

    @property
    def names(self) -> list[str]:
        """The selected layer names, in model order."""
        return list(self.modules)

    def _records_named(self, name: str) -> list[Call]:
        return self._calls.get(name, [])

    def _selected(self) -> list[str]:
        return list(self.modules)

    def _recorded(self) -> list[str]:
        return [name for name, calls in self._calls.items() if calls]

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"Recorder({type(self.model).__name__}, layers={list(self.modules)}, {state})"


class _RecordView(Mapping[str, Any]):
    """Read-only mapping ``name -> field of the last call`` over a Recorder's records."""

    def __init__(self, recorder: Recorder, attr: str) -> None:
        self._recorder = recorder
        self._attr = attr

    def __getitem__(self, name: str) -> Any:
        recorder = self._recorder
        call = recorder._calls_of(name)[-1]
        if self._attr == "inputs" and not recorder.record_inputs:
            raise NotRecordedError(
                f"the inputs of {name!r} were not recorded: record with inputs=True "
                f"(gradlens.record(model, {name!r}, inputs=True))"
            )
        if self._attr == "input_gradient" and not recorder.backward_hooks:
            raise NotRecordedError(
                f"gradients with respect to the inputs of {name!r} are only recorded with "
                "backward_hooks=True (full backward hooks); for the model's own inputs, "
                "rec.watch() them instead"
            )
        value = getattr(call, self._attr)
        if value is None and self._attr in ("gradient", "input_gradient"):
            raise GradientNotAvailableError(
                f"no gradient has reached layer {name!r} yet: run score.backward() or "
                "rec.grad(score) inside the block first (and check that the score depends "
                "on this layer and the forward ran with grad enabled)"
            )
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name, calls in self._recorder._calls.items() if calls)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"<{self._attr}s of {list(self)}>"


def record(
    model: nn.Module,
    layers: Layers | None = None,
    *,
    inputs: bool = False,
    detach: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    reduce: Callable[[Tensor], Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    tape_from_layers: bool = False,
    backward_hooks: bool = False,
    stop_early: bool = False,
    restore_buffers: bool = True,
    attention: bool | Layers = False,
    parameter_grads: bool = True,
) -> Recorder:
    """Create a :class:`Recorder`: ``with gradlens.record(model, ["layer4"]) as rec: ...``.

    The arguments are the :class:`Recorder`'s, with the same defaults; it describes them
    in full.

    Args:
        model: the model to hook.
        layers: which modules to record (:mod:`gradlens.selection`); ``None`` records no
            module (use :meth:`Recorder.watch`).
        inputs: also store each call's positional inputs.
        detach: store detached tensors.
        device: move stored tensors there (e.g. ``"cpu"``).
        dtype: cast stored floating-point tensors to this dtype.
        reduce: a function applied inside the hook to every stored activation and gradient.
        select: pick one tensor of a structured module output, for all layers or per layer.
        tape_from_layers: start the autograd tape at the first selected layer.
        backward_hooks: capture gradients with full backward hooks (which also gives
            gradients with respect to each module's inputs).
        stop_early: end the forward pass as soon as every selected layer has run once.
        restore_buffers: restore the model's buffers on exit.
        attention: also capture attention probabilities (``True``, or a layer spec).
        parameter_grads: keep the parameters on the autograd tape (``False``: off it while
            the block runs, restored on exit; parameter gradients are then not available).

    Returns:
        The :class:`Recorder`, not yet entered.

    Raises:
        LayerNotFoundError, AttentionCaptureError: as :class:`Recorder`.
        TypeError: an option the :class:`Recorder` does not take.
    """
    return Recorder(
        model,
        layers,
        inputs=inputs,
        detach=detach,
        device=device,
        dtype=dtype,
        reduce=reduce,
        select=select,
        tape_from_layers=tape_from_layers,
        backward_hooks=backward_hooks,
        stop_early=stop_early,
        restore_buffers=restore_buffers,
        attention=attention,
        parameter_grads=parameter_grads,
    )


# -- helpers ---------------------------------------------------------------------------


def _names(names: list[str]) -> str:
    quoted = [repr(n) for n in names]
    if len(quoted) == 1:
        return f"layer {quoted[0]}"
    return f"layers {', '.join(quoted)}"


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return True
