"""The colour maps of gradlens figures."""

from __future__ import annotations

__all__ = ["DIVERGING_CMAP", "SEQUENTIAL_CMAP"]

DIVERGING_CMAP = "bwr"
"""Colour map of signed maps: blue negative, white zero, red positive."""

SEQUENTIAL_CMAP = "Reds"
"""Colour map of non-negative token scores: near-white at zero, dark red at the largest."""
