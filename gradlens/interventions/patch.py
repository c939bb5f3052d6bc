"""Run a model with edited layer outputs: :func:`patch`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Union

from torch import Tensor, nn

from ..core.buffers import preserve_buffers
from ..core.checks import entry_point
from ..core.output_selection import OutputSpec
from ..core.outputs import replace_outputs
from ..core.selection import LayerSpec, select_layers
from ..errors import LayerNotExecutedError
from .edits import Edit, as_edit

__all__ = ["patch", "EditSpec"]

EditSpec = Union[Edit, Tensor, Callable[[Any], Any]]
"""A tensor (the new output), a function ``output -> new output``, or a
:mod:`gradlens.edits` helper."""


@contextmanager
@entry_point
def patch(
    model: nn.Module,
    edits: Mapping[LayerSpec | tuple[LayerSpec, ...], EditSpec],
    *,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
) -> Iterator[nn.Module]:
    """Run every forward of ``model`` inside the block with the given layer outputs edited.

    Example::

        with gradlens.patch(model, {"layer3": gradlens.edits.zero()}):
            ablated = model(images)                  # layer3's output is all zeros
        with gradlens.patch(lm, {"transformer.h.4": gradlens.edits.add(vector, 8.0)}):
            steered = lm.generate(ids, max_new_tokens=20)

    Every call of an edited module inside the block is edited, in any forward: a plain
    call, each step of ``model.generate(...)``, a backward through the edited forward.
    The edits are output-replacing hooks (:func:`gradlens.core.outputs.replace_outputs`), so
    they compose with :func:`gradlens.record` entered *inside* the block: a record of a
    later layer sees the edited forward and its gradients, and a record of an edited
    layer stores the edited value (its gradient is the gradient with respect to the
    edited value). A record entered *outside* the block stores an edited layer's output
    as the module computed it, before the edit.

    Args:
        model: the model.
        edits: ``{layer selection: edit}``. A key is anything :func:`gradlens.select_layers`
            accepts (a name, a glob pattern, a module type, a module, a filter, or a tuple
            of them); every module it selects gets the edit. A value is

            - a tensor: the new output; it must broadcast to the output's shape;
            - a function ``output -> new output``, called with the layer's output (the
              tensor ``select`` picks; without ``select``, the module's output as it is,
              possibly a tuple) and returning what the rest of the model receives;
            - a :mod:`gradlens.edits` helper: ``zero()``, ``mean(over=(0,))``,
              ``add(vector, scale)``, ``replace(value, positions=...)``,
              ``resample(activations)``.

            When several keys select the same module, their edits apply in the order of
            ``edits``.
        select: for modules returning a structure (tuple, dict, ``ModelOutput``): which
            tensor the edit sees and replaces (an index, a key or a function returning one
            of the structure's tensors), for all layers or as ``{name: spec}``; the rest of
            the structure is passed on unchanged.

    Yields:
        ``model``, for ``with gradlens.patch(model, edits) as patched: patched(x)``.

    Raises:
        LayerNotFoundError: a key selects no module (raised on entry).
        TypeError: a value is not an edit.
        InterventionError: (in the forward) a tensor does not broadcast to the output --
            the message names both shapes -- or a position is out of range.
        OutputSelectionError: (in the forward) a helper or tensor edit meets a structured
            output and ``select`` does not pick one of its tensors.
        LayerNotExecutedError: (on leaving the block without another error) an edited layer
            never ran inside it, so its edit did nothing.

    Leaving the block removes every hook, also on error, and restores buffers that
    train-mode forwards inside it changed; the model's mode, ``requires_grad`` flags and
    parameter ``.grad`` are never touched (a backward you run inside the block is yours).
    """
    plan = _plan(model, edits)
    calls = dict.fromkeys(plan, 0)

    def edit_output(name: str, module: nn.Module, output: Any) -> Any:
        calls[name] += 1
        for edit in plan[name]:
            output = edit(name, output)
        return output

    with (
        preserve_buffers(model),
        replace_outputs(model, dict.fromkeys(plan, edit_output), select=select),
    ):
        yield model
    never = [name for name, count in calls.items() if count == 0]
    if never:
        raise LayerNotExecutedError(
            f"gradlens.patch edited {', '.join(map(repr, never))}, which never ran inside "
            "the block, so the edit changed nothing (is the module used by the model's "
            "forward()? did the block call the model?)"
        )


def _plan(
    model: nn.Module, edits: Mapping[LayerSpec | tuple[LayerSpec, ...], EditSpec]
) -> dict[str, list[Edit]]:
    """``{module name: [edits in order]}`` in the model's order."""
    plan: dict[str, list[Edit]] = {}
    for key, value in edits.items():
        edit = as_edit(value)
        spec = list(key) if isinstance(key, tuple) else key
        for name in select_layers(model, spec):
            plan.setdefault(name, []).append(edit)
    order = list(select_layers(model, list(plan)))
    return {name: plan[name] for name in order}
