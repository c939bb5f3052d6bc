"""Layer-wise relevance propagation on the capture engine: :func:`lrp` and the five
registered composites ``lrp_epsilon``, ``lrp_epsilon_plus``, ``lrp_epsilon_plus_flat``,
``lrp_epsilon_gamma_box`` and ``lrp_epsilon_alpha2_beta1``.

How it runs: the rules of :mod:`~gradlens.relevance.composites` become module rules of
:func:`gradlens.core.backward.override_backward`, the residual sums a function rule
(:func:`~gradlens.relevance.canonizers.residual_sums`), and one forward and one (batched)
backward of :func:`gradlens.passes.differentiate` carry the relevance -- as the gradient --
from the explained score to the input or to ``layer``. The hooks come off afterwards, also
when the call raises; the model's parameters, buffers and flags are never written to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union, cast

import torch
from torch import Tensor, nn

from ..core.backward import ModuleRule, override_backward
from ..core.checks import entry_point
from ..core.hooks import HookSet
from ..core.inputs import Inputs, ModelInput
from ..core.lifecycle import Capture
from ..core.output_selection import OutputSpec
from ..core.selection import Layers, LayerSpec
from ..errors import RelevanceRuleError
from ..layering.resolve import single_layer
from ..passes import differentiate
from ..registry import register
from ..targets.scoring import Target
from .canonizers import residual_sums
from .composites import Assignment, Composite, assign_rules
from .layers import AffineLayer, FunctionLayer, is_affine, uses_batch_statistics
from .rules import (
    AlphaBeta,
    Bound,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    Pass,
    Rule,
    WSquare,
    ZBox,
    ZPlus,
)

__all__ = [
    "lrp",
    "lrp_epsilon",
    "lrp_epsilon_alpha2_beta1",
    "lrp_epsilon_gamma_box",
    "lrp_epsilon_plus",
    "lrp_epsilon_plus_flat",
]

Relevance = Union[Tensor, tuple[Union[Tensor, None], ...], dict[str, Union[Tensor, None]]]
"""A tensor shaped like the input (or the layer's output), or a tuple / dict of them for
tuple and mapping inputs (``None`` for inputs that are not floating point)."""


def _module_rule(rule: Rule, folded: nn.Module | None) -> ModuleRule:
    """The :func:`~gradlens.core.backward.override_backward` rule applying ``rule``: the
    relevance of the output arrives as the gradient, the input's is returned as its
    gradient (further tensor inputs get none)."""

    def apply(
        module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor | None, relevance: Tensor
    ) -> tuple[Tensor | None, ...]:
        x = inputs[0]
        layer = (
            AffineLayer.of(module, x, output, folded)
            if is_affine(module) and rule.needs_input
            else FunctionLayer(module, output)
        )
        return (rule.propagate(layer, x, relevance), *[None] * (len(inputs) - 1))

    return apply


def _keeps_output(rule: Rule, folded: nn.Module | None) -> bool:
    return rule.needs_output or (folded is not None and uses_batch_statistics(folded))


class _Unruled(Capture[None]):
    """Forward pre-hooks on the modules with parameters no rule covers: relevance reaching
    one (a tensor input on the tape) is a :class:`RelevanceRuleError` naming it."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self._modules = dict(modules)
        self._hooks = HookSet()

    def _open(self) -> None:
        for name, module in self._modules.items():
            self._hooks.forward_pre(module, self._refuse(name))

    def _close(self) -> None:
        self._hooks.remove()

    @staticmethod
    def _refuse(name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            if torch.is_grad_enabled() and any(
                isinstance(a, Tensor) and a.requires_grad for a in args
            ):
                raise RelevanceRuleError(
                    f"no LRP rule covers {name or '(the model)'} ({type(module).__name__}), "
                    "which the relevance passes through: name it (or its type) in the "
                    "composite, e.g. {nn.LayerNorm: gradlens.lrp.Epsilon()}, or pass default="
                )

        return hook


def _overrides(model: nn.Module, assignment: Assignment) -> list[Any]:
    """The hook contexts of one LRP pass (not entered): one backward override per
    combination of what the rules read (the output, the input values), so that each call
    keeps only that."""
    groups: dict[tuple[bool, bool], dict[LayerSpec, ModuleRule]] = {}
    for name, rule in assignment.rules.items():
        folded = assignment.folded.get(name)
        module = assignment.modules[name]
        keeps = (_keeps_output(rule, folded), rule.needs_input)
        groups.setdefault(keeps, {})[module] = _module_rule(rule, folded)
    contexts: list[Any] = [residual_sums(model)]
    if assignment.uncovered:
        contexts.append(_Unruled(assignment.uncovered))
    for (keep_output, keep_inputs), rules in groups.items():
        contexts.append(
            override_backward(model, rules, keep_output=keep_output, keep_inputs=keep_inputs)
        )
    return contexts


def _default_bounds(inputs: ModelInput) -> tuple[Tensor, Tensor]:
    """Per-channel minimum and maximum of the first floating-point input over the batch."""
    x = next(a for a in inputs.args if isinstance(a, Tensor) and a.is_floating_point())
    dims = [d for d in range(x.ndim) if d != 1]
    flat = x.detach().permute(1, *dims).reshape(x.shape[1], -1)
    return flat.amin(1), flat.amax(1)


@entry_point
def lrp(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    composite: Composite = "epsilon_plus_flat",
    layer: Layers | None = None,
    epsilon: float | None = None,
    gamma: float | None = None,
    low: Bound | None = None,
    high: Bound | None = None,
    default: Rule | None = None,
    canonize: bool = True,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Relevance:
    """Layer-wise relevance propagation: the explained score redistributed over the input
    (or over a layer's output) by a rule per layer.

    Bach et al. (2015), "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
    Layer-Wise Relevance Propagation"; Montavon et al. (2019), "Layer-Wise Relevance
    Propagation: An Overview". The relevance starts from the explained score ``f_c(x)``
    (Captum's and lxt's convention; zennit starts from a one-hot vector, which gives this
    map divided by ``f_c(x)``), and each layer hands the relevance of its outputs to its
    inputs by its rule (:mod:`gradlens.relevance.rules`, also ``gradlens.lrp.Epsilon`` and
    the others). The conserving rules keep the sum: with a bias-free network and ``ε → 0``
    the relevance sums to ``f_c(x)``. BatchNorm is folded into the convolution before it
    and residual additions split the relevance in proportion to their summands
    (:mod:`gradlens.relevance.canonizers`); the model is not written to. One forward and
    one (batched) backward.

    Args:
        model: the model (the rules follow its modules; functional pooling inside
            ``forward`` keeps its plain gradient).
        x: its input ``(B, ...)``, or a tuple of positional inputs.
        target: see :mod:`gradlens.targets`; ``None`` explains each sample's top class.
        composite: a named composite (``"epsilon"``, ``"epsilon_plus"``,
            ``"epsilon_plus_flat"``, ``"epsilon_gamma_box"``, ``"epsilon_alpha2_beta1"``)
            or a mapping ``{layer spec or module type: rule}`` (see
            :mod:`gradlens.relevance.composites`: a name beats a type).
        layer: the layer whose output's relevance is returned (Captum's ``LayerLRP``);
            ``None``: the input's.
        epsilon: the ε of the named composites' ε rule (default 1e-6).
        gamma: ``"epsilon_gamma_box"``'s γ (default 0.25).
        low: ``"epsilon_gamma_box"``'s lowest input value for the z^B rule of the first
            layer: a number, a per-channel ``(C,)`` tensor or an input-shaped tensor;
            default: each channel's minimum over the batch.
        high: the highest input value, as ``low``; default: each channel's maximum.
        default: the rule for modules with parameters the composite does not cover
            (without it they are an error).
        canonize: fold each BatchNorm into the convolution or linear layer before it.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.

    Returns:
        The relevance, shaped like the input ``(B, *x.shape[1:])`` (a tuple for tuple
        inputs, ``None`` for inputs that are not floating point), or like ``layer``'s
        output; ``(B, K, ...)`` for ``K`` targets per sample.

    Raises:
        RelevanceRuleError: an unknown composite or rule, or a rule option the composite
            does not take (before any hook); a module with parameters no rule covers that
            the relevance reaches (during the forward, naming it and its type).
        LayerNotFoundError: a composite key or ``layer`` selects no module.
        ValueError: ``low`` or ``high`` do not fit the input; ``layer`` selects several
            modules.
        TargetError: a target that does not fit the output.
        TypeError: no floating-point input (without ``layer``).
    """
    inputs = ModelInput.parse(x, forward_kwargs)
    if composite == "epsilon_gamma_box":
        if low is None or high is None:
            low_default, high_default = _default_bounds(inputs)
            low = low_default if low is None else low
            high = high_default if high is None else high
        image = next(a for a in inputs.args if isinstance(a, Tensor) and a.is_floating_point())
        ZBox(low, high).bounds(image)  # a bound that does not fit: ValueError before hooks
    assignment = assign_rules(
        model,
        composite,
        epsilon=epsilon,
        gamma=gamma,
        low=low,
        high=high,
        default=default,
        canonize=canonize,
    )
    _refuse_offloaded(assignment)
    name = None if layer is None else single_layer(model, layer)
    if name is None and not any(
        isinstance(a, Tensor) and a.is_floating_point() for a in inputs.args
    ):
        raise TypeError(
            "lrp attributes to floating-point inputs and the model input holds none; "
            "pass layer= for the relevance of a layer (e.g. the embeddings)"
        )
    result = differentiate(
        model,
        inputs,
        target,
        layers=name,
        wrt_inputs=name is None,
        output=output,
        hooks=_overrides(model, assignment),
    )
    scores = result.scores
    if name is not None:
        gradient = result.gradients[name]
        if not isinstance(gradient, Tensor):
            raise ValueError(f"layer {name!r} does not return a tensor")
        return _times_score(gradient, scores)
    values = [
        None
        if not (isinstance(a, Tensor) and a.is_floating_point())
        else _times_score(_or_zeros(g, a, scores), scores)
        for a, g in zip(result.inputs, result.input_gradients)
    ]
    rebuilt = inputs.rebuild(values)
    return cast(Relevance, rebuilt)


def _refuse_offloaded(assignment: Assignment) -> None:
    """Refuse modules whose weights are ``meta`` placeholders (offloaded by ``accelerate``):
    the rules recompute their layer in the backward pass, when the weights are put away."""
    for name, module in assignment.modules.items():
        if name in assignment.rules and any(p.is_meta for p in module.parameters(recurse=False)):
            raise RelevanceRuleError(
                f"{name or '(the model)'} ({type(module).__name__}) holds offloaded weights "
                "(meta placeholders, as accelerate's CPU and disk offload leave them): LRP's "
                "rules recompute the layer in the backward pass, after accelerate has put the "
                "weights away; run lrp on a model whose weights are in memory (a device_map "
                "without offload works)"
            )


def _or_zeros(gradient: Tensor | None, like: Tensor, scores: Tensor) -> Tensor:
    if gradient is not None:
        return gradient
    return like.new_zeros((scores.shape[1], *like.shape) if scores.ndim == 2 else like.shape)


def _times_score(gradient: Tensor, scores: Tensor) -> Tensor:
    """The relevance propagated from a unit start, times the score: ``(B, ...)`` for
    ``(B,)`` scores, ``(B, K, ...)`` from a ``(K, B, ...)`` gradient for ``(B, K)``."""
    if scores.ndim == 2:
        gradient = gradient.movedim(0, 1)
    return gradient * scores.reshape(*scores.shape, *([1] * (gradient.ndim - scores.ndim)))


def _attach_rules(function: Callable[..., Any]) -> None:
    """Make the rule classes attributes of ``function``: ``gradlens.lrp.Epsilon(1e-9)``."""
    for rule in (Rule, Epsilon, Gamma, ZPlus, AlphaBeta, Flat, WSquare, ZBox, Pass, Norm):
        setattr(function, rule.__name__, rule)


_attach_rules(lrp)


def _composite(
    model: nn.Module,
    x: Inputs,
    target: Target,
    composite: str,
    output: OutputSpec,
    forward_kwargs: Mapping[str, Any] | None,
    **options: Any,
) -> Tensor:
    result = lrp(
        model,
        x,
        target,
        composite=composite,
        output=output,
        forward_kwargs=forward_kwargs,
        **options,
    )
    return cast(Tensor, result)


@register("lrp_epsilon", "attribution", needs_layer=False, multi_target=True, transformers=False)
@entry_point
def lrp_epsilon(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    epsilon: float = 1e-6,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """LRP with the ε rule on every convolution and linear layer (:func:`lrp` with
    ``composite="epsilon"``; Captum's ``LRP`` default).

    Args:
        model: the model.
        x: its input ``(B, ...)``.
        target: see :mod:`gradlens.targets`.
        epsilon: the ε rule's stabiliser.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.

    Returns:
        Relevance shaped like ``x`` (``(B, K, ...)`` for ``K`` targets per sample).

    Raises:
        RelevanceRuleError: a module with parameters that no rule covers.
        TargetError: a target that does not fit the output.
    """
    return _composite(model, x, target, "epsilon", output, forward_kwargs, epsilon=epsilon)


@register(
    "lrp_epsilon_plus", "attribution", needs_layer=False, multi_target=True, transformers=False
)
@entry_point
def lrp_epsilon_plus(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    epsilon: float = 1e-6,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """LRP with z⁺ on convolutions and ε on linear layers (:func:`lrp` with
    ``composite="epsilon_plus"``; zennit's ``EpsilonPlus``).

    Args:
        model: the model.
        x: its input ``(B, ...)``.
        target: see :mod:`gradlens.targets`.
        epsilon: the ε rule's stabiliser.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.

    Returns:
        Relevance shaped like ``x`` (``(B, K, ...)`` for ``K`` targets per sample).

    Raises:
        RelevanceRuleError: a module with parameters that no rule covers.
        TargetError: a target that does not fit the output.
    """
    return _composite(model, x, target, "epsilon_plus", output, forward_kwargs, epsilon=epsilon)


@register(
    "lrp_epsilon_plus_flat", "attribution", needs_layer=False, multi_target=True, transformers=False
)
@entry_point
def lrp_epsilon_plus_flat(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    epsilon: float = 1e-6,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """LRP with the flat rule on the first layer, z⁺ on the other convolutions and ε on
    linear layers (:func:`lrp`'s default composite; zennit's ``EpsilonPlusFlat``).

    Args:
        model: the model.
        x: its input ``(B, ...)``.
        target: see :mod:`gradlens.targets`.
        epsilon: the ε rule's stabiliser.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.

    Returns:
        Relevance shaped like ``x`` (``(B, K, ...)`` for ``K`` targets per sample).

    Raises:
        RelevanceRuleError: a module with parameters that no rule covers.
        TargetError: a target that does not fit the output.
    """
    return _composite(
        model, x, target, "epsilon_plus_flat", output, forward_kwargs, epsilon=epsilon
    )


@register(
    "lrp_epsilon_gamma_box", "attribution", needs_layer=False, multi_target=True, transformers=False
)
@entry_point
def lrp_epsilon_gamma_box(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    low: Bound | None = None,
    high: Bound | None = None,
    gamma: float = 0.25,
    epsilon: float = 1e-6,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """LRP with z^B on the first layer, γ on the other convolutions and ε on linear
    layers (:func:`lrp` with ``composite="epsilon_gamma_box"``; zennit's
    ``EpsilonGammaBox``).

    Args:
        model: the model.
        x: its input ``(B, C, ...)``.
        target: see :mod:`gradlens.targets`.
        low: the lowest input value: a number, per channel ``(C,)`` or input-shaped;
            default: each channel's minimum over the batch.
        high: the highest input value, as ``low``; default: each channel's maximum.
        gamma: the γ rule's parameter.
        epsilon: the ε rule's stabiliser.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.

    Returns:
        Relevance shaped like ``x`` (``(B, K, ...)`` for ``K`` targets per sample).

    Raises:
        ValueError: ``low`` or ``high`` do not fit the input.
        RelevanceRuleError: a module with parameters that no rule covers.
        TargetError: a target that does not fit the output.
    """
    return _composite(
        model,
        x,
        target,
        "epsilon_gamma_box",
        output,
        forward_kwargs,
        low=low,
        high=high,
        gamma=gamma,
        epsilon=epsilon,
    )


@register(
    "lrp_epsilon_alpha2_beta1",
    "attribution",
    needs_layer=False,
    multi_target=True,
    transformers=False,
)
@entry_point
def lrp_epsilon_alpha2_beta1(
    model: nn.Module,
    x: Inputs,
    target: Target = None,
    *,
    epsilon: float = 1e-6,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """LRP with α2β1 on convolutions and ε on linear layers (:func:`lrp` with
    ``composite="epsilon_alpha2_beta1"``; zennit's ``EpsilonAlpha2Beta1``).

    Args:
        model: the model.
        x: its input ``(B, ...)``.
        target: see :mod:`gradlens.targets`.
        epsilon: the ε rule's stabiliser.
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model.

    Returns:
        Relevance shaped like ``x`` (``(B, K, ...)`` for ``K`` targets per sample).

    Raises:
        RelevanceRuleError: a module with parameters that no rule covers.
        TargetError: a target that does not fit the output.
    """
    return _composite(
        model, x, target, "epsilon_alpha2_beta1", output, forward_kwargs, epsilon=epsilon
    )
