"""The old import path ``gradlens.outputs``: replace_outputs moved to
:mod:`gradlens.core.outputs`.

Existing imports keep working; new code imports from ``gradlens.core.outputs`` or from
``gradlens``.
"""

from .core.outputs import *  # noqa: F403
from .core.outputs import __all__ as _outputs_all

__all__ = [*_outputs_all]
