"""Every public keyword option is visible to ``help()`` and to a type checker.

Walks the public callables (``gradlens.__all__`` and each subpackage's ``__all__``): no
``**kwargs`` may be annotated ``Any`` or left unannotated -- options are explicit keyword
parameters, or ``**options: Unpack[SomeTypedDict]`` -- and every keyword-only parameter,
and every key of an unpacked ``TypedDict``, is named in the docstring's ``Args`` section.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import typing_extensions
from torch import nn
from typing_extensions import Unpack

import gradlens
from gradlens import registry
from gradlens.attribution import NoiseMethodOptions
from gradlens.dataset import MethodOptions
from gradlens.text import TokenMethodOptions

PACKAGES = (
    "gradlens",
    "gradlens.cam",
    "gradlens.attribution",
    "gradlens.attention",
    "gradlens.text",
    "gradlens.interventions",
    "gradlens.metrics",
    "gradlens.dataset",
    "gradlens.viz",
    "gradlens.targets",
    "gradlens.edits",
    "gradlens.sae",
    "gradlens.bench",
)

SECTIONS = re.compile(
    r"^(Args|Arguments|Attributes|Returns|Yields|Raises|Example|Examples|Note|Notes|"
    r"Warning|Warnings|See Also|References):\s*$"
)


def _public_callables() -> Iterator[tuple[str, Callable[..., Any]]]:
    seen: set[int] = set()
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or id(obj) in seen:
                continue  # type aliases, constants, modules
            seen.add(id(obj))
            yield f"{package}.{name}", obj


PUBLIC = dict(_public_callables())


def _signature(obj: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(obj, eval_str=True)
    except (TypeError, ValueError):
        return None  # builtins and classes without a Python signature


def _args_entries(doc: str) -> Iterator[str]:
    """The name part (before the colon) of each entry of the ``Args`` section; an entry may
    name several parameters (``model, x, layer: as for ...``) over several lines."""
    section: str | None = None
    indent: int | None = None
    pending = ""
    for line in doc.splitlines():
        depth = len(line) - len(line.lstrip())
        header = SECTIONS.match(line.strip())
        if header and depth == 0:
            section, indent, pending = header.group(1), None, ""
            continue
        if section not in ("Args", "Arguments") or not line.strip():
            continue
        indent = depth if indent is None else indent
        if depth == indent or pending:
            head = pending + " " + line.strip()
            if ":" in head:
                yield head.split(":", 1)[0]
                pending = ""
            elif head.rstrip().endswith(","):
                pending = head  # a list of names wrapped onto the next line
            else:
                pending = ""


def _documented_names(obj: Callable[..., Any]) -> set[str]:
    """The parameter names of the docstring's ``Args`` section (``**options`` as
    ``options``); for a class, of its own and its ``__init__``'s docstring."""
    docs = [inspect.getdoc(obj) or ""]
    if inspect.isclass(obj):
        docs.append(inspect.getdoc(obj.__init__) or "")
    names: set[str] = set()
    for doc in docs:
        for entry in _args_entries(doc):
            entry = re.sub(r"\([^)]*\)", "", entry)  # a type in parentheses
            names.update(part.strip().lstrip("*") for part in entry.split(","))
    return names


