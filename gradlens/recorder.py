"""The old import path ``gradlens.recorder``: the Recorder moved to
:mod:`gradlens.core.recorder`.

Existing imports keep working; new code imports from ``gradlens.core.recorder`` or from
``gradlens``.
"""

from .core.recorder import *  # noqa: F403
from .core.recorder import __all__ as _recorder_all

__all__ = [*_recorder_all]
