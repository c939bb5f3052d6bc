"""gradlens: gradient-aware interpretability for PyTorch.

One capture engine (:class:`Recorder`) for activations and gradients of any named module,
and the methods built on it.
"""

from __future__ import annotations

from . import errors, targets
from .errors import (
    GradientNotAvailableError,
    GradlensError,
    InPlaceBackwardHookError,
    LayerNotExecutedError,
    LayerNotFoundError,
    OutputSelectionError,
    RecorderStateError,
    TargetError,
)
from .extract import Extractor, extract
from .recorder import Call, Recorder, record
from .selection import select_layers
from .summary import LayerInfo, default_layer, layers

__version__ = "0.1.0"

__all__ = [
    "Call",
    "Extractor",
    "GradientNotAvailableError",
    "GradlensError",
    "InPlaceBackwardHookError",
    "LayerInfo",
    "LayerNotExecutedError",
    "LayerNotFoundError",
    "OutputSelectionError",
    "Recorder",
    "RecorderStateError",
    "TargetError",
    "default_layer",
    "errors",
    "extract",
    "layers",
    "record",
    "select_layers",
    "targets",
    "__version__",
]
