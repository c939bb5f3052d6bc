"""The old import path ``gradlens.extract``: extract() and Extractor moved to
:mod:`gradlens.core.extract`.

Existing imports keep working; new code imports from ``gradlens.core.extract`` or from
``gradlens``.
"""

from .core.extract import *  # noqa: F403
from .core.extract import __all__ as _extract_all

__all__ = [*_extract_all]
