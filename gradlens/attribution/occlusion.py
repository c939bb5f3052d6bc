"""Occlusion (:func:`occlusion`): the drop in the target score when a window is hidden."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from ..core.buffers import preserve_buffers
from ..core.checks import entry_point
from ..core.chunks import chunks, copies_per_chunk
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..passes import clean_pass
from ..registry import register
from ..targets.parse import check_target, repeat_target
from ..targets.scoring import Target, scores
from ._common import (
    Attribution,
    as_result,
    broadcast_to_input,
    require_float_inputs,
)

__all__ = ["occlusion", "window_positions"]

Size = Union[None, int, Sequence[int]]


@register(
    "occlusion",
    "attribution",
    needs_layer=False,
    multi_target=True,
    quick_options={"window": 8, "stride": 8},
)
@entry_point
def occlusion(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    window: Size | list[Size] = None,
    stride: Size | list[Size] = None,
    baseline: float | Tensor = 0.0,
    batch_size: int | None = 64,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Attribution:
    """Occlusion: slide a window over the input, replace it by a baseline value, and
    attribute the drop of the target score, ``f(x) - f(occluded x)``, to the window.

    Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks". Each
    element gets the mean drop over the windows that cover it (Captum's ``Occlusion``:
    the summed drops divided by the number of covering windows). Window positions start at
    0 and step by ``stride``; the last position along a dimension is the first at or past
    ``size - window``, and a window reaching past the edge is clipped to the input.
    All occluded inputs run under ``torch.inference_mode()``, ``batch_size`` at a time;
    the target is fixed on the clean input (one more forward, which also gives ``f(x)``).

    Window and stride conventions (per floating-point input; a list gives one per input):

    * a tuple covers the trailing dimensions of a sample, the leading ones it does not
      cover are occluded whole: ``(3, 16, 16)`` or ``(16, 16)`` on ``(B, 3, H, W)`` images
      (Captum's ``sliding_window_shapes=(3, 16, 16)``), ``(4,)`` on ``(B, D)`` tabular data,
      ``(2, E)`` on ``(B, T, E)`` embeddings;
    * an int ``w`` is ``w`` along every dimension after dim 1 (channels are occluded
      whole), or along dim 1 for ``(B, D)`` inputs;
    * ``window=None``: 1 for ``(B, D)`` inputs, else ``ceil(size / 14)`` along each dimension
      after dim 1 (16 for 224 pixels); ``stride=None``: half the window (at least 1), so 8
      for the default window at 224 pixels.

    Args:
        model: the model.
        x: its input, or a tuple of positional inputs (each floating-point input is
            occluded in turn, the others unchanged).
        target: see :mod:`gradlens.targets`; ``None``: each sample's top class on ``x``.
        window: the window size (see above).
        stride: the step between window positions (see above).
        baseline: the value occluded elements take: a number or a tensor shaped like one
            sample, a one-sample batch or the whole batch.
        batch_size: occluded inputs per forward (``batch_size // B`` window positions at a
            time, at least one); ``None``: all at once.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model; tensors whose dim 0 is the batch are
            repeated for the stacked occluded copies.

    Returns:
        Shaped like the input (``(B, K, ...)`` for ``K`` targets per sample; a tuple for tuple
        inputs, ``None`` for non-float inputs).

    Raises:
        ValueError: a window larger than the input or not positive, a stride larger than the
            window (elements would be skipped) or not positive.
        TargetError: a target that does not fit the output.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    positions = require_float_inputs(inputs.args, "occlusion")
    clean = clean_pass(model, inputs, check_target(target, inputs.batch_size), output=output)
    attributions = {}
    for n, i in enumerate(positions):
        shape = tuple(inputs.args[i].shape[1:])
        win = _window(_pick(window, n, len(positions)), shape)
        step = _stride(_pick(stride, n, len(positions)), win, shape)
        attributions[i] = _occlude_input(
            model,
            inputs,
            i,
            clean.target,
            clean.scores,
            window_positions(shape, win, step),
            broadcast_to_input(baseline, inputs.args[i], "baseline"),
            batch_size,
            output,
        )
    return as_result(inputs, attributions)


def window_positions(
    shape: Sequence[int], window: Sequence[int], stride: Sequence[int]
) -> list[tuple[slice, ...]]:
    """The slices (over a sample's dims) of every window position, first dim slowest.

    Along each dimension the starts are ``0, s, 2s, ...`` up to the first start at or past
    ``size - window`` (``ceil((size - window) / s) + 1`` positions), and windows are clipped
    to the input, so every element is covered at least once.
    """
    ranges = []
    for size, w, s in zip(shape, window, stride):
        count = math.ceil((size - w) / s) + 1
        ranges.append([slice(j * s, min(j * s + w, size)) for j in range(count)])
    return list(itertools.product(*ranges))


def _occlude_input(
    model: nn.Module,
    inputs: ModelInput,
    index: int,
    target: Target,
    clean: Tensor,
    windows: list[tuple[slice, ...]],
    baseline: Tensor,
    batch_size: int | None,
    output: OutputSpec,
) -> Tensor:
    """The attribution to positional input ``index``: ``(B, [K,] *sample_shape)``."""
    x: Tensor = inputs.args[index]
    batch = inputs.batch_size
    multi = clean.ndim == 2
    lead = (slice(None), slice(None)) if multi else (slice(None),)
    # attribution per sample (and target): (B, [K,] *sample_shape)
    total = x.new_zeros((batch, *clean.shape[1:], *x.shape[1:]), dtype=torch.result_type(clean, x))
    covered = torch.zeros(x.shape[1:], dtype=total.dtype, device=x.device)
    per_chunk = copies_per_chunk(batch_size, batch, len(windows))
    with preserve_buffers(model):
        for some in chunks(len(windows), per_chunk):
            chunk = windows[some]
            k = len(chunk)
            occluded = x.expand(k, *x.shape).clone()
            for j, window in enumerate(chunk):
                in_sample = (slice(None),) + window
                occluded[(j,) + in_sample] = baseline[in_sample]
            stacked = inputs.tile(k).with_args({index: occluded.view(k * batch, *x.shape[1:])})
            with torch.inference_mode():
                out = stacked.call(model)
                values, _ = scores(out, repeat_target(target, batch, k), k * batch, output)
            drops = (clean.repeat(k, *([1] * (clean.ndim - 1))) - values).view(k, *clean.shape)
            for j, window in enumerate(chunk):
                view = drops[j].reshape(*drops[j].shape, *([1] * (x.ndim - 1)))
                total[lead + window] += view
                covered[window] += 1
    return total / covered


def _pick(spec: Any, n: int, count: int) -> Any:
    """The spec of the ``n``-th float input: a list holds one per input."""
    if isinstance(spec, list):
        if len(spec) != count:
            raise ValueError(
                "a list of window/stride specs needs one per floating-point input "
                f"({count}), got {len(spec)}"
            )
        return spec[n]
    return spec


def _window(spec: Size, shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec is None:
        if len(shape) == 1:
            spec = 1
        else:
            spec = tuple(max(1, math.ceil(size / 14)) for size in shape[1:])
    sizes = _expand(spec, shape, "window")
    for w, size in zip(sizes, shape):
        if not 1 <= w <= size:
            raise ValueError(
                f"window {sizes} does not fit a sample of shape {shape}: each size must be "
                f"in 1..{size}"
            )
    return sizes


def _stride(spec: Size, window: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec is None:
        return tuple(max(1, w // 2) for w in window)
    strides = _expand(spec, shape, "stride")
    for s, w, size in zip(strides, window, shape):
        if s < 1 or (s > w and w < size):
            raise ValueError(
                f"stride {strides} must be positive and at most the window {window} along every "
                "dimension the window does not span, or elements would never be occluded"
            )
    return strides


def _expand(spec: int | Sequence[int], shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """A window/stride spec as one size per sample dim (uncovered leading dims: whole)."""
    if isinstance(spec, int):
        spec = (spec,) if len(shape) == 1 else (spec,) * (len(shape) - 1)
    spec = tuple(int(s) for s in spec)
    if len(spec) > len(shape):
        raise ValueError(f"{what} {spec} has more dimensions than a sample of shape {shape}")
    return tuple(shape[: len(shape) - len(spec)]) + spec
