"""Recording activations and gradients: three hand-made ways, and ``gradlens.record``.

Shows, on a random-init torchvision ResNet-18, what goes wrong with each hand-made way:
hooks left behind after an error, the value a naive hook keeps when the layer's output is
later modified in place (``out += identity`` and ``ReLU(inplace=True)`` in every residual
block), full backward hooks failing on in-place operations, and the memory of a whole-network
autograd tape. Writes ``recording.txt`` with the numbers that ``docs/recording.md`` quotes.

Run: ``python examples/recording.py [--quick] [--out DIR]``
"""

from __future__ import annotations

import torch
import torchvision
from _common import parse_args
from torch import nn

import gradlens


# --8<-- [start:stash]
class StashingResNet(nn.Module):
    """The tutorial pattern: a forward re-written to keep ``layer4``'s output and gradient."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        self.activations = x  # kept on the model, graph and all
        x.register_hook(self.save_gradient)  # fails under torch.no_grad()
        return r.fc(torch.flatten(r.avgpool(x), 1))

    def save_gradient(self, grad: torch.Tensor) -> None:
        self.gradients = grad


# --8<-- [end:stash]


def stash_on_self(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # --8<-- [start:stash-use]
    stashing = StashingResNet(model)
    logits = stashing(x)
    logits[:, 3].sum().backward()  # also fills every parameter's .grad
    activations, gradients = stashing.activations, stashing.gradients
    # --8<-- [end:stash-use]
    model.zero_grad(set_to_none=True)
    return activations.detach(), gradients


def hand_written_hooks(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # --8<-- [start:hooks]
    kept = {}

    def forward_hook(module, inputs, output):
        kept["activation"] = output  # a reference: later in-place ops change it
        output.register_hook(lambda grad: kept.__setitem__("gradient", grad))

    handle = model.layer4.register_forward_hook(forward_hook)
    try:
        logits = model(x)
        logits[:, 3].sum().backward()
    finally:
        handle.remove()  # forget this and the hook stays on the model
    # --8<-- [end:hooks]
    model.zero_grad(set_to_none=True)
    return kept["activation"].detach(), kept["gradient"]


def hooks_left_behind(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Hooks on ``layer4`` after an error in the block: hand-written vs gradlens."""

    # --8<-- [start:left-behind]
    def forward_hook(module, inputs, output):
        pass

    try:
        model.layer4.register_forward_hook(forward_hook)
        model(x[:, :1])  # wrong input: conv1 raises
    except RuntimeError:
        pass
    by_hand = len(model.layer4._forward_hooks)  # 1: the hook is still there

    try:
        with gradlens.record(model, "layer4"):
            model(x[:, :1])
    except RuntimeError:
        pass
    # --8<-- [end:left-behind]
    model.layer4._forward_hooks.clear()  # clean up after the demonstration
    return by_hand, len(model.layer4._forward_hooks)


