"""gradlens: gradient-aware interpretability for PyTorch.

One capture engine (:class:`Recorder`) for activations and gradients of any named module,
and the methods built on it.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from . import (  # (fill the registry)
    attention,
    attribution,
    cam,
    errors,
    relevance,
    sae,
    targets,
    text,
    version,
)

# The old module paths that share a name with a function of this namespace are loaded
# first, so that the functions bound below are what ``gradlens.extract`` is afterwards.
from . import extract as _extract_module  # noqa: F401
from .attention import (
    AttentionCapture,
    attention_rollout,
    attentions,
    capture_attention,
    gradient_attention_rollout,
)
from .attribution import (
    deeplift,
    deeplift_shap,
    gradient_shap,
    guided_backprop,
    guided_gradcam,
    input_x_gradient,
    integrated_gradients,
    layer_gradient_x_activation,
    layer_integrated_gradients,
    occlusion,
    saliency,
    smoothgrad,
    vargrad,
)
from .cam import (
    ablationcam,
    eigencam,
    eigengradcam,
    gradcam,
    gradcampp,
    hirescam,
    layercam,
    scorecam,
    xgradcam,
)
from .core.extract import Extractor, extract
from .core.recorder import Call, Recorder, record
from .core.selection import select_layers
from .dataset import (
    Manifest,
    attribute_dataset,
    cache_activations,
    extract_dataset,
    load_activations,
    load_features,
    merge_shards,
)
from .errors import (
    AttentionCaptureError,
    AttentionRolloutError,
    GradientNotAvailableError,
    GradlensError,
    InPlaceBackwardHookError,
    InputTypeError,
    InterventionError,
    LayerNotExecutedError,
    LayerNotFoundError,
    ManifestMismatchError,
    NotRecordedError,
    OutputSelectionError,
    RecorderStateError,
    RelevanceError,
    RelevanceRuleError,
    SAEError,
    TargetError,
    TokenInputError,
)
from .interventions import activation_patching, attribution_patching, edits, patch
from .layering.discovery import LayerInfo, default_layer, layers
from .registry import METHODS
from .relevance import attnlrp, lrp
from .text import generation_attributions, token_attributions

# the edit helpers live in gradlens/interventions/edits.py; this makes
# "from gradlens.edits import zero" work as well as "gradlens.edits.zero()"
sys.modules[f"{__name__}.edits"] = edits

__version__ = version.__version__

# Subpackages that ``import gradlens`` does not load (they import matplotlib, or are only
# used by the command line), imported on first attribute access (PEP 562).
_LAZY = (
    "metrics",
    "viz",
    "demos",
    "bench",
    "cli",
    "layering",
    "core",
    "passes",
    "maps",
    "registry",
)


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METHODS",
    "Manifest",
    "ablationcam",
    "activation_patching",
    "attribution_patching",
    "attention",
    "attention_rollout",
    "attnlrp",
    "attentions",
    "capture_attention",
    "gradient_attention_rollout",
    "AttentionCapture",
    "AttentionCaptureError",
    "AttentionRolloutError",
    "attribute_dataset",
    "attribution",
    "cache_activations",
    "cam",
    "edits",
    "eigencam",
    "eigengradcam",
    "extract_dataset",
    "generation_attributions",
    "deeplift",
    "deeplift_shap",
    "gradient_shap",
    "gradcam",
    "gradcampp",
    "guided_backprop",
    "guided_gradcam",
    "hirescam",
    "input_x_gradient",
    "integrated_gradients",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "layercam",
    "load_activations",
    "load_features",
    "merge_shards",
    "occlusion",
    "patch",
    "relevance",
    "saliency",
    "scorecam",
    "smoothgrad",
    "vargrad",
    "xgradcam",
    "Call",
    "Extractor",
    "GradientNotAvailableError",
    "GradlensError",
    "InPlaceBackwardHookError",
    "InterventionError",
    "LayerInfo",
    "LayerNotExecutedError",
    "LayerNotFoundError",
    "ManifestMismatchError",
    "NotRecordedError",
    "OutputSelectionError",
    "Recorder",
    "RecorderStateError",
    "SAEError",
    "RelevanceRuleError",
    "TargetError",
    "RelevanceError",
    "relevance",
    "TokenInputError",
    "InputTypeError",
    "default_layer",
    "errors",
    "extract",
    "layers",
    "lrp",
    "record",
    "sae",
    "select_layers",
    "targets",
    "text",
    "token_attributions",
    "__version__",
]
