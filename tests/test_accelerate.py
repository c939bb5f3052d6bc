"""Models dispatched by accelerate: offloaded to the CPU or to disk, or split over devices.

accelerate's ``AlignDevicesHook`` s move inputs between devices and load offloaded weights
inside each module's forward, leaving ``meta`` placeholders on the module between
forwards and putting new ones in their place after each. The methods must give what they
give on the same weights undispatched (to 1e-6), record every layer's tensor on the device
where the layer ran, and leave the dispatched model as it was: the same hooks (accelerate's
``_hf_hook`` s and replaced ``forward`` s among them), the same placeholders (still
``meta``, same ``requires_grad``, not inference tensors), the same offloaded values and
buffers (tests/contract_support.py's snapshot checks all of it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import gradlens
from gradlens.errors import RelevanceRuleError
from gradlens.registry import INFO, METHODS
from gradlens.targets import token

from . import zoo
from .contract_support import (
    CAM_LAYER,
    MODES,
    Boom,
    armed,
    assert_unchanged,
    make_input,
    make_model,
    setup,
    snapshot,
)

pytestmark = pytest.mark.usefixtures("one_thread")

OFFLOADS = ("cpu", "disk")
TOL = {"atol": 1e-6, "rtol": 0.0}
GPT2_LAYERS = ["transformer.h.0", "transformer.h.1.mlp"]


@pytest.fixture
def ids() -> Tensor:
    return zoo.token_ids(2, 6)


def offloaded(model: nn.Module, how: str, tmp_path: Path, **options: Any) -> nn.Module:
    """``model``'s weights offloaded to the CPU or to disk (in ``tmp_path``)."""
    return zoo.dispatched(model, how, folder=tmp_path / "offload", **options)  # type: ignore[arg-type]


def assert_close(actual: Any, expected: Any) -> None:
    """Equal to 1e-6, on the same device; dicts key by key."""
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for name in expected:
            assert_close(actual[name], expected[name])
        return
    assert actual.device == expected.device
    torch.testing.assert_close(actual, expected, **TOL)


def recorded(model: nn.Module, ids: Tensor) -> dict[str, Tensor]:
    """Activations and gradients (of the last position's logit 3) of :data:`GPT2_LAYERS`."""
    with gradlens.record(model, GPT2_LAYERS) as rec:
        rec.grad(model(ids).logits[:, -1, 3])
    return {
        **{f"activation {n}": rec.activations[n] for n in GPT2_LAYERS},
        **{f"gradient {n}": rec.gradients[n] for n in GPT2_LAYERS},
    }


def unchanged_after(model: nn.Module, call: Callable[[], Any]) -> Any:
    """``call()``'s result, checking that the model is exactly as before afterwards."""
    before = snapshot(model)
    result = call()
    assert_unchanged(before, snapshot(model))
    return result


# -- the dispatched models are what the tests think they are -----------------------------


@pytest.mark.parametrize("how", OFFLOADS)
def test_an_offloaded_model_holds_meta_placeholders_and_computes_the_same(
    tiny_gpt2: nn.Module, ids: Tensor, how: str, tmp_path: Path
) -> None:
    model = offloaded(tiny_gpt2, how, tmp_path)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert hasattr(model.transformer.h[0].mlp.c_fc, "_hf_hook")
    with torch.no_grad():
        assert_close(model(ids).logits, tiny_gpt2(ids).logits)


# -- same results as the plain model, on the device where each layer ran -----------------


@pytest.mark.parametrize("how", OFFLOADS)
def test_record_on_an_offloaded_model_equals_the_plain_model(
    tiny_gpt2: nn.Module, ids: Tensor, how: str, tmp_path: Path
) -> None:
    model = offloaded(tiny_gpt2, how, tmp_path)
    assert_close(unchanged_after(model, lambda: recorded(model, ids)), recorded(tiny_gpt2, ids))


