"""Relevance propagation: layer-wise relevance propagation (LRP) for CNNs and AttnLRP for
transformers.

* :func:`lrp` -- relevance of the input or of a layer, by a composite of rules; also
  registered as ``lrp_epsilon``, ``lrp_epsilon_plus``, ``lrp_epsilon_plus_flat``,
  ``lrp_epsilon_gamma_box`` and ``lrp_epsilon_alpha2_beta1`` (kind ``"attribution"``).
* :mod:`~gradlens.relevance.rules` -- the rules (``Epsilon``, ``Gamma``, ``ZPlus``,
  ``AlphaBeta``, ``Flat``, ``WSquare``, ``ZBox``, ``Pass``, ``Norm``), also reachable as
  ``gradlens.lrp.Epsilon`` and so on.
* :mod:`~gradlens.relevance.composites` -- which module gets which rule.
* :mod:`~gradlens.relevance.canonizers` -- BatchNorm folding and residual sums, through
  hooks.
* :func:`attnlrp` (:mod:`~gradlens.relevance.attention_lrp`) -- AttnLRP for transformers,
  registered as ``attnlrp``; its rules are in :mod:`~gradlens.relevance.transformer_rules`
  and :mod:`~gradlens.relevance.gradient_rules`.
"""

from __future__ import annotations

from .attention_lrp import attnlrp
from .composites import COMPOSITES, Composite
from .propagation import (
    lrp,
    lrp_epsilon,
    lrp_epsilon_alpha2_beta1,
    lrp_epsilon_gamma_box,
    lrp_epsilon_plus,
    lrp_epsilon_plus_flat,
)
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, Rule, WSquare, ZBox, ZPlus

__all__ = [
    "COMPOSITES",
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "Norm",
    "Pass",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "attnlrp",
    "lrp",
    "lrp_epsilon",
    "lrp_epsilon_alpha2_beta1",
    "lrp_epsilon_gamma_box",
    "lrp_epsilon_plus",
    "lrp_epsilon_plus_flat",
]
