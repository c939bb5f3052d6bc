"""Replacing module outputs during a forward pass: :func:`replace_outputs`, and the edit
that puts a given tensor in an output's place, :class:`Replacement`.

While the context is active, each selected module's output is passed through an *edit*
``(name, module, output) -> new output`` and the model continues with what it returns:

    with replace_outputs(model, {"layer3": lambda name, module, out: out * 0}):
        ablated = model(x)              # layer4 and the head see zeros

    with replace_outputs(model, {"embed": Replacement(embeddings, once=True)}):
        logits = model(ids)             # the model runs on the given embeddings

Guided backpropagation (wrapping every ReLU output in a function with another backward),
layer integrated gradients (interpolated activations), per-token attributions (given
embeddings), Ablation-CAM (ablated copies of one call's output) and :func:`gradlens.patch`
(``replace``, ``zero``, ``resample``) are built on it. It uses the same hook core as the
:class:`~gradlens.Recorder` and composes with it: a Recorder entered *inside* the block
records the edited outputs, and its gradients are taken with respect to them; one entered
*outside* records the outputs before the edit. The hooks come off on exit, also when the
block raises, and the model is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from ..errors import InterventionError, OutputSelectionError
from .hooks import HookSet
from .lifecycle import Capture
from .output_selection import OutputSpec
from .pytree import flatten, selected_positions
from .selection import Layers, LayerSpec, in_model_order, select_layers

__all__ = [
    "Edit",
    "Edits",
    "Fit",
    "OutputReplacer",
    "Replacement",
    "fit_replacement",
    "replace_outputs",
]

Edit = Callable[[str, nn.Module, Any], Any]
"""``(name, module, output) -> new output``; returning ``None`` keeps the output."""

Edits = Union[Mapping[Union[LayerSpec, tuple[LayerSpec, ...]], Edit], Edit]
"""``{layer spec: edit}``, or one edit for the layers given as ``layers=``."""


class OutputReplacer(Capture[None]):
    """The context manager :func:`replace_outputs` returns (build it with that function,
    which resolves and checks the layer specs).

    Args:
        model: the model.
        modules: ``{name: module}`` of the modules to edit.
        edits: ``{name: edit}`` with an entry for each of ``modules``.
        select: as for :func:`replace_outputs`.

    Attributes:
        model: the model whose outputs are replaced.
        edits: ``{module name: edit}`` for every selected module, in model order.
        select: the ``select=`` spec(s) it was given.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Mapping[str, nn.Module],
        edits: Mapping[str, Edit],
        select: OutputSpec | Mapping[str, OutputSpec] = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.edits = {name: edits[name] for name in modules}
        self.select = select
        self._modules = dict(modules)
        self._hooks = HookSet()

    @property
    def names(self) -> list[str]:
        """The names of the modules whose outputs are replaced, in model order."""
        return list(self.edits)

    def __enter__(self) -> OutputReplacer:
        result: OutputReplacer = super().__enter__()
        return result

    def _open(self) -> None:
        for name, edit in self.edits.items():
            self._hooks.forward(self._modules[name], self._hook(name, edit))

    def _close(self) -> None:
        self._hooks.remove()

    def _hook(self, name: str, edit: Edit) -> Callable[[nn.Module, Any, Any], Any]:
        spec = self.select.get(name) if isinstance(self.select, Mapping) else self.select

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if spec is None:
                return edit(name, module, output)
            leaves, rebuild = flatten(output)
            positions = selected_positions(output, leaves, spec, name)
            chosen = leaves[positions[0]]
            new = edit(name, module, chosen)
            if new is None or new is chosen:
                return None
            for pos in positions:
                leaves[pos] = new
            return rebuild(leaves)

        return hook

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"OutputReplacer({type(self.model).__name__}, layers={self.names}, {state})"


