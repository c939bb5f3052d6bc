"""Sparse autoencoder latents as sites.

* :func:`splice` -- run a model with SAEs spliced in at hook points; their latents and
  error nodes become sites named ``"<hook_point>.latents"`` and ``"<hook_point>.error"``
  for ``record``, ``extract``, ``patch`` and the patching methods;
* :func:`feature_attributions` -- the contribution of every latent (and of the error) to
  a target: input x gradient, integrated gradients, attribution patching;
* :func:`top_features` -- the cached windows where a latent fires most (read from an
  activation cache, no forward of the model);
* :class:`SparseAutoencoder` -- a small ReLU SAE for tests and examples. Any module with
  ``encode`` and ``decode`` (SAELens' ``SAE``) works wherever an SAE is taken.
"""

from __future__ import annotations

from .attributions import FeatureAttribution, feature_attributions
from .autoencoder import SparseAutoencoder
from .splice import SAESite, Splice, error_site, latents_site, splice
from .top import TopFeatures, top_features

__all__ = [
    "FeatureAttribution",
    "SAESite",
    "SparseAutoencoder",
    "Splice",
    "TopFeatures",
    "error_site",
    "feature_attributions",
    "latents_site",
    "splice",
    "top_features",
]
