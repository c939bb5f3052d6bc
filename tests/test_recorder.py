"""The Recorder: what it captures, how gradients reach it, that it leaves the model untouched."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

import gradlens
from gradlens import (
    GradientNotAvailableError,
    InPlaceBackwardHookError,
    LayerNotExecutedError,
    LayerNotFoundError,
    NotRecordedError,
    RecorderStateError,
)

from . import zoo
from .contract_support import assert_unchanged, snapshot
from .models import LSTMNet, SharedNet, StructuredNet, residual_pair

# -- activations -------------------------------------------------------------------------


def test_records_nested_layer_outputs(resnet18, image_batch):
    with gradlens.record(resnet18, ["layer4", "layer3.1.conv2"]) as rec:
        resnet18(image_batch)
    assert rec["layer4"].shape == (2, 512, 2, 2)
    assert rec.activations["layer3.1.conv2"].shape == (2, 256, 4, 4)
    assert rec["layer4"] is rec.activations["layer4"]
    expected = resnet18.layer4(
        resnet18.layer3(
            resnet18.layer2(
                resnet18.layer1(
                    resnet18.maxpool(resnet18.relu(resnet18.bn1(resnet18.conv1(image_batch))))
                )
            )
        )
    )
    torch.testing.assert_close(rec["layer4"], expected.detach())


def test_stored_activations_are_detached_by_default(resnet18, image_batch):
    with gradlens.record(resnet18, "layer4") as rec:
        resnet18(image_batch)
    assert rec["layer4"].grad_fn is None and not rec["layer4"].requires_grad


def test_recorded_value_is_immune_to_in_place_ops_downstream():
    inplace, plain = residual_pair()
    x = torch.randn(2, 3, 8, 8)
    layers = ["block1.bn2", "block1.conv2", "stem.0"]  # all modified in place later on
    with gradlens.record(inplace, layers) as rec_inplace:
        inplace(x)
    with gradlens.record(plain, layers) as rec_plain:
        plain(x)
    for name in layers:
        torch.testing.assert_close(rec_inplace[name], rec_plain[name], rtol=0, atol=0)


def test_model_output_unchanged_by_recording_in_place_model():
    inplace, _ = residual_pair()
    x = torch.randn(2, 3, 8, 8)
    expected = inplace(x)
    with gradlens.record(inplace, ["block1.bn2", "block2.relu"]):
        out = inplace(x)
        out.sum().backward()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_torchvision_resnet_bn2_value_matches_a_snapshot_taken_in_the_hook(resnet18, image_batch):
    snapshot = {}
    handle = resnet18.layer4[1].bn2.register_forward_hook(
        lambda m, i, o: snapshot.update(v=o.clone())
    )
    try:
        with gradlens.record(resnet18, "layer4.1.bn2") as rec:
            resnet18(image_batch)
    finally:
        handle.remove()
    torch.testing.assert_close(rec["layer4.1.bn2"], snapshot["v"], rtol=0, atol=0)


def test_inputs_are_recorded_on_request(resnet18, image_batch):
    with gradlens.record(resnet18, "layer1.0.relu", inputs=True) as rec:
        resnet18(image_batch)
    (first_input,) = rec.inputs["layer1.0.relu"]
    assert first_input.shape == (2, 64, 16, 16)
    # the in-place ReLU modified its input after the snapshot: the record keeps negatives
    assert (first_input < 0).any()


def test_records_mobilenet_and_vit_layers():
    mobilenet = zoo.torchvision_cnn("mobilenet_v3_small")
    with gradlens.record(mobilenet, ["features.3", "features.3.block.0"]) as rec:
        mobilenet(torch.randn(1, 3, 64, 64))
    assert rec["features.3"].shape == (1, 24, 8, 8)
    vit = zoo.torchvision_vit()
    with gradlens.record(vit, "encoder.layers.encoder_layer_1") as rec:
        vit(torch.randn(2, 3, 32, 32))
    assert rec["encoder.layers.encoder_layer_1"].shape == (2, 17, 32)


# -- gradients ---------------------------------------------------------------------------


def test_backward_inside_the_block_fills_gradients():
    inplace, plain = residual_pair()
    x = torch.randn(2, 3, 8, 8)
    with gradlens.record(inplace, ["block1.bn2", "block2"]) as rec:
        inplace(x)[:, 1].sum().backward()
    captured = {}
    hooks = [
        plain.block1.bn2.register_forward_hook(lambda m, i, o: captured.update(bn2=o)),
        plain.block2.register_forward_hook(lambda m, i, o: captured.update(block2=o)),
    ]
    out = plain(x)
    for h in hooks:
        h.remove()
    expected = torch.autograd.grad(out[:, 1].sum(), [captured["bn2"], captured["block2"]])
    torch.testing.assert_close(rec.gradients["block1.bn2"], expected[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(rec.gradients["block2"], expected[1], rtol=0, atol=1e-7)


def test_grad_computes_only_activation_gradients(resnet18, image_batch):
    before = snapshot(resnet18)
    with gradlens.record(resnet18, "layer4") as rec:
        out = resnet18(image_batch)
        grads = rec.grad(out[:, 3])
    assert grads["layer4"].shape == (2, 512, 2, 2)
    assert all(p.grad is None for p in resnet18.parameters())
    assert_unchanged(before, snapshot(resnet18))


def test_grad_and_backward_agree(resnet18, image_batch):
    with gradlens.record(resnet18, "layer3") as rec:
        resnet18(image_batch)[:, 2].sum().backward()
    via_backward = rec.gradients["layer3"]
    for p in resnet18.parameters():
        p.grad = None
    with gradlens.record(resnet18, "layer3") as rec:
        out = resnet18(image_batch)
        rec.grad(out[:, 2])
    torch.testing.assert_close(rec.gradients["layer3"], via_backward)


def test_per_sample_gradients_match_single_sample_runs(resnet18, image_batch):
    with gradlens.record(resnet18, "layer4") as rec:
        out = resnet18(image_batch)
        rec.grad(out[torch.arange(2), torch.tensor([1, 7])])
    for b, c in [(0, 1), (1, 7)]:
        with gradlens.record(resnet18, "layer4") as single:
            out = resnet18(image_batch[b : b + 1])
            single.grad(out[0, c])
        torch.testing.assert_close(
            rec.gradients["layer4"][b], single.gradients["layer4"][0], atol=1e-6, rtol=1e-5
        )


def test_k_scores_per_sample_give_k_gradients_in_one_backward(resnet18, image_batch):
    with gradlens.record(resnet18, "layer4") as rec:
        out = resnet18(image_batch)
        rec.grad(out[:, [3, 5, 8]])
    batched = rec.gradients["layer4"]
    assert batched.shape == (3, 2, 512, 2, 2)
    for k, c in enumerate([3, 5, 8]):
        with gradlens.record(resnet18, "layer4") as single:
            out = resnet18(image_batch)
            single.grad(out[:, c])
        torch.testing.assert_close(batched[k], single.gradients["layer4"], atol=1e-6, rtol=1e-5)


class _DoubleWithUnbatchableBackward(torch.autograd.Function):
    """2x; its backward writes into a fresh tensor in place, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        out = torch.zeros(grad.shape)
        out.copy_(2 * grad)
        return out


