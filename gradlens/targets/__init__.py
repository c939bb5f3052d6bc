"""Targets: what is being explained, turned into one score per sample (or K per sample).

A *target* says which number of the model output an explanation is about:

* ``None`` -- the top-scoring class of each sample (logits of shape ``(B, num_classes)``),
  or the output itself when the model returns one number per sample (shape ``(B,)``);
  for a language model's logits ``(B, T, vocabulary)`` classes are read at the last
  position ``T - 1`` (the next-token prediction: batches of prompts of different lengths
  must be left-padded so that every prompt ends there);
* an ``int`` -- that class for every sample;
* a sequence or 1-D tensor of length ``B`` -- one class per sample;
* a ``(B, K)`` tensor or a list of ``B`` lists of ``K`` classes -- ``K`` targets per sample;
* a callable ``output -> scores`` of shape ``(B,)`` (or ``(B, K)``) -- anything else, e.g.
  :func:`segmentation`, :func:`regression`, :func:`probability`, :func:`detection` below.

A structured output (a mapping or dataclass, e.g. a Hugging Face ``ModelOutput``) with a
``logits`` tensor is scored on it; any other structured output needs ``output=`` (see
:func:`select_output`) or a callable target.

:func:`scores` is the single place where gradlens turns a target into scores. Class ids are
integers (a float or a bool is a :class:`~gradlens.errors.TargetError`); one parser reads
them all, :mod:`gradlens.targets.parse`.
"""

from ..core.output_selection import OutputSpec, select_output
from .language import sequence, token
from .scoring import Target, probability, regression, scores
from .vision import detection, segmentation

__all__ = [
    "Target",
    "OutputSpec",
    "select_output",
    "scores",
    "probability",
    "segmentation",
    "regression",
    "detection",
    "token",
    "sequence",
]
