"""Composites: which LRP rule each module of a model gets.

A composite is either the name of one of the composites below, or a mapping from layer
specs (names, glob patterns as in :func:`gradlens.select_layers`, module types, modules or
filters) to rule objects (:mod:`gradlens.relevance.rules`). :func:`assign_rules` turns it
into ``{module name: rule}`` before any hook is registered:

1. a BatchNorm that folds into the layer before it
   (:func:`~gradlens.relevance.canonizers.batchnorm_pairs`) passes relevance on, and that
   layer's rule reads the folded weights;
2. the composite's keys: a key naming the module (an exact name, a pattern, the module or
   a filter) beats a type key; among name keys the exact name wins, then the first key in
   the mapping's order; among type keys the most derived type;
3. what every composite does (zennit's base layer map): elementwise activations pass
   relevance on (:class:`~gradlens.relevance.rules.Pass`; ``nn.ReLU`` by its own gradient,
   which is the same where the rules after it give inactive units no relevance: unless a
   flat, w² or z^B rule is given to a layer after the first),
   average pooling takes the Norm rule, max pooling, reshapes, dropout and other
   parameter-free modules keep their gradient (max pooling hands the relevance to the
   winner);
4. ``default`` for any other module with parameters; without it such a module is an
   error naming it and its type when relevance reaches it (an embedding fed token ids,
   or a module the forward does not run, is no error).

The named composites (zennit's, Montavon et al. 2019, section 10.1):

| name | first convolution or linear layer | convolutions | linear layers |
| --- | --- | --- | --- |
| ``"epsilon"`` | ε | ε | ε |
| ``"epsilon_plus"`` | z⁺ | z⁺ | ε |
| ``"epsilon_plus_flat"`` | flat | z⁺ | ε |
| ``"epsilon_gamma_box"`` | z^B (``low``, ``high``) | γ | ε |
| ``"epsilon_alpha2_beta1"`` | α2β1 | α2β1 | ε |

A BatchNorm that does not fold passes relevance on in the named composites (zennit's
choice); a user composite must name it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union, cast

from torch import nn

from ..core.selection import LayerSpec, named_modules, select_layers
from ..errors import LayerNotFoundError, RelevanceRuleError
from .canonizers import batchnorm_pairs
from .rules import AlphaBeta, Bound, Epsilon, Flat, Gamma, Norm, Pass, Rule, WSquare, ZBox, ZPlus

__all__ = ["COMPOSITES", "Assignment", "Composite", "assign_rules", "is_parametric"]

Composite = Union[str, Mapping[LayerSpec, Rule]]
"""A composite's name, or ``{layer spec: rule}``."""

COMPOSITES = (
    "epsilon",
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
)
"""The named composites."""

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.LogSigmoid, nn.Tanh, nn.Tanhshrink, nn.Softplus,
    nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardshrink, nn.Softshrink,
    nn.Threshold,
)  # fmt: skip
"""Elementwise activations: they pass relevance on unchanged."""
AVERAGE_POOLING: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
"""Average pooling: the Norm rule."""


@dataclass
class Assignment:
    """The rules of one model.

    Attributes:
        rules: ``{module name: rule}`` in the model's order.
        modules: ``{module name: module}`` for the same names.
        folded: ``{layer name: BatchNorm module}`` of the layers a BatchNorm folds into.
        uncovered: ``{module name: module}`` of the modules with parameters no rule
            covers (an error if relevance reaches them).
    """

    rules: dict[str, Rule] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    folded: dict[str, nn.Module] = field(default_factory=dict)
    uncovered: dict[str, nn.Module] = field(default_factory=dict)


def is_parametric(module: nn.Module) -> bool:
    """The module has parameters of its own (not only in submodules)."""
    return any(True for _ in module.parameters(recurse=False))


def _computes(module: nn.Module) -> bool:
    """A module rules apply to: a leaf, or a module with parameters of its own."""
    return is_parametric(module) or not any(True for _ in module.children())