class _UnbatchableNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Linear(3, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(_DoubleWithUnbatchableBackward.apply(self.body(x))))


def test_k_scores_fall_back_to_k_backwards_when_a_backward_cannot_be_batched():
    # the batched backward fails at the custom function, after the head's backward ran:
    # the K separate passes need the part of the graph it had already gone through
    model = _UnbatchableNet()
    x = torch.randn(5, 3)
    with gradlens.record(model, "body") as rec:
        rec.grad(model(x)[:, [0, 2]])
    for k, c in enumerate([0, 2]):
        with gradlens.record(model, "body") as single:
            single.grad(model(x)[:, c])
        torch.testing.assert_close(rec.gradients["body"][k], single.gradients["body"])


def test_watch_records_gradients_of_any_tensor(resnet18, image_batch):
    x = image_batch.clone().requires_grad_(True)
    with gradlens.record(resnet18) as rec:
        rec.watch("input", x)
        out = resnet18(x)
        rec.grad(out[:, 0])
    expected = torch.autograd.grad(resnet18(x)[:, 0].sum(), x)[0]
    torch.testing.assert_close(rec.gradients["input"], expected)


def test_a_watched_tensor_loses_its_hook_on_exit():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    with gradlens.record(model) as rec:
        rec.watch("input", x)
    assert not x._backward_hooks
    model(x).sum().backward()  # after the block: nothing reaches the old record
    with pytest.raises(GradientNotAvailableError):
        rec.gradients["input"]


