"""Class ids are integers: every method and every metric that reads a target refuses a float
(``1.5``, a whole ``2.0``, a float tensor) or a bool (``True``, a bool tensor) with a
TargetError, before a hook is registered or the model runs, and leaves the model as it was."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import gradlens
from gradlens.errors import TargetError
from gradlens.registry import INFO, METHODS

from . import zoo
from .contract_support import (
    BATCH,
    CAM_LAYER,
    assert_unchanged,
    make_input,
    make_model,
    snapshot,
)

BAD_TARGETS = {
    "whole float": 2.0,
    "float": 1.5,
    "bool": True,
    "float tensor": torch.tensor([1.0, 0.0]),
    "bool tensor": torch.tensor([True, False]),
}


class Touched(BaseException):
    """The model ran or a hook was registered (a BaseException: no method may swallow it)."""


@contextlib.contextmanager
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail at once if any module is called or any module or tensor hook is registered."""

    def touched(what: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise Touched(f"{what} before the target was checked")

        return fail

    with monkeypatch.context() as patch:
        patch.setattr(nn.Module, "__call__", touched("a module ran"))
        for name in ("register_forward_hook", "register_forward_pre_hook"):
            patch.setattr(nn.Module, name, touched(f"{name} was called"))
        patch.setattr(nn.Module, "register_full_backward_hook", touched("a backward hook"))
        patch.setattr(torch.Tensor, "register_hook", touched("a tensor hook"))
        yield


@functools.cache
def _cnn() -> nn.Module:
    return make_model("cnn")


@functools.cache
def _vit() -> nn.Module:
    return make_model("transformer")


@functools.cache
def _bert() -> nn.Module:
    return zoo.hf_bert()


@functools.cache
def _gpt2() -> nn.Module:
    return zoo.hf_gpt2()


def _method(name: str) -> tuple[Callable[[], nn.Module], Callable[[nn.Module, Any], Any]]:
    info = INFO[name]
    options = dict(info.quick_options)
    if info.needs_layer:
        options["layer"] = CAM_LAYER
    model = _vit if info.kind == "attention" else _cnn
    return model, lambda m, target: METHODS[name](m, X, target=target, **options)


def _maps() -> torch.Tensor:
    return torch.rand(BATCH, 8, 8, generator=torch.Generator().manual_seed(2))


X = make_input()
IDS = zoo.token_ids(BATCH, 5)
MASK = torch.ones_like(IDS)

CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, Any], Any]]] = {
    **{name: _method(name) for name in METHODS},
    "cam": (
        _cnn,
        lambda m, t: gradlens.cam.cam(m, X, CAM_LAYER, t, weights=lambda A, G: G),
    ),
    "layer_integrated_gradients": (
        _cnn,
        lambda m, t: gradlens.layer_integrated_gradients(m, X, "block1", t, steps=2),
    ),
    "layer_gradient_x_activation": (
        _cnn,
        lambda m, t: gradlens.layer_gradient_x_activation(m, X, "block1", t),
    ),
    "deletion": (
        _cnn,
        lambda m, t: gradlens.metrics.deletion(m, X, _maps(), t, steps=2),
    ),
    "insertion": (
        _cnn,
        lambda m, t: gradlens.metrics.insertion(m, X, _maps(), t, steps=2),
    ),
    "average_drop": (
        _cnn,
        lambda m, t: gradlens.metrics.average_drop(m, X, _maps(), t),
    ),
    "increase_in_confidence": (
        _cnn,
        lambda m, t: gradlens.metrics.increase_in_confidence(m, X, _maps(), t),
    ),
    "randomization_test": (
        _cnn,
        lambda m, t: gradlens.metrics.randomization_test(
            m, X, functools.partial(gradlens.gradcam, layer=CAM_LAYER), t
        ),
    ),
    "comprehensiveness": (
        _bert,
        lambda m, t: gradlens.metrics.comprehensiveness(
            m, IDS, IDS.float(), t, attention_mask=MASK
        ),
    ),
    "sufficiency": (
        _bert,
        lambda m, t: gradlens.metrics.sufficiency(m, IDS, IDS.float(), t, attention_mask=MASK),
    ),
    "token_attributions": (
        _bert,
        lambda m, t: gradlens.token_attributions(m, {"input_ids": IDS, "attention_mask": MASK}, t),
    ),
    "generation_attributions": (
        _gpt2,
        lambda m, t: gradlens.generation_attributions(m, IDS, t),
    ),
    "logit_difference correct": (_cnn, lambda m, t: gradlens.metrics.logit_difference(t, 0)),
    "logit_difference wrong": (_cnn, lambda m, t: gradlens.metrics.logit_difference(0, t)),
    "targets.token": (_gpt2, lambda m, t: gradlens.targets.token(t)),
    "targets.sequence": (_gpt2, lambda m, t: gradlens.targets.sequence(t)),
    "targets.probability": (_cnn, lambda m, t: gradlens.targets.probability(t)),
    "targets.segmentation": (_cnn, lambda m, t: gradlens.targets.segmentation(t)),
}


@pytest.mark.parametrize("bad", list(BAD_TARGETS), ids=list(BAD_TARGETS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_float_or_bool_target_is_refused_before_anything_runs(
    name: str, bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, call = CASES[name]
    model, target = make(), BAD_TARGETS[bad]
    x = X if make in (_cnn, _vit) else IDS
    before = snapshot(model, x)
    with nothing_runs(monkeypatch), pytest.raises(TargetError, match="integer"):
        call(model, target)
    assert_unchanged(before, snapshot(model, x))


@pytest.mark.parametrize("bad", list(BAD_TARGETS), ids=list(BAD_TARGETS))
def test_the_message_says_what_was_given_and_what_is_expected(bad: str) -> None:
    with pytest.raises(TargetError) as caught:
        gradlens.gradcam(_cnn(), X, CAM_LAYER, target=BAD_TARGETS[bad])
    message = str(caught.value)
    given = {"whole float": "2.0", "float": "1.5", "bool": "True"}.get(bad, "torch.")
    assert given in message
    assert "class indices are integers" in message


def test_every_registered_method_has_a_case() -> None:
    assert set(METHODS) <= set(CASES)


def test_integer_targets_still_work() -> None:
    maps = gradlens.gradcam(_cnn(), X, CAM_LAYER, target=torch.tensor([2, 0]))
    assert torch.equal(maps, gradlens.gradcam(_cnn(), X, CAM_LAYER, target=[2, 0]))
