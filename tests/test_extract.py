"""extract() (no tape, early stop) and Extractor (torchextractor-style wrapper, ONNX, tracing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradlens
from gradlens import LayerNotExecutedError

from . import zoo
from .contract_support import assert_unchanged, snapshot
from .models import LSTMNet, SharedNet


def test_extract_returns_ordinary_detached_tensors(resnet18, image_batch):
    features = gradlens.extract(resnet18, image_batch, ["layer1", "layer3"])
    assert list(features) == ["layer1", "layer3"]
    assert features["layer3"].shape == (2, 256, 4, 4)
    for f in features.values():
        assert not f.is_inference() and not f.requires_grad
    probe = nn.Linear(256, 2)  # usable to train a probe
    probe(features["layer3"].mean((2, 3))).sum().backward()
    assert probe.weight.grad is not None


def test_extract_matches_the_full_forward_values(resnet18, image_batch):
    with gradlens.record(resnet18, "layer2") as rec:
        resnet18(image_batch)
    torch.testing.assert_close(
        gradlens.extract(resnet18, image_batch, "layer2")["layer2"], rec["layer2"]
    )


def test_extract_stops_after_the_last_requested_layer(resnet18, image_batch):
    ran = []
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: ran.append(n))
        for n, m in resnet18.named_children()
    ]
    try:
        gradlens.extract(resnet18, image_batch, "layer2")
    finally:
        for h in handles:
            h.remove()
    assert ran == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]


def test_extract_leaves_the_model_clean(resnet18, image_batch):
    before = snapshot(resnet18)
    gradlens.extract(resnet18, image_batch, ["layer2", "fc"])
    assert_unchanged(before, snapshot(resnet18))


def test_extract_every_call_of_a_shared_module():
    torch.manual_seed(0)
    model = SharedNet()
    x = torch.randn(2, 4)
    assert (
        len(gradlens.extract(model, x, "shared", stop_early=False, every_call=True)["shared"]) == 3
    )
    # stopping early ends the pass after the first call
    assert len(gradlens.extract(model, x, "shared", every_call=True)["shared"]) == 1


def test_extract_inside_inference_mode_and_with_inference_inputs(resnet18):
    with torch.inference_mode():
        x = torch.randn(1, 3, 32, 32)
        features = gradlens.extract(resnet18, x, "layer1")
    assert features["layer1"].shape == (1, 64, 8, 8)


def test_extract_lstm_with_select():
    torch.manual_seed(0)
    features = gradlens.extract(LSTMNet(), torch.randn(2, 5, 3), "lstm", select=0)
    assert features["lstm"].shape == (2, 5, 5)


@pytest.mark.parametrize("stop_early", [True, False])
def test_extract_names_the_layer_that_did_not_run(stop_early):
    model = SharedNet()
    model.extra = nn.Linear(4, 4)
    with pytest.raises(LayerNotExecutedError, match="'extra' was selected but did not run"):
        gradlens.extract(model, torch.randn(1, 4), ["shared", "extra"], stop_early=stop_early)


def test_extractor_returns_output_and_features_like_torchextractor(resnet18, image_batch):
    torchextractor = pytest.importorskip("torchextractor")
    ours = gradlens.Extractor(resnet18, ["layer1", "layer4"])
    output, features = ours(image_batch)
    reference = torchextractor.Extractor(resnet18, ["layer1", "layer4"])
    ref_output, ref_features = reference(image_batch)
    for handle in getattr(reference, "handles", []):
        handle.remove()
    torch.testing.assert_close(output, ref_output)
    for name in ["layer1", "layer4"]:
        torch.testing.assert_close(features[name], ref_features[name])


def test_extractor_carries_no_hooks_between_calls(resnet18, image_batch):
    before = snapshot(resnet18)
    extractor = gradlens.Extractor(resnet18, "layer*")
    extractor(image_batch)
    assert_unchanged(before, snapshot(resnet18))


def test_extractor_features_train_the_model(resnet18, image_batch):
    import copy

    model = copy.deepcopy(resnet18)
    output, features = gradlens.Extractor(model, "layer3")(image_batch)
    features["layer3"].pow(2).mean().backward()
    assert model.layer3[0].conv1.weight.grad is not None
    assert model.layer4[0].conv1.weight.grad is None


def test_extractor_capture_pools_features(resnet18, image_batch):
    _, features = gradlens.Extractor(resnet18, "layer2", capture=lambda t: t.mean((2, 3)))(
        image_batch
    )
    assert features["layer2"].shape == (2, 128)


def test_extractor_exports_to_onnx_with_features_as_outputs(tmp_path, resnet18):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    extractor = gradlens.Extractor(resnet18, ["layer1", "layer4"]).eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "extractor.onnx"
    torch.onnx.export(extractor, (x,), str(path), output_names=["output", "layer1", "layer4"])
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == ["output", "layer1", "layer4"]
    onnx_out, onnx_l1, onnx_l4 = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        output, features = extractor(x)
    torch.testing.assert_close(torch.from_numpy(onnx_out), output, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(onnx_l1), features["layer1"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(onnx_l4), features["layer4"], atol=1e-4, rtol=1e-4)


def test_extractor_traces_with_torch_jit(resnet18, image_batch):
    extractor = gradlens.Extractor(resnet18, ["layer2"]).eval()
    # check_trace=False: hooks registered per call make TorchScript re-mangle module types
    traced = torch.jit.trace(extractor, image_batch, strict=False, check_trace=False)
    output, features = traced(image_batch)
    expected_output, expected = extractor(image_batch)
    torch.testing.assert_close(output, expected_output)
    torch.testing.assert_close(features["layer2"], expected["layer2"])
    assert not resnet18.layer2._forward_hooks


def test_extractor_on_mobilenet():
    model = zoo.torchvision_cnn("mobilenet_v3_small")
    output, features = gradlens.Extractor(model, ["features.2", "features.12"])(
        torch.randn(1, 3, 64, 64)
    )
    assert output.shape == (1, 10) and features["features.12"].shape == (1, 576, 2, 2)


def test_compiled_models_are_addressed_by_their_original_names():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(2, 3, 8, 8)
    model(x)
    compiled = torch.compile(model)
    with gradlens.record(compiled, "0") as rec:
        out = compiled(x)
        rec.grad(out[:, 1])
    with gradlens.record(model, "0") as reference:
        out = model(x)
        reference.grad(out[:, 1])
    torch.testing.assert_close(rec["0"], reference["0"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rec.gradients["0"], reference.gradients["0"], atol=1e-5, rtol=1e-5)
    assert not model[0]._forward_hooks