@pytest.mark.parametrize("how", OFFLOADS)
def test_record_without_parameter_grads_leaves_the_placeholders_requiring_grad(
    tiny_gpt2: nn.Module, ids: Tensor, how: str, tmp_path: Path
) -> None:
    # accelerate gives each new placeholder the flag of the one it replaces: switched off
    # inside the block, the flags must come back on for the placeholders in place after it
    model = offloaded(tiny_gpt2, how, tmp_path)

    def run() -> Tensor:
        with gradlens.record(
            model, "transformer.h.0", parameter_grads=False, tape_from_layers=True
        ) as rec:
            rec.grad(model(ids).logits[:, -1, 3])
        return rec.gradients["transformer.h.0"]

    gradient = unchanged_after(model, run)
    assert all(p.requires_grad for p in model.parameters())
    with gradlens.record(tiny_gpt2, "transformer.h.0") as rec:
        rec.grad(tiny_gpt2(ids).logits[:, -1, 3])
    assert_close(gradient, rec.gradients["transformer.h.0"])


@pytest.mark.parametrize("how", OFFLOADS)
def test_extract_on_an_offloaded_model_equals_the_plain_model(
    tiny_gpt2: nn.Module, ids: Tensor, how: str, tmp_path: Path
) -> None:
    # extract runs under inference_mode, where accelerate's new placeholders would be
    # inference tensors: the model must keep its own
    model = offloaded(tiny_gpt2, how, tmp_path)
    features = unchanged_after(model, lambda: gradlens.extract(model, ids, GPT2_LAYERS))
    assert not any(p.is_inference() for p in model.parameters())
    assert_close(features, gradlens.extract(tiny_gpt2, ids, GPT2_LAYERS))


@pytest.mark.parametrize("how", OFFLOADS)
def test_patch_on_an_offloaded_model_equals_the_plain_model(
    tiny_gpt2: nn.Module, ids: Tensor, how: str, tmp_path: Path
) -> None:
    def patched(model: nn.Module) -> dict[str, Tensor]:
        edits = {"transformer.h.0.mlp": gradlens.edits.zero()}
        with gradlens.patch(model, edits), torch.no_grad():
            return {"logits": model(ids).logits}

    model = offloaded(tiny_gpt2, how, tmp_path)
    result = unchanged_after(model, lambda: patched(model))
    assert_close(result, patched(tiny_gpt2))
    with torch.no_grad():
        assert not torch.allclose(result["logits"], tiny_gpt2(ids).logits)  # the edit did something


@pytest.mark.parametrize("how", OFFLOADS)
def test_token_attributions_on_an_offloaded_model_equal_the_plain_model(
    tiny_gpt2: nn.Module, ids: Tensor, how: str, tmp_path: Path
) -> None:
    def attributions(model: nn.Module) -> Tensor:
        return gradlens.token_attributions(model, ids, token(5), baseline=0, steps=4)

    model = offloaded(tiny_gpt2, how, tmp_path)
    assert_close(unchanged_after(model, lambda: attributions(model)), attributions(tiny_gpt2))


@pytest.mark.parametrize("how", OFFLOADS)
def test_gradcam_on_an_offloaded_resnet_equals_the_plain_model(
    resnet18: nn.Module, image_batch: Tensor, how: str, tmp_path: Path
) -> None:
    def maps(model: nn.Module) -> Tensor:
        return gradlens.gradcam(model, image_batch, "layer4", target=[3, 7])

    model = offloaded(resnet18, how, tmp_path)
    assert_close(unchanged_after(model, lambda: maps(model)), maps(resnet18))


@pytest.mark.parametrize("how", OFFLOADS)
def test_a_train_mode_call_restores_the_buffers_of_an_offloaded_model(
    resnet18: nn.Module, image_batch: Tensor, how: str, tmp_path: Path
) -> None:
    # accelerate keeps buffers on the execution device by default (offload_buffers=False)
    model = offloaded(resnet18, how, tmp_path).train()
    assert model.bn1.running_mean.device.type == "cpu"
    maps = unchanged_after(model, lambda: gradlens.gradcam(model, image_batch, "layer4", 3))
    plain = zoo.torchvision_cnn("resnet18").train()
    assert_close(maps, gradlens.gradcam(plain, image_batch, "layer4", 3))


