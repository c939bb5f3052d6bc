"""The life of the engine's context managers: :class:`Capture`.

The :class:`~gradlens.core.recorder.Recorder`, the attention capture
(:class:`~gradlens.core.attention.capture.AttentionCapture`) and ``replace_outputs``
(:class:`~gradlens.core.outputs.OutputReplacer`) are context managers that put hooks on a
model for the duration of a ``with`` block. They share one life cycle, written here once:

* **enter with rollback** -- a second entry of an active one is refused; everything
  :meth:`Capture._open` did is undone by :meth:`Capture._close` when it raises half way;
* **exit** -- :meth:`Capture._close` runs however the block ends;
* **early stop** -- :meth:`Capture._stop_forward` raises :class:`StopForward` from a hook to
  end the forward pass once what was asked for has run; only the capture that raised it
  ends the block silently, so nested captures do not swallow each other's stops;
* **per-call records** -- :meth:`Capture._calls_of` returns a module's recorded calls, or
  says whether the name was never selected (with "did you mean") or selected but not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, NoReturn, TypeVar

from ..errors import LayerNotExecutedError, LayerNotFoundError, RecorderStateError
from .selection import close_names

__all__ = ["Capture", "StopForward"]

C = TypeVar("C")


class StopForward(BaseException):
    """Raised from a hook to end a forward pass once everything asked for has run.

    It names the capture that raised it, and only that capture ends the pass (on exit of
    its block, or in ``Recorder.forward``); any other capture lets it through. It is a
    ``BaseException``, like ``KeyboardInterrupt``, so that an ``except Exception:`` in a
    model's forward (a fallback path) or in code around the model cannot catch it and carry
    on with the pass.
    """

    def __init__(self, owner: Capture[Any]) -> None:
        super().__init__(f"forward stopped early by {owner!r}")
        self.owner = owner


class Capture(Generic[C]):
    """Base class of the engine's context managers; ``C`` is the type of one record.

    Subclasses implement :meth:`_open` (register hooks, enter guards) and :meth:`_close`
    (undo all of it; it must also work after a partial :meth:`_open`), and for
    :meth:`_calls_of` :meth:`_records_named` and :meth:`_selected`. ``_what`` names the
    capture in messages ("recorded", "attention captured").
    """

    _what = "recorded"

    def __init__(self) -> None:
        self._active = False

    # -- to implement -------------------------------------------------------------------

    def _open(self) -> None:
        """Put the hooks on; called by ``__enter__`` with the capture marked active."""

    def _close(self) -> None:
        """Take everything :meth:`_open` did off again."""

    def _records_named(self, name: str) -> Sequence[C]:
        """The records of module ``name``, in call order (empty when it has none)."""
        return ()

    def _selected(self) -> Sequence[str]:
        """The names of the modules this capture was asked for."""
        return ()

    def _recorded(self) -> Sequence[str]:
        """The names that have records so far (for messages)."""
        return ()

    # -- the life cycle -----------------------------------------------------------------

    def __enter__(self) -> Any:
        if self._active:
            raise RecorderStateError(
                f"this {type(self).__name__} is already active; it cannot be entered twice"
            )
        self._active = True
        try:
            self._open()
        except BaseException:
            self._shut()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._shut()
        return self._owns(exc)

    def _shut(self) -> None:
        try:
            self._close()
        finally:
            self._active = False

    def _owns(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` is this capture's own early stop (which ends its block silently)."""
        return isinstance(exc, StopForward) and exc.owner is self

    def _stop_forward(self) -> NoReturn:
        """End the running forward pass (see :class:`StopForward`)."""
        raise StopForward(self)

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise RecorderStateError(
                f"{type(self).__name__}.{what}() needs an active {type(self).__name__}: "
                "use it inside 'with'"
            )

    # -- records ------------------------------------------------------------------------

    def _calls_of(self, name: str) -> list[C]:
        """The records of module ``name``, in call order.

        Raises:
            LayerNotFoundError: ``name`` was not selected (the message lists what was, and
                suggests close names).
            LayerNotExecutedError: ``name`` was selected but has no record: it did not run.
        """
        calls = list(self._records_named(name))
        if calls:
            return calls
        selected = list(self._selected())
        if name not in selected:
            known = list(self._recorded()) or selected
            hint = close_names(name, known)
            raise LayerNotFoundError(
                f"{name!r} was not {self._what}; {self._what}: "
                f"{', '.join(map(repr, known)) or 'none'}"
                + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
            )
        raise LayerNotExecutedError(self._not_run_message(name))

    def _not_run_message(self, name: str) -> str:
        return (
            f"{name!r} was selected but did not run during the forward pass (is it used by "
            "the model's forward() for this input? was the pass stopped early?)"
        )
