"""What the command line prints when something goes wrong: one line, no traceback."""

from __future__ import annotations

from ..errors import GradlensError

# errors the user can fix (a path, a name, a value): printed without their type
EXPECTED = (GradlensError, ValueError, OSError, KeyError)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line, at most 400 characters."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def describe_error(exc: Exception) -> str:
    """The text after ``gradlens: error:`` for ``exc`` (its type too, if it is unexpected)."""
    text = one_line(exc)
    return text if isinstance(exc, EXPECTED) else f"{type(exc).__name__}: {text}"
