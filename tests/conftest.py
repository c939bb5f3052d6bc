"""Shared test fixtures: small random-init models and a model-state snapshot helper."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one thread each avoids oversubscription
    torch.set_num_threads(1)


def model_state(model: nn.Module) -> dict:
    """Everything gradlens promises not to change: hooks, flags, modes, buffers, grads."""
    return {
        "hooks": [
            (
                name,
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(getattr(m, "_backward_pre_hooks", {})),
            )
            for name, m in model.named_modules()
        ],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "buffers": [b.detach().clone() for b in model.buffers()],
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["hooks"] == after["hooks"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    for a, b in zip(before["buffers"], after["buffers"]):
        assert torch.equal(a, b)
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    for a, b in zip(before["params"], after["params"]):
        assert torch.equal(a, b)


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture
def image_batch() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def trained_text_model():
    """``(model, held-out data, accuracy)``: the tiny text classifier trained on the synthetic
    text task with the quick recipe (about 10 s on one thread), shared by the text tests."""
    from gradlens.demos.training import QUICK_TEXT_RECIPE, train_text_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine stalls multi-threaded tiny ops
    try:
        return train_text_model(QUICK_TEXT_RECIPE, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
