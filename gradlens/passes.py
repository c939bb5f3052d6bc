"""The two model passes every method is built from.

* :func:`differentiate` -- one forward and one (batched) backward: runs the model under a
  :class:`~gradlens.Recorder`, turns the target into scores with
  :func:`gradlens.targets.scores` and takes gradients with :meth:`Recorder.grad`, so no
  gradient method holds hook code, target parsing or grad-mode handling of its own.
* :func:`clean_pass` -- one inference forward on the unmodified input that fixes the
  target (``None`` becomes each sample's top class), for methods that then evaluate the
  model on modified inputs (noise, interpolation, occlusion, masks, ablations) and for
  the metrics.

Both read the target first (:func:`gradlens.targets.parse.check_target`), before a hook is
registered or the model runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .core.buffers import preserve_buffers
from .core.inputs import Inputs, ModelInput
from .core.output_selection import OutputSpec
from .core.recorder import Recorder
from .core.selection import Layers
from .targets.parse import check_target, repeat_target
from .targets.scoring import Target, scores

__all__ = [
    "Differentiated",
    "differentiate",
    "CleanPass",
    "clean_pass",
]


@dataclass
class Differentiated:
    """The result of :func:`differentiate`.

    Attributes:
        output: the raw model output (detached).
        scores: the explained scores, ``(B,)`` or ``(B, K)`` (detached).
        classes: their class indices (same shape), or ``None`` for callable targets.
        activations: ``{layer: activation}`` of the recorded layers (last call, detached).
        gradients: ``{layer: d scores / d activation}``; shape ``activation.shape`` for
            ``(B,)`` scores and ``(K, *activation.shape)`` for ``(B, K)`` scores.
        inputs: the positional inputs as the model saw them (detached copies) when
            ``wrt_inputs``.
        input_gradients: gradients with respect to each floating-point positional input
            (``None`` for the others) when ``wrt_inputs``; shapes as for ``gradients``.
    """

    output: Any
    scores: Tensor
    classes: Tensor | None
    activations: dict[str, Any]
    gradients: dict[str, Any]
    inputs: tuple[Any, ...] = ()
    input_gradients: tuple[Tensor | None, ...] = ()


def differentiate(
    model: nn.Module,
    x: Inputs | ModelInput,
    target: Target = None,
    *,
    layers: Layers | None = None,
    wrt_inputs: bool = False,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    hooks: Sequence[AbstractContextManager[Any]] = (),
) -> Differentiated:
    """One forward pass and one (batched) backward, for the layers and/or the inputs.

    With ``layers`` and without ``wrt_inputs`` the autograd tape starts at the first
    recorded layer (``tape_from_layers``): the part of the network before it runs as
    plain inference. The parameters are off the tape (``parameter_grads=False``): autograd
    keeps no layer inputs for parameter gradients, and their ``requires_grad`` flags are
    back as they were when the pass ends, also when it raises. Works inside
    ``torch.no_grad()`` and ``torch.inference_mode()`` and on frozen models, and never
    touches parameter gradients.

    Args:
        model: the model.
        x: its input (a tuple for several positional inputs), or a parsed
            :class:`~gradlens.core.inputs.ModelInput`.
        target: see :mod:`gradlens.targets`.
        layers: layers whose activations and gradients to record.
        wrt_inputs: also differentiate with respect to the floating-point inputs.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model (not with a ``ModelInput``).
        select: picks one tensor of a layer's structured output.
        hooks: further context managers active during the pass (e.g.
            :func:`~gradlens.core.outputs.replace_outputs` contexts).

    Returns:
        A :class:`Differentiated`.

    Raises:
        LayerNotExecutedError: a selected layer exists but did not run in the forward pass.
        TargetError, OutputSelectionError: see :func:`gradlens.targets.scores`.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    target = check_target(target, inputs.batch_size)
    with torch.inference_mode(False), ExitStack() as stack:
        for extra in hooks:
            stack.enter_context(extra)
        recorder = stack.enter_context(
            Recorder(
                model,
                layers,
                select=select,
                tape_from_layers=layers is not None and not wrt_inputs,
                parameter_grads=False,
            )
        )
        args = inputs.args
        if wrt_inputs:
            args = tuple(
                a.detach().clone().requires_grad_(True)
                if isinstance(a, Tensor) and a.is_floating_point()
                else a
                for a in args
            )
            for i, a in enumerate(args):
                if isinstance(a, Tensor) and a.requires_grad:
                    recorder.watch(f"__input{i}__", a)
        with torch.enable_grad():
            call_args, call_kwargs = inputs.bind(args)
            out = recorder.forward(*call_args, **call_kwargs)
            for name in recorder.names:
                recorder.calls(name)  # a layer that never ran: LayerNotExecutedError naming it
            score, classes = scores(out, target, inputs.batch_size, output)
        recorder.grad(score)
        layer_names = recorder.names
        activations = {name: recorder.activations[name] for name in layer_names}
        gradients = {name: recorder.gradients[name] for name in layer_names}
        input_grads: tuple[Tensor | None, ...] = ()
        if wrt_inputs:
            input_grads = tuple(
                recorder.calls(f"__input{i}__")[-1].gradient
                if isinstance(a, Tensor) and a.requires_grad
                else None
                for i, a in enumerate(args)
            )
    return Differentiated(
        output=_detach(out),
        scores=score.detach(),
        classes=classes,
        activations=activations,
        gradients=gradients,
        inputs=tuple(_detach(a) for a in args) if wrt_inputs else (),
        input_gradients=input_grads,
    )


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