@pytest.mark.parametrize("how", OFFLOADS)
def test_extract_dataset_on_an_offloaded_model_equals_the_plain_model(
    resnet18: nn.Module, image_batch: Tensor, how: str, tmp_path: Path
) -> None:
    # the model's device is read from its first tensor that holds values: the offloaded
    # weights are meta placeholders, and accelerate moves the inputs itself
    loader = DataLoader(TensorDataset(image_batch, torch.zeros(len(image_batch))), batch_size=1)
    model = offloaded(resnet18, how, tmp_path)
    unchanged_after(
        model,
        lambda: gradlens.extract_dataset(
            model, loader, ["layer2"], tmp_path / "ds", progress=False
        ),
    )
    gradlens.extract_dataset(resnet18, loader, ["layer2"], tmp_path / "plain", progress=False)
    np.testing.assert_allclose(
        gradlens.load_features(tmp_path / "ds")[0]["layer2"],
        gradlens.load_features(tmp_path / "plain")[0]["layer2"],
        rtol=0,
        atol=1e-6,
    )


# -- every registered method ------------------------------------------------------------

_METHOD_MODELS = {"cam": "cnn", "attribution": "cnn", "attention": "transformer"}


@pytest.mark.parametrize(
    "name", sorted(n for n, info in INFO.items() if info.kind in _METHOD_MODELS)
)
@pytest.mark.parametrize("how", OFFLOADS)
def test_every_method_on_an_offloaded_model_equals_the_plain_model(
    name: str, how: str, tmp_path: Path
) -> None:
    # the contract's models: the CNN for the CAMs and attributions, the ViT (with its
    # nn.MultiheadAttention) for the attention methods
    info = INFO[name]
    options = dict(info.quick_options)
    if info.needs_layer:
        options["layer"] = CAM_LAYER
    plain, x = make_model(_METHOD_MODELS[info.kind]), make_input()
    model = offloaded(plain, how, tmp_path, preload_module_classes=["MultiheadAttention"])
    if name.startswith("lrp_"):
        # LRP's rules recompute each layer in the backward pass, when accelerate has put
        # the offloaded weights away: refused with a clear error, the model untouched
        before = snapshot(model)
        with pytest.raises(RelevanceRuleError, match="offloaded weights"):
            METHODS[name](model, x, target=1, **options)
        assert_unchanged(before, snapshot(model))
        return
    torch.manual_seed(0)  # the noise of SmoothGrad and VarGrad
    result = unchanged_after(model, lambda: METHODS[name](model, x, target=1, **options))
    torch.manual_seed(0)
    assert_close(result, METHODS[name](plain, x, target=1, **options))


# -- the contract's modes and a forward that raises ---------------------------------------


def _offloaded_setup(mode: str, how: str, tmp_path: Path) -> tuple[nn.Module, Tensor, Any]:
    prepared = setup(mode)
    return offloaded(prepared.model, how, tmp_path), prepared.x, prepared.context()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", OFFLOADS)
def test_gradcam_in_every_contract_mode_leaves_the_offloaded_model_as_it_was(
    mode: str, how: str, tmp_path: Path
) -> None:
    model, x, context = _offloaded_setup(mode, how, tmp_path)
    before = snapshot(model, x)
    with context:
        maps = gradlens.gradcam(model, x, CAM_LAYER, target=1)
    assert_unchanged(before, snapshot(model, x))
    if mode != "train":  # dropout: the train-mode maps are random
        assert_close(maps, gradlens.gradcam(make_model(), make_input(), CAM_LAYER, target=1))


