"""The old import path ``gradlens.selection``: layer specs moved to
:mod:`gradlens.core.selection`.

Existing imports keep working; new code imports from ``gradlens.core.selection`` or from
``gradlens``.
"""

from .core.selection import *  # noqa: F403
from .core.selection import __all__ as _selection_all

__all__ = [*_selection_all]