@dataclass
class CleanPass:
    """The result of :func:`clean_pass`.

    Attributes:
        target: the target with ``None`` replaced by each sample's top class on the clean
            input (``(B,)`` int64); class targets as ``(B,)`` or ``(B, K)`` int64 tensors;
            callable targets, and ``None`` for models with one output per sample, unchanged.
            Pass it to every later evaluation, so all explain the same classes.
        scores: the target's scores on every row of the input, ``(rows,)`` or
            ``(rows, K)`` (ordinary tensors, usable by autograd).
        classes: the class indices of ``target`` (``None`` where it is not classes).
        activations: ``{layer: output of its last call}`` of the recorded layers.
        calls: ``{layer: how many times it ran}``.
    """

    target: Target
    scores: Tensor
    classes: Tensor | None
    activations: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


def clean_pass(
    model: nn.Module,
    inputs: ModelInput,
    target: Target = None,
    *,
    output: OutputSpec = None,
    layers: Layers | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    copies: int = 1,
) -> CleanPass:
    """Fix the target on one inference forward of the clean input.

    Methods that evaluate the model on modified inputs explain the class predicted for
    the *original* input; this forward finds it, gives the target's scores, and records
    the layers the method needs. It runs under :func:`torch.inference_mode` and leaves
    the model's buffers as they were (:func:`gradlens.core.buffers.preserve_buffers`), so
    train-mode forwards do not move BatchNorm statistics.

    Args:
        model: the model.
        inputs: the input; with ``copies > 1``, ``copies`` inputs of ``B`` samples each
            stacked copy-major (e.g. the input and a baseline), of which the first is the
            clean one.
        target: see :mod:`gradlens.targets`; it refers to one copy.
        output: picks the logits out of a structured model output.
        layers: layers whose outputs to record (``None``: none, no hooks).
        select: picks one tensor of a layer's structured output.
        copies: the number of stacked copies in ``inputs``.

    Returns:
        A :class:`CleanPass`.

    Raises:
        TargetError, OutputSelectionError: see :func:`gradlens.targets.scores`.
        LayerNotExecutedError: a selected layer exists but did not run.
    """
    rows = inputs.batch_size
    batch = rows // copies
    target = check_target(target, batch)
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        stack.enter_context(preserve_buffers(model))
        recorder = None
        if layers is not None:
            recorder = stack.enter_context(
                Recorder(model, layers, select=select, restore_buffers=False)
            )
        out = inputs.call(model)
        if target is None and copies > 1:
            _, top = scores(out, None, rows, output)
            target = None if top is None else top[:batch]
        values, classes = scores(out, repeat_target(target, batch, copies), rows, output)
        activations: dict[str, Any] = {}
        calls: dict[str, int] = {}
        if recorder is not None:
            activations = {name: recorder.activations[name] for name in recorder.names}
            calls = {name: len(recorder.calls(name)) for name in recorder.names}
    if classes is not None:
        classes = classes[:batch].clone()
    return CleanPass(
        target=classes if classes is not None else target,
        scores=values.clone(),
        classes=classes,
        activations=activations,
        calls=calls,
    )