def replace_outputs(
    model: nn.Module,
    edits: Edits,
    *,
    layers: Layers | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
) -> OutputReplacer:
    """Replace the outputs of selected modules while the returned context is active.

    Example::

        def zero_channel_3(name, module, output):
            output = output.clone()
            output[:, 3] = 0
            return output

        with gradlens.core.outputs.replace_outputs(model, {"layer4.1.conv2": zero_channel_3}):
            logits = model(x)

    Every call of a selected module is edited (a module shared by several blocks, each
    step of ``model.generate``). The edit may return a tensor of another shape or dtype
    if the rest of the model accepts it, and may be an ``autograd.Function`` application
    that changes only the backward pass. Only the hooks are undone on exit: buffers that
    train-mode forwards in the block update are the forwards' doing (wrap the block in
    :func:`gradlens.core.buffers.preserve_buffers` to undo them too).

    Args:
        model: the model.
        edits: ``{layer spec: edit}``, each key a layer spec of
            :mod:`gradlens.selection` (a name, glob pattern, module type, module or filter,
            or a tuple of them) and each edit a function ``(name, module, output) -> new
            output`` that gets the module's dotted name; or one edit for all modules
            selected by ``layers``. An edit that returns ``None`` keeps the output.
        layers: the modules a single edit applies to (only with a single edit).
        select: pick one tensor of a structured output (an index, a key, or a function
            returning one of the output's tensors; for all layers or as ``{name: spec}``):
            the edit then gets that tensor, and its result takes the tensor's place while
            the rest of the tuple, dict or dataclass is kept.

    Returns:
        A context manager (an :class:`OutputReplacer`); entering it registers the hooks,
        leaving it removes them, also when the block raises. It can be entered again
        after it was left.

    Raises:
        LayerNotFoundError: a layer spec selects nothing (raised here, not on entry).
        ValueError: two specs select the same module, or ``layers`` is missing (with a
            single edit) or superfluous (with a mapping).
        TypeError: an edit is not callable.
        OutputSelectionError: (during the forward) ``select`` names nothing in a
            module's output.
    """
    pairs: list[tuple[Any, Edit]]
    if isinstance(edits, Mapping):
        if layers is not None:
            raise ValueError(
                "layers= is for a single edit function; with a mapping, its keys say which "
                "layers each edit applies to"
            )
        pairs = list(edits.items())
    elif callable(edits):
        if layers is None:
            raise ValueError(
                "a single edit function needs layers= to say which modules it edits, e.g. "
                "replace_outputs(model, edit, layers=nn.ReLU); or pass {layer spec: edit}"
            )
        pairs = [(layers, edits)]
    else:
        raise TypeError(
            "edits must be {layer spec: edit function} or one edit function "
            f"(name, module, output) -> new output; got {type(edits).__name__}"
        )
    modules: dict[str, nn.Module] = {}
    by_name: dict[str, Edit] = {}
    spec_of: dict[str, Any] = {}
    for spec, edit in pairs:
        if not callable(edit):
            raise TypeError(
                f"the edit for {spec!r} must be a function (name, module, output) -> new "
                f"output; got {type(edit).__name__}"
            )
        for name, module in select_layers(model, spec).items():
            if name in by_name:
                raise ValueError(
                    f"layer {name!r} is selected by both {spec_of[name]!r} and {spec!r}; "
                    "give each module one edit (compose the two functions into one)"
                )
            modules[name], by_name[name], spec_of[name] = module, edit, spec
    ordered = in_model_order(model, modules)
    return OutputReplacer(model, ordered, by_name, select)


Fit = Literal["same", "rows", "broadcast"]
"""How a replacement must fit the output it stands for; see :class:`Replacement`."""


