"""Shared test fixtures: models from the tiny-model zoo (tests/zoo.py) that several test
files use with the same options, an image batch, the trained text classifier, one thread.

The model-state snapshot lives in tests/contract_support.py (``snapshot``,
``assert_unchanged``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from . import zoo

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one thread each avoids oversubscription
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    """:func:`zoo.torchvision_cnn`: a random ResNet-18 with 10 classes."""
    return zoo.torchvision_cnn("resnet18")


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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    a busy 2-core machine stalls the multi-threaded tiny ops of the text models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert() -> nn.Module:
    """:func:`zoo.hf_bert` with its defaults: vocabulary 64, 32 positions, 3 labels."""
    return zoo.hf_bert()


@pytest.fixture(scope="module")
def tiny_gpt2() -> nn.Module:
    """:func:`zoo.hf_gpt2` with its defaults: vocabulary 64, 32 positions, end token 63."""
    return zoo.hf_gpt2()


@pytest.fixture(scope="module")
def hf_vit_pair() -> tuple[nn.Module, nn.Module]:
    """:func:`zoo.hf_vit` (2 layers, 3 labels) as ``(eager, sdpa)`` with the same weights."""
    return zoo.eager_and_sdpa(zoo.hf_vit)