def test_a_backward_after_the_block_does_not_write_into_the_record():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with gradlens.record(model, "1") as rec:
        out = model(torch.randn(4, 3))
    out.sum().backward()
    with pytest.raises(GradientNotAvailableError):
        rec.gradients["1"]
    model.zero_grad(set_to_none=True)


def test_a_full_backward_hook_that_fires_after_the_block_does_nothing():
    # PyTorch fixes a forward's full backward hooks when the forward runs
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with gradlens.record(model, "1", backward_hooks=True) as rec:
        out = model(torch.randn(4, 3))
    out.sum().backward()
    with pytest.raises(GradientNotAvailableError):
        rec.input_gradients["1"]
    with pytest.raises(GradientNotAvailableError):
        rec.gradients["1"]
    model.zero_grad(set_to_none=True)


def test_a_backward_through_an_older_graph_leaves_a_reentered_recorder_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    rec = gradlens.record(model, "1", backward_hooks=True)
    with rec:
        old = model(torch.randn(4, 3))
    with rec:
        model(torch.randn(4, 3))
        old.sum().backward()
        with pytest.raises(GradientNotAvailableError):
            rec.gradients["1"]
    model.zero_grad(set_to_none=True)


def test_full_backward_hooks_give_input_gradients():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with gradlens.record(model, ["1"], backward_hooks=True) as rec:
        model(x)[:, 0].sum().backward()
    hidden = torch.tanh(model[0](x))
    expected_out = model[2].weight[0].expand(5, 4)
    torch.testing.assert_close(rec.gradients["1"], expected_out)
    torch.testing.assert_close(rec.input_gradients["1"][0], expected_out * (1 - hidden**2))


def test_full_backward_hooks_refuse_in_place_modules():
    inplace, _ = residual_pair()
    before = snapshot(inplace)
    with pytest.raises(InPlaceBackwardHookError, match="inplace"):
        with gradlens.record(inplace, "block1.relu", backward_hooks=True):
            pass
    assert_unchanged(before, snapshot(inplace))
    assert not inplace.block1.relu._forward_hooks


def test_full_backward_hooks_explain_in_place_ops_downstream():
    inplace, _ = residual_pair()
    before = snapshot(inplace)
    with pytest.raises(InPlaceBackwardHookError, match="in place") as info:
        with gradlens.record(inplace, "block1.bn2", backward_hooks=True):
            inplace(torch.randn(1, 3, 8, 8))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert_unchanged(before, snapshot(inplace))


# -- tape from the layer -------------------------------------------------------------------


def test_tape_from_layers_starts_the_graph_at_the_layer(resnet18, image_batch):
    with gradlens.record(resnet18, "layer3", tape_from_layers=True) as rec:
        out = resnet18(image_batch)
        assert out.requires_grad
        stem_grad = torch.autograd.grad(
            out.sum(), resnet18.conv1.weight, allow_unused=True, retain_graph=True
        )
        rec.grad(out[:, 4])
    assert stem_grad == (None,)  # nothing before layer3 is on the tape
    with gradlens.record(resnet18, "layer3") as full:
        out = resnet18(image_batch)
        full.grad(out[:, 4])
    torch.testing.assert_close(rec.gradients["layer3"], full.gradients["layer3"])


def test_tape_from_layers_works_under_no_grad_on_a_frozen_model(resnet18, image_batch):
    frozen = copy.deepcopy(resnet18).requires_grad_(False)
    with torch.no_grad():
        with gradlens.record(frozen, "layer4", tape_from_layers=True) as rec:
            out = frozen(image_batch)
            assert not torch.is_grad_enabled()  # restored once the forward returned
            with torch.enable_grad():
                rec.grad(out[:, 1])
        assert not torch.is_grad_enabled()
    assert rec.gradients["layer4"].abs().sum() > 0
    assert not any(p.requires_grad for p in frozen.parameters())


