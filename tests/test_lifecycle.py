"""gradlens.core.lifecycle: the enter/exit, rollback, early stop and record lookup that the
Recorder, the attention capture and replace_outputs share."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradlens.core.attention.capture import AttentionCapture
from gradlens.core.lifecycle import Capture, StopForward
from gradlens.core.outputs import OutputReplacer
from gradlens.core.recorder import Recorder
from gradlens.errors import LayerNotExecutedError, LayerNotFoundError, RecorderStateError


class Counting(Capture[int]):
    """A capture that counts what it opened and closed, and can fail half way."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.opened = 0
        self.closed = 0
        self.records = {"a": [1, 2]}

    def _open(self) -> None:
        self.opened += 1
        if self.fail:
            raise RuntimeError("half way")

    def _close(self) -> None:
        self.closed += 1

    def _records_named(self, name: str) -> list[int]:
        return self.records.get(name, [])

    def _selected(self) -> list[str]:
        return ["a", "b"]


def test_the_engines_context_managers_share_the_life_cycle():
    for cls in (Recorder, AttentionCapture, OutputReplacer):
        assert issubclass(cls, Capture)


def test_a_failure_while_opening_closes_what_was_opened_and_leaves_it_inactive():
    capture = Counting(fail=True)
    with pytest.raises(RuntimeError, match="half way"):
        capture.__enter__()
    assert (capture.opened, capture.closed, capture._active) == (1, 1, False)


def test_a_second_entry_of_an_active_capture_is_refused():
    capture = Counting()
    with capture, pytest.raises(RecorderStateError, match="Counting is already active"):
        capture.__enter__()
    assert capture.closed == 1


def test_exit_closes_also_when_the_block_raises():
    capture = Counting()
    with pytest.raises(ValueError), capture:
        raise ValueError
    assert (capture.closed, capture._active) == (1, False)


def test_only_the_capture_that_stopped_the_forward_ends_its_block_silently():
    outer, inner = Counting(), Counting()
    with outer:
        with inner:
            outer._stop_forward()
        pytest.fail("the inner block must let the outer capture's stop through")
    with inner:
        inner._stop_forward()
    assert inner.closed == 2


def test_the_stop_is_not_an_exception_so_except_exception_cannot_swallow_it():
    assert not issubclass(StopForward, Exception)


def test_records_of_a_selected_module_that_did_not_run_raise_not_executed():
    capture = Counting()
    assert capture._calls_of("a") == [1, 2]
    with pytest.raises(LayerNotExecutedError, match="'b' was selected but did not run"):
        capture._calls_of("b")


def test_records_of_an_unknown_name_suggest_close_names():
    with pytest.raises(LayerNotFoundError, match=r"'aa' was not recorded.*did you mean 'a'"):
        Counting()._calls_of("aa")


def test_recorder_stops_early_inside_another_recorders_block():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with Recorder(model, ["2"]) as outer, Recorder(model, ["0"], stop_early=True) as inner:
        assert inner.forward(torch.ones(1, 2)) is None
    assert "0" in inner.activations and "2" not in outer.activations
