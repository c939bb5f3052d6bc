"""What each SAE latent contributes to a prediction: :func:`feature_attributions`.

With an SAE spliced at a hook point (:func:`gradlens.sae.splice`), the hook point's output is
``decode(z) + e``: the model's prediction is a function of the latents ``z`` and of the
error ``e``, two nodes that can be attributed like any input (Marks et al. 2024, "Sparse
Feature Circuits"; Syed, Rager & Conmy 2023):

* ``"input_x_gradient"``: ``z * df/dz`` and ``sum_d e_d * df/de_d``, from one forward and one
  backward (Shrikumar et al. 2016);
* ``"integrated_gradients"``: the path ``z(a) = a z``, ``e(a) = a e`` for ``a`` from 0 to 1
  (the hook point's output runs from ``decode(0)`` to its value), ``z * integral df/dz(a)
  da`` and the same for ``e`` (Sundararajan et al. 2017). *Completeness*: the latents' and
  the error's attributions add up to ``f(input) - f(start)``, ``f(start)`` being the target
  with that hook point's output ``decode(0)``, up to the quadrature error;
* ``"attribution_patching"``: ``(z - z') * df/dz'`` (and the same for ``e``) at a
  ``baseline`` input, the first-order estimate of what putting the input's latents into the
  baseline's forward changes (Nanda 2023), as :func:`gradlens.attribution_patching`
  estimates it for layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..attribution.integrated import DEFAULT_RULE, quadrature
from ..core.checks import check_inputs, entry_point
from ..core.chunks import check_batch_size, chunks, copies_per_chunk
from ..core.extract import extract
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.outputs import Edit, replace_outputs
from ..core.parameters import parameters_without_grad
from ..core.selection import LayerSpec
from ..errors import InterventionError
from ..passes import clean_pass, differentiate
from ..targets.parse import check_target, repeat_target
from ..targets.scoring import Target
from .splice import Splice, splice

__all__ = ["FeatureAttribution", "METHODS", "feature_attributions"]

METHODS = ("input_x_gradient", "integrated_gradients", "attribution_patching")
"""The methods :func:`feature_attributions` takes."""

Method = Literal["input_x_gradient", "integrated_gradients", "attribution_patching"]


@dataclass
class FeatureAttribution:
    """The attributions of one hook point's SAE latents and error node.

    Shapes are for a ``(B, T, d_in)`` hook point output (any ``(B, ..., d_in)`` works the
    same way); ``K`` targets per sample add a dimension after ``B``.

    Attributes:
        hook_point: the hook point's name.
        latents: ``(B, T, n_latents)`` (``(B, K, T, n_latents)``): each latent's contribution
            at each position.
        error: ``(B, T)`` (``(B, K, T)``): the error node's contribution at each position,
            summed over the width.
        activations: ``(B, T, n_latents)``: the latents of the input (``z``).
    """

    hook_point: str
    latents: Tensor
    error: Tensor
    activations: Tensor

    def total(self) -> Tensor:
        """The sum of every latent's and the error's contribution per sample, ``(B,)``
        (``(B, K)``); for Integrated Gradients ``f(input) - f(start)`` up to the
        quadrature error."""
        keep = 2 if self.latents.ndim > self.activations.ndim else 1  # (B,) or (B, K)
        return self.latents.flatten(keep).sum(-1) + self.error.flatten(keep).sum(-1)


@entry_point
def feature_attributions(
    model: nn.Module,
    inputs: Inputs,
    target: Target = None,
    *,
    saes: Mapping[LayerSpec, Any],
    method: Method = "input_x_gradient",
    baseline: Inputs | None = None,
    steps: int = 32,
    rule: str = DEFAULT_RULE,
    batch_size: int | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, FeatureAttribution]:
    """The contribution of every SAE latent (and of each SAE's error) to a target.

    The SAEs are spliced in (:func:`gradlens.sae.splice`) for the call and taken out again;
    the latents and errors of all hook points are attributed together: one forward and one
    batched backward for ``"input_x_gradient"``; for ``"integrated_gradients"`` the
    ``steps`` points of every hook point's path are stacked as copies of the batch (a copy
    interpolates one hook point; the others keep their SAE's exact reconstruction) and
    differentiated in one backward per ``batch_size`` rows; for ``"attribution_patching"``
    an inference forward of ``inputs`` that stops after the last hook point, and one forward
    and backward of ``baseline``. The tape starts at the first latents; no parameter
    gradient, the model's or an SAE's, is computed.

    Example::

        result = gradlens.sae.feature_attributions(
            gpt2, ids, target=next_token_id, saes={"transformer.h.6.mlp": sae}
        )["transformer.h.6.mlp"]
        result.latents[0, -1].topk(5)          # the latents that push the prediction most

    Args:
        model: the model.
        inputs: its input (token ids ``(B, T)``, a tuple of positional inputs); ``B``
            samples.
        target: see :mod:`gradlens.targets`; an int is a class id -- for a language model
            the next-token id read at the last position -- and ``None`` each sample's top
            class on ``inputs``.
        saes: ``{hook point: SAE}`` as for :func:`gradlens.sae.splice`.
        method: ``"input_x_gradient"``, ``"integrated_gradients"`` or
            ``"attribution_patching"`` (see :mod:`gradlens.sae.attributions`).
        baseline: the baseline input of ``"attribution_patching"`` (same shapes as
            ``inputs``); the attributions estimate the change of the target from the
            baseline's forward to the one with the input's latents and errors.
        steps: the number of integration points (``"integrated_gradients"``).
        rule: the quadrature rule (:data:`gradlens.attribution.integrated.RULES`).
        batch_size: the most rows per forward (``"integrated_gradients"``); ``None``: all
            hook points and steps in one forward.
        select: picks the tensor of a hook point's structured output (see
            :func:`gradlens.sae.splice`).
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model (e.g. an attention mask).

    Returns:
        ``{hook point: FeatureAttribution}`` in model order.

    Raises:
        LayerNotFoundError: a hook point selects no module.
        SAEError: see :func:`gradlens.sae.splice`.
        ValueError: an unknown method, a ``baseline`` missing for (or given to a method
            other than) ``"attribution_patching"``, a bad rule, steps or batch size.
        InterventionError: ``baseline`` and ``inputs`` of different shapes.
        TargetError, OutputSelectionError: see :func:`gradlens.targets.scores`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    if (baseline is None) == (method == "attribution_patching"):
        raise ValueError(
            "attribution_patching needs baseline= (the input whose forward the input's "
            "latents are patched into)"
            if baseline is None
            else f"baseline= is for method='attribution_patching', not {method!r}"
        )
    check_batch_size(batch_size, optional=True)
    nodes, weights = quadrature(rule, steps) if method == "integrated_gradients" else (None, None)
    check_inputs({"inputs": inputs, "baseline": baseline}, forward_kwargs)
    spliced = splice(model, saes, select=select)
    parsed = ModelInput.parse(inputs, forward_kwargs, name="inputs")
    reference = None
    if baseline is not None:
        reference = ModelInput.parse(baseline, forward_kwargs, name="baseline")
        _check_pair(parsed, reference)
    target = check_target(target, parsed.batch_size)
    # the tensors built here are saved for backward: ordinary ones also under inference_mode
    with torch.inference_mode(False), ExitStack() as stack:
        if target is None and method != "input_x_gradient":
            target = clean_pass(model, parsed, None, output=output).target
        for site in spliced.sites.values():
            if isinstance(site.sae, nn.Module):
                stack.enter_context(parameters_without_grad(site.sae))
        stack.enter_context(spliced)
        if method == "input_x_gradient":
            return _input_x_gradient(model, parsed, target, spliced, output)
        if method == "integrated_gradients":
            assert nodes is not None and weights is not None
            return _integrated(model, parsed, target, spliced, output, nodes, weights, batch_size)
        assert reference is not None
        return _attribution_patching(model, parsed, reference, target, spliced, output)


