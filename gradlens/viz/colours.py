"""The colour maps of gradlens figures."""

from __future__ import annotations

__all__ = ["DIVERGING_CMAP"]

DIVERGING_CMAP = "bwr"
"""Colour map of signed maps: blue negative, white zero, red positive."""
