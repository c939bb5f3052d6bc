"""replace_outputs: editing module outputs during a forward, and leaving the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradlens
from gradlens import (
    InterventionError,
    LayerNotFoundError,
    OutputSelectionError,
    RecorderStateError,
)
from gradlens.core.outputs import Replacement, fit_replacement, replace_outputs

from .contract_support import assert_unchanged, snapshot
from .models import LSTMNet, SharedNet, StructuredNet


def two_linear() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def zero(name: str, module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(output)


class TinyDecoder(nn.Module):
    """A next-token model with a greedy ``generate`` that calls it once per new token."""

    def __init__(self, vocab: int = 7) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, 6)
        self.mix = nn.GRU(6, 6, batch_first=True)
        self.lm_head = nn.Linear(6, vocab)

    def forward(self, ids: torch.Tensor, state: torch.Tensor | None = None) -> tuple:
        hidden, state = self.mix(self.embed(ids), state)
        return self.lm_head(hidden), state

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        logits, state = self(ids)
        for _ in range(new_tokens):
            token = logits[:, -1:].argmax(-1)
            ids = torch.cat([ids, token], dim=1)
            logits, state = self(token, state)  # one token at a time, with the cached state
        return ids


# -- what is replaced --------------------------------------------------------------------


def test_the_model_continues_with_the_edited_output():
    model = two_linear()
    with replace_outputs(model, {"0": zero}):
        out = model(torch.randn(5, 3))
    torch.testing.assert_close(out, model[1].bias.expand(5, 2).detach(), rtol=0, atol=0)


def test_every_call_is_edited_and_the_edit_gets_the_name_and_module():
    model = SharedNet()
    seen = []

    def log(name, module, output):
        seen.append((name, module))

    with replace_outputs(model, {"shared": log}):
        model(torch.randn(2, 4))
    assert seen == [("shared", model.shared)] * 3


def test_an_edit_returning_none_keeps_the_output():
    model = two_linear()
    x = torch.randn(5, 3)
    with replace_outputs(model, {"0": lambda name, module, output: None}):
        out = model(x)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)


def test_one_edit_applies_to_every_module_layers_selects():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    names = []

    def double(name, module, output):
        names.append(name)
        return 2 * output

    x = torch.randn(4, 2)
    with replace_outputs(model, double, layers=nn.ReLU):
        out = model(x)
    assert names == ["1", "3"]
    h = 2 * torch.relu(model[2](2 * torch.relu(model[0](x))))
    torch.testing.assert_close(out, model[4](h))


def test_a_tuple_key_selects_several_layers():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    with replace_outputs(model, {("0", "2"): zero}) as replacer:
        out = model(torch.randn(3, 2))
    assert replacer.names == ["0", "2"]
    torch.testing.assert_close(out, torch.zeros(3, 2), rtol=0, atol=0)


# -- structured outputs ---------------------------------------------------------------------


def test_select_edits_one_tensor_of_a_tuple_and_keeps_the_rest():
    model = LSTMNet()
    x = torch.randn(2, 6, 3)
    with gradlens.record(model, "lstm") as plain:
        model(x)
    with replace_outputs(model, {"lstm": zero}, select=0):
        with gradlens.record(model, "lstm") as edited:
            out = model(x)
    sequence, (h, c) = edited["lstm"]
    assert sequence.abs().sum() == 0
    torch.testing.assert_close(h, plain["lstm"][1][0], rtol=0, atol=0)
    torch.testing.assert_close(c, plain["lstm"][1][1], rtol=0, atol=0)
    torch.testing.assert_close(out, model.head.bias.expand(2, 2).detach(), rtol=0, atol=0)


def test_select_by_key_edits_one_entry_of_a_dict():
    model = StructuredNet()
    x = torch.randn(3, 4)
    with replace_outputs(model, {"block": zero}, select={"block": "double"}):
        out = model(x)
    # logits = head(y + double) with double zeroed: head(y)
    torch.testing.assert_close(out.logits, model.head(model.block.lin(x)))
    torch.testing.assert_close(out.features, model.block.lin(x))


def test_a_structured_output_without_select_is_given_whole():
    model = StructuredNet()
    x = torch.randn(3, 4)

    def swap(name, module, parts):
        return {**parts, "y": parts["double"], "double": parts["y"]}

    with replace_outputs(model, {"block": swap}):
        out = model(x)
    torch.testing.assert_close(out.features, 2 * model.block.lin(x))


def test_a_select_that_names_nothing_raises_during_the_forward():
    model = StructuredNet()
    with pytest.raises(OutputSelectionError, match="missing"):
        with replace_outputs(model, {"block": zero}, select="missing"):
            model(torch.randn(1, 4))
    assert not model.block._forward_hooks


# -- composing with the Recorder -------------------------------------------------------------


def test_a_recorder_entered_inside_records_the_edited_output_and_its_gradient():
    model = two_linear()
    x = torch.randn(5, 3)
    with replace_outputs(model, {"0": lambda name, module, output: 2 * output}):
        with gradlens.record(model, "0") as rec:
            out = model(x)
            rec.grad(out[:, 1])
    torch.testing.assert_close(rec["0"], 2 * model[0](x).detach())
    # d out[:, 1] / d (edited output) is the head's weight row
    torch.testing.assert_close(rec.gradients["0"], model[1].weight[1].expand(5, 4).detach())


def test_a_recorder_entered_outside_records_the_output_before_the_edit():
    model = two_linear()
    x = torch.randn(5, 3)
    with gradlens.record(model, "0") as rec:
        with replace_outputs(model, {"0": lambda name, module, output: 2 * output}):
            out = model(x)
            rec.grad(out[:, 1])
    torch.testing.assert_close(rec["0"], model[0](x).detach())
    torch.testing.assert_close(rec.gradients["0"], 2 * model[1].weight[1].expand(5, 4).detach())


def test_edits_apply_at_every_step_of_generate():
    model = TinyDecoder()
    prompt = torch.tensor([[1, 2, 3]])

    def always_token_5(name, module, logits):
        forced = torch.full_like(logits, -1e4)
        forced[..., 5] = 0
        return forced

    with replace_outputs(model, {"lm_head": always_token_5}):
        generated = model.generate(prompt, new_tokens=4)
    assert generated.tolist() == [[1, 2, 3, 5, 5, 5, 5]]
    assert not model.lm_head._forward_hooks


# -- lifecycle and errors --------------------------------------------------------------------


def test_hooks_come_off_on_exit_and_the_model_is_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    before = snapshot(model)
    with replace_outputs(model, {nn.ReLU: zero, "0": lambda n, m, o: o + 1}):
        model(torch.randn(2, 3, 5, 5))
    assert_unchanged(before, snapshot(model))


def test_hooks_come_off_and_the_error_propagates_unchanged():
    model = two_linear()
    before = snapshot(model)
    error = ValueError("raised by the edit")

    def failing(name, module, output):
        raise error

    with pytest.raises(ValueError) as info:
        with replace_outputs(model, {"1": failing}):
            model(torch.randn(1, 3))
    assert info.value is error
    assert_unchanged(before, snapshot(model))


def test_a_replacer_can_be_entered_again_after_exit_but_not_twice_at_once():
    model = two_linear()
    replacer = replace_outputs(model, {"0": zero})
    with replacer:
        with pytest.raises(RecorderStateError, match="already active"):
            replacer.__enter__()
    assert not model[0]._forward_hooks
    with replacer:
        out = model(torch.randn(1, 3))
    torch.testing.assert_close(out, model[1].bias[None].detach(), rtol=0, atol=0)


def test_an_unknown_layer_raises_when_called_with_close_names():
    model = two_linear()
    with pytest.raises(LayerNotFoundError, match="no layer named '00'"):
        replace_outputs(model, {"00": zero})
    assert not model[0]._forward_hooks


def test_a_module_selected_twice_is_refused():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match="'1' is selected by both"):
        replace_outputs(model, {nn.ReLU: zero, "1": zero})


def test_layers_goes_with_one_edit_and_only_with_one():
    model = two_linear()
    with pytest.raises(ValueError, match="needs layers="):
        replace_outputs(model, zero)
    with pytest.raises(ValueError, match="single edit"):
        replace_outputs(model, {"0": zero}, layers="1")
    with pytest.raises(TypeError, match="must be a function"):
        replace_outputs(model, {"0": torch.zeros(2)})


# -- Replacement: a given tensor in place of the output ----------------------------------------


def test_a_replacement_is_what_the_next_layer_sees():
    model = two_linear()
    given = torch.randn(5, 4)
    with replace_outputs(model, {"0": Replacement(given)}):
        out = model(torch.randn(5, 3))
    torch.testing.assert_close(out, model[1](given), rtol=0, atol=0)


def test_the_gradient_reaches_a_replacement_that_requires_grad():
    model = two_linear()
    given = torch.randn(5, 4, requires_grad=True)
    with replace_outputs(model, {"0": Replacement(given)}):
        model(torch.randn(5, 3)).sum().backward()
    # d/d given of sum(given @ W.T + b) is the column sums of W, for every row
    torch.testing.assert_close(given.grad, model[1].weight.sum(0).expand(5, 4).detach())


def test_a_broadcast_replacement_sends_the_summed_gradient_to_the_value():
    model = two_linear()
    vector = torch.randn(4, requires_grad=True)
    with replace_outputs(model, {"0": Replacement(vector, fit="broadcast")}):
        model(torch.randn(5, 3)).sum().backward()
    torch.testing.assert_close(vector.grad, 5 * model[1].weight.sum(0).detach())


def test_a_broadcast_replacement_is_cast_to_the_output_dtype_and_is_a_new_tensor():
    output = torch.randn(2, 3)
    value = torch.arange(3, dtype=torch.float64)
    fitted = fit_replacement("layer", output, value, fit="broadcast")
    assert fitted.dtype == torch.float32 and fitted.shape == (2, 3)
    fitted += 1  # an in-place change of a later layer leaves the value as it was
    torch.testing.assert_close(value, torch.arange(3, dtype=torch.float64), rtol=0, atol=0)


def test_select_puts_the_replacement_in_one_tensor_of_a_tuple_and_keeps_the_rest():
    model = LSTMNet()
    x = torch.randn(2, 6, 3)
    with gradlens.record(model, "lstm") as plain:
        model(x)
    given = torch.randn(2, 6, 5)
    with replace_outputs(model, {"lstm": Replacement(given)}, select=0):
        with gradlens.record(model, "lstm") as edited:
            out = model(x)
    sequence, (h, c) = edited["lstm"]
    torch.testing.assert_close(sequence, given, rtol=0, atol=0)
    torch.testing.assert_close(h, plain["lstm"][1][0], rtol=0, atol=0)
    torch.testing.assert_close(c, plain["lstm"][1][1], rtol=0, atol=0)
    torch.testing.assert_close(out, model.head(given[:, -1]), rtol=0, atol=0)


def test_select_by_key_replaces_one_entry_of_a_dict():
    model = StructuredNet()
    x = torch.randn(3, 4)
    given = torch.randn(3, 4)
    with replace_outputs(model, {"block": Replacement(given)}, select="double"):
        out = model(x)
    torch.testing.assert_close(out.logits, model.head(model.block.lin(x) + given))


def test_a_structured_output_without_select_is_refused():
    model = StructuredNet()
    before = snapshot(model)
    with pytest.raises(OutputSelectionError, match=r"'block' returned a dict.*select="):
        with replace_outputs(model, {"block": Replacement(torch.randn(3, 4))}):
            model(torch.randn(3, 4))
    assert_unchanged(before, snapshot(model))


def test_a_replacement_of_another_shape_names_both_shapes_and_the_hint():
    model = two_linear()
    before = snapshot(model)
    edit = Replacement(torch.randn(2, 4), hint="give one row per sample")
    with pytest.raises(InterventionError, match=r"shape \(5, 4\).*shape \(2, 4\); give one row"):
        with replace_outputs(model, {"0": edit}):
            model(torch.randn(5, 3))
    assert_unchanged(before, snapshot(model))


def test_a_replacement_of_another_dtype_is_refused():
    with pytest.raises(InterventionError, match="torch.float32 on cpu.*torch.float64 on cpu"):
        fit_replacement("0", torch.randn(2, 4), torch.randn(2, 4, dtype=torch.float64))


def test_rows_lets_the_batch_differ_and_nothing_else():
    output = torch.randn(1, 3, 2)
    rows = torch.randn(4, 3, 2)
    assert fit_replacement("0", output, rows, fit="rows") is rows
    with pytest.raises(InterventionError, match=r"\(4, 2, 2\), which differs beyond dim 0"):
        fit_replacement("0", output, torch.randn(4, 2, 2), fit="rows")


def test_a_value_that_does_not_broadcast_names_both_shapes():
    with pytest.raises(InterventionError, match=r"shape \(5,\).*output shape \(2, 4\)"):
        fit_replacement("0", torch.randn(2, 4), torch.randn(5), fit="broadcast")


def test_call_replaces_only_that_call_of_a_shared_module():
    model = SharedNet()
    x = torch.randn(2, 4)
    given = torch.randn(2, 4)
    edit = Replacement(given, call=1)
    with replace_outputs(model, {"shared": edit}):
        out = model(x)
    # call 0 runs on x, call 1 becomes ``given``, call 2 runs on tanh(given)
    expected = model.head(torch.tanh(model.shared(torch.tanh(given))))
    torch.testing.assert_close(out, expected)
    assert edit.calls == 3


def test_once_refuses_a_second_call_and_calls_counts_the_runs():
    model = SharedNet()
    before = snapshot(model)
    edit = Replacement(torch.randn(2, 4), once=True, hint="choose a layer that runs once")
    with pytest.raises(InterventionError, match="more than once.*; choose a layer that runs once"):
        with replace_outputs(model, {"shared": edit}):
            model(torch.randn(2, 4))
    assert edit.calls == 2
    assert_unchanged(before, snapshot(model))


def test_a_replacement_of_a_layer_that_does_not_run_counts_no_call():
    model = SharedNet()
    edit = Replacement(torch.randn(2, 2), once=True)
    with replace_outputs(model, {"head": edit}):
        pass
    assert edit.calls == 0


def test_replacement_options_are_checked_when_it_is_made():
    with pytest.raises(TypeError, match="holds a tensor"):
        Replacement([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fit must be"):
        Replacement(torch.zeros(1), fit="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="from 0"):
        Replacement(torch.zeros(1), call=-1)