def _sites(spliced: Splice) -> list[str]:
    return [name for pair in spliced.names.values() for name in pair]


def _input_x_gradient(
    model: nn.Module, inputs: ModelInput, target: Target, spliced: Splice, output: OutputSpec
) -> dict[str, FeatureAttribution]:
    result = differentiate(model, inputs, target, layers=_sites(spliced), output=output)
    multi = result.scores.ndim == 2
    attributions = {}
    for hook_point, (latents, error) in spliced.names.items():
        z, e = result.activations[latents], result.activations[error]
        attributions[hook_point] = _result(
            hook_point, z, z * result.gradients[latents], e * result.gradients[error], multi
        )
    return attributions


def _integrated(
    model: nn.Module,
    inputs: ModelInput,
    target: Target,
    spliced: Splice,
    output: OutputSpec,
    nodes: Tensor,
    weights: Tensor,
    batch_size: int | None,
) -> dict[str, FeatureAttribution]:
    batch = inputs.batch_size
    ends = extract(model, inputs.x, _sites(spliced), forward_kwargs=inputs.kwargs)
    cases = [(hp, s) for hp in spliced.hook_points for s in range(len(nodes))]
    per_forward = copies_per_chunk(batch_size, batch, len(cases))
    totals: dict[str, list[Tensor]] = {}
    multi = False
    for part in chunks(len(cases), per_forward):
        chunk = cases[part]
        scaled: dict[LayerSpec | tuple[LayerSpec, ...], Edit] = {}
        for hook_point in dict.fromkeys(hp for hp, _ in chunk):
            factors = torch.cat(
                [
                    torch.full((batch,), float(nodes[s]) if hp == hook_point else 1.0)
                    for hp, s in chunk
                ]
            )
            for site in spliced.names[hook_point]:
                scaled[site] = _scale(factors)
        result = differentiate(
            model,
            inputs.tile(len(chunk)),
            repeat_target(target, batch, len(chunk)),
            layers=[str(site) for site in scaled],
            output=output,
            hooks=[replace_outputs(model, scaled)],
        )
        multi = result.scores.ndim == 2
        for j, (hook_point, s) in enumerate(chunk):
            for k, site in enumerate(spliced.names[hook_point]):
                gradient = result.gradients[site]
                rows = gradient.narrow(1 if multi else 0, j * batch, batch)
                weighted = float(weights[s]) * rows
                sums = totals.setdefault(hook_point, [])
                if len(sums) <= k:
                    sums.append(weighted)
                else:
                    sums[k] = sums[k] + weighted
    attributions = {}
    for hook_point, (latents, error) in spliced.names.items():
        z, e = ends[latents], ends[error]
        g_z, g_e = totals[hook_point]
        attributions[hook_point] = _result(hook_point, z, z * g_z, e * g_e, multi)
    return attributions


