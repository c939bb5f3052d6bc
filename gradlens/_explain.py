"""The one forward-and-differentiate step shared by every gradient method.

Methods (CAMs, saliency, integrated gradients, ...) call :func:`differentiate`, which runs
the model under a :class:`~gradlens.Recorder`, turns the target into scores with
:func:`gradlens.targets.scores` and takes gradients with :meth:`Recorder.grad` -- so no
method holds hook code, target parsing or grad-mode handling of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._inputs import Inputs, as_args, batch_size, prepare
from .errors import TargetError
from .recorder import Recorder
from .selection import Layers
from .targets import OutputSpec, Target, scores

__all__ = ["Differentiated", "differentiate", "top_classes", "check_target", "repeat_target"]


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
    x: Inputs,
    target: Target = None,
    *,
    layers: Layers | None = None,
    wrt_inputs: bool = False,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    hooks: Sequence[Recorder] = (),
) -> Differentiated:
    """One forward pass and one (batched) backward, for the layers and/or the inputs.

    With ``layers`` and without ``wrt_inputs`` the autograd tape starts at the first
    recorded layer (``tape_from_layers``): the part of the network before it runs as
    plain inference. Works inside ``torch.no_grad()`` and ``torch.inference_mode()``, on
    frozen models, and never touches parameter gradients or ``requires_grad`` flags.

    Args:
        model: the model.
        x: its input (a tuple for several positional inputs).
        target: see :mod:`gradlens.targets`.
        layers: layers whose activations and gradients to record.
        wrt_inputs: also differentiate with respect to the floating-point inputs.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.
        select: picks one tensor of a layer's structured output.
        hooks: further Recorders (e.g. output-modifying ones) active during the pass.

    Returns:
        A :class:`Differentiated`.
    """
    n = batch_size(x)
    with torch.inference_mode(False), ExitStack() as stack:
        args, kwargs = prepare(x, forward_kwargs)
        for extra in hooks:
            stack.enter_context(extra)
        recorder = stack.enter_context(
            Recorder(
                model, layers, select=select, tape_from_layers=layers is not None and not wrt_inputs
            )
        )
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
            out = recorder.forward(*args, **kwargs)
            score, classes = scores(out, target, n, output)
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
        inputs=tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        if wrt_inputs
        else (),
        input_gradients=input_grads,
    )


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


def top_classes(
    model: nn.Module,
    x: Inputs,
    target: Target,
    *,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Target:
    """``target`` itself, or for ``target=None`` the model's top class per sample on ``x``.

    Methods that evaluate the model on modified inputs (integrated gradients, SmoothGrad,
    occlusion, Score-CAM) explain the class predicted for the *original* input; this
    fixes it with one inference forward. Returns a ``(B,)`` int64 tensor for ``None``
    (``None`` stays ``None`` for models with one output per sample).
    """
    if target is not None:
        return target
    n = batch_size(x)
    # a Recorder without layers only restores the buffers a train-mode forward changes
    with torch.inference_mode(), Recorder(model):
        args, kwargs = as_args(x), dict(forward_kwargs or {})
        out = model(*args, **kwargs)
        _, classes = scores(out, None, n, output)
    return None if classes is None else classes.clone()


def check_target(target: Target, batch: int) -> Target:
    """Check the batch dimension of a per-sample target before inputs are tiled.

    Methods that evaluate stacked copies of the batch tile the target, so a target of the
    wrong length would otherwise be reported against the stacked batch size. Class
    ranges are checked later, by :func:`gradlens.targets.scores`.

    Returns:
        The target, with sequences turned into an int64 tensor.

    Raises:
        TargetError: ragged lists, or a first dimension that is not ``batch``.
    """
    if target is None or isinstance(target, (int, Tensor)) or callable(target):
        if isinstance(target, Tensor) and target.ndim > 0 and target.shape[0] != batch:
            raise TargetError(
                f"target has shape {tuple(target.shape)}; expected ({batch},) for one class "
                f"per sample or ({batch}, K) for K classes per sample"
            )
        return target
    try:
        as_tensor = torch.as_tensor(target, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(
            f"could not read target {target!r} as class indices: use None, an int, a "
            f"sequence of {batch} ints, {batch} lists of K ints, a tensor or a callable"
        ) from None
    return check_target(as_tensor, batch)


def repeat_target(target: Target, batch: int, times: int) -> Target:
    """The target for an input repeated ``times`` times along dim 0 (``x.repeat(times, ...)``):
    per-sample targets (checked against ``batch`` first) are tiled; ints, ``None`` and
    callables are unchanged."""
    target = check_target(target, batch)
    if target is None or isinstance(target, int) or callable(target):
        return target
    t = target
    if t.ndim == 0:
        return int(t)
    return t.repeat(times, *([1] * (t.ndim - 1)))