def test_tape_from_layers_restores_grad_mode_when_the_forward_fails(resnet18):
    with pytest.raises(RuntimeError):
        with gradlens.record(resnet18, "layer4", tape_from_layers=True):
            resnet18(torch.randn(1, 5, 32, 32))  # wrong channel count
    assert torch.is_grad_enabled()


# -- calls, structures, storage options ----------------------------------------------------


def test_shared_module_keeps_every_call_with_its_gradient():
    torch.manual_seed(0)
    model = SharedNet()
    x = torch.randn(2, 4)
    with gradlens.record(model, "shared") as rec:
        model(x)[:, 0].sum().backward()
    calls = rec.calls("shared")
    assert len(calls) == 3
    assert rec["shared"] is calls[-1].activation
    h1 = torch.tanh(model.shared(x))
    torch.testing.assert_close(calls[1].activation, model.shared(h1))
    # gradient of the first call's output, by hand: through tanh, shared, tanh, shared, tanh, head
    z1 = model.shared(x).detach().requires_grad_(True)
    h = torch.tanh(z1)
    for _ in range(2):
        h = torch.tanh(model.shared(h))
    expected = torch.autograd.grad(model.head(h)[:, 0].sum(), z1)[0]
    torch.testing.assert_close(calls[0].gradient, expected)
    assert [c.index for c in calls] == sorted(c.index for c in calls)


def test_lstm_tuple_output_is_recorded_as_a_structure():
    torch.manual_seed(0)
    model = LSTMNet()
    x = torch.randn(2, 6, 3)
    with gradlens.record(model, "lstm") as rec:
        model(x)[:, 1].sum().backward()
    out, (h, c) = rec["lstm"]
    assert out.shape == (2, 6, 5) and h.shape == (1, 2, 5) and c.shape == (1, 2, 5)
    grad_out, (grad_h, grad_c) = rec.gradients["lstm"]
    assert grad_out.shape == (2, 6, 5)
    assert grad_h is None and grad_c is None  # the head reads out[:, -1] only
    assert grad_out[:, :-1].abs().sum() == 0 and grad_out[:, -1].abs().sum() > 0


def test_select_records_one_tensor_of_a_structured_output():
    torch.manual_seed(0)
    model = LSTMNet()
    with gradlens.record(model, "lstm", select=0) as rec:
        model(torch.randn(2, 6, 3))
    assert isinstance(rec["lstm"], torch.Tensor) and rec["lstm"].shape == (2, 6, 5)


def test_dict_and_dataclass_outputs_keep_their_structure():
    torch.manual_seed(0)
    model = StructuredNet()
    x = torch.randn(3, 4)
    with gradlens.record(model, ["block", ""]) as rec:
        out = model(x)
        rec.grad(out.logits[:, 0])
    block = rec["block"]
    assert set(block) == {"y", "double", "note"} and block["note"] == "not a tensor"
    torch.testing.assert_close(block["double"], 2 * block["y"])
    assert type(rec[""]).__name__ == "Output"
    # y reaches the logits directly and through "double" = 2 y: 3 times the head weight
    torch.testing.assert_close(rec.gradients["block"]["y"], 3 * model.head.weight[0].expand(3, 4))


def test_reduce_device_and_dtype_apply_inside_the_hook(resnet18, image_batch):
    with gradlens.record(
        resnet18, "layer3", reduce=lambda t: t.mean((2, 3)), dtype=torch.float16, device="cpu"
    ) as rec:
        resnet18(image_batch)[:, 0].sum().backward()
    assert rec["layer3"].shape == (2, 256) and rec["layer3"].dtype == torch.float16
    assert rec.gradients["layer3"].shape == (2, 256)
    for p in resnet18.parameters():
        p.grad = None


def test_detach_false_keeps_the_graph(resnet18, image_batch):
    with gradlens.record(resnet18, "layer4", detach=False) as rec:
        resnet18(image_batch)
    assert rec["layer4"].requires_grad