@pytest.mark.parametrize("how", OFFLOADS)
def test_an_error_in_the_forward_leaves_the_offloaded_weights_offloaded(
    how: str, tmp_path: Path
) -> None:
    # the ViT's root holds weights (class token, positions): loaded by the root's hook,
    # they stay loaded when the forward raises before the hook's end. MultiheadAttention
    # reads its out_proj's weight without calling it: accelerate must load it with its parent
    model = offloaded(
        make_model("transformer"), how, tmp_path, preload_module_classes=["MultiheadAttention"]
    )
    before = snapshot(model)
    with armed(model), pytest.raises(Boom):
        gradlens.extract(model, make_input(), ["head"])
    assert_unchanged(before, snapshot(model))
    assert model.class_token.is_meta


# -- a model split over devices ----------------------------------------------------------


def _split_devices() -> Iterator[Any]:
    """CPU only (accelerate's hooks still attached), and every GPU plus the CPU."""
    yield pytest.param(["cpu", "cpu"], id="cpu+cpu")
    gpus = list(range(torch.cuda.device_count()))
    yield pytest.param(
        [*gpus, "cpu"],
        id="gpus+cpu",
        marks=pytest.mark.skipif(not gpus, reason="needs a CUDA device"),
    )


def _resnet_map(devices: list[int | str]) -> dict[str, int | str]:
    """ResNet-18's top-level modules over ``devices``: the stem and the four stages in
    turn, the last one, pooling and head on the last device."""
    stages = ["layer1", "layer2", "layer3", "layer4"]
    device_map: dict[str, int | str] = dict.fromkeys(
        ["conv1", "bn1", "relu", "maxpool"], devices[0]
    )
    for i, stage in enumerate(stages):
        device_map[stage] = devices[min(i * len(devices) // len(stages), len(devices) - 1)]
    device_map["layer4"] = device_map["avgpool"] = device_map["fc"] = devices[-1]
    return device_map


def _on(device: int | str) -> torch.device:
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


@contextlib.contextmanager
def _ieee_float32() -> Iterator[None]:
    """CUDA convolutions and matrix products in full float32 (TF32 off) for the block."""
    settings = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    saved = [s.fp32_precision for s in settings]
    for s in settings:
        s.fp32_precision = "ieee"
    try:
        yield
    finally:
        for s, value in zip(settings, saved):
            s.fp32_precision = value


def _assert_close_across_devices(actual: Tensor, expected: Tensor, on_gpu: bool) -> None:
    """Equal to 1e-6 on the CPU; on a GPU (another summation order) to 1e-4 of the
    values' scale."""
    if not on_gpu:
        torch.testing.assert_close(actual, expected, **TOL)
        return
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("devices", list(_split_devices()))
def test_record_on_a_split_model_records_each_layer_where_it_ran(
    resnet18: nn.Module, image_batch: Tensor, devices: list[int | str]
) -> None:
    device_map = _resnet_map(devices)
    model = zoo.dispatched(resnet18, device_map)
    stages = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]

    def run(model: nn.Module) -> dict[str, Tensor]:
        with gradlens.record(model, stages) as rec:
            rec.grad(model(image_batch)[:, 3])
        return {
            **{f"activation {n}": rec.activations[n] for n in stages},
            **{f"gradient {n}": rec.gradients[n] for n in stages},
        }

    on_gpu = any(isinstance(d, int) for d in devices)
    with _ieee_float32():
        split = unchanged_after(model, lambda: run(model))
        maps = unchanged_after(model, lambda: gradlens.gradcam(model, image_batch, "layer3", 3))
    plain = run(resnet18)
    for name in stages:
        for kind in ("activation", "gradient"):
            key = f"{kind} {name}"
            assert split[key].device == _on(device_map[name]), key
            _assert_close_across_devices(split[key], plain[key], on_gpu)
    assert maps.device == image_batch.device  # results come back where the input is
    _assert_close_across_devices(maps, gradlens.gradcam(resnet18, image_batch, "layer3", 3), on_gpu)
