"""Interventions: run a model with edited activations, and find the ones that matter.

* :func:`patch` -- a context manager inside which every forward runs with the given layer
  outputs edited (replaced, zeroed, mean-ablated, steered, resampled; see
  :mod:`gradlens.edits`);
* :func:`activation_patching` -- the metric of a corrupted run with each layer (and
  position) patched from a clean run, many cases batched into one forward;
* :func:`attribution_patching` -- its first-order estimate from two forwards and one
  backward.

The edits are applied by output-replacing forward hooks on the selected modules, which
come off when the block ends; nothing else of the model changes.
"""

from __future__ import annotations

from . import edits
from .patch import EditSpec, patch
from .patching import Metric, PatchPositions, activation_patching, attribution_patching

__all__ = [
    "EditSpec",
    "Metric",
    "PatchPositions",
    "activation_patching",
    "attribution_patching",
    "edits",
    "patch",
]
