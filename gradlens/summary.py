"""The old import path ``gradlens.summary``: layers() and default_layer() moved to
:mod:`gradlens.layering.discovery`.

Existing imports keep working; new code imports from ``gradlens.layering.discovery`` or from
``gradlens``.
"""

from .layering.discovery import *  # noqa: F403
from .layering.discovery import __all__ as _discovery_all

__all__ = [*_discovery_all]