def test_stop_early_ends_the_forward_after_the_last_selected_layer(resnet18, image_batch):
    ran = []
    handle = resnet18.layer3.register_forward_hook(lambda *a: ran.append("layer3"))
    try:
        with gradlens.record(resnet18, "layer2", stop_early=True) as rec:
            assert rec.forward(image_batch) is None
    finally:
        handle.remove()
    assert ran == [] and rec["layer2"].shape == (2, 128, 8, 8)


class _Forgiving(nn.Module):
    """Falls back to zeros when its body raises (as models with optional parts do)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Linear(3, 4), nn.Linear(4, 2)
        self.head_calls = 0

    def forward(self, x):
        try:
            h = self.body(x)
        except Exception:
            h = torch.zeros(x.shape[0], 4)
        self.head_calls += 1
        return self.head(h)


def test_stop_early_is_not_caught_by_an_except_exception_in_the_model():
    model = _Forgiving()
    with gradlens.record(model, "body", stop_early=True) as rec:
        assert rec.forward(torch.randn(2, 3)) is None
    assert model.head_calls == 0 and rec["body"].shape == (2, 4)


def test_only_the_recorder_that_stops_the_forward_ends_it():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(2, 3)
    after_the_stop = []
    with gradlens.record(model, "2") as outer:
        with gradlens.record(model, "0", stop_early=True) as inner:
            outer.forward(x)  # the inner Recorder's stop ends the inner block here
            after_the_stop.append("ran")
        out = outer.forward(x)
    assert after_the_stop == [] and inner["0"].shape == (2, 4)
    torch.testing.assert_close(out, model(x))
    torch.testing.assert_close(outer["2"], model(x).detach())


# -- lifecycle and side effects ------------------------------------------------------------


def test_hooks_come_off_after_exit(resnet18, image_batch):
    before = snapshot(resnet18)
    with gradlens.record(resnet18, ["layer*", nn.Conv2d], tape_from_layers=True):
        resnet18(image_batch)
    assert_unchanged(before, snapshot(resnet18))


def test_hooks_come_off_and_the_error_propagates_unchanged(resnet18, image_batch):
    before = snapshot(resnet18)
    error = ValueError("raised by the user")
    with pytest.raises(ValueError) as info:
        with gradlens.record(resnet18, "layer4"):
            resnet18(image_batch)
            raise error
    assert info.value is error
    assert_unchanged(before, snapshot(resnet18))


def test_train_mode_buffers_are_restored(resnet18, image_batch):
    model = copy.deepcopy(resnet18).train()
    before = snapshot(model)
    with gradlens.record(model, "layer2"):
        model(image_batch)
    assert_unchanged(before, snapshot(model))


def test_restore_buffers_false_keeps_the_updates_of_train_mode_forwards():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    x = torch.randn(8, 3)
    with gradlens.record(model, "0", restore_buffers=False):
        model(x)
    torch.testing.assert_close(model[1].running_mean, 0.1 * model[0](x).mean(0).detach())
    assert model[1].num_batches_tracked == 1


def test_param_grad_changes_only_by_the_users_backward(resnet18, image_batch):
    model = copy.deepcopy(resnet18)
    with gradlens.record(model, "layer4") as rec:
        out = model(image_batch)
        rec.grad(out[:, 0], retain_graph=True)
        assert all(p.grad is None for p in model.parameters())
        out[:, 0].sum().backward()
    assert model.fc.weight.grad is not None


def test_a_recorder_can_be_reused_and_clears_its_records(resnet18, image_batch):
    rec = gradlens.record(resnet18, "layer4")
    with rec:
        resnet18(image_batch)
    with rec:
        resnet18(image_batch[:1])
    assert len(rec.calls("layer4")) == 1 and rec["layer4"].shape[0] == 1


def test_entering_an_active_recorder_raises(resnet18):
    rec = gradlens.record(resnet18, "layer4")
    with rec:
        with pytest.raises(RecorderStateError):
            rec.__enter__()


def test_nested_recorders_on_one_model(resnet18, image_batch):
    with gradlens.record(resnet18, "layer3") as outer:
        with gradlens.record(resnet18, ["layer3", "layer4"]) as inner:
            out = resnet18(image_batch)
            out[:, 0].sum().backward()
    torch.testing.assert_close(outer["layer3"], inner["layer3"])
    torch.testing.assert_close(outer.gradients["layer3"], inner.gradients["layer3"])
    for p in resnet18.parameters():
        p.grad = None
    assert not resnet18.layer3._forward_hooks


def test_repeated_use_does_not_keep_graphs_alive():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    kept, graph_refs = [], []
    for i in range(1000):
        with gradlens.record(model, "0") as rec:
            out = model(torch.randn(4, 8))
            rec.grad(out[:, 0])
            if i < 20:
                graph_refs.append(weakref.ref(rec.calls("0")[0]._live[0]))
        kept.append(rec)
        del out
    gc.collect()
    assert all(ref() is None for ref in graph_refs)
    assert all(r["0"].grad_fn is None for r in kept[:5])


# -- errors --------------------------------------------------------------------------------


def test_unknown_layer_suggests_close_names(resnet18):
    with pytest.raises(LayerNotFoundError, match="layer4"):
        gradlens.record(resnet18, "layr4")
    assert not resnet18.layer4._forward_hooks


def test_layer_that_never_ran_raises_a_clear_error():
    model = StructuredNet()
    model.unused = nn.Linear(4, 4)
    with gradlens.record(model, ["unused", "block"]) as rec:
        model(torch.randn(1, 4))
    with pytest.raises(LayerNotExecutedError, match="did not run"):
        rec["unused"]


def test_reading_inputs_that_were_not_recorded_says_how_to_record_them():
    model = nn.Sequential(nn.Linear(3, 2))
    with gradlens.record(model, "0") as rec:
        model(torch.randn(1, 3))
    with pytest.raises(NotRecordedError, match="inputs=True"):
        rec.inputs["0"]


def test_input_gradients_without_backward_hooks_say_how_to_get_them():
    model = nn.Sequential(nn.Linear(3, 2))
    with gradlens.record(model, "0") as rec:
        model(torch.randn(1, 3)).sum().backward()
    with pytest.raises(NotRecordedError, match="backward_hooks=True"):
        rec.input_gradients["0"]
    model.zero_grad(set_to_none=True)


def test_grad_names_a_selected_layer_that_never_ran_instead_of_blaming_grad_mode():
    # the tape would have started at 'unused': without it the score has no graph at all
    model = StructuredNet()
    model.unused = nn.Linear(4, 4)
    with gradlens.record(model, "unused", tape_from_layers=True) as rec:
        out = model(torch.randn(2, 4))
        with pytest.raises(LayerNotExecutedError, match="'unused'.* did not run"):
            rec.grad(out.logits[:, 0])


def test_grad_names_the_layer_that_never_ran_when_nothing_was_recorded():
    model = StructuredNet()
    model.unused = nn.Linear(4, 4)
    with gradlens.record(model, "unused") as rec:
        out = model(torch.randn(2, 4))
        assert out.logits.requires_grad
        with pytest.raises(LayerNotExecutedError, match="'unused'"):
            rec.grad(out.logits[:, 0])


def test_gradients_before_backward_raise(resnet18, image_batch):
    with gradlens.record(resnet18, "layer4") as rec:
        resnet18(image_batch)
        with pytest.raises(GradientNotAvailableError, match="backward"):
            rec.gradients["layer4"]


def test_score_of_the_wrong_shape_raises(resnet18, image_batch):
    with gradlens.record(resnet18, "layer4") as rec:
        out = resnet18(image_batch)
        with pytest.raises(GradientNotAvailableError, match="scalar"):
            rec.grad(out[:, :, None, None].expand(2, 10, 3, 3))


def test_grad_without_a_graph_explains_how_to_get_one(resnet18, image_batch):
    with torch.no_grad(), gradlens.record(resnet18, "layer4") as rec:
        out = resnet18(image_batch)
        with pytest.raises(GradientNotAvailableError, match="tape_from_layers"):
            rec.grad(out[:, 0])


def test_grad_outside_the_block_raises(resnet18, image_batch):
    with gradlens.record(resnet18, "layer4") as rec:
        out = resnet18(image_batch)
    with pytest.raises(RecorderStateError):
        rec.grad(out[:, 0])
