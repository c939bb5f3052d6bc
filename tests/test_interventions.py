"""gradlens.patch and the gradlens.edits helpers: what each edit does to a forward, how edits
compose with recording and generation, and that the model comes out of the block unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradlens
from gradlens import InterventionError, LayerNotExecutedError, OutputSelectionError
from gradlens import edits as E

from . import zoo
from .contract_support import assert_unchanged, snapshot


class TokenMLP(nn.Module):
    """``(B, T)`` ids -> embedding ``(B, T, 4)`` -> linear + ReLU -> linear ``(B, T, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 4)
        self.hidden = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.hidden(self.embed(ids))))


class PairOutput(nn.Module):
    """A module returning ``(value, auxiliary)``, as attention modules do."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x.sum(-1)


class PairNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = PairOutput()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value, aux = self.pair(x)
        return value + 1, aux


@pytest.fixture
def net() -> TokenMLP:
    return TokenMLP().eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.tensor([[1, 2, 3], [4, 5, 6]])


def head_of(net: TokenMLP, hidden: torch.Tensor) -> torch.Tensor:
    return net.head(net.relu(hidden))


# -- what each edit does -------------------------------------------------------------------


def test_zero_ablation_leaves_only_the_bias_of_the_next_layer(net, ids):
    with gradlens.patch(net, {"hidden": E.zero()}):
        out = net(ids)
    assert torch.equal(out, net.head.bias.expand(2, 3, 3))


def test_a_tensor_replaces_the_output_broadcast_to_its_shape(net, ids):
    vector = torch.tensor([1.0, -2.0, 3.0, 0.5])
    with gradlens.patch(net, {"hidden": vector}):
        out = net(ids)
    torch.testing.assert_close(out, head_of(net, vector).expand(2, 3, 3))


def test_a_function_gets_the_output_and_returns_its_replacement(net, ids):
    with gradlens.patch(net, {"hidden": lambda output: output * 2}):
        out = net(ids)
    torch.testing.assert_close(out, head_of(net, net.hidden(net.embed(ids)) * 2))


def test_mean_ablation_replaces_every_sample_by_the_batch_mean(net, ids):
    hidden = net.hidden(net.embed(ids))
    with gradlens.patch(net, {"hidden": E.mean()}):
        out = net(ids)
    torch.testing.assert_close(out, head_of(net, hidden.mean(0, keepdim=True)).expand(2, 3, 3))
    with gradlens.patch(net, {"hidden": E.mean(over=(0, 1))}):
        out = net(ids)
    torch.testing.assert_close(out, head_of(net, hidden.mean((0, 1))).expand(2, 3, 3))


def test_add_steers_only_the_given_positions(net, ids):
    hidden = net.hidden(net.embed(ids))
    vector = torch.tensor([0.5, 1.0, -1.0, 2.0])
    with gradlens.patch(net, {"hidden": E.add(vector, scale=3.0, positions=[0, 2])}):
        out = net(ids)
    expected = hidden.clone()
    expected[:, [0, 2]] += 3.0 * vector
    torch.testing.assert_close(out, head_of(net, expected))


def test_replace_at_positions_copies_those_positions_of_a_full_activation(net, ids):
    other = torch.tensor([[7, 8, 9], [9, 8, 7]])
    other_hidden = net.hidden(net.embed(other))
    with gradlens.patch(net, {"hidden": E.replace(other_hidden, positions=1)}):
        out = net(ids)
    expected = net.hidden(net.embed(ids))
    expected[:, 1] = other_hidden[:, 1]
    torch.testing.assert_close(out, head_of(net, expected))


def test_resample_with_extracted_activations_reproduces_the_other_input(net, ids):
    other = torch.tensor([[7, 8, 9], [9, 8, 7]])
    stored = gradlens.extract(net, other, ["hidden", "embed"])
    with gradlens.patch(net, {("hidden", "embed"): E.resample(stored)}):
        out = net(ids)
    torch.testing.assert_close(out, net(other))


def test_edits_of_the_same_module_apply_in_order(net, ids):
    vector = torch.ones(4)
    with gradlens.patch(net, {"hidden": E.zero(), "hid*": E.add(vector)}):
        out = net(ids)
    torch.testing.assert_close(out, head_of(net, vector).expand(2, 3, 3))  # zero, then + 1


def test_edited_output_does_not_alias_the_given_value():
    model = nn.Sequential(nn.Identity(), nn.ReLU(inplace=True)).eval()
    value = torch.tensor([[-1.0, 2.0]])
    with gradlens.patch(model, {"0": value}):
        out = model(torch.zeros(1, 2))
    assert torch.equal(out, torch.tensor([[0.0, 2.0]]))
    assert torch.equal(value, torch.tensor([[-1.0, 2.0]]))  # the in-place ReLU hit a copy


def test_structured_output_is_edited_through_select_and_the_rest_is_kept():
    model = PairNet().eval()
    x = torch.arange(6.0).reshape(2, 3)
    with gradlens.patch(model, {"pair": E.zero()}, select=0):
        value, aux = model(x)
    assert torch.equal(value, torch.ones(2, 3))
    assert torch.equal(aux, x.sum(-1))


def test_a_helper_on_a_structured_output_without_select_asks_for_select():
    model = PairNet().eval()
    with pytest.raises(OutputSelectionError, match="select="):
        with gradlens.patch(model, {"pair": E.zero()}):
            model(torch.ones(1, 3))


# -- composition with recording, gradients and generation ------------------------------------


def test_record_inside_patch_sees_the_edited_forward_and_its_gradients(net, ids):
    vector = torch.tensor([1.0, 0.0, -1.0, 2.0])
    with gradlens.patch(net, {"hidden": E.add(vector)}):
        with gradlens.record(net, ["hidden", "relu"]) as rec:
            out = net(ids)
            rec.grad(out[..., 0].sum())
    edited = net.hidden(net.embed(ids)) + vector
    torch.testing.assert_close(rec["hidden"], edited.detach())  # the edited value
    torch.testing.assert_close(rec["relu"], torch.relu(edited).detach())
    # d out[..., 0] / d hidden = W_head[0] where the ReLU is active
    expected = (edited > 0).float() * net.head.weight[0]
    torch.testing.assert_close(rec.gradients["hidden"], expected.detach())


def test_record_outside_patch_stores_the_output_before_the_edit(net, ids):
    with gradlens.record(net, ["hidden", "relu"]) as rec:
        with gradlens.patch(net, {"hidden": E.zero()}):
            net(ids)
    torch.testing.assert_close(rec["hidden"], net.hidden(net.embed(ids)).detach())
    assert torch.equal(rec["relu"], torch.zeros(2, 3, 4))  # downstream of the edit


def test_a_steering_vector_can_be_learned_through_the_patch(net, ids):
    vector = torch.zeros(4, requires_grad=True)
    with gradlens.patch(net, {"hidden": E.add(vector)}):
        net(ids)[..., 1].sum().backward()
    # d sum out[..., 1] / d vector = sum over samples and positions of W_head[1] * relu'
    active = (net.hidden(net.embed(ids)) > 0).float()
    torch.testing.assert_close(vector.grad, (active * net.head.weight[1]).sum((0, 1)).detach())


@pytest.fixture(scope="module")
def lm() -> nn.Module:
    pytest.importorskip("transformers")
    return zoo.hf_gpt2(vocab_size=40, heads=4, end_token_id=0)


def test_a_model_output_is_edited_through_select_and_the_rest_is_kept(lm):
    ids = torch.tensor([[5, 6, 7, 8]])
    edits = {"transformer": E.zero()}
    with torch.no_grad(), gradlens.patch(lm, edits, select="last_hidden_state"):
        out = lm(ids)
        inner = lm.transformer(ids)
    assert torch.equal(out.logits, torch.zeros(1, 4, 40))  # lm_head has no bias
    assert type(inner).__name__ == "BaseModelOutputWithPastAndCrossAttentions"
    assert inner.past_key_values is not None  # the cache, kept


def test_generate_runs_every_step_with_the_edit(lm):
    ids = torch.tensor([[5, 6, 7, 8]])
    steer = {"transformer.h.0": E.add(torch.randn(32), scale=4.0)}
    before = snapshot(lm)
    with gradlens.patch(lm, steer):
        generated = lm.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        greedy = ids  # the same tokens by full forwards without a cache
        for _ in range(5):
            logits = lm(greedy, use_cache=False).logits
            greedy = torch.cat([greedy, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, greedy)
    plain = lm.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert not torch.equal(plain, generated)
    assert_unchanged(before, snapshot(lm))


# -- the model comes out unchanged -------------------------------------------------------------


def test_the_output_after_the_block_is_bit_identical_to_the_output_before(resnet18, image_batch):
    with torch.no_grad():
        before_output = resnet18(image_batch)
    before = snapshot(resnet18)
    with gradlens.patch(resnet18, {"layer2": E.zero(), "layer3.0.relu": E.mean()}):
        with torch.no_grad():
            patched = resnet18(image_batch)
    with torch.no_grad():
        after_output = resnet18(image_batch)
    assert not torch.equal(patched, before_output)
    assert torch.equal(after_output, before_output)
    assert_unchanged(before, snapshot(resnet18))


def test_train_mode_forwards_inside_the_block_leave_the_buffers_unchanged(resnet18, image_batch):
    resnet18.train()
    try:
        before = snapshot(resnet18)
        with gradlens.patch(resnet18, {"layer1": E.add(torch.ones(1))}):
            resnet18(image_batch)
        assert_unchanged(before, snapshot(resnet18))
    finally:
        resnet18.eval()


def test_an_error_inside_the_block_propagates_and_leaves_no_hook(net, ids):
    before = snapshot(net)
    with pytest.raises(KeyError, match="boom"):
        with gradlens.patch(net, {"hidden": E.zero()}):
            raise KeyError("boom")
    assert_unchanged(before, snapshot(net))


# -- bad input ------------------------------------------------------------------------------


def test_a_tensor_that_does_not_broadcast_names_both_shapes(net, ids):
    before = snapshot(net)
    with pytest.raises(InterventionError, match=r"shape \(5,\).*output shape \(2, 3, 4\)"):
        with gradlens.patch(net, {"hidden": torch.ones(5)}):
            net(ids)
    assert_unchanged(before, snapshot(net))


def test_a_position_out_of_range_says_how_many_there_are(net, ids):
    before = snapshot(net)
    with pytest.raises(InterventionError, match=r"position 3 is out of range.*3 positions"):
        with gradlens.patch(net, {"hidden": E.zero(positions=[0, 3])}):
            net(ids)
    assert_unchanged(before, snapshot(net))


def test_mean_over_a_missing_dimension_is_refused(net, ids):
    with pytest.raises(InterventionError, match=r"over=\(3,\)"):
        with gradlens.patch(net, {"hidden": E.mean(over=3)}):
            net(ids)


def test_resample_without_the_layer_lists_what_it_holds(net, ids):
    with pytest.raises(InterventionError, match="'embed'"):
        with gradlens.patch(net, {"hidden": E.resample({"embed": torch.zeros(4)})}):
            net(ids)


def test_a_layer_that_never_runs_is_reported_when_the_block_ends(net, ids):
    before = snapshot(net)
    with pytest.raises(LayerNotExecutedError, match="'unused'"):
        with gradlens.patch(net, {"unused": E.zero(), "hidden": E.zero()}):
            net(ids)
    assert_unchanged(before, snapshot(net))


def test_an_unknown_layer_is_refused_on_entry_with_suggestions(net):
    with pytest.raises(gradlens.LayerNotFoundError, match="did you mean 'hidden'"):
        with gradlens.patch(net, {"hiden": E.zero()}):
            pass


def test_a_value_that_is_no_edit_is_refused(net):
    with pytest.raises(TypeError, match="an edit is a tensor"):
        with gradlens.patch(net, {"hidden": "zero"}):
            pass


def test_the_edit_helpers_import_as_gradlens_edits():
    from gradlens.edits import zero

    assert gradlens.edits.zero is zero is E.zero
