"""Bad input gets a clear error before any hook is registered, and the model is untouched:
a NumPy array or a list of floats as ``x`` and a model that is not an ``nn.Module`` are a
TypeError; NaN or inf in an input is one UserWarning per call, and the maps still come back."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import gradlens
from gradlens.core.checks import check_value, labelled, one_call, warn_non_finite
from gradlens.core.inputs import ModelInput
from gradlens.errors import InputTypeError
from gradlens.registry import INFO, METHODS

from . import zoo
from .contract_support import BATCH, CAM_LAYER, assert_unchanged, make_input, make_model, snapshot
from .test_integer_targets import nothing_runs

Run = Callable[[Any, Any], Any]  # (model, x) -> result


@functools.cache
def _cnn() -> nn.Module:
    return make_model("cnn")


@functools.cache
def _vit() -> nn.Module:
    return make_model("transformer")


def _method(name: str) -> tuple[Callable[[], nn.Module], Run]:
    info = INFO[name]
    options = dict(info.quick_options)
    if info.needs_layer:
        options["layer"] = CAM_LAYER
    model = _vit if info.kind == "attention" else _cnn
    return model, lambda m, x: METHODS[name](m, x, **options)


def _maps() -> torch.Tensor:
    return torch.rand(BATCH, 8, 8, generator=torch.Generator().manual_seed(2))


def _first_logit(output: torch.Tensor) -> torch.Tensor:
    return output[:, 0]


# entry points that take a model input x; "images" for the metrics, whose argument it is
TAKES_X: dict[str, tuple[Callable[[], nn.Module], Run]] = {
    **{name: _method(name) for name in METHODS},
    "extract": (_cnn, lambda m, x: gradlens.extract(m, x, ["block1"])),
    "layers": (_cnn, lambda m, x: gradlens.layers(m, x)),
    "default_layer": (_cnn, lambda m, x: gradlens.default_layer(m, x)),
    "attentions": (_vit, lambda m, x: gradlens.attentions(m, x)),
    "activation_patching": (
        _cnn,
        lambda m, x: gradlens.activation_patching(m, x, make_input(), ["block1"], _first_logit),
    ),
    "deletion": (_cnn, lambda m, x: gradlens.metrics.deletion(m, x, _maps(), steps=2)),
    "insertion": (_cnn, lambda m, x: gradlens.metrics.insertion(m, x, _maps(), steps=2)),
    "average_drop": (_cnn, lambda m, x: gradlens.metrics.average_drop(m, x, _maps())),
    "increase_in_confidence": (
        _cnn,
        lambda m, x: gradlens.metrics.increase_in_confidence(m, x, _maps()),
    ),
    "randomization_test": (
        _cnn,
        lambda m, x: gradlens.metrics.randomization_test(
            m, x, functools.partial(gradlens.gradcam, layer=CAM_LAYER), layers=["head.3"]
        ),
    ),
    **{
        name: (
            _cnn,
            lambda m, x, name=name, options=options: getattr(gradlens.metrics, name)(
                m, x, _maps(), **options
            ),
        )
        for name, options in {
            "pixel_flipping": {"steps": 2},
            "region_perturbation": {"patch_size": 4},
            "selectivity": {"patch_size": 4},
            "faithfulness_correlation": {"subset_size": 4, "runs": 3},
            "faithfulness_estimate": {"steps": 2},
            "monotonicity": {"steps": 2},
            "monotonicity_correlation": {"steps": 2, "samples": 1},
            "irof": {"patch_size": 4},
            "road": {"steps": 2},
            "infidelity": {"samples": 2},
            "sensitivity_n": {"n": 4, "runs": 3},
        }.items()
    },
}
METRICS = {"deletion", "insertion", "average_drop", "increase_in_confidence", "randomization_test"}
METRICS |= {
    "pixel_flipping", "region_perturbation", "selectivity", "faithfulness_correlation",
    "faithfulness_estimate", "monotonicity", "monotonicity_correlation", "irof", "road",
    "infidelity", "sensitivity_n",
}  # fmt: skip

IDS = zoo.token_ids(BATCH, 5)


def _not_a_model(x: torch.Tensor) -> torch.Tensor:
    return x


# every entry point that takes a model, run on the given model
TAKES_A_MODEL: dict[str, Callable[[Any], Any]] = {
    **{name: functools.partial(run, x=make_input()) for name, (_, run) in TAKES_X.items()},
    "record": lambda m: gradlens.record(m, [CAM_LAYER]),
    "Recorder": lambda m: gradlens.Recorder(m, [CAM_LAYER]),
    "Extractor": lambda m: gradlens.Extractor(m, [CAM_LAYER]),
    "capture_attention": lambda m: gradlens.capture_attention(m),
    "patch": lambda m: gradlens.patch(m, {"block1": gradlens.edits.zero()}),
    "token_attributions": lambda m: gradlens.token_attributions(m, IDS, 1),
    "generation_attributions": lambda m: gradlens.generation_attributions(m, IDS, IDS[:, :1]),
    "comprehensiveness": lambda m: gradlens.metrics.comprehensiveness(m, IDS, IDS.float()),
    "sufficiency": lambda m: gradlens.metrics.sufficiency(m, IDS, IDS.float()),
    "attribute_dataset": lambda m: gradlens.attribute_dataset("saliency", m, [], "unused"),
    "extract_dataset": lambda m: gradlens.extract_dataset(m, [], ["block1"], "unused"),
}


def _run_untouched(
    name: str, x: Any, monkeypatch: pytest.MonkeyPatch, error: type, match: str
) -> None:
    make, run = TAKES_X[name]
    model, reference = make(), make_input()
    before = snapshot(model, reference)
    with nothing_runs(monkeypatch), pytest.raises(error, match=match):
        run(model, x)
    assert_unchanged(before, snapshot(model, reference))


FROM_NUMPY = r"pass a torch\.Tensor \(torch\.from_numpy\(\.\.\.\)\)"


@pytest.mark.parametrize("name", sorted(TAKES_X))
def test_a_numpy_array_is_a_type_error_before_anything_runs(name, monkeypatch):
    _run_untouched(
        name, make_input().numpy(), monkeypatch, TypeError, "numpy.ndarray.*" + FROM_NUMPY
    )


@pytest.mark.parametrize("name", sorted(TAKES_X))
def test_a_list_of_floats_is_a_type_error_before_anything_runs(name, monkeypatch):
    _run_untouched(
        name, make_input().tolist(), monkeypatch, TypeError, "list of numbers.*" + FROM_NUMPY
    )


@pytest.mark.parametrize("name", sorted(TAKES_A_MODEL))
def test_a_model_that_is_not_a_module_is_a_type_error_naming_it(name, monkeypatch):
    with (
        nothing_runs(monkeypatch),
        pytest.raises(TypeError, match="model must be a torch.nn.Module, got a function"),
    ):
        TAKES_A_MODEL[name](_not_a_model)


def test_the_type_errors_are_gradlens_errors():
    assert issubclass(InputTypeError, TypeError)
    assert issubclass(InputTypeError, gradlens.GradlensError)
    assert gradlens.InputTypeError is InputTypeError


def _non_finite_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, UserWarning)
        and ("NaN" in str(w.message) or "inf" in str(w.message))
    ]


def _with(value: float) -> torch.Tensor:
    x = make_input()
    x[1, 0, 2, 3] = value
    return x


@pytest.mark.parametrize("name", sorted(TAKES_X))
def test_nan_in_the_input_is_one_warning_naming_it_and_the_result_comes_back(name):
    make, run = TAKES_X[name]
    model, x, reference = make(), _with(float("nan")), make_input()
    before, x_before = snapshot(model, reference), x.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(model, x)
    assert result is not None
    messages = _non_finite_warnings(caught)
    argument = "images" if name in METRICS else "clean" if name == "activation_patching" else "x"
    assert messages == [
        f"the input {argument} holds NaN values; the model's output, and the maps computed "
        f"from it, may be NaN or meaningless"
    ]
    assert_unchanged(before, snapshot(model, reference))  # (NaN != NaN: x is compared below)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", ["gradcam", "smoothgrad", "integrated_gradients", "deletion"])
def test_inf_in_the_input_is_one_warning_saying_inf(name):
    make, run = TAKES_X[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(make(), _with(float("inf")))
    messages = _non_finite_warnings(caught)
    assert len(messages) == 1 and "holds inf values" in messages[0]


def test_a_finite_input_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradlens.smoothgrad(_cnn(), make_input(), n=2)


def test_activation_patching_names_the_input_that_holds_nan():
    with pytest.warns(UserWarning, match="the input corrupted holds NaN") as caught:
        gradlens.activation_patching(
            _cnn(), make_input(), _with(float("nan")), ["block1"], _first_logit
        )
    assert len(_non_finite_warnings(caught.list)) == 1


def test_each_user_call_warns_again():
    x = _with(float("nan"))
    for _ in range(2):
        with pytest.warns(UserWarning, match="NaN"):
            gradlens.saliency(_cnn(), x)


def test_a_mapping_input_names_the_key():
    mask = torch.ones(BATCH, 5)
    mask[0, 1] = float("nan")
    with pytest.warns(UserWarning, match=r"the input x\['attention_mask'\] holds NaN"):
        ModelInput.parse({"input_ids": IDS, "attention_mask": mask})


def test_lists_of_image_tensors_and_mappings_still_parse():
    images = [torch.rand(3, 8, 8), torch.rand(3, 6, 8)]
    assert ModelInput.parse(images).batch_size == 2
    assert ModelInput.parse({"input_ids": IDS}).keys == ("input_ids",)
    assert ModelInput.parse((make_input(), [3, 4])).batch_size == BATCH


def test_labelled_names_the_parts_of_an_input():
    x = make_input()
    assert labelled(x, "x") == [("x", x)]
    assert [name for name, _ in labelled((x, x), "x")] == ["x[0]", "x[1]"]
    assert [name for name, _ in labelled({"a": x}, "clean")] == ["clean['a']"]


def test_check_value_refuses_arrays_and_number_lists_only():
    check_value(torch.zeros(2), "x")
    check_value([torch.zeros(3, 2, 2)], "x")
    check_value([1, 2], "x[1]", numbers=False)
    with pytest.raises(InputTypeError, match="x is a list of numbers"):
        check_value([[1.0, 2.0]], "x")


def test_one_call_warns_once_for_all_inner_checks():
    nan = torch.tensor([float("nan")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with one_call():
            warn_non_finite([("x", nan)])
            with one_call():
                warn_non_finite([("x", nan)])
    assert len(caught) == 1


@functools.cache
def _bert() -> nn.Module:
    return zoo.hf_bert()


TEXT_ENTRIES: dict[str, Callable[[nn.Module, Any], Any]] = {
    "token_attributions": lambda m, ids: gradlens.token_attributions(m, ids, 1),
    "generation_attributions": lambda m, ids: gradlens.generation_attributions(m, ids, [[1], [2]]),
}


@pytest.mark.parametrize("name", sorted(TEXT_ENTRIES))
@pytest.mark.parametrize("kind", ["numpy", "list"])
def test_text_entry_points_refuse_numpy_ids_and_lists_before_anything_runs(name, kind, monkeypatch):
    model = _bert()
    before = snapshot(model, IDS)
    ids = IDS.numpy() if kind == "numpy" else IDS.tolist()
    with nothing_runs(monkeypatch), pytest.raises(TypeError, match=FROM_NUMPY):
        TEXT_ENTRIES[name](model, ids)
    assert_unchanged(before, snapshot(model, IDS))


def test_token_attributions_warns_once_naming_the_mapping_entry():
    mask = torch.ones(BATCH, 5)
    mask[0, 4] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = gradlens.token_attributions(
            _bert(), {"input_ids": IDS, "attention_mask": mask}, 1, steps=2
        )
    assert scores.shape == (BATCH, 5)
    assert [m[: m.index(" NaN")] for m in _non_finite_warnings(caught)] == [
        "the input inputs['attention_mask'] holds"
    ]
