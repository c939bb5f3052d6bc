"""Activation patching and attribution patching: which activations carry the behaviour.

:func:`activation_patching` runs the model on a *corrupted* input with one layer's
activation -- or one position of it -- taken from the *clean* input, for every layer and
position, and reports a metric of each patched output (Meng et al. 2022, causal tracing;
Wang et al. 2022). :func:`attribution_patching` estimates the same numbers to first order
with two forwards and one backward (Nanda 2023; Syed, Rager & Conmy 2023).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from ..core.buffers import preserve_buffers
from ..core.checks import check_inputs, entry_point
from ..core.chunks import check_batch_size, chunks, copies_per_chunk
from ..core.extract import extract
from ..core.inputs import Inputs, ModelInput, as_args, batch_size
from ..core.output_selection import OutputSpec
from ..core.pytree import flatten
from ..core.selection import Layers, LayerSpec, select_layers
from ..errors import InterventionError
from ..passes import differentiate
from .edits import position_index
from .patch import EditSpec, patch

__all__ = ["activation_patching", "attribution_patching", "Metric", "PatchPositions"]

Metric = Callable[[Any], Tensor]
"""``metric(output) -> (B,) or scalar`` for the model output of one run on ``B`` inputs."""

PatchPositions = Union[Literal["each"], Sequence[int], None]


@entry_point
def activation_patching(
    model: nn.Module,
    clean: Inputs,
    corrupted: Inputs,
    layers: Layers,
    metric: Metric,
    *,
    positions: PatchPositions = None,
    batch_size: int | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """The metric of the corrupted run with each layer (and position) patched from the clean run.

    One clean forward records the clean activations of ``layers`` (stopping after the last
    of them). Then, for each layer and each position, the corrupted input runs with that
    activation -- or only that position of it -- replaced by its clean value. These runs
    are batched: the corrupted batch is repeated once per (layer, position) case and each
    copy is patched differently, so many cases share one forward (at most
    ``batch_size`` rows per forward). The result equals a loop of single patched forwards
    (in eval mode, where samples do not interact). Unlike gradlens's other forwards these
    cannot stop early: the metric needs the model's output.

    Example::

        ids_clean = tok("When Mary and John went to the store, John gave a drink to")
        ids_corrupt = tok("When Mary and John went to the store, Mary gave a drink to")
        effect = gradlens.activation_patching(
            gpt2, ids_clean, ids_corrupt, "transformer.h.*",
            gradlens.metrics.logit_difference(mary, john), positions="each",
        )  # (n_layers, n_tokens)

    Args:
        model: the model (put it in ``eval()``: dropout would make every run different).
        clean: the clean input (a tuple for several positional inputs), ``B`` samples.
        corrupted: the corrupted input, of the same shapes.
        layers: the layers to patch (see :mod:`gradlens.selection`); the result's rows
            follow the model's order of the selected modules.
        metric: ``metric(output) -> (B,) or scalar``, called on the output of each
            patched run of ``B`` rows (just as it would be on ``model(corrupted)``).
            Per-sample values are averaged over the ``B`` pairs. See
            :func:`gradlens.metrics.logit_difference` and
            :func:`gradlens.metrics.normalized`.
        positions: ``None`` patches each layer's whole activation (one column);
            ``"each"`` patches every index of dimension 1 (every token of a ``(B, T, D)``
            activation) one at a time; a sequence of ints patches those.
        batch_size: the most rows per forward (``B`` times the cases it holds; a case is
            never split); ``None`` runs every case in one forward.
        select: picks the tensor of a structured layer output (see :func:`gradlens.patch`).
        forward_kwargs: keyword inputs for the model, the same for both runs (tensors whose
            first dimension is ``B`` are repeated with the inputs).

    Returns:
        ``(len(layers), n_positions)`` float tensor: the metric of each patched run
        (``n_positions`` is 1 for ``positions=None``).

    Raises:
        LayerNotFoundError: a layer spec selects nothing.
        LayerNotExecutedError: a selected layer does not run in the forward.
        InterventionError: clean and corrupted inputs differ in shape; a position is out of
            range; the metric returns another shape than ``(B,)`` or a scalar.
        ValueError: ``batch_size`` is not a positive int or ``None``.
    """
    check_batch_size(batch_size, optional=True)
    check_inputs({"clean": clean, "corrupted": corrupted}, forward_kwargs)
    names = list(select_layers(model, layers))
    b = _check_pair(clean, corrupted)
    clean_acts = _clean_activations(model, clean, names, select, forward_kwargs)
    index = _positions(clean_acts, positions)
    cases = [(name, p) for name in names for p in (index if index is not None else [None])]
    per_forward = copies_per_chunk(batch_size, b, len(cases))
    corrupted_input = ModelInput.parse(corrupted, forward_kwargs)
    values: list[Tensor] = []
    for part in chunks(len(cases), per_forward):
        chunk = cases[part]
        edits: dict[LayerSpec | tuple[LayerSpec, ...], EditSpec] = {
            name: _patch_rows(name, clean_acts[name], chunk, b)
            for name in dict.fromkeys(name for name, _ in chunk)
        }
        with torch.inference_mode(), patch(model, edits, select=select):
            output = corrupted_input.tile(len(chunk)).call(model)
        values.extend(_metric_per_case(metric, output, b, len(chunk)))
    n_positions = 1 if index is None else len(index)
    return torch.stack(values).reshape(len(names), n_positions)


@entry_point
def attribution_patching(
    model: nn.Module,
    clean: Inputs,
    corrupted: Inputs,
    layers: Layers,
    metric: Metric,
    *,
    positions: PatchPositions = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """First-order estimates of activation patching: ``(a_clean - a_corrupted) . dmetric/da``.

    For each layer (and position), the change of the metric when the corrupted run's
    activation ``a_corrupted`` is replaced by the clean one is estimated by the first
    term of its Taylor expansion at the corrupted input (Nanda 2023, "Attribution
    Patching: Activation Patching At Industrial Scale"; Syed, Rager & Conmy 2023,
    "Attribution Patching Outperforms Automated Circuit Discovery"). All layers and
    positions together cost two forwards (the clean one stops after the last layer) and one
    backward, taken only with respect to the recorded activations (the tape starts at the
    first of them; no parameter gradient is computed).

    The result estimates the *change* ``metric(patched) - metric(corrupted)``, where
    :func:`activation_patching` returns ``metric(patched)``; with
    :func:`gradlens.metrics.normalized` (0 = corrupted) the two are on the same scale.
    The estimate is good where the metric is close to linear in the activation (small
    changes, late layers) and can be poor across saturated nonlinearities (attention
    softmax, LayerNorm on a large change).

    Args:
        model: the model (in ``eval()``).
        clean: the clean input, ``B`` samples.
        corrupted: the corrupted input, of the same shapes.
        layers: the layers (see :mod:`gradlens.selection`); rows follow the model's order.
        metric: ``metric(output) -> (B,) or scalar``, differentiable; per-sample values
            are averaged over the ``B`` pairs, as in :func:`activation_patching`.
        positions: ``None`` (one estimate per layer), ``"each"`` or a sequence of ints
            (one estimate per index of dimension 1).
        select: picks the tensor of a structured layer output.
        forward_kwargs: keyword inputs for the model, the same for both runs.

    Returns:
        ``(len(layers), n_positions)`` float tensor of estimated metric changes.

    Raises:
        LayerNotFoundError: a layer spec selects nothing.
        LayerNotExecutedError: a selected layer does not run in the forward.
        InterventionError: as for :func:`activation_patching`.
        GradientNotAvailableError: the metric does not depend on a layer's activation.
    """
    check_inputs({"clean": clean, "corrupted": corrupted}, forward_kwargs)
    names = list(select_layers(model, layers))
    b = _check_pair(clean, corrupted)
    clean_acts = _clean_activations(model, clean, names, select, forward_kwargs)
    index = _positions(clean_acts, positions)

    def mean_metric(output: Any) -> Tensor:
        # differentiate takes one score per sample and differentiates their sum
        value = _checked_metric(metric, output, b)
        return value / b if value.ndim else value.expand(b) / b

    with preserve_buffers(model):
        result = differentiate(
            model,
            corrupted,
            mean_metric,
            layers=names,
            select=select,
            forward_kwargs=forward_kwargs,
        )
    rows = []
    for name in names:
        change = (clean_acts[name] - result.activations[name]) * result.gradients[name]
        if index is None:
            rows.append(change.sum().reshape(1))
        else:
            per_position = change.transpose(0, 1).reshape(change.shape[1], -1).sum(dim=1)
            rows.append(per_position[index])
    return torch.stack(rows)


# -- the steps -----------------------------------------------------------------------------


def _check_pair(clean: Inputs, corrupted: Inputs) -> int:
    """``B``, after checking that clean and corrupted inputs have the same tensor shapes."""
    a, b = as_args(clean), as_args(corrupted)
    if len(a) != len(b):
        raise InterventionError(
            f"clean has {len(a)} positional inputs and corrupted {len(b)}; they must match"
        )
    for i, (x, y) in enumerate(zip(a, b)):
        if isinstance(x, Tensor) != isinstance(y, Tensor) or (
            isinstance(x, Tensor) and x.shape != y.shape
        ):
            raise InterventionError(
                f"clean and corrupted inputs differ: input {i} has shape {_shape(x)} in the "
                f"clean run and {_shape(y)} in the corrupted one. Patching copies activations "
                "between the runs, so they need the same shapes (for text: the same number "
                "of tokens -- pad, or choose prompts that tokenize to equal lengths)"
            )
    return batch_size(clean)


def _clean_activations(
    model: nn.Module,
    clean: Inputs,
    names: list[str],
    select: OutputSpec | Mapping[str, OutputSpec],
    forward_kwargs: Mapping[str, Any] | None,
) -> dict[str, Tensor]:
    with preserve_buffers(model):
        acts = extract(model, clean, names, select=select, forward_kwargs=forward_kwargs)
    for name, act in acts.items():
        if not isinstance(act, Tensor):
            raise InterventionError(
                f"layer {name!r} returns a {type(act).__name__}; pass select= (an index, a "
                "key or a function) to say which of its tensors to patch"
            )
    return acts


def _positions(acts: dict[str, Tensor], positions: PatchPositions) -> list[int] | None:
    """The indices of dimension 1 to patch one at a time, checked against every layer."""
    if positions is None:
        return None
    if isinstance(positions, str):
        if positions != "each":
            raise InterventionError(
                f"positions must be None, 'each' or a sequence of ints; got {positions!r}"
            )
        sizes = {name: act.shape[1] if act.ndim > 1 else 0 for name, act in acts.items()}
        if len(set(sizes.values())) > 1:
            raise InterventionError(
                f"positions='each' needs the same size of dimension 1 in every layer; got "
                f"{sizes}. Patch these layers in separate calls, or give the positions"
            )
        positions = range(next(iter(sizes.values())))
    wanted = [int(p) for p in positions]
    for name, act in acts.items():
        position_index(name, act, wanted)  # raises for a position out of range
    return wanted


def _patch_rows(
    name: str, clean: Tensor, chunk: list[tuple[str, int | None]], b: int
) -> Callable[[Tensor], Tensor]:
    """The edit of layer ``name`` for a forward of ``len(chunk) * b`` rows: the rows of each
    case of this layer get the clean activation (at the case's position)."""
    rows = [k * b + i for k, (layer, _) in enumerate(chunk) if layer == name for i in range(b)]
    at = [p for layer, p in chunk if layer == name for _ in range(b)]
    row_index = torch.tensor(rows, device=clean.device)
    source = row_index % b

    def edit(output: Tensor) -> Tensor:
        expected = (len(chunk) * b, *clean.shape[1:])
        if tuple(output.shape) != expected:
            raise InterventionError(
                f"layer {name!r} returned shape {tuple(output.shape)} in the corrupted run, "
                f"where {expected} was expected from its clean activation {tuple(clean.shape)}"
            )
        value = clean.to(device=output.device, dtype=output.dtype)
        patched = output.clone()
        if at[0] is None:
            patched[row_index] = value[source]
        else:
            positions = torch.tensor(at, device=output.device)
            patched[row_index, positions] = value[source, positions]
        return patched

    return edit


def _metric_per_case(metric: Metric, output: Any, b: int, cases: int) -> list[Tensor]:
    """The metric of each case's ``b`` rows of a batched output, averaged over the rows."""
    leaves, rebuild = flatten(output)
    values = []
    for k in range(cases):
        rows = slice(k * b, (k + 1) * b)
        part = rebuild(
            [
                leaf[rows]
                if isinstance(leaf, Tensor) and leaf.ndim and len(leaf) == b * cases
                else leaf
                for leaf in leaves
            ]
        )
        values.append(_checked_metric(metric, part, b).detach().float().mean())
    return values


def _checked_metric(metric: Metric, output: Any, b: int) -> Tensor:
    value = metric(output)
    if isinstance(value, (int, float)):
        value = torch.tensor(float(value))
    if not isinstance(value, Tensor) or value.shape not in ((), (b,)):
        raise InterventionError(
            f"the metric must return one value per sample, shape ({b},), or a scalar, for a "
            f"run on {b} inputs; it returned {_shape(value)}. Reduce it, e.g. "
            "logits[:, -1, correct] - logits[:, -1, wrong]"
        )
    return value


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__
