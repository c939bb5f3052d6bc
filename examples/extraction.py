"""Feature extraction: ``extract`` with early stop, ``Extractor``, ONNX, TorchScript and
``torch.compile``.

Writes ``extraction.txt`` (what ``docs/extraction.md`` quotes); the ONNX file goes to a
temporary folder.

Run: ``python examples/extraction.py [--quick] [--out DIR]``
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch._dynamo
import torchvision
from _common import parse_args
from torch import nn

import gradlens
from gradlens.demos.training import TinyCNN


def extract_features(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    # --8<-- [start:extract]
    features = gradlens.extract(model, x, ["layer1", "layer2", "layer3", "layer4"])
    shapes = {name: tuple(f.shape) for name, f in features.items()}
    # {'layer1': (2, 64, 56, 56), 'layer2': (2, 128, 28, 28), ...} at 224 x 224

    pooled = gradlens.extract(model, x, "layer*", reduce=lambda t: t.mean((2, 3)))
    # {'layer1': (2, 64), ..., 'layer4': (2, 512)}: pooled inside the hook

    probe_input = gradlens.extract(model, x, "layer3")["layer3"]
    assert not probe_input.is_inference()  # an ordinary tensor: train a probe on it
    # --8<-- [end:extract]
    assert {name: tuple(f.shape) for name, f in pooled.items()}["layer4"] == (x.shape[0], 512)
    return shapes


def early_stop(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    # --8<-- [start:early-stop]
    ran = {"fc": 0}
    handle = model.fc.register_forward_hook(lambda *_: ran.__setitem__("fc", ran["fc"] + 1))
    gradlens.extract(model, x, "layer2")  # stops after layer2: fc never runs
    stopped = ran["fc"]  # 0
    gradlens.extract(model, x, "layer2", stop_early=False)  # runs the whole network
    handle.remove()
    # --8<-- [end:early-stop]
    return {"fc calls, stop_early=True": stopped, "fc calls, stop_early=False": ran["fc"] - stopped}


# --8<-- [start:shared]
class Looped(nn.Module):
    """One block applied three times: a shared module."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.tanh(self.block(x))
        return self.head(x)


# --8<-- [end:shared]


def shared_module() -> dict[str, int]:
    torch.manual_seed(0)
    # --8<-- [start:shared-use]
    looped, v = Looped(), torch.randn(4, 8)
    first_only = gradlens.extract(looped, v, "block", every_call=True)  # 1 call
    every_call = gradlens.extract(looped, v, "block", every_call=True, stop_early=False)  # 3 calls
    # --8<-- [end:shared-use]
    return {
        "calls kept, stop_early=True": len(first_only["block"]),
        "calls kept, stop_early=False": len(every_call["block"]),
    }


def extractor_module(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    # --8<-- [start:extractor]
    extractor = gradlens.Extractor(model, ["layer1", "layer4"])
    logits, features = extractor(x)
    assert not model.layer4._forward_hooks  # hooks exist only during each call

    # features stay on the autograd graph: a loss on them trains the model
    features["layer4"].pow(2).mean().backward()
    # --8<-- [end:extractor]
    model.zero_grad(set_to_none=True)
    return {name: tuple(f.shape) for name, f in features.items()}


def onnx_export(model: nn.Module, x: torch.Tensor) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return _onnx_export(model, x, Path(tmp))


def _onnx_export(model: nn.Module, x: torch.Tensor, out: Path) -> float:
    # --8<-- [start:onnx]
    import onnxruntime

    extractor = gradlens.Extractor(model, ["layer1", "layer4"]).eval()
    path = out / "extractor.onnx"
    torch.onnx.export(extractor, (x,), str(path), output_names=["logits", "layer1", "layer4"])

    session = onnxruntime.InferenceSession(str(path))
    onnx_logits, onnx_layer1, onnx_layer4 = session.run(
        None, {session.get_inputs()[0].name: x.numpy()}
    )
    with torch.no_grad():
        logits, features = extractor(x)
    error = (torch.from_numpy(onnx_layer4) - features["layer4"]).abs().max()  # < 1e-4
    # --8<-- [end:onnx]
    assert error < 1e-4
    return float(error)


def torchscript(model: nn.Module, x: torch.Tensor) -> float:
    # --8<-- [start:jit]
    extractor = gradlens.Extractor(model, ["layer2"]).eval()
    # check_trace=False: the hooks registered for each call make TorchScript see a new
    # module type on every trace, so its re-trace check would always fail
    traced = torch.jit.trace(extractor, x, strict=False, check_trace=False)
    logits, features = traced(x)
    # --8<-- [end:jit]
    with torch.no_grad():
        _, expected = extractor(x)
    error = (features["layer2"] - expected["layer2"]).detach().abs().max()
    assert error < 1e-5
    return float(error)


def compiled_model(x: torch.Tensor) -> dict[str, float]:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    # --8<-- [start:compile]
    # Dynamo does not check module hooks by default, so a graph compiled without hooks
    # would silently skip the ones gradlens adds later; with this flag it recompiles.
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    compiled = torch.compile(model)

    # layers keep their original names ("features.3", not "_orig_mod.features.3")
    with gradlens.record(compiled, "features.3") as rec:
        logits = compiled(x)
        rec.grad(logits[:, 0])
    features = gradlens.extract(compiled, x, "features.1")
    # --8<-- [end:compile]
    with gradlens.record(model, "features.3") as eager:
        eager.grad(model(x)[:, 0])
    reference = gradlens.extract(model, x, "features.1")
    errors = {
        "activation": (rec["features.3"] - eager["features.3"]).abs().max(),
        "gradient": (rec.gradients["features.3"] - eager.gradients["features.3"]).abs().max(),
        "extract": (features["features.1"] - reference["features.1"]).abs().max(),
    }
    assert all(e < 1e-4 for e in errors.values()), errors
    return {name: float(e) for name, e in errors.items()}


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    size = 64 if args.quick else 224
    x = torch.randn(2, 3, size, size)

    lines = [f"random-init resnet18, input {tuple(x.shape)}"]
    lines += [f"extract: {extract_features(model, x)}"]
    lines += [f"early stop: {early_stop(model, x)}"]
    lines += [f"shared module: {shared_module()}"]
    lines += [f"Extractor features: {extractor_module(model, x)}"]
    lines += [f"ONNX vs PyTorch, max |difference| of layer4: {onnx_export(model, x[:1]):.2e}"]
    lines += [
        f"TorchScript trace vs eager, max |difference| of layer2: {torchscript(model, x):.2e}"
    ]
    guard = torch._dynamo.config.skip_nnmodule_hook_guards
    try:
        difference = compiled_model(torch.randn(2, 3, 64, 64))
        lines += [f"torch.compile vs eager (TinyCNN), max |difference|: {difference}"]
    finally:
        torch._dynamo.config.skip_nnmodule_hook_guards = guard
    report = args.out / "extraction.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [report]


if __name__ == "__main__":
    main()
