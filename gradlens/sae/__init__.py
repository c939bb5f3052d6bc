"""Sparse autoencoder latents as sites: :func:`splice`."""

from __future__ import annotations

from .autoencoder import SparseAutoencoder
from .splice import SAESite, Splice, error_site, latents_site, splice

__all__ = ["SAESite", "SparseAutoencoder", "Splice", "error_site", "latents_site", "splice"]