def assign_rules(
    model: nn.Module,
    composite: Composite,
    *,
    epsilon: float | None = None,
    gamma: float | None = None,
    low: Bound | None = None,
    high: Bound | None = None,
    default: Rule | None = None,
    canonize: bool = True,
) -> Assignment:
    """``{module name: rule}`` for ``model`` (see the module docstring for the order).

    Args:
        model: the model.
        composite: a name of :data:`COMPOSITES` or ``{layer spec: rule}``.
        epsilon: the ε rule's stabiliser of the named composites (1e-6).
        gamma: ``"epsilon_gamma_box"``'s γ (0.25).
        low, high: ``"epsilon_gamma_box"``'s input bounds (required there).
        default: the rule of modules with parameters that nothing else covers.
        canonize: fold BatchNorms into the layer before them.

    Returns:
        An :class:`Assignment`.

    Raises:
        RelevanceRuleError: an unknown composite name, a value that is not a rule, a rule
            option the composite does not take, or a rule that needs weights given to a
            module without.
        LayerNotFoundError: a key of the composite selects no module.
    """
    if default is not None:
        _check_rule(default, "default")
    type_rules: dict[type[nn.Module], Rule] = {}
    name_rules: list[tuple[LayerSpec, Rule]] = []
    named = named_modules(model)
    candidates = {name: m for name, m in named.items() if _computes(m)}
    first_name = next(
        (n for n, m in candidates.items() if isinstance(m, (*_CONVOLUTIONS, nn.Linear))), None
    )
    if isinstance(composite, str):
        type_rules, first = _named(composite, epsilon, gamma, low, high)
        if first is not None and first_name is not None:
            name_rules.append((first_name, first))
        type_rules[_BATCHNORMS[0]] = type_rules[_BATCHNORMS[1]] = type_rules[_BATCHNORMS[2]] = (
            Pass()
        )
    elif isinstance(composite, Mapping):
        given = {"epsilon": epsilon, "gamma": gamma, "low": low, "high": high}
        passed = [k for k, v in given.items() if v is not None]
        if passed:
            raise RelevanceRuleError(
                f"{', '.join(passed)} set the rules of the named composites; a composite "
                "mapping gives its rules their options (gradlens.lrp.Epsilon(1e-9), ...)"
            )
        for spec, rule in composite.items():
            _check_rule(rule, f"the composite's entry {spec!r}")
            if isinstance(spec, type) and issubclass(spec, nn.Module):
                if not any(isinstance(m, spec) for m in candidates.values()):
                    raise LayerNotFoundError(
                        f"the composite's key {spec.__name__} names no module of "
                        f"{type(model).__name__}; the types present are: "
                        f"{', '.join(sorted({type(m).__name__ for m in candidates.values()}))}"
                    )
                type_rules[spec] = rule
            else:
                name_rules.append((cast(LayerSpec, spec), rule))
    else:
        raise RelevanceRuleError(
            f"composite must be one of {', '.join(map(repr, COMPOSITES))} or a mapping "
            f"{{layer spec: rule}}; got {type(composite).__name__}"
        )

    by_name: dict[str, Rule] = {}
    exact: dict[str, Rule] = {}
    for spec, rule in name_rules:
        try:
            selected = select_layers(model, spec)
        except LayerNotFoundError as error:
            raise LayerNotFoundError(f"the composite's key {spec!r}: {error}") from None
        hits = [n for n in selected if n in candidates]
        if not hits:
            raise LayerNotFoundError(
                f"the composite's key {spec!r} selects only containers "
                f"({', '.join(selected)}); rules apply to the modules inside them"
            )
        for hit in hits:
            by_name.setdefault(hit, rule)
        if isinstance(spec, str) and spec in candidates:
            exact[spec] = rule

    pairs = batchnorm_pairs(model) if canonize else {}
    assignment = Assignment()
    for name, module in candidates.items():
        chosen: Rule | None
        if name in pairs:
            chosen = Pass()
            assignment.folded[pairs[name]] = module
        else:
            chosen = exact.get(name) or by_name.get(name) or _by_type(module, type_rules)
            if chosen is None:
                chosen = _built_in(module)
            if chosen is None and is_parametric(module):
                chosen = default
                if chosen is None:
                    assignment.uncovered[name] = module
        if chosen is not None:
            if chosen.needs_weights and not _has_weights(module):
                raise RelevanceRuleError(
                    f"{type(chosen).__name__} needs a convolution, linear layer or BatchNorm; "
                    f"{name} is a {type(module).__name__}"
                )
            assignment.rules[name] = chosen
            assignment.modules[name] = module
    # ReLUs keep their gradient (see _built_in) unless a rule that gives inactive inputs
    # relevance runs after the input layer: then they pass relevance on by the rule
    spreading = [n for n, r in assignment.rules.items() if isinstance(r, (Flat, WSquare, ZBox))]
    if any(n != first_name for n in spreading):
        for name, module in candidates.items():
            if type(module) is nn.ReLU and name not in assignment.rules:
                assignment.rules[name] = Pass()
                assignment.modules[name] = module
    return assignment