class Replacement:
    """An edit for :func:`replace_outputs` that puts a given tensor in place of a module's
    output.

    Example::

        embeddings = model.embed(ids).detach().requires_grad_()
        with replace_outputs(model, {"embed": Replacement(embeddings, once=True)}):
            logits = model(ids)         # every layer after "embed" sees ``embeddings``
        logits.sum().backward()         # and ``embeddings.grad`` is filled

    How ``value`` must fit the output (``fit``; see :func:`fit_replacement`):

    * ``"same"``: the output's shape, dtype and device. ``value`` itself takes the
      output's place, so a gradient reaches it when it requires grad.
    * ``"rows"``: as ``"same"``, except that dim 0 (the batch) may differ: the layers after
      the module run on ``value``'s rows (e.g. many edited copies of one sample, with the
      layers before the module run once).
    * ``"broadcast"``: any shape that broadcasts to the output's. ``value`` is cast to the
      output's dtype and device and expanded into a new tensor, so that in-place operations
      of later layers change neither ``value`` nor the module's own output; a gradient
      still reaches ``value`` (summed over the broadcast dimensions).

    With ``select=`` on :func:`replace_outputs`, "the output" is the tensor ``select`` picks
    from a structured output, and the rest of the structure is kept.

    Args:
        value: the tensor that stands for the output.
        fit: ``"same"`` (default), ``"rows"`` or ``"broadcast"``, as above.
        call: replace only this call of the module, counted from 0 over the edit's life
            (for a module that runs several times per forward); the other calls keep their
            output. ``None`` (default): every call.
        once: the module may run only once while the edit is in use (one tensor cannot
            stand for two different outputs); a second call raises.
        hint: a sentence appended to the error messages: what the caller needs and how to
            fix it.

    Attributes:
        value, fit, call, once, hint: as given.
        calls: how many times the module has run with this edit (replaced or not); ``0``
            after a forward means the module did not run.

    Raises:
        TypeError: ``value`` is not a tensor.
        ValueError: an unknown ``fit`` or a negative ``call``.
        OutputSelectionError: (when called, in the forward) the output to replace is not
            one tensor (a structure, and no ``select=`` picked one of its tensors).
        InterventionError: (when called, in the forward) a second call with ``once``;
            ``value`` does not fit the output. Both errors are ``ValueError`` subclasses.
    """

    def __init__(
        self,
        value: Tensor,
        *,
        fit: Fit = "same",
        call: int | None = None,
        once: bool = False,
        hint: str = "",
    ) -> None:
        if not isinstance(value, Tensor):
            raise TypeError(f"a Replacement holds a tensor, got {type(value).__name__}")
        if fit not in ("same", "rows", "broadcast"):
            raise ValueError(f'fit must be "same", "rows" or "broadcast", got {fit!r}')
        if call is not None and call < 0:
            raise ValueError(f"call counts the module's calls from 0, got {call}")
        self.value = value
        self.fit: Fit = fit
        self.call = call
        self.once = once
        self.hint = hint
        self.calls = 0

    def __call__(self, name: str, module: nn.Module, output: Any) -> Any:
        """``value`` (fitted) for the output of layer ``name``, or ``None`` (keep the
        output) for a call other than ``call``."""
        self.calls += 1
        if self.once and self.calls > 1:
            raise InterventionError(
                _with_hint(
                    f"layer {name!r} runs more than once per forward pass, so one tensor "
                    "cannot stand for its output",
                    self.hint,
                )
            )
        if self.call is not None and self.calls - 1 != self.call:
            return None
        return fit_replacement(name, output, self.value, fit=self.fit, hint=self.hint)

    def __repr__(self) -> str:
        where = "" if self.call is None else f", call={self.call}"
        return (
            f"Replacement(shape={tuple(self.value.shape)}, dtype={self.value.dtype}, "
            f"fit={self.fit!r}{where}{', once' if self.once else ''})"
        )


def fit_replacement(
    name: str, output: Any, value: Tensor, *, fit: Fit = "same", hint: str = ""
) -> Tensor:
    """The tensor that takes the place of ``output``, layer ``name``'s output: ``value``,
    checked (and for ``"broadcast"`` cast and expanded) as :class:`Replacement` says.

    Args:
        name: the layer's name, for the messages.
        output: what the layer returned (or the tensor ``select=`` picked from it).
        value: the replacement.
        fit: ``"same"``, ``"rows"`` or ``"broadcast"`` (see :class:`Replacement`).
        hint: a sentence appended to the error messages.

    Returns:
        ``value`` itself for ``"same"`` and ``"rows"``; for ``"broadcast"`` a new tensor of
        ``output``'s shape, dtype and device.

    Raises:
        OutputSelectionError: ``output`` is not a tensor.
        InterventionError: ``value`` does not fit ``output``.
    """
    if not isinstance(output, Tensor):
        raise OutputSelectionError(
            _with_hint(
                f"layer {name!r} returned a {type(output).__name__}, not a tensor, so no one "
                "tensor can replace it (replace_outputs' select= picks one of its tensors)",
                hint,
            )
        )
    if fit == "broadcast":
        cast = value.to(device=output.device, dtype=output.dtype)
        if not _broadcasts(cast.shape, output.shape):
            raise InterventionError(
                _with_hint(
                    f"the value for layer {name!r} has shape {tuple(value.shape)}, which does "
                    f"not broadcast to the layer's output shape {tuple(output.shape)}",
                    hint,
                )
            )
        return cast.expand(output.shape).clone()
    shape, expected = tuple(value.shape), tuple(output.shape)
    if fit == "rows":
        shape, expected = shape[1:], expected[1:]
    if value.ndim != output.ndim or shape != expected:
        except_batch = ", which differs beyond dim 0 (the batch)" if fit == "rows" else ""
        raise InterventionError(
            _with_hint(
                f"layer {name!r} returned shape {tuple(output.shape)}, and the tensor "
                f"replacing it has shape {tuple(value.shape)}{except_batch}",
                hint,
            )
        )
    if value.dtype != output.dtype or value.device != output.device:
        raise InterventionError(
            _with_hint(
                f"layer {name!r} returned {output.dtype} on {output.device}, and the tensor "
                f"replacing it is {value.dtype} on {value.device}",
                hint,
            )
        )
    return value


def _with_hint(message: str, hint: str) -> str:
    return f"{message}; {hint}" if hint else message


def _broadcasts(source: torch.Size, target: torch.Size) -> bool:
    try:
        return bool(torch.broadcast_shapes(source, target) == target)
    except RuntimeError:
        return False