def _keys(typed_dict: Any) -> set[str]:
    """The keys of a ``TypedDict``."""
    return set(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


def _unpacked_keys(parameter: inspect.Parameter) -> list[str] | None:
    """The keys of ``**name: Unpack[TD]``, or ``None`` when not so annotated."""
    if typing_extensions.get_origin(parameter.annotation) is not Unpack:
        return None
    (typed_dict,) = typing.get_args(parameter.annotation)
    return sorted(_keys(typed_dict))


def _var_keyword(obj: Callable[..., Any]) -> inspect.Parameter | None:
    signature = _signature(obj)
    if signature is None:
        return None
    return next((p for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)


def test_the_walk_finds_the_public_functions() -> None:
    for name in ("gradlens.record", "gradlens.gradcam", "gradlens.token_attributions"):
        assert name in PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_no_untyped_keyword_catch_all(name: str) -> None:
    parameter = _var_keyword(PUBLIC[name])
    if parameter is None:
        return
    assert _unpacked_keys(parameter) is not None, (
        f"{name}(**{parameter.name}) is annotated {parameter.annotation!r}: name the options "
        "as keyword parameters, or annotate them Unpack[<a documented TypedDict>]"
    )


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_keyword_option_is_documented(name: str) -> None:
    obj = PUBLIC[name]
    signature = _signature(obj)
    if signature is None:
        return
    documented = _documented_names(obj)
    options: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY:
            options.append(parameter.name)
        elif parameter.kind is parameter.VAR_KEYWORD:
            keys = _unpacked_keys(parameter)
            options.extend(keys if keys is not None and parameter.name not in documented else [])
    missing = [option for option in options if option not in documented]
    assert not missing, f"{name}: keyword options missing from the Args section: {missing}"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_unpacked_options_are_documented_by_their_typed_dict(name: str) -> None:
    parameter = _var_keyword(PUBLIC[name])
    keys = None if parameter is None else _unpacked_keys(parameter)
    if parameter is None or keys is None:
        return
    (typed_dict,) = typing.get_args(parameter.annotation)
    doc = inspect.getdoc(typed_dict) or ""
    attributes = doc.split("Attributes:", 1)[-1] if "Attributes:" in doc else ""
    missing = [key for key in keys if not re.search(rf"^\s+{key}:", attributes, re.M)]
    assert not missing, f"{typed_dict.__name__}'s Attributes section misses {missing}"


# -- the option sets are complete --------------------------------------------------------


def _keywords(function: Callable[..., Any]) -> set[str]:
    """The parameters of ``function`` that have a default (its keyword options)."""
    return {
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.default is not p.empty and p.kind is not p.VAR_KEYWORD
    }


def test_record_takes_exactly_the_recorder_keywords_with_the_same_defaults() -> None:
    def keywords(function: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
        parameters = inspect.signature(function).parameters.values()
        return {p.name: (p.default, p.annotation) for p in parameters if p.name != "self"}

    assert keywords(gradlens.record) == keywords(gradlens.Recorder.__init__)


def test_noise_method_options_are_the_averaged_methods_options() -> None:
    passed_on = set().union(*map(_keywords, registry.ATTRIBUTION_METHODS.values()))
    own = _keywords(gradlens.smoothgrad) | {"target"}
    assert _keys(NoiseMethodOptions) == passed_on - own
    assert _keywords(gradlens.vargrad) == _keywords(gradlens.smoothgrad)


def test_token_method_options_are_the_layer_free_methods_options() -> None:
    methods = [registry.get(n) for n in registry.names("attribution", needs_layer=False)]
    passed_on = set().union(*map(_keywords, methods))
    own = _keywords(gradlens.token_attributions) | {"target"}
    refused = {"baselines", "return_delta"}  # baseline= instead; one number per token
    assert _keys(TokenMethodOptions) == passed_on - own - refused


def test_dataset_method_options_are_every_registered_methods_options() -> None:
    passed_on = set().union(*map(registry.accepted_options, registry.METHODS.values()))
    # attribute_dataset's own method= shadows SmoothGrad's (and IG's deprecated) method=
    assert _keys(MethodOptions) == passed_on - {"target", "method"}


def test_generation_attributions_names_token_attributions_keywords() -> None:
    tokens = inspect.signature(gradlens.token_attributions).parameters
    generation = inspect.signature(gradlens.generation_attributions).parameters
    for name in ("method", "layer", "baseline", "reduce", "output", "forward_kwargs"):
        assert generation[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert generation[name].annotation == tokens[name].annotation
        if name != "method":  # Input x Gradient by default here: one pass
            assert generation[name].default == tokens[name].default
    assert generation["options"].annotation == tokens["options"].annotation


# -- a wrong keyword is a clear error, before the model runs ------------------------------


class _Counting(nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def _classifier() -> _Counting:
    torch.manual_seed(0)
    return _Counting(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    )


def _language_model() -> _Counting:
    """A toy language model: ``(B, T)`` ids -> ``(B, T, 11)`` logits."""
    torch.manual_seed(0)
    return _Counting(nn.Sequential(nn.Embedding(11, 4), nn.Linear(4, 11)))


def test_record_refuses_an_unknown_keyword() -> None:
    with pytest.raises(TypeError, match="detatch"):
        gradlens.record(_classifier(), ["model.0"], detatch=False)  # type: ignore[call-arg]


def test_a_cam_refuses_an_unknown_keyword_before_the_model_runs() -> None:
    model = _classifier()
    with pytest.raises(TypeError, match="upsampel"):
        gradlens.gradcam(model, torch.randn(2, 3, 4, 4), "model.0", upsampel=False)  # type: ignore[call-arg]
    assert model.calls == 0


def test_smoothgrad_names_the_option_its_method_does_not_take() -> None:
    model = _classifier()
    with pytest.raises(TypeError, match=r"smoothgrad .*'stesp'.*integrated_gradients.*'steps'"):
        gradlens.smoothgrad(
            model,
            torch.randn(2, 3, 4, 4),
            method="integrated_gradients",
            stesp=4,  # type: ignore[call-arg]
        )
    assert model.calls == 0


def test_vargrad_refuses_an_option_of_another_method() -> None:
    model = _classifier()
    with pytest.raises(TypeError, match=r"vargrad .*'steps'.*saliency"):
        gradlens.vargrad(model, torch.randn(2, 3, 4, 4), steps=4)
    assert model.calls == 0


def test_smoothgrad_passes_its_method_options_on() -> None:
    x = torch.randn(2, 3, 4, 4)
    signed = gradlens.smoothgrad(_classifier(), x, target=0, n=1, seed=0, abs=False)
    absolute = gradlens.smoothgrad(_classifier(), x, target=0, n=1, seed=0)
    assert (signed < 0).any()
    torch.testing.assert_close(absolute, signed.abs())  # one noise sample, the same draw


def test_token_attributions_names_the_option_its_method_does_not_take() -> None:
    model = _language_model()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(TypeError, match=r"token_attributions .*'n'.*integrated_gradients"):
        gradlens.token_attributions(model, ids, target=0, n=4)
    assert model.calls == 0


def test_token_attributions_refuses_return_delta() -> None:
    model = _language_model()
    with pytest.raises(ValueError, match="return_delta"):
        gradlens.token_attributions(model, torch.tensor([[1, 2, 3]]), 0, return_delta=True)  # type: ignore[call-arg]
    assert model.calls == 0


def test_generation_attributions_refuses_an_unknown_option_before_the_model_runs() -> None:
    model = _language_model()
    with pytest.raises(TypeError, match=r"'stesp'.*did you mean 'steps'"):
        gradlens.generation_attributions(
            model,
            torch.tensor([[1, 2]]),
            [3, 4],
            method="integrated_gradients",
            stesp=4,  # type: ignore[call-arg]
        )
    assert model.calls == 0


def test_attribute_dataset_refuses_an_unknown_option_before_writing(tmp_path: Path) -> None:
    model = _classifier()
    batches = [(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))]
    with pytest.raises(TypeError, match=r"attribute_dataset .*'layr'.*gradcam.*'layer'"):
        gradlens.attribute_dataset(
            "gradcam",
            model,
            batches,
            tmp_path / "out",
            n_samples=2,
            layr="model.0",  # type: ignore[call-arg]
        )
    assert model.calls == 0
    assert not (tmp_path / "out").exists()


def test_smoothgrad_passes_on_a_parameter_without_default_of_a_user_method() -> None:
    seen: list[float] = []

    def scaled_saliency(
        model: nn.Module,
        x: torch.Tensor,
        target: Any,
        scale: float,
        output: Any = None,
        forward_kwargs: Any = None,
    ) -> torch.Tensor:
        seen.append(scale)
        return gradlens.saliency(model, x, target, forward_kwargs=forward_kwargs) * scale

    x = torch.randn(2, 3, 4, 4)
    gradlens.smoothgrad(_classifier(), x, method=scaled_saliency, n=1, scale=2.0)  # type: ignore[call-arg]
    assert seen == [2.0]