def _scale(factors: Tensor) -> Edit:
    """An edit multiplying row ``r`` of an output by ``factors[r]``."""

    def edit(name: str, module: nn.Module, value: Tensor) -> Tensor:
        shape = (-1, *([1] * (value.ndim - 1)))
        return value * factors.to(device=value.device, dtype=value.dtype).view(shape)

    return edit


def _attribution_patching(
    model: nn.Module,
    inputs: ModelInput,
    baseline: ModelInput,
    target: Target,
    spliced: Splice,
    output: OutputSpec,
) -> dict[str, FeatureAttribution]:
    sites = _sites(spliced)
    ends = extract(model, inputs.x, sites, forward_kwargs=inputs.kwargs)
    result = differentiate(model, baseline, target, layers=sites, output=output)
    multi = result.scores.ndim == 2
    attributions = {}
    for hook_point, (latents, error) in spliced.names.items():
        dz = ends[latents] - result.activations[latents]
        de = ends[error] - result.activations[error]
        attributions[hook_point] = _result(
            hook_point,
            ends[latents],
            dz * result.gradients[latents],
            de * result.gradients[error],
            multi,
        )
    return attributions


def _result(
    hook_point: str, z: Tensor, latents: Tensor, error: Tensor, multi: bool
) -> FeatureAttribution:
    """The attribution of one hook point: ``K`` targets moved from dim 0 to dim 1, the
    error summed over the width."""
    if multi:
        latents, error = latents.movedim(0, 1), error.movedim(0, 1)
    return FeatureAttribution(hook_point, latents, error.sum(-1), z)


def _check_pair(inputs: ModelInput, baseline: ModelInput) -> None:
    if len(inputs.args) != len(baseline.args):
        raise InterventionError(
            f"inputs has {len(inputs.args)} positional inputs and baseline "
            f"{len(baseline.args)}; they must match"
        )
    for i, (a, b) in enumerate(zip(inputs.args, baseline.args)):
        if isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape != b.shape:
            raise InterventionError(
                f"inputs and baseline differ: input {i} has shape {tuple(a.shape)} and the "
                f"baseline's {tuple(b.shape)}; attribution patching compares their latents "
                "position by position, so they need the same shapes"
            )
