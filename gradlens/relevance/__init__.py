"""Relevance propagation: AttnLRP for transformers (:func:`attnlrp`)."""

from .attnlrp import attnlrp

__all__ = ["attnlrp"]
