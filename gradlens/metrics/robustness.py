"""How much an explanation moves when the input barely does: max- and average-sensitivity
(Yeh et al. 2019), the local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018) and the
relative input and output stability (Agarwal et al. 2022).

Each metric explains ``N`` perturbed copies ``x + delta_j`` of every input again with
``method`` (a registered name or a callable ``method(model, x, target=...)``) and compares
the maps with the given ``attributions`` of the clean inputs. All maps are reduced to
``(B, H, W)`` with :func:`gradlens.maps.to_2d` and resized to the inputs; norms are
Euclidean over a sample's pixels (maps) or elements (inputs, logits). The perturbations are
the explicit ``perturbations`` ``(N, B, C, H, W)`` (added to the inputs) or are drawn from
``generator`` one draw of ``(B, C, H, W)`` at a time (so the draws do not depend on
``batch_size``). Whole draws are stacked into one call of the method, up to ``batch_size``
rows (at least one draw per call). The method is always asked for the classes explained
on the clean inputs (:func:`gradlens.targets.scores` reads ``target``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..core.buffers import preserve_buffers
from ..core.checks import check_inputs, entry_point
from ..core.chunks import check_batch_size, chunks, copies_per_chunk
from ..core.output_selection import OutputSpec
from ..targets.scoring import Target
from ._common import MetricResult, _classes, _logits, _maps_like, _normalise, _result, _untouched
from ._explain import MethodSpec, draw, explainer, private_generator

__all__ = [
    "max_sensitivity",
    "avg_sensitivity",
    "local_lipschitz_estimate",
    "relative_input_stability",
    "relative_output_stability",
]

Noise = Literal["uniform", "gaussian"]

# statistic(sample, delta, maps, perturbed_maps, logits, perturbed_logits) -> (rows,) float64
Statistic = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None], Tensor]


def _perturbed_values(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target,
    statistic: Statistic,
    *,
    caller: str,
    method: MethodSpec,
    method_options: Mapping[str, Any] | None,
    nr_samples: int,
    noise: Noise,
    scale: float,
    perturbations: Tensor | None,
    generator: torch.Generator | None,
    batch_size: int,
    normalise: bool,
    skip_changed: bool,
    output: OutputSpec,
    needs_logits: bool = False,
    score: str = "logit",
) -> Tensor:
    """``(N, B)`` float64: ``statistic`` for every draw and sample, ``nan`` where
    ``skip_changed`` leaves a draw out."""
    check_inputs({"inputs": inputs})
    check_batch_size(batch_size)
    maps = _maps_like(inputs, attributions)
    if noise not in ("uniform", "gaussian"):
        raise ValueError(f'noise must be "uniform" or "gaussian", got {noise!r}')
    if score not in ("logit", "probability"):
        raise ValueError(f'score must be "logit" or "probability", got {score!r}')
    if perturbations is not None:
        if perturbations.ndim != inputs.ndim + 1 or perturbations.shape[1:] != inputs.shape:
            raise ValueError(
                "perturbations must have shape (N, *inputs.shape) = "
                f"(N, {', '.join(map(str, inputs.shape))}), got {tuple(perturbations.shape)}"
            )
        nr_samples = perturbations.shape[0]
    if nr_samples < 1:
        raise ValueError(f"nr_samples must be >= 1, got {nr_samples}")
    explain = explainer(method, method_options, caller=caller)
    rng = private_generator(generator) if perturbations is None else None
    inputs = inputs.detach()
    batch = inputs.shape[0]
    maps = maps.to(inputs.device)
    if normalise:
        maps = _normalise(maps)
    values = torch.empty(nr_samples, batch, dtype=torch.float64, device=inputs.device)
    with preserve_buffers(model):
        with _untouched(model):
            classes = _classes(model, inputs, target, output, batch_size)
            clean = None  # the clean outputs, only where a statistic or skip_changed reads them
            if needs_logits or skip_changed:
                clean = _outputs(model, inputs, output, batch_size, score)
        per_call = copies_per_chunk(batch_size, batch, nr_samples)
        for part in chunks(nr_samples, per_call):
            copies = part.stop - part.start
            if perturbations is not None:
                delta = perturbations[part].detach().to(inputs.device, inputs.dtype)
            else:
                assert rng is not None
                delta = torch.stack(
                    [draw(noise, tuple(inputs.shape), scale, rng, inputs) for _ in range(copies)]
                )
            delta = delta.flatten(0, 1)  # (copies * B, C, H, W), draw-major
            x = inputs.repeat(copies, *([1] * (inputs.ndim - 1))) + delta
            sample = torch.arange(batch, device=inputs.device).repeat(copies)
            perturbed_maps = explain(model, x, classes[sample]).to(inputs.device)
            if normalise:
                perturbed_maps = _normalise(perturbed_maps)
            perturbed = None
            if needs_logits or skip_changed:
                with _untouched(model):
                    perturbed = _outputs(model, x, output, batch_size, score)
            row = statistic(
                sample,
                delta.double(),
                maps[sample],
                perturbed_maps,
                None if clean is None else clean[sample],
                perturbed,
            )
            if skip_changed:
                assert perturbed is not None and clean is not None
                changed = perturbed.argmax(dim=1) != clean[sample].argmax(dim=1)
                row = torch.where(changed, torch.nan, row)
            values[part] = row.view(copies, batch)
    return values


def _outputs(
    model: nn.Module, x: Tensor, output: OutputSpec, batch_size: int, score: str
) -> Tensor:
    """``(rows, K)`` float64 logits (or probabilities) of ``x``, in chunks."""
    parts = [_logits(model, x[rows], output).double() for rows in chunks(x.shape[0], batch_size)]
    logits: Tensor = torch.cat(parts)
    return torch.softmax(logits, dim=1) if score == "probability" else logits


def _norm(x: Tensor) -> Tensor:
    norms: Tensor = torch.linalg.vector_norm(x.flatten(1), dim=1)
    return norms


def _nanmax(values: Tensor) -> Tensor:
    """Largest value per column of ``(N, B)``, ignoring ``nan`` (``nan`` if all are)."""
    top = torch.where(values.isnan(), -torch.inf, values).amax(dim=0)
    return torch.where(values.isnan().all(dim=0), torch.nan, top)


def _sensitivity(relative: bool) -> Statistic:
    def statistic(
        sample: Tensor, delta: Tensor, a: Tensor, b: Tensor, h: Tensor | None, g: Tensor | None
    ) -> Tensor:
        change = _norm(b - a)
        if not relative:
            return change
        size = _norm(a)
        return change / torch.where(size == 0, torch.nan, size)

    return statistic


@entry_point
def max_sensitivity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    method: MethodSpec,
    method_options: Mapping[str, Any] | None = None,
    nr_samples: int = 200,
    radius: float = 0.2,
    relative: bool = True,
    perturbations: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    normalise: bool = False,
    skip_changed: bool = False,
    output: OutputSpec = None,
) -> MetricResult:
    """Max-sensitivity (Yeh et al., "On the (in)fidelity and sensitivity of explanations",
    NeurIPS 2019).

    The largest change of the map over ``N`` inputs drawn uniformly from the L-inf ball of
    ``radius`` around ``x``::

        SENS_max(x) = max_j ||Phi(x + delta_j) - Phi(x)|| / ||Phi(x)||,   delta_j ~ U[-r, r]

    (``relative=False`` drops the division, as in the paper; the relative form is Quantus'
    default). *Lower* is more robust.

    Args:
        model: the classifier; not changed (the method runs on it, its buffers are
            restored).
        inputs: ``(B, C, H, W)``.
        attributions: ``Phi(x)``, shaped like ``inputs`` or ``(B, h, w)`` maps.
        target: the classes explained (``None``: the top classes); parsed once on the clean
            inputs.
        radius: ``r``, half the width of the uniform noise.
        relative: divide by ``||Phi(x)||`` (``nan`` for a zero map).
        method: the explanation method, a registered name (``"saliency"``, ...) or a callable
            ``method(model, x, target=classes, **method_options)`` returning attributions
            shaped like ``x`` or ``(rows, h, w)`` maps.
        method_options: keyword options for ``method`` (checked before any work).
        nr_samples: ``N``, the number of perturbations per input (ignored when
            ``perturbations`` is given).
        perturbations: ``(N, B, C, H, W)`` explicit noise added to the inputs.
        generator: draws the noise (default: a new generator seeded with 0, so results are
            reproducible; the global RNG is not used).
        batch_size: perturbed rows per call of the method (whole draws, at least one).
        normalise: divide every map (given and recomputed) by its own largest ``|.|``.
        skip_changed: leave out the draws whose top class differs from the clean input's.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` float64 (``nan`` where every draw was
        left out, or the divisor is 0).

    Raises:
        ValueError: wrong shapes of the inputs, attributions or perturbations, ``batch_size``
            or ``nr_samples`` < 1, an unknown ``method`` name or a bad option value.
        TypeError: an option ``method`` does not take.
        TargetError: a target that is not one class per sample.
    """
    values = _perturbed_values(
        model, inputs, attributions, target, _sensitivity(relative), caller="max_sensitivity",
        method=method, method_options=method_options, nr_samples=nr_samples, noise="uniform",
        scale=radius, perturbations=perturbations, generator=generator, batch_size=batch_size,
        normalise=normalise, skip_changed=skip_changed, output=output,
    )  # fmt: skip
    return _result(_nanmax(values))


@entry_point
def avg_sensitivity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    method: MethodSpec,
    method_options: Mapping[str, Any] | None = None,
    nr_samples: int = 200,
    radius: float = 0.2,
    relative: bool = True,
    perturbations: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    normalise: bool = False,
    skip_changed: bool = False,
    output: OutputSpec = None,
) -> MetricResult:
    """Average sensitivity (Yeh et al., "On the (in)fidelity and sensitivity of
    explanations", NeurIPS 2019).

    The mean change of the map over ``N`` uniform draws in the L-inf ball of ``radius``::

        SENS_avg(x) = mean_j ||Phi(x + delta_j) - Phi(x)|| / ||Phi(x)||,   delta_j ~ U[-r, r]

    (``relative=False`` drops the division). *Lower* is more robust.

    Args:
        model, inputs, attributions, target, radius, relative: as for
            :func:`max_sensitivity`.
        method: the explanation method, a registered name (``"saliency"``, ...) or a callable
            ``method(model, x, target=classes, **method_options)`` returning attributions
            shaped like ``x`` or ``(rows, h, w)`` maps.
        method_options: keyword options for ``method`` (checked before any work).
        nr_samples: ``N``, the number of perturbations per input (ignored when
            ``perturbations`` is given).
        perturbations: ``(N, B, C, H, W)`` explicit noise added to the inputs.
        generator: draws the noise (default: a new generator seeded with 0, so results are
            reproducible; the global RNG is not used).
        batch_size: perturbed rows per call of the method (whole draws, at least one).
        normalise: divide every map (given and recomputed) by its own largest ``|.|``.
        skip_changed: leave out the draws whose top class differs from the clean input's.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` float64 (``nan`` where every draw was
        left out, or the divisor is 0).

    Raises:
        ValueError: wrong shapes of the inputs, attributions or perturbations, ``batch_size``
            or ``nr_samples`` < 1, an unknown ``method`` name or a bad option value.
        TypeError: an option ``method`` does not take.
        TargetError: a target that is not one class per sample.
    """
    values = _perturbed_values(
        model, inputs, attributions, target, _sensitivity(relative), caller="avg_sensitivity",
        method=method, method_options=method_options, nr_samples=nr_samples, noise="uniform",
        scale=radius, perturbations=perturbations, generator=generator, batch_size=batch_size,
        normalise=normalise, skip_changed=skip_changed, output=output,
    )  # fmt: skip
    return _result(values.nanmean(dim=0))


def _lipschitz(
    sample: Tensor, delta: Tensor, a: Tensor, b: Tensor, h: Tensor | None, g: Tensor | None
) -> Tensor:
    step = _norm(delta)
    return _norm(b - a) / torch.where(step == 0, torch.nan, step)


@entry_point
def local_lipschitz_estimate(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    method: MethodSpec,
    method_options: Mapping[str, Any] | None = None,
    nr_samples: int = 200,
    std: float = 0.1,
    perturbations: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    normalise: bool = False,
    skip_changed: bool = False,
    output: OutputSpec = None,
) -> MetricResult:
    """The local Lipschitz estimate (Alvarez-Melis & Jaakkola, "On the robustness of
    interpretability methods", ICML workshop 2018).

    The largest ratio of the map's change to the input's over ``N`` Gaussian draws::

        L(x) = max_j ||Phi(x + delta_j) - Phi(x)||_2 / ||delta_j||_2,   delta_j ~ N(0, std^2)

    *Lower* is more robust.

    Args:
        model, inputs, attributions, target: as for :func:`max_sensitivity`.
        std: the noise's standard deviation.
        method: the explanation method, a registered name (``"saliency"``, ...) or a callable
            ``method(model, x, target=classes, **method_options)`` returning attributions
            shaped like ``x`` or ``(rows, h, w)`` maps.
        method_options: keyword options for ``method`` (checked before any work).
        nr_samples: ``N``, the number of perturbations per input (ignored when
            ``perturbations`` is given).
        perturbations: ``(N, B, C, H, W)`` explicit noise added to the inputs.
        generator: draws the noise (default: a new generator seeded with 0, so results are
            reproducible; the global RNG is not used).
        batch_size: perturbed rows per call of the method (whole draws, at least one).
        normalise: divide every map (given and recomputed) by its own largest ``|.|``.
        skip_changed: leave out the draws whose top class differs from the clean input's.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` float64 (``nan`` where every draw was
        left out, or the divisor is 0).

    Raises:
        ValueError: wrong shapes of the inputs, attributions or perturbations, ``batch_size``
            or ``nr_samples`` < 1, an unknown ``method`` name or a bad option value.
        TypeError: an option ``method`` does not take.
        TargetError: a target that is not one class per sample.
    """
    values = _perturbed_values(
        model, inputs, attributions, target, _lipschitz, caller="local_lipschitz_estimate",
        method=method, method_options=method_options, nr_samples=nr_samples, noise="gaussian",
        scale=std, perturbations=perturbations, generator=generator, batch_size=batch_size,
        normalise=normalise, skip_changed=skip_changed, output=output,
    )  # fmt: skip
    return _result(_nanmax(values))


def _relative_change(a: Tensor, b: Tensor, eps_min: float) -> Tensor:
    """``||(a - b) / a||_2`` per row, zeros of ``a`` replaced by ``eps_min``."""
    return _norm((a - b) / torch.where(a == 0, eps_min, a))


def _input_stability(inputs: Tensor, eps_min: float) -> Statistic:
    x = inputs.double()

    def statistic(
        sample: Tensor, delta: Tensor, a: Tensor, b: Tensor, h: Tensor | None, g: Tensor | None
    ) -> Tensor:
        clean = x[sample]
        moved = _relative_change(clean, clean + delta, eps_min)
        return _relative_change(a, b, eps_min) / moved.clamp(min=eps_min)

    return statistic


@entry_point
def relative_input_stability(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    method: MethodSpec,
    method_options: Mapping[str, Any] | None = None,
    nr_samples: int = 200,
    radius: float = 0.2,
    eps_min: float = 1e-6,
    perturbations: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    normalise: bool = False,
    skip_changed: bool = True,
    output: OutputSpec = None,
) -> MetricResult:
    """Relative input stability (Agarwal et al., "Rethinking stability for attribution-based
    explanations", ICLR workshop 2022).

    The largest ratio of the map's relative change to the input's::

        RIS(x) = max_j ||(e_x - e_x') / e_x||_2 / max(||(x - x') / x||_2, eps_min)

    with ``x' = x + delta_j``, ``delta_j ~ U[-r, r]``, divisions element-wise and zeros of
    ``e_x`` and ``x`` in the divisor replaced by ``eps_min``. As in the paper, only the
    ``x'`` that the model classifies like ``x`` count (``skip_changed=True``, the default
    here). *Lower* is more stable.

    Args:
        model, inputs, attributions, target: as for :func:`max_sensitivity`.
        radius: ``r``, half the width of the uniform noise.
        eps_min: the floor of the divisors, ``> 0``.
        method: the explanation method, a registered name (``"saliency"``, ...) or a callable
            ``method(model, x, target=classes, **method_options)`` returning attributions
            shaped like ``x`` or ``(rows, h, w)`` maps.
        method_options: keyword options for ``method`` (checked before any work).
        nr_samples: ``N``, the number of perturbations per input (ignored when
            ``perturbations`` is given).
        perturbations: ``(N, B, C, H, W)`` explicit noise added to the inputs.
        generator: draws the noise (default: a new generator seeded with 0, so results are
            reproducible; the global RNG is not used).
        batch_size: perturbed rows per call of the method (whole draws, at least one).
        normalise: divide every map (given and recomputed) by its own largest ``|.|``.
        skip_changed: leave out the draws whose top class differs from the clean input's.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` float64 (``nan`` where every draw was
        left out, or the divisor is 0).

    Raises:
        ValueError: wrong shapes of the inputs, attributions or perturbations, ``batch_size``
            or ``nr_samples`` < 1, an unknown ``method`` name or a bad option value.
        TypeError: an option ``method`` does not take.
        TargetError: a target that is not one class per sample.
    """
    if eps_min <= 0:
        raise ValueError(f"eps_min must be > 0, got {eps_min}")
    values = _perturbed_values(
        model, inputs, attributions, target, _input_stability(inputs.detach(), eps_min),
        caller="relative_input_stability", method=method, method_options=method_options,
        nr_samples=nr_samples, noise="uniform", scale=radius, perturbations=perturbations,
        generator=generator, batch_size=batch_size, normalise=normalise,
        skip_changed=skip_changed, output=output,
    )  # fmt: skip
    return _result(_nanmax(values))


def _output_stability(eps_min: float) -> Statistic:
    def statistic(
        sample: Tensor, delta: Tensor, a: Tensor, b: Tensor, h: Tensor | None, g: Tensor | None
    ) -> Tensor:
        assert h is not None and g is not None
        return _relative_change(a, b, eps_min) / _norm(h - g).clamp(min=eps_min)

    return statistic


@entry_point
def relative_output_stability(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: Target = None,
    *,
    method: MethodSpec,
    method_options: Mapping[str, Any] | None = None,
    nr_samples: int = 200,
    radius: float = 0.2,
    eps_min: float = 1e-6,
    score: Literal["logit", "probability"] = "logit",
    perturbations: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    normalise: bool = False,
    skip_changed: bool = True,
    output: OutputSpec = None,
) -> MetricResult:
    """Relative output stability (Agarwal et al., "Rethinking stability for attribution-based
    explanations", ICLR workshop 2022).

    The largest ratio of the map's relative change to the change of the model's output
    ``h`` (the whole logit vector, or the probabilities with ``score="probability"``)::

        ROS(x) = max_j ||(e_x - e_x') / e_x||_2 / max(||h(x) - h(x')||_2, eps_min)

    with ``x' = x + delta_j``, ``delta_j ~ U[-r, r]``; as in the paper, only the ``x'`` that
    the model classifies like ``x`` count (``skip_changed=True``, the default here). *Lower*
    is more stable.

    Args:
        model, inputs, attributions, target: as for :func:`max_sensitivity`.
        radius: ``r``, half the width of the uniform noise.
        eps_min: the floor of the divisors, ``> 0``.
        score: ``"logit"`` (the paper's ``h``) or ``"probability"`` (softmax).
        method: the explanation method, a registered name (``"saliency"``, ...) or a callable
            ``method(model, x, target=classes, **method_options)`` returning attributions
            shaped like ``x`` or ``(rows, h, w)`` maps.
        method_options: keyword options for ``method`` (checked before any work).
        nr_samples: ``N``, the number of perturbations per input (ignored when
            ``perturbations`` is given).
        perturbations: ``(N, B, C, H, W)`` explicit noise added to the inputs.
        generator: draws the noise (default: a new generator seeded with 0, so results are
            reproducible; the global RNG is not used).
        batch_size: perturbed rows per call of the method (whole draws, at least one).
        normalise: divide every map (given and recomputed) by its own largest ``|.|``.
        skip_changed: leave out the draws whose top class differs from the clean input's.
        output: picks the logits out of a structured output.

    Returns:
        A :class:`MetricResult` with ``scores (B,)`` float64 (``nan`` where every draw was
        left out, or the divisor is 0).

    Raises:
        ValueError: wrong shapes of the inputs, attributions or perturbations, ``batch_size``
            or ``nr_samples`` < 1, an unknown ``method`` name or a bad option value.
        TypeError: an option ``method`` does not take.
        TargetError: a target that is not one class per sample.
    """
    if eps_min <= 0:
        raise ValueError(f"eps_min must be > 0, got {eps_min}")
    values = _perturbed_values(
        model, inputs, attributions, target, _output_stability(eps_min),
        caller="relative_output_stability", method=method, method_options=method_options,
        nr_samples=nr_samples, noise="uniform", scale=radius, perturbations=perturbations,
        generator=generator, batch_size=batch_size, normalise=normalise,
        skip_changed=skip_changed, output=output, needs_logits=True, score=score,
    )  # fmt: skip
    return _result(_nanmax(values))
