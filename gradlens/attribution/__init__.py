"""Input-space gradient attributions, shaped like the input.

Every method is ``f(model, x, target=None, *, output=None, forward_kwargs=None, ...)`` and
returns a tensor shaped like ``x`` -- ``(B, C, H, W)`` images, ``(B, D)`` tabular rows,
``(B, T, E)`` embeddings -- or ``(B, K, ...)`` for ``K`` targets per sample. For a tuple
input ``x = (a, b, ...)`` (the model is called as ``model(*x)``) the result is a tuple in
the same order, with an attribution for each floating-point input and ``None`` for the
others (token ids, integer masks). Targets follow :mod:`gradlens.targets`.

Methods that evaluate the model on stacked modified copies of the batch (noise samples,
integration steps, occluded windows) fix ``target=None`` to the top class of the clean
input, repeat tensor keyword inputs whose dim 0 is the batch, and take ``batch_size`` (the
number of model inputs per forward). The model is left exactly as it was (hooks,
``requires_grad``, train/eval mode, buffers, ``.grad``); in train mode results depend on
dropout and, through batch normalisation, on the rest of the stacked batch.

Registered in :data:`gradlens.METHODS` (kind ``"attribution"``): ``saliency``,
``input_x_gradient``, ``smoothgrad``, ``vargrad``, ``integrated_gradients``,
``guided_backprop``, ``guided_gradcam``, ``occlusion``, ``deeplift``, ``deeplift_shap``,
``gradient_shap``. The layer variants
(:func:`layer_integrated_gradients`, :func:`layer_gradient_x_activation`) return
layer-shaped results and are not registered.
"""

from __future__ import annotations

from ._common import Attribution
from .deep_lift import MAX_POOLS, NONLINEARITIES, deeplift, deeplift_shap
from .gradient import input_x_gradient, saliency
from .guided import guided_backprop, guided_gradcam
from .integrated import RULES, integrated_gradients, layer_integrated_gradients, quadrature
from .layer import layer_gradient_x_activation
from .noise import NoiseMethodOptions, noise_scale, smoothgrad, vargrad
from .occlusion import occlusion, window_positions
from .shap import Distribution, gradient_shap

__all__ = [
    "Attribution",
    "Distribution",
    "MAX_POOLS",
    "NONLINEARITIES",
    "NoiseMethodOptions",
    "RULES",
    "deeplift",
    "deeplift_shap",
    "gradient_shap",
    "guided_backprop",
    "guided_gradcam",
    "input_x_gradient",
    "integrated_gradients",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "noise_scale",
    "occlusion",
    "quadrature",
    "saliency",
    "smoothgrad",
    "vargrad",
    "window_positions",
]