def _has_weights(module: nn.Module) -> bool:
    return isinstance(module, (*_CONVOLUTIONS, nn.Linear, *_BATCHNORMS))


def _check_rule(rule: object, where: str) -> None:
    if isinstance(rule, type) and issubclass(rule, Rule):
        raise RelevanceRuleError(
            f"{where} is the rule class {rule.__name__}; give an instance: {rule.__name__}()"
        )
    if not isinstance(rule, Rule):
        raise RelevanceRuleError(
            f"{where} is not an LRP rule: {rule!r}; the rules are gradlens.lrp.Epsilon, "
            "Gamma, ZPlus, AlphaBeta, Flat, WSquare, ZBox, Pass and Norm"
        )


def _by_type(module: nn.Module, type_rules: Mapping[type[nn.Module], Rule]) -> Rule | None:
    for cls in type(module).__mro__:  # the most derived type first
        if cls in type_rules:
            return type_rules[cls]
    return None


def _built_in(module: nn.Module) -> Rule | None:
    if type(module) is nn.ReLU:
        # Its gradient passes the relevance where it is active; where it is not, the rules
        # after it (all but flat, w² and z^B, which assign_rules checks) give its output
        # none. The same as the pass rule, without a hook and a copy per call.
        return None
    if isinstance(module, ACTIVATIONS):
        return Pass()
    if isinstance(module, AVERAGE_POOLING):
        return Norm()
    return None


def _named(
    name: str,
    epsilon: float | None,
    gamma: float | None,
    low: Bound | None,
    high: Bound | None,
) -> tuple[dict[type[nn.Module], Rule], Rule | None]:
    """``({type: rule}, rule of the first layer)`` of a named composite."""
    if name not in COMPOSITES:
        raise RelevanceRuleError(
            f"unknown composite {name!r}; the composites are {', '.join(map(repr, COMPOSITES))}"
            ", or a mapping {layer spec: rule}"
        )
    boxed = name == "epsilon_gamma_box"
    if not boxed and (gamma is not None or low is not None or high is not None):
        raise RelevanceRuleError(
            f"gamma, low and high are options of 'epsilon_gamma_box', not of {name!r}"
        )
    linear = Epsilon(1e-6 if epsilon is None else epsilon)
    convolution: Rule
    first: Rule | None = None
    if name == "epsilon":
        convolution = linear
    elif name in ("epsilon_plus", "epsilon_plus_flat"):
        convolution = ZPlus()
        first = Flat() if name == "epsilon_plus_flat" else None
    elif name == "epsilon_alpha2_beta1":
        convolution = AlphaBeta(2.0, 1.0)
    else:
        if low is None or high is None:
            raise RelevanceRuleError("'epsilon_gamma_box' needs the input bounds low= and high=")
        convolution = Gamma(0.25 if gamma is None else gamma)
        first = ZBox(low, high)
    rules: dict[type[nn.Module], Rule] = {cls: convolution for cls in _CONVOLUTIONS}
    rules[nn.Linear] = linear
    return rules, first
