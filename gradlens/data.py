"""The old import path ``gradlens.data``: the synthetic shapes benchmark moved to
:mod:`gradlens.demos.shapes`.

Existing imports keep working; new code imports from ``gradlens.demos.shapes``.
"""

from .demos.shapes import *  # noqa: F403
from .demos.shapes import __all__ as _shapes_all
from .demos.text_task import *  # noqa: F403
from .demos.text_task import __all__ as _text_task_all
from .demos.training import (  # noqa: F401  (re-exported)
    FULL_RECIPE,
    QUICK_RECIPE,
    Recipe,
    TinyCNN,
    accuracy,
    train,
    train_demo_model,
)

__all__ = [
    *_shapes_all,
    *_text_task_all,
    *["TinyCNN", "train", "accuracy", "Recipe", "FULL_RECIPE", "QUICK_RECIPE", "train_demo_model"],
]
