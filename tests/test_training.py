"""gradlens.demos.training: the tiny CNN, its training, and the demo model that learns the
shapes."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import gradlens.data
import gradlens.demos.training
import gradlens.training
from gradlens.demos.shapes import make_shapes
from gradlens.demos.training import QUICK_RECIPE, TinyCNN, accuracy, train, train_demo_model


def test_tiny_cnn_keeps_an_8x8_map_in_its_named_last_block():
    model = TinyCNN(num_classes=9).eval()
    seen = {}

    def remember(module, inputs, output):
        seen["shape"] = output.shape

    model.last_conv.register_forward_hook(remember)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 9)
    assert seen["shape"] == (2, 64, 8, 8)
    assert model.cam_layer_name == "features.3"
    assert dict(model.named_modules())["features.3"] is model.features[-1] is model.last_conv


def test_accuracy_is_the_share_of_correct_top_classes():
    class AlwaysOne(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.0, 1.0, 0.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(len(x), 3)

    labels = torch.tensor([1, 1, 0, 2, 1])
    assert accuracy(AlwaysOne(), torch.zeros(5, 1), labels, batch_size=2) == 3 / 5


def test_train_returns_the_model_in_eval_mode_and_leaves_the_global_rng_alone(one_thread):
    small = make_shapes(32, size=16)
    model = TinyCNN(num_classes=9, width=4)
    state = torch.random.get_rng_state()
    assert train(model, small, epochs=1, batch_size=16, progress=False) is model
    assert not model.training
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one thread: tiny convolutions gain nothing from more, and on a busy
    machine a thread that is not scheduled stalls every parallel op. It also makes the
    trained model the same on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick_model(one_thread):
    return train_demo_model(quick=True, progress=False)


def test_the_quick_recipe_reaches_95_percent_on_held_out_data(quick_model):
    model, test_data, test_accuracy = quick_model
    assert len(test_data) == QUICK_RECIPE.n_test
    assert test_accuracy >= 0.95
    assert accuracy(model, test_data.images, test_data.labels) == test_accuracy


def test_the_training_names_are_still_importable_from_gradlens_data():
    moved = ["TinyCNN", "train", "accuracy", "Recipe", "FULL_RECIPE", "QUICK_RECIPE"]
    for name in moved + ["train_demo_model"]:  # names that lived in gradlens.data before
        assert getattr(gradlens.data, name) is getattr(gradlens.demos.training, name)
        assert getattr(gradlens.training, name) is getattr(gradlens.demos.training, name)


class Terminal(io.StringIO):
    """A standard error that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def linear_data() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(16, 3, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 2


def test_the_progress_bar_is_drawn_on_a_terminal(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    train(nn.Linear(3, 2), linear_data(), epochs=2, batch_size=8, progress=True)
    drawn = terminal.getvalue()
    assert "\r" in drawn and "train: 100%" in drawn and "4/4" in drawn


@pytest.mark.parametrize("stream", [io.StringIO(), None], ids=["a file", "no stderr"])
def test_no_progress_bar_when_stderr_is_not_a_terminal(monkeypatch, stream):
    monkeypatch.setattr("sys.stderr", stream)
    train(nn.Linear(3, 2), linear_data(), epochs=2, batch_size=8, progress=True)
    assert stream is None or stream.getvalue() == ""


def test_progress_false_hides_the_bar_on_a_terminal_too(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    train(nn.Linear(3, 2), linear_data(), epochs=2, batch_size=8, progress=False)
    assert terminal.getvalue() == ""
