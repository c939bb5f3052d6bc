"""DeepLIFT (:func:`deeplift`) and DeepLIFT averaged over a baseline distribution
(:func:`deeplift_shap`).

Shrikumar, Greenside & Kundaje (2017), "Learning Important Features Through Propagating
Activation Differences". DeepLIFT explains the difference of the output from its value on
a reference input ``x'`` (the baseline): every neuron gets the difference ``Δ = a(x) -
a(x')`` of its activation, and *multipliers* ``m = ΔOut / ΔIn`` are chained backwards like
gradients. Linear layers (convolutions, linear layers, BatchNorm in eval mode, average
pooling, additions) keep their gradient as the multiplier; each nonlinearity gets the
*rescale* rule

    m = (g(x) - g(x')) / (x - x')        (g'(x) where |x - x'| < 1e-10)

so that ``m * Δx = Δy`` exactly. The attributions ``(x - x') * m_x`` then sum to
``f(x) - f(x')`` (*summation-to-delta*) whenever every nonlinearity of the model is one of
:data:`NONLINEARITIES` or :data:`MAX_POOLS` and everything else is affine.

Implementation. The baseline runs first (one inference forward) while every call of
those modules records its input and output; the input then runs with a module rule
(:func:`gradlens.core.backward.override_backward` with a
:class:`~gradlens.core.backward.PerCall` rule) that pairs each call with the same call of
the baseline pass and multiplies the gradient by the call's multipliers. Because the
pairing is per *call*, a module reused in one forward (torchvision's ResNet blocks call
one ``nn.ReLU`` twice) gets the right reference at each call. Captum's ``DeepLift`` keeps
one input and one output per *module*, so there the second call overwrites the first and
the multipliers of the first are computed from the wrong activations: its attributions
on torchvision's ResNets do not sum to ``f(x) - f(x')``; ours do.

Max pooling. An output ``o = max_W x`` moves by ``Δo = o - o'``. When it rises
(``o >= o'``) ``Δo`` is credited to the window's maximum on ``x``, when it falls to the
window's maximum on ``x'``; the multiplier of each input is the credit it collects over
all windows divided by its own ``Δx`` (the ordinary gradient where ``|Δx| < 1e-10``). The
credits sum to ``Σ Δo``, also for overlapping windows (Captum places them with
``max_unpool``, which keeps one of several credits landing on the same input, so with
overlapping windows, as in ResNet's stem, its multipliers lose part of ``Δo``).

Not covered: functional nonlinearities (``F.relu``, ``torch.tanh`` called inside
``forward()``) and modules outside those lists (``nn.Softmax``, normalisation in train
mode, attention) keep their gradient; the attributions are then DeepLIFT's only up to
them, and ``return_delta`` shows how far the sum is from ``f(x) - f(x')``. Captum's
``nn.Softmax`` rule (an elementwise rescale, centred) is not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.backward import PerCall, override_backward
from ..core.buffers import preserve_buffers
from ..core.checks import entry_point
from ..core.chunks import check_batch_size, chunks, copies_per_chunk
from ..core.hooks import HookSet
from ..core.inputs import Inputs, ModelInput
from ..core.lifecycle import Capture
from ..core.output_selection import OutputSpec
from ..core.selection import named_modules
from ..passes import differentiate
from ..registry import register
from ..targets.parse import check_target, repeat_target
from ..targets.scoring import Target, scores
from ._common import (
    Attribution,
    as_result,
    gradient_or_zeros,
    require_float_inputs,
    targets_first_to_dim1,
)
from .integrated import Baselines, _baselines
from .shap import Distribution, baseline_distribution, copy_major

__all__ = ["NONLINEARITIES", "MAX_POOLS", "deeplift", "deeplift_shap"]

NONLINEARITIES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Threshold,
)
"""Elementwise nonlinearity modules that get the rescale rule."""

MAX_POOLS: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
"""Max pooling modules that get the max-pooling rule (see the module docstring)."""

EPS = 1e-10
"""Below this ``|Δx|`` a multiplier is the ordinary gradient (Captum's ``eps``)."""

_POOL_FUNCTIONS: dict[type[nn.Module], tuple[Callable[..., Any], int]] = {
    nn.MaxPool1d: (F.max_pool1d, 1),
    nn.MaxPool2d: (F.max_pool2d, 2),
    nn.MaxPool3d: (F.max_pool3d, 3),
}

_Record = tuple[Tensor, Tensor]


@register(
    "deeplift",
    "attribution",
    needs_layer=False,
    multi_target=True,
)
@entry_point
def deeplift(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    baselines: Baselines = None,
    return_delta: bool = False,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Attribution | tuple[Attribution, Tensor]:
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017).

    ``(x - x') * m``, with ``m`` the multipliers of the input: the gradient of the score
    with each nonlinearity's derivative replaced by ``(g(x) - g(x')) / (x - x')`` (see the
    module docstring for the rules, max pooling and what is not covered). Costs one
    inference forward of the baseline and one forward and backward of the input. Equal
    to Captum's ``DeepLift`` on models whose nonlinearity modules each run once per
    forward; correct also where a module is reused (Captum's is not).

    Args:
        model: the model (eval mode for exact summation-to-delta: dropout and train-mode
            BatchNorm make the two passes differ).
        x: its input, or a tuple of positional inputs (floating-point inputs are
            attributed; token ids and masks are passed unchanged to both passes).
        target: see :mod:`gradlens.targets`; ``None`` is each sample's top class on ``x``.
        baselines: ``x'``: ``None`` (zeros), a number, a tensor shaped like one sample, a
            one-sample batch or the whole batch, or a callable ``x -> baseline``; for a
            tuple input, one such value for all floating-point inputs or a tuple of them
            (as for :func:`~gradlens.attribution.integrated_gradients`).
        return_delta: also return the summation-to-delta error.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model, passed unchanged to both passes.

    Returns:
        The attributions, shaped like the input (``(B, K, ...)`` for ``K`` targets per
        sample; a tuple for tuple inputs, ``None`` for non-float inputs); with
        ``return_delta``, ``(attributions, delta)``: ``delta`` (``(B,)`` or ``(B, K)``) is
        the sum of the attributions minus ``f(x) - f(x')``, zero up to rounding when every
        nonlinearity is covered.

    Raises:
        ValueError: a baseline that does not fit the input.
        TargetError: a target that does not fit the output.
        TypeError: no floating-point input.
        RuntimeError: a covered module runs more often, or on other shapes, on ``x`` than
            on the baseline (data-dependent control flow).
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    positions = require_float_inputs(inputs.args, "deeplift")
    target = check_target(target, inputs.batch_size)
    start_points = _baselines(baselines, inputs.args, positions)
    attributions, delta = _deeplift(model, inputs, positions, start_points, target, output)
    result = as_result(inputs, attributions)
    return (result, delta) if return_delta else result


@register(
    "deeplift_shap",
    "attribution",
    needs_layer=False,
    multi_target=True,
)
@entry_point
def deeplift_shap(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    baselines: Distribution = None,
    batch_size: int | None = 32,
    return_delta: bool = False,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Attribution | tuple[Attribution, Tensor]:
    """DeepLIFT averaged over a distribution of baselines (DeepSHAP; Lundberg & Lee 2017,
    "A Unified Approach to Interpreting Model Predictions").

    ``(1/N) Σ_n (x - x'_n) * m(x, x'_n)``: :func:`deeplift` against each of the ``N``
    baselines, averaged. The attributions sum to ``f(x) - (1/N) Σ_n f(x'_n)``. Equal to
    Captum's ``DeepLiftShap`` where :func:`deeplift` equals Captum's ``DeepLift``.

    Args:
        model: the model.
        x: its input, or a tuple of positional inputs.
        target: see :mod:`gradlens.targets`; ``None`` is each sample's top class on ``x``.
        baselines: the distribution: ``(N, *sample_shape)`` for each floating-point input
            (a tuple of them, ``None`` for the others, for tuple inputs),
            ``(B, N, *sample_shape)`` for ``N`` baselines of each sample, a tensor shaped
            like one sample or a number (one baseline), or ``None`` (one all-zero baseline).
        batch_size: input-baseline pairs per pass (``batch_size // B`` baselines at a
            time, at least one); ``None``: all ``N`` at once.
        return_delta: also return the summation-to-delta error.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model; tensors whose dim 0 is the batch are
            repeated for the stacked baselines.

    Returns:
        Shaped like the input (``(B, K, ...)`` for ``K`` targets per sample, a tuple for
        tuple inputs); with ``return_delta``, ``(attributions, delta)``: ``delta`` (``(B,)``
        or ``(B, K)``) is the sum of the attributions minus ``f(x) - (1/N) Σ_n f(x'_n)``
        (Captum's ``DeepLiftShap`` returns one delta per input-baseline pair instead).

    Raises:
        ValueError: baselines that are not a distribution for the input, a bad
            ``batch_size``.
        TargetError: a target that does not fit the output.
        TypeError: no floating-point input.
        RuntimeError: as for :func:`deeplift`.
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    positions = require_float_inputs(inputs.args, "deeplift_shap")
    batch = inputs.batch_size
    target = check_target(target, batch)
    check_batch_size(batch_size, optional=True)
    distribution = baseline_distribution(baselines, inputs.args, positions)
    count = distribution[positions[0]].shape[1]

    sums: dict[int, Tensor] = {}
    delta_sum: Tensor | None = None
    for part in chunks(count, copies_per_chunk(batch_size, batch, count)):
        k = part.stop - part.start
        tiled = inputs.tile(k)
        starts = {i: copy_major(distribution[i][:, part]) for i in positions}
        attributions, delta = _deeplift(
            model, tiled, positions, starts, repeat_target(target, batch, k), output
        )
        for i, a in attributions.items():
            total = a.reshape(k, batch, *a.shape[1:]).sum(0)
            sums[i] = total + sums[i] if i in sums else total
        delta_total = delta.reshape(k, batch, *delta.shape[1:]).sum(0)
        delta_sum = delta_total if delta_sum is None else delta_sum + delta_total
    result = as_result(inputs, {i: s / count for i, s in sums.items()})
    if not return_delta:
        return result
    assert delta_sum is not None  # count >= 1: at least one chunk ran
    return result, delta_sum / count


# -- the DeepLIFT pass ------------------------------------------------------------------


def _deeplift(
    model: nn.Module,
    inputs: ModelInput,
    positions: list[int],
    start_points: Mapping[int, Tensor],
    target: Target,
    output: OutputSpec,
) -> tuple[dict[int, Tensor], Tensor]:
    """``{position: (x - x') * multipliers}`` and the summation-to-delta error per sample
    (and target), from one baseline pass and one differentiated pass of ``inputs``."""
    batch = inputs.batch_size
    covered = {
        name: module
        for name, module in named_modules(model).items()
        if isinstance(module, NONLINEARITIES + MAX_POOLS)
    }
    with torch.inference_mode(False):
        reference = inputs.with_args({i: start_points[i].clone() for i in positions})
        records, reference_output = _reference_pass(model, reference, covered)
    pairing = _Pairing(covered, records)
    override = override_backward(model, {name: PerCall(pairing.rule) for name in covered})
    result = differentiate(
        model, inputs, target, wrt_inputs=True, output=output, hooks=[pairing, override]
    )
    multi = result.scores.ndim == 2
    attributions = {}
    for i in positions:
        gradient = gradient_or_zeros(result.input_gradients[i], inputs.args[i], result.scores)
        difference = inputs.args[i] - start_points[i]
        gradient = targets_first_to_dim1(gradient, multi)
        attributions[i] = (difference.unsqueeze(1) if multi else difference) * gradient
    explained = result.classes if result.classes is not None else target
    with torch.no_grad():
        reference_scores, _ = scores(reference_output, explained, batch, output)
    keep = 2 if multi else 1
    total = sum(a.flatten(keep).sum(-1) for a in attributions.values())
    delta = total - (result.scores - reference_scores.detach())
    return attributions, delta


def _reference_pass(
    model: nn.Module, reference: ModelInput, covered: Mapping[str, nn.Module]
) -> tuple[dict[str, list[_Record | None]], Any]:
    """Run the baseline, recording ``(input, output)`` of every call of the covered modules."""
    records: dict[str, list[_Record | None]] = {name: [] for name in covered}
    pending: dict[str, list[Tensor]] = {name: [] for name in covered}

    def before(name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            value = args[0].detach()
            # an in-place module overwrites its input: keep a copy of it
            pending[name].append(value.clone() if getattr(module, "inplace", False) else value)

        return hook

    def after(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            value = pending[name].pop()
            records[name].append((value, out.detach()) if isinstance(out, Tensor) else None)

        return hook

    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(preserve_buffers(model))
        hooks = stack.enter_context(HookSet())
        for name, module in covered.items():
            hooks.forward_pre(module, before(name))
            hooks.forward(module, after(name), always_call=True)
        out = reference.call(model)
    return records, out


class _Pairing(Capture[None]):
    """Pairs each call of a covered module on the input with the same call on the
    baseline, and makes that call's rule.

    While active it counts *every* call of the covered modules (also those the rule skips:
    calls under ``no_grad`` or on inputs that do not depend on ``x``), so that the n-th
    call on the input meets the n-th call of the baseline pass.
    """

    def __init__(
        self, covered: Mapping[str, nn.Module], records: dict[str, list[_Record | None]]
    ) -> None:
        super().__init__()
        self.covered = dict(covered)
        self.names = {module: name for name, module in covered.items()}
        self.records = records
        self.calls = dict.fromkeys(covered, 0)
        self._hooks = HookSet()

    def _open(self) -> None:
        for module in self.covered.values():
            self._hooks.forward_pre(module, self._count)

    def _close(self) -> None:
        self._hooks.remove()

    def _count(self, module: nn.Module, args: Any) -> None:
        self.calls[self.names[module]] += 1

    def rule(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Any:
        name = self.names[module]
        index = self.calls[name] - 1  # this call, counted by the pre-hook
        if index >= len(self.records[name]):
            raise RuntimeError(
                f"DeepLIFT: module {name!r} ({type(module).__name__}) ran {index + 1} times on "
                f"the input but {len(self.records[name])} times on the baseline; DeepLIFT "
                "needs the same calls in both passes (no data-dependent control flow)"
            )
        record = self.records[name][index]
        if record is None:
            raise RuntimeError(
                f"DeepLIFT: call {index} of module {name!r} ({type(module).__name__}) returned "
                "a tensor on the input but not on the baseline"
            )
        start_in, start_out = record
        x = inputs[0]
        if start_in.shape != x.shape or start_out.shape != output.shape:
            raise RuntimeError(
                f"DeepLIFT: call {index} of module {name!r} ({type(module).__name__}) saw "
                f"shape {tuple(x.shape)} on the input but {tuple(start_in.shape)} on the "
                "baseline; DeepLIFT needs the same calls in both passes"
            )
        rest = (None,) * (len(inputs) - 1)
        if isinstance(module, MAX_POOLS):
            route = _max_pool_rule(module, x, output, start_in, start_out)
            return lambda module, inputs, output, grad: (route(grad), *rest)
        multiplier = _rescale(module, x, output, start_in, start_out)
        return lambda module, inputs, output, grad: (grad * multiplier, *rest)


def _rescale(module: nn.Module, x: Tensor, y: Tensor, x0: Tensor, y0: Tensor) -> Tensor:
    """``Δy / Δx``, and the derivative ``g'(x)`` where ``|Δx| < EPS``."""
    delta_in = x - x0
    near = delta_in.abs() < EPS
    multiplier = (y - y0) / torch.where(near, torch.ones_like(delta_in), delta_in)
    if near.any():
        with torch.enable_grad():
            point = x.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(module.forward(point.clone()).sum(), point)
        multiplier = torch.where(near, slope, multiplier)
    return multiplier


def _max_pool_rule(
    module: nn.Module, x: Tensor, y: Tensor, x0: Tensor, y0: Tensor
) -> Callable[[Tensor], Tensor]:
    """The backward of a max pooling call: ``grad -> multipliers * grad`` of its input."""
    pool, dims = next(f for kind, f in _POOL_FUNCTIONS.items() if isinstance(module, kind))
    if x.ndim != dims + 2:
        raise RuntimeError(
            f"DeepLIFT's max-pooling rule needs batched (N, C, ...) inputs to "
            f"{type(module).__name__}; got shape {tuple(x.shape)}"
        )
    options = dict(
        kernel_size=module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        ceil_mode=module.ceil_mode,
    )
    _, winners = pool(x, return_indices=True, **options)
    _, start_winners = pool(x0, return_indices=True, **options)
    top = torch.maximum(y, y0)
    rise, fall = top - y0, y - top  # Δy = rise + fall; one of them is zero
    delta_in = x - x0
    near = delta_in.abs() < EPS
    safe = torch.where(near, torch.ones_like(delta_in), delta_in)
    lead = x.shape[:2]

    def place(values: Tensor, where: Tensor) -> Tensor:
        """Sum output-shaped ``values`` onto the input positions ``where`` points to."""
        flat = values.reshape(*lead, -1)
        zeros = values.new_zeros((*lead, x[0, 0].numel()))
        return zeros.scatter_add(-1, where.reshape(*lead, -1), flat).reshape(x.shape)

    def route(grad: Tensor) -> Tensor:
        credit = place(grad * rise, winners) + place(grad * fall, start_winners)
        return torch.where(near, place(grad, winners), credit / safe)

    return route
