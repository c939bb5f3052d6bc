"""The old import path ``gradlens.training``: the tiny CNN and the training loop moved to
:mod:`gradlens.demos.training`.

Existing imports keep working; new code imports from ``gradlens.demos.training``.
"""

from .demos.training import *  # noqa: F403
from .demos.training import __all__ as _training_all

__all__ = [*_training_all]