def extractor_wrapper(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    # --8<-- [start:torchextractor]
    import torchextractor as tx

    extractor = tx.Extractor(model, ["layer4"])
    logits, features = extractor(x)
    (gradient,) = torch.autograd.grad(logits[:, 3].sum(), features["layer4"])
    hooks_while_alive = len(model.layer4._forward_hooks)  # 1 until `extractor` is deleted
    # --8<-- [end:torchextractor]
    del extractor
    return features["layer4"].detach(), gradient, hooks_while_alive


def with_gradlens(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # --8<-- [start:gradlens]
    with gradlens.record(model, "layer4") as rec:
        logits = model(x)
        rec.grad(logits[:, 3])  # d logit / d layer4, per sample; no param.grad
    activations, gradients = rec["layer4"], rec.gradients["layer4"]
    # --8<-- [end:gradlens]
    return activations, gradients


def inplace_overwrite(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The value a naive hook keeps for ``layer4.1.bn2``, whose output is modified in place."""
    # --8<-- [start:inplace]
    layer = model.layer4[1].bn2  # BasicBlock: out = bn2(...); out += identity; relu_(out)
    kept = {}

    def naive_hook(module, inputs, output):
        kept["naive"] = output  # what hand-written hooks keep
        kept["true"] = output.detach().clone()  # the value bn2 actually produced

    handle = layer.register_forward_hook(naive_hook)
    with torch.no_grad():
        logits = model(x)
    handle.remove()

    with torch.no_grad(), gradlens.record(model, "layer4.1.bn2") as rec:
        model(x)

    naive_min = kept["naive"].min()  # 0.0: relu_ ran on it after the hook
    true_min = kept["true"].min()  # negative, as a BatchNorm output is
    assert torch.equal(rec["layer4.1.bn2"], kept["true"])
    # --8<-- [end:inplace]

    # Grad-CAM from the naive reference and from the recorded value (same gradients).
    with gradlens.record(model, "layer4.1.bn2") as rec:
        logits = model(x)
        rec.grad(logits.gather(1, logits.argmax(1, keepdim=True))[:, 0])
    gradient = rec.gradients["layer4.1.bn2"]

    def gradcam(activation: torch.Tensor) -> torch.Tensor:
        return torch.relu((gradient.mean((2, 3), keepdim=True) * activation).sum(1)).flatten(1)

    naive_map, true_map = gradcam(kept["naive"]), gradcam(rec["layer4.1.bn2"])
    correlation = torch.stack(
        [torch.corrcoef(torch.stack(pair))[0, 1] for pair in zip(naive_map, true_map)]
    )
    return {
        "naive_min": float(naive_min),
        "true_min": float(true_min),
        "gradcam_correlation": float(correlation.mean()),
    }


def full_backward_hook_error(model: nn.Module, x: torch.Tensor) -> tuple[str, str]:
    # --8<-- [start:backward-hook]
    handle = model.layer4[1].bn2.register_full_backward_hook(lambda module, grad_in, grad_out: None)
    try:
        model(x)[:, 3].sum().backward()  # out += identity modifies bn2's output in place
    except RuntimeError as error:
        torch_message = str(error).splitlines()[0]
    finally:
        handle.remove()

    try:
        with gradlens.record(model, "layer4.1.relu", backward_hooks=True):
            pass
    except gradlens.InPlaceBackwardHookError as error:
        gradlens_message = str(error)
    # --8<-- [end:backward-hook]
    model.zero_grad(set_to_none=True)
    return torch_message, gradlens_message


def summary(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The Recorder in a nutshell: last call, every call, (B,) and (B, K) scores."""
    looped = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    v = torch.randn(3, 4)
    # --8<-- [start:summary]
    with gradlens.record(model, ["layer3", "layer4"]) as rec:
        logits = model(x)  # or rec.forward(x)
        rec.grad(logits[:, 3])  # or logits[:, 3].sum().backward()
    rec["layer4"]  # activation of the last call, (B, 512, h, w)
    rec.gradients["layer4"]  # d logits[b, 3] / d layer4, same shape

    with gradlens.record(model, "layer4") as rec_k:
        logits = model(x)
        rec_k.grad(logits[:, [3, 5, 7]])  # (B, K) scores: one batched backward
    rec_k.gradients["layer4"]  # (K, B, 512, h, w)

    with gradlens.record(looped, "0") as rec_loop:
        h = v
        for _ in range(3):  # one module, three calls
            h = looped(h)
        rec_loop.grad(h.sum(1))
    calls = rec_loop.calls("0")  # every call in order, each with its gradient
    # --8<-- [end:summary]
    assert len(calls) == 3 and all(c.gradient is not None for c in calls)
    return {
        "layer4": tuple(rec["layer4"].shape),
        "gradient, (B,) score": tuple(rec.gradients["layer4"].shape),
        "gradient, (B, 3) score": tuple(rec_k.gradients["layer4"].shape),
    }


def saved_bytes(step) -> int:
    """Bytes of tensors autograd keeps for the backward pass while ``step()`` runs."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(seen.values())


def tape_memory(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    # --8<-- [start:tape]
    def whole_tape():
        with gradlens.record(model, "layer4") as rec:
            rec.grad(model(x)[:, 3])

    def tape_from_layer4():
        with gradlens.record(model, "layer4", tape_from_layers=True) as rec:
            rec.grad(model(x)[:, 3])

    whole, from_layer = saved_bytes(whole_tape), saved_bytes(tape_from_layer4)
    # --8<-- [end:tape]
    return {"whole_tape_mb": whole / 2**20, "tape_from_layer4_mb": from_layer / 2**20}


def main(argv: list[str] | None = None) -> list:
    args = parse_args(__doc__.splitlines()[0], argv)
    # --8<-- [start:setup]
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()  # random init: no download needed
    x = torch.randn(2, 3, 224, 224)
    # --8<-- [end:setup]
    if args.quick:
        x = x[:, :, :64, :64]

    a_stash, g_stash = stash_on_self(model, x)
    a_hooks, g_hooks = hand_written_hooks(model, x)
    a_tx, g_tx, tx_hooks = extractor_wrapper(model, x)
    a_gl, g_gl = with_gradlens(model, x)
    for a, g in [(a_stash, g_stash), (a_hooks, g_hooks), (a_tx, g_tx)]:
        torch.testing.assert_close(a, a_gl, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(g, g_gl, atol=1e-6, rtol=1e-4)
    by_hand, by_gradlens = hooks_left_behind(model, x)
    inplace = inplace_overwrite(model, x)
    torch_message, gradlens_message = full_backward_hook_error(model, x)
    memory = tape_memory(model, x)
    shapes = summary(model, x)
    assert all(p.grad is None for p in model.parameters())

    lines = [
        f"input: {tuple(x.shape)}, random-init resnet18 in eval mode",
        "layer4 (output not modified in place): stash, hooks, torchextractor and gradlens agree",
        f"hooks on layer4 after an error: hand-written {by_hand}, gradlens {by_gradlens}",
        f"hooks on layer4 while a torchextractor.Extractor exists: {tx_hooks}",
        "layer4.1.bn2 (then `out += identity` and relu_ in place):",
        f"  min of the tensor a naive hook keeps: {inplace['naive_min']:.3f}",
        f"  min of the value bn2 produced (gradlens records this): {inplace['true_min']:.3f}",
        "  Grad-CAM from the naive reference vs the true value: "
        f"correlation {inplace['gradcam_correlation']:.3f}",
        f"full backward hook on layer4.1.bn2: RuntimeError: {torch_message}",
        "gradlens, backward_hooks=True on an in-place ReLU: "
        f"InPlaceBackwardHookError: {gradlens_message}",
        f"shapes: {shapes}",
        "tensors saved for backward (Grad-CAM of layer4):",
        f"  whole-network tape: {memory['whole_tape_mb']:.1f} MiB",
        f"  tape_from_layers=True: {memory['tape_from_layer4_mb']:.1f} MiB",
    ]
    report = args.out / "recording.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [report]


if __name__ == "__main__":
    main()
