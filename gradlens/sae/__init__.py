"""Sparse autoencoder latents as sites: :func:`splice`, :func:`feature_attributions`."""

from __future__ import annotations

from .attributions import FeatureAttribution, feature_attributions
from .autoencoder import SparseAutoencoder
from .splice import SAESite, Splice, error_site, latents_site, splice

__all__ = [
    "FeatureAttribution",
    "SAESite",
    "SparseAutoencoder",
    "Splice",
    "error_site",
    "feature_attributions",
    "latents_site",
    "splice",
]
