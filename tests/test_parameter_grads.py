"""Parameters off the autograd tape: ``Recorder(parameter_grads=False)`` and the gradient
methods, which all record that way.

While a method runs, every parameter that required grad has ``requires_grad=False`` (autograd
keeps no layer inputs for parameter gradients); on every way out -- normal return,
exception, early stop -- the flags are back, frozen parameters stay frozen and the results
are exactly those of a run with the parameters on the tape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import gradlens
from gradlens import targets
from gradlens.core import recorder as recorder_module
from gradlens.core.parameters import parameters_without_grad

from .zoo import hf_gpt2, token_ids, torchvision_vit


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


IMAGES = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


class _Tied(nn.Module):
    """One weight used by two layers (as a language model ties its embedding and head)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 3, bias=False)
        self.second = nn.Linear(3, 3, bias=False)
        self.second.weight = self.first.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.second(torch.relu(self.first(x)))


def _flags(model: nn.Module) -> list[bool]:
    return [p.requires_grad for p in model.parameters()]


def _flags_during_forward(model: nn.Module) -> tuple[list[list[bool]], Callable[[], None]]:
    """The parameters' flags at every forward of ``model``, and the hook's remover."""
    seen: list[list[bool]] = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(_flags(module)))
    return seen, handle.remove


# -- the Recorder option ---------------------------------------------------------------


def test_record_keeps_parameters_on_the_tape_by_default() -> None:
    model = _cnn()
    with gradlens.record(model, "2") as rec:
        assert all(_flags(model))
        model(IMAGES)[:, 0].sum().backward()
    assert rec.gradients["2"].shape == (2, 4, 8, 8)
    assert all(p.grad is not None for p in model.parameters())


def test_parameter_grads_false_switches_the_flags_off_in_the_block_only() -> None:
    model = _cnn()
    with gradlens.record(model, "2", tape_from_layers=True, parameter_grads=False) as rec:
        assert not any(_flags(model))
        rec.grad(model(IMAGES)[:, 0])
    assert all(_flags(model))
    assert rec.gradients["2"].shape == (2, 4, 8, 8)
    assert all(p.grad is None for p in model.parameters())


def test_the_flags_are_restored_when_the_block_raises() -> None:
    model = _cnn()
    with pytest.raises(RuntimeError, match="boom"):
        with gradlens.record(model, "2", parameter_grads=False):
            model(IMAGES)
            raise RuntimeError("boom")
    assert all(_flags(model))


def test_the_flags_are_restored_after_an_early_stop() -> None:
    model = _cnn()
    with gradlens.record(model, "0", stop_early=True, parameter_grads=False) as rec:
        model(IMAGES)  # ends the block once layer "0" has run
        pytest.fail("the forward should have stopped the block")
    assert rec["0"].shape == (2, 4, 8, 8)
    assert all(_flags(model))


def test_frozen_parameters_stay_frozen() -> None:
    model = _cnn()
    model[0].requires_grad_(False)
    before = _flags(model)
    with gradlens.record(model, "2", parameter_grads=False):
        assert not any(_flags(model))
    assert _flags(model) == before
    assert before == [False, False, True, True, True, True]


def test_a_tied_parameter_is_switched_once_and_restored() -> None:
    model = _Tied()
    x = torch.randn(2, 3, requires_grad=True)
    with gradlens.record(model, "second", parameter_grads=False) as rec:
        assert not model.first.weight.requires_grad
        rec.watch("x", x)
        rec.grad(model(x).sum())
    assert model.first.weight.requires_grad and model.second.weight is model.first.weight
    assert rec.gradients["x"].shape == (2, 3)


def test_parameters_made_in_inference_mode_are_left_alone() -> None:
    # their flag could be switched off, but never back on outside inference mode
    with torch.inference_mode():
        model = nn.Linear(2, 2)
    with parameters_without_grad(model):
        assert model.weight.requires_grad
    assert model.weight.requires_grad


# -- the methods -----------------------------------------------------------------------


def _gradcam() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    return _cnn(), lambda m: gradlens.gradcam(m, IMAGES, target=1, layer="2")


def _integrated_gradients() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    return _cnn(), lambda m: gradlens.integrated_gradients(m, IMAGES, 1, steps=4)


def _saliency() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    return _cnn(), lambda m: gradlens.saliency(m, IMAGES, [0, 2])


def _token_attributions() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    ids = token_ids(2, 6)
    return hf_gpt2(), lambda m: gradlens.token_attributions(
        m, ids, targets.sequence(ids[:, -2:]), method="integrated_gradients", steps=3, baseline=0
    )


def _generation_attributions() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    prompt, continuation = token_ids(2, 5), token_ids(2, 3, seed=2)
    return hf_gpt2(), lambda m: gradlens.generation_attributions(m, prompt, continuation)


def _gradient_rollout() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return torchvision_vit(), lambda m: gradlens.gradient_attention_rollout(
        m, images, [[1, 2], [3, 4]]
    )


METHODS = {
    "gradcam": _gradcam,
    "integrated_gradients": _integrated_gradients,
    "saliency": _saliency,
    "token_attributions": _token_attributions,
    "generation_attributions": _generation_attributions,
    "gradient_attention_rollout": _gradient_rollout,
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_run_with_the_parameters_off_the_tape_and_restore_them(name: str) -> None:
    model, run = METHODS[name]()
    seen, remove = _flags_during_forward(model)
    try:
        run(model)
    finally:
        remove()
    assert any(not any(flags) for flags in seen)  # the differentiated forward
    assert all(_flags(model))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_give_exactly_the_results_of_parameters_on_the_tape(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, run = METHODS[name]()
    off = run(model)
    monkeypatch.setattr(recorder_module, "parameters_without_grad", lambda model: nullcontext())
    seen, remove = _flags_during_forward(model)
    try:
        on = run(model)
    finally:
        remove()
    assert all(seen[-1])  # this run really kept them on the tape
    assert torch.equal(off, on)


def test_a_method_that_raises_in_the_forward_restores_the_flags() -> None:
    model = _cnn()
    model[6].requires_grad_(False)

    def fail(module: nn.Module, args: Any) -> None:
        raise RuntimeError("broken layer")

    handle = model[2].register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="broken layer"):
            gradlens.gradcam(model, IMAGES, target=1, layer="2")
    finally:
        handle.remove()
    assert _flags(model) == [True, True, True, True, False, False]


def test_a_method_inside_a_users_record_block_leaves_its_backward_alone() -> None:
    model = _cnn()
    with gradlens.record(model, "2") as rec:
        gradlens.gradcam(model, IMAGES, target=1, layer="2")
        assert all(_flags(model))
        model(IMAGES)[:, 0].sum().backward()
    assert rec.gradients["2"].shape == (2, 4, 8, 8)
    assert all(p.grad is not None for p in model.parameters())
