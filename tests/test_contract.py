"""The zero-side-effect contract, checked for every public entry point.

Every entry point runs on a small CNN (the attention entry points on a small transformer;
tests/contract_support.py) in five modes -- eval,
train, frozen parameters, under ``torch.no_grad()``, under ``torch.inference_mode()`` --
with three outcomes: success, a bad target (a class index out of range, which must raise
:class:`~gradlens.errors.TargetError`), and a layer that raises in the middle of the
forward pass (the error must come through unchanged). After each run the model, the input
and torch's global state must be exactly as before: module and global hooks, tensor hooks,
grad mode, train/eval flags, ``requires_grad``, ``.grad`` (same object, same values),
parameters and buffers.

A public function joins by getting a case in :data:`ENTRY_POINTS` (registered methods get
one automatically); :func:`test_every_public_callable_has_a_case_or_an_exemption` fails
naming any public callable that has neither a case nor an entry in :data:`EXEMPT`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import gradlens
import gradlens.attribution
import gradlens.cam
import gradlens.metrics
import gradlens.relevance
import gradlens.sae
import gradlens.text
from gradlens.errors import AttentionCaptureError, LayerNotFoundError, TargetError
from gradlens.registry import INFO, METHODS

from .contract_support import (
    BATCH,
    CAM_LAYER,
    MODES,
    NUM_CLASSES,
    RAISED,
    SIZE,
    Boom,
    Setup,
    armed,
    assert_unchanged,
    differences,
    setup,
    snapshot,
)

BAD_TARGET = NUM_CLASSES  # one past the last class


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tensors here are tiny: threads cost more than they give, most on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Call:
    """What one case gets: the prepared model and input, the target, a scratch folder."""

    model: torch.nn.Module
    x: torch.Tensor
    target: Any
    tmp_path: Path

    def loader(self) -> DataLoader[Any]:
        """A two-sample in-memory dataset of ``(image, label)`` batches."""
        labels = torch.arange(BATCH) % NUM_CLASSES
        return DataLoader(TensorDataset(self.x.detach(), labels), batch_size=BATCH)


@dataclass(frozen=True)
class Case:
    """How to run one public entry point.

    Attributes:
        entry: the public object exercised (matched by identity against the ``__all__`` lists).
        run: ``run(call)`` makes the call.
        takes_target: the entry point reads a target (the bad-target outcome applies).
        runs_model: it runs the model (the raising-layer outcome applies).
        forwards_like_the_model: it is a module whose forward is the model's forward, so
            its train-mode buffer updates are the model's own (Extractor).
        error_at: the error module armed for the raising-layer outcome: ``"boom"`` (after
            the CAM layer, which has run, so hooks and tape are live when the error comes),
            or ``"block2.2"`` (inside the CAM layer) for entry points that rightly stop the
            forward once that layer has run.
        model: the model it runs on (``contract_support.MODELS``): ``"cnn"``, or
            ``"transformer"`` for the attention entry points (its ``boom`` runs after both
            attention modules, so the capture and its tape are live when the error comes).
    """

    entry: Any
    run: Callable[[Call], Any]
    takes_target: bool = True
    runs_model: bool = True
    forwards_like_the_model: bool = False
    error_at: str = "boom"
    model: str = "cnn"


# Eigen-CAM needs only the layer's activations (its MethodInfo says it uses no target), so
# its forward stops at the layer and an error after the layer never runs.
STOPS_AT_THE_LAYER = {"eigencam"}

KINDS_WITH_A_CASE = ("cam", "attribution")
"""Method kinds that ContractNet can explain; a method of another kind needs its own case
(the attention methods: ContractViT)."""


def _method_options(name: str) -> dict[str, Any]:
    info = INFO[name]
    options = dict(info.quick_options)
    if info.needs_layer:
        options["layer"] = CAM_LAYER
    return options


def _method_case(name: str) -> Case:
    function = METHODS[name]
    options = _method_options(name)
    return Case(
        function,
        lambda c: function(c.model, c.x, target=c.target, **options),
        takes_target=INFO[name].uses_target,
        error_at="block2.2" if name in STOPS_AT_THE_LAYER else "boom",
    )


def _record(c: Call) -> None:
    with gradlens.record(c.model, [CAM_LAYER], tape_from_layers=True) as rec:
        logits = c.model(c.x)
        # the tape started at the layer; the user's score needs grad mode too (under
        # inference_mode the user's own forward cannot be differentiated: record only)
        if not torch.is_inference_mode_enabled():
            with torch.enable_grad():
                rec.grad(logits[:, 0])
    assert rec[CAM_LAYER].shape[0] == BATCH


def _recorder(c: Call) -> None:
    with gradlens.Recorder(c.model, [CAM_LAYER]) as rec:
        c.model(c.x)
    assert rec[CAM_LAYER].shape[0] == BATCH


def _extractor(c: Call) -> None:
    _, features = gradlens.Extractor(c.model, ["block1", "head"])(c.x)
    assert set(features) == {"block1", "head"}


def _maps() -> torch.Tensor:
    return torch.rand(BATCH, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def _pointing_game(c: Call) -> None:
    masks = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.bool)
    masks[:, :4, :4] = True
    gradlens.metrics.pointing_game(_maps(), masks)


def _randomization_test(c: Call) -> None:
    method = functools.partial(gradlens.gradcam, layer=CAM_LAYER)
    gradlens.metrics.randomization_test(
        c.model, c.x, method, c.target, layers=["head.3", "block2.0"]
    )


def _masks() -> torch.Tensor:
    masks = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.bool)
    masks[:, :4, :4] = True
    return masks


def _map_metric(metric: Callable[..., Any], **options: Any) -> Callable[[Call], None]:
    """A metric of the maps alone (complexity, localisation): the model is not run."""
    return lambda c: metric(c.model, c.x, _maps(), c.target, **options)


def _explaining_metric(metric: Callable[..., Any], **options: Any) -> Callable[[Call], None]:
    """A metric that explains the inputs again with saliency (robustness, randomisation)."""
    return lambda c: metric(c.model, c.x, _maps(), c.target, method="saliency", **options)


def _patch(c: Call) -> None:
    with gradlens.patch(c.model, {"block1": gradlens.edits.zero()}):
        c.model(c.x)


def _contract_sae() -> gradlens.sae.SparseAutoencoder:
    """An SAE for ContractNet's ``block1`` output ``(B, 4, 8, 8)``: width 8, the last dim;
    built as a user builds one, outside the mode under test, with its own random draws."""
    with torch.inference_mode(False), torch.random.fork_rng():
        torch.manual_seed(0)
        return gradlens.sae.SparseAutoencoder(SIZE, 5)


def _splice(c: Call) -> None:
    with gradlens.sae.splice(c.model, {"block1": _contract_sae()}):
        features = gradlens.extract(c.model, c.x, ["block1.latents", "block1.error"])
        c.model(c.x)
    assert features["block1.latents"].shape == (BATCH, 4, SIZE, 5)


def _feature_attributions(method: str) -> Callable[[Call], None]:
    def run(c: Call) -> None:
        options: dict[str, Any] = {"method": method}
        if method == "integrated_gradients":
            options["steps"] = 2
        if method == "attribution_patching":
            options["baseline"] = c.x.flip(0)
        result = gradlens.sae.feature_attributions(
            c.model, c.x, c.target, saes={"block1": _contract_sae()}, **options
        )
        assert result["block1"].error.shape == (BATCH, 4, SIZE)

    return run


def _first_logit(output: torch.Tensor) -> torch.Tensor:
    return output[:, 0]


def _refuses_the_cnn(method: Callable[..., Any]) -> Callable[[Call], None]:
    """An attention method on ContractNet, which has no attention module: it must refuse it
    before running it, and leave no trace."""

    def run(c: Call) -> None:
        cnn = setup("eval").model  # c.model is the transformer
        before = snapshot(cnn, c.x)
        with pytest.raises(AttentionCaptureError, match="no attention module"):
            method(cnn, c.x, target=c.target)
        assert_unchanged(before, snapshot(cnn, c.x))

    return run


def _attention_method(name: str) -> Callable[[Call], None]:
    """A registered attention method on ContractViT: a (B, 8, 8) map (the 2 x 2 patch grid
    upsampled), after refusing ContractNet."""
    method = METHODS[name]
    refuse = _refuses_the_cnn(method)

    def run(c: Call) -> None:
        refuse(c)
        maps = method(c.model, c.x, target=c.target)
        assert maps.shape == (BATCH, SIZE, SIZE) and maps.isfinite().all()

    return run


class _TokensToImages(torch.nn.Module):
    """Token ids ``(N, T)`` in, ContractNet out: the first contract image scaled by each
    sequence's mean token id, so the text metrics run ContractNet (a submodule, whose state
    the contract checks) on every sequence they build."""

    def __init__(self, model: torch.nn.Module, image: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.image = image

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        scale = 1 + input_ids.float().mean(1) / 10
        logits: torch.Tensor = self.model(self.image * scale[:, None, None, None])
        return logits


def _text_metric(metric: Callable[..., Any]) -> Callable[[Call], None]:
    def run(c: Call) -> None:
        ids = torch.arange(3, 3 + BATCH * 5).view(BATCH, 5) % 9
        mask = torch.ones_like(ids)
        model = _TokensToImages(c.model, c.x[:1].detach())
        metric(model, ids, ids.float(), c.target, attention_mask=mask, k=[0.2, 0.6])

    return run


class _TokensToSequence(torch.nn.Module):
    """Token ids ``(N, T)`` in, ``(N, T, 3)`` out: ContractNet's logits for the first contract
    image scaled by each sequence's mean token id, repeated over the tokens by ``sequence``
    (an identity), so that cache_activations' hook point runs after all of ContractNet
    (whose state the contract checks), its error module included."""

    def __init__(self, model: torch.nn.Module, image: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.image = image
        self.sequence = torch.nn.Identity()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        scale = 1 + input_ids.float().mean(1) / 10
        logits = self.model(self.image * scale[:, None, None, None])
        out: torch.Tensor = self.sequence(logits[:, None].expand(-1, input_ids.shape[1], -1))
        return out


def _cache_activations(c: Call) -> None:
    model = _TokensToSequence(c.model, c.x[:1].detach())
    docs = [[1, 2, 3, 4, 5, 6, 7], [3, 4, 5, 6, 7, 8, 9, 2]]
    ds = gradlens.cache_activations(
        model,
        docs,
        "sequence",
        c.tmp_path / "cache",
        context_size=4,
        batch_size=BATCH,
        bos_token_id=0,
        overwrite=True,
        progress=False,
    )
    assert ds.features["sequence"].shape == (4, NUM_CLASSES)


def _refuses_without_embeddings(method: Callable[..., Any]) -> Callable[[Call], None]:
    """The per-token methods on ContractNet, which has no embedding layer: they must refuse
    it before running it, and leave no trace (tests/test_token_attributions.py and
    tests/test_generation_attributions.py check the same contract on HF BERT and GPT-2,
    where they succeed)."""

    def run(c: Call) -> None:
        ids = torch.zeros(BATCH, 4, dtype=torch.long)
        with pytest.raises(LayerNotFoundError, match="no input embedding layer"):
            method(c.model, ids, ids[:, :1])

    return run


FAITHFULNESS_OPTIONS: dict[str, dict[str, Any]] = {
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
}
"""Small settings for the faithfulness metrics' contract cases."""


def _faithfulness_metric(name: str, options: dict[str, Any]) -> Callable[[Call], None]:
    def run(c: Call) -> None:
        metric = getattr(gradlens.metrics, name)
        generator = torch.Generator().manual_seed(0)
        metric(c.model, c.x, _maps(), c.target, generator=generator, **options)

    return run


def _soft_metric(name: str) -> Callable[..., Any]:
    def run(model: Any, ids: torch.Tensor, target: Any) -> Any:
        return getattr(gradlens.metrics, name)(model, ids, ids.float(), target)

    return run


ATTENTION = ["attn0", "attn1"]


def _attentions(c: Call) -> None:
    probs = gradlens.attentions(c.model, c.x)
    assert list(probs) == ATTENTION and all(p.shape == (BATCH, 2, 5, 5) for p in probs.values())


def _capture_attention(c: Call) -> None:
    with gradlens.capture_attention(c.model) as attention:
        c.model(c.x)
    assert list(attention.probs) == ATTENTION


def _attention_capture_with_gradients(c: Call) -> None:
    """AttentionCapture(grad=True) and a gradient taken with respect to the probabilities
    only (as Recorder.grad does), so the parameters' .grad stays as it was."""
    with gradlens.AttentionCapture(c.model, grad=True) as attention:
        logits = c.model(c.x)
        probs = attention.graph_tensors()
        if not torch.is_inference_mode_enabled():  # no tape under inference_mode
            assert len(probs) == 2
            with torch.enable_grad():
                torch.autograd.grad(logits[:, 0].sum(), probs)
    assert list(attention.probs) == ATTENTION
    if probs:
        assert list(attention.gradients) == ATTENTION


def _from_embeddings(c: Call) -> None:
    """The model as a function of block1's output, given block1's own output back."""
    block1 = gradlens.extract(c.model, c.x, "block1")["block1"]
    gradlens.text.FromEmbeddings(c.model, "block1")(block1, c.x)


ENTRY_POINTS: dict[str, Case] = {
    **{name: _method_case(name) for name, info in INFO.items() if info.kind in KINDS_WITH_A_CASE},
    "cam": Case(
        gradlens.cam.cam,
        lambda c: gradlens.cam.cam(
            c.model, c.x, CAM_LAYER, c.target, weights=lambda A, G: G.mean((2, 3))
        ),
    ),
    "layer_integrated_gradients": Case(
        gradlens.layer_integrated_gradients,
        lambda c: gradlens.layer_integrated_gradients(c.model, c.x, "block1", c.target, steps=2),
    ),
    "lrp": Case(gradlens.lrp, lambda c: gradlens.lrp(c.model, c.x, c.target)),
    "lrp_layer_composite": Case(
        gradlens.lrp,
        lambda c: gradlens.lrp(
            c.model,
            c.x,
            c.target,
            layer="block1",
            composite={torch.nn.Conv2d: gradlens.lrp.Gamma(), "head.3": gradlens.lrp.Epsilon()},
        ),
    ),
    "layer_gradient_x_activation": Case(
        gradlens.layer_gradient_x_activation,
        lambda c: gradlens.layer_gradient_x_activation(c.model, c.x, "block1", c.target),
    ),
    # "head" runs after the error module, so the forward cannot stop before it
    "extract": Case(
        gradlens.extract,
        lambda c: gradlens.extract(c.model, c.x, ["block1", "head"]),
        takes_target=False,
    ),
    "Extractor": Case(
        gradlens.Extractor, _extractor, takes_target=False, forwards_like_the_model=True
    ),
    "record": Case(gradlens.record, _record, takes_target=False),
    "Recorder": Case(gradlens.Recorder, _recorder, takes_target=False),
    "layers": Case(gradlens.layers, lambda c: gradlens.layers(c.model, c.x), takes_target=False),
    "default_layer": Case(
        gradlens.default_layer, lambda c: gradlens.default_layer(c.model, c.x), takes_target=False
    ),
    "deletion": Case(
        gradlens.metrics.deletion,
        lambda c: gradlens.metrics.deletion(c.model, c.x, _maps(), c.target, steps=2),
    ),
    "insertion": Case(
        gradlens.metrics.insertion,
        lambda c: gradlens.metrics.insertion(c.model, c.x, _maps(), c.target, steps=2),
    ),
    "average_drop": Case(
        gradlens.metrics.average_drop,
        lambda c: gradlens.metrics.average_drop(c.model, c.x, _maps(), c.target),
    ),
    "increase_in_confidence": Case(
        gradlens.metrics.increase_in_confidence,
        lambda c: gradlens.metrics.increase_in_confidence(c.model, c.x, _maps(), c.target),
    ),
    "pointing_game": Case(
        gradlens.metrics.pointing_game, _pointing_game, takes_target=False, runs_model=False
    ),
    "randomization_test": Case(gradlens.metrics.randomization_test, _randomization_test),
    **{
        name: Case(
            getattr(gradlens.metrics, name),
            _explaining_metric(getattr(gradlens.metrics, name), nr_samples=2),
        )
        for name in (
            "max_sensitivity",
            "avg_sensitivity",
            "local_lipschitz_estimate",
            "relative_input_stability",
            "relative_output_stability",
        )
    },
    "model_parameter_randomisation": Case(
        gradlens.metrics.model_parameter_randomisation,
        _explaining_metric(
            gradlens.metrics.model_parameter_randomisation, layers=["head.3", "block2.0"]
        ),
    ),
    "random_logit": Case(
        gradlens.metrics.random_logit,
        _explaining_metric(gradlens.metrics.random_logit, win_size=3),
    ),
    **{
        name: Case(
            getattr(gradlens.metrics, name),
            _map_metric(getattr(gradlens.metrics, name)),
            takes_target=False,
            runs_model=False,
        )
        for name in ("sparseness", "complexity", "effective_complexity")
    },
    **{
        name: Case(
            getattr(gradlens.metrics, name),
            _map_metric(getattr(gradlens.metrics, name), masks=_masks()),
            takes_target=False,
            runs_model=False,
        )
        for name in (
            "attribution_localisation",
            "relevance_rank_accuracy",
            "relevance_mass_accuracy",
            "auc",
        )
    },
    "top_k_intersection": Case(
        gradlens.metrics.top_k_intersection,
        _map_metric(gradlens.metrics.top_k_intersection, masks=_masks(), k=5),
        takes_target=False,
        runs_model=False,
    ),
    "comprehensiveness": Case(
        gradlens.metrics.comprehensiveness, _text_metric(gradlens.metrics.comprehensiveness)
    ),
    "sufficiency": Case(gradlens.metrics.sufficiency, _text_metric(gradlens.metrics.sufficiency)),
    "cache_activations": Case(gradlens.cache_activations, _cache_activations, takes_target=False),
    **{
        name: Case(getattr(gradlens.metrics, name), _faithfulness_metric(name, options))
        for name, options in FAITHFULNESS_OPTIONS.items()
    },
    **{
        name: Case(
            getattr(gradlens.metrics, name),
            _refuses_without_embeddings(_soft_metric(name)),
            takes_target=False,
            runs_model=False,
        )
        for name in ("soft_comprehensiveness", "soft_sufficiency")
    },
    "extract_dataset": Case(
        gradlens.extract_dataset,
        lambda c: gradlens.extract_dataset(
            c.model, c.loader(), ["block1", "head"], c.tmp_path / "out", progress=False
        ),
        takes_target=False,
    ),
    "patch": Case(gradlens.patch, _patch, takes_target=False),
    "splice": Case(gradlens.sae.splice, _splice, takes_target=False),
    **{
        f"feature_attributions-{method}": Case(
            gradlens.sae.feature_attributions, _feature_attributions(method)
        )
        for method in gradlens.sae.attributions.METHODS
    },
    "activation_patching": Case(
        gradlens.activation_patching,
        lambda c: gradlens.activation_patching(
            c.model, c.x, c.x.flip(0), ["block1", "block2"], _first_logit
        ),
        takes_target=False,
    ),
    "attribution_patching": Case(
        gradlens.attribution_patching,
        lambda c: gradlens.attribution_patching(
            c.model, c.x, c.x.flip(0), ["block1", "block2"], _first_logit
        ),
        takes_target=False,
    ),
    **{
        name: Case(METHODS[name], _attention_method(name), info.uses_target, model="transformer")
        for name, info in INFO.items()
        if info.kind == "attention"
    },
    # AttnLRP's rules are for transformers: ContractViT (fused attention, nn.MultiheadAttention)
    "attnlrp": Case(
        gradlens.attnlrp,
        lambda c: gradlens.attnlrp(c.model, c.x, target=c.target),
        model="transformer",
    ),
    "attentions": Case(gradlens.attentions, _attentions, False, model="transformer"),
    "capture_attention": Case(
        gradlens.capture_attention, _capture_attention, False, model="transformer"
    ),
    "AttentionCapture": Case(
        gradlens.AttentionCapture, _attention_capture_with_gradients, False, model="transformer"
    ),
    "token_attributions": Case(
        gradlens.token_attributions,
        _refuses_without_embeddings(
            lambda model, ids, target: gradlens.token_attributions(model, ids, target)
        ),
        takes_target=False,
        runs_model=False,
    ),
    "generation_attributions": Case(
        gradlens.generation_attributions,
        _refuses_without_embeddings(gradlens.generation_attributions),
        takes_target=False,
        runs_model=False,
    ),
    "embedding_layer": Case(
        gradlens.text.embedding_layer,
        _refuses_without_embeddings(
            lambda model, ids, _: gradlens.text.embedding_layer(
                model, gradlens.text.TokenInput.parse(ids)
            )
        ),
        takes_target=False,
        runs_model=False,
    ),
    "FromEmbeddings": Case(
        gradlens.text.FromEmbeddings,
        _from_embeddings,
        takes_target=False,
        forwards_like_the_model=True,
    ),
    "attribute_dataset": Case(
        gradlens.attribute_dataset,
        lambda c: gradlens.attribute_dataset(
            "gradcam",
            c.model,
            c.loader(),
            c.tmp_path / "out",
            target=c.target,
            layer=CAM_LAYER,
            progress=False,
        ),
    ),
}

# Public callables without a case, and why none is needed.
EXEMPT: dict[str, str] = {
    # exceptions: raised, never run a model
    "GradlensError": "an exception class",
    "GradientNotAvailableError": "an exception class",
    "InPlaceBackwardHookError": "an exception class",
    "LayerNotExecutedError": "an exception class",
    "LayerNotFoundError": "an exception class",
    "RelevanceError": "an exception class",
    "ManifestMismatchError": "an exception class",
    "OutputSelectionError": "an exception class",
    "RecorderStateError": "an exception class",
    "TargetError": "an exception class",
    "NotRecordedError": "an exception class",
    "InterventionError": "an exception class",
    "AttentionCaptureError": "an exception class",
    "AttentionRolloutError": "an exception class",
    "TokenInputError": "an exception class",
    "InputTypeError": "an exception class",
    "SAEError": "an exception class",
    "RelevanceRuleError": "an exception class",
    # LRP rules and the type of gradlens.lrp: tensor maths on given tensors, no model run
    "Rule": "an LRP rule's base class",
    "Epsilon": "an LRP rule",
    "Gamma": "an LRP rule",
    "ZPlus": "an LRP rule",
    "AlphaBeta": "an LRP rule",
    "Flat": "an LRP rule",
    "WSquare": "an LRP rule",
    "ZBox": "an LRP rule",
    "Pass": "an LRP rule",
    "Norm": "an LRP rule",
    # records and results: plain data
    "Call": "what a Recorder stores for one module call",
    "LayerInfo": "a row of gradlens.layers' table",
    "Manifest": "the description of a dataset output folder",
    "CurveResult": "a metric result",
    "RandomizationResult": "a metric result",
    "MetricResult": "a metric result",
    "ParameterRandomisationResult": "a metric result",
    "noisy_linear_imputation": "fills pixels of given images, never runs a model",
    "CamOptions": "a TypedDict of keyword options",
    "NoiseMethodOptions": "a TypedDict of keyword options",
    "TokenMethodOptions": "a TypedDict of keyword options",
    "FeatureAttribution": "a result of gradlens.sae.feature_attributions",
    "TopFeatures": "a result of gradlens.sae.top_features",
    "Splice": "the context manager gradlens.sae.splice returns (its case covers it)",
    "SAESite": "the module a Splice runs in place of a hook point's output",
    "SparseAutoencoder": "a module of the user's, like a model",
    # pure helpers: they never run a model
    "select_layers": "resolves names to modules; runs no forward",
    "load_features": "reads .npy files",
    "load_activations": "reads a finished activation cache",
    "merge_shards": "copies .npy files",
    "first_component": "tensor maths on activations",
    "normalize_maps": "tensor maths on maps",
    "postprocess": "tensor maths on maps",
    "to_nchw": "reshapes a tensor",
    "noise_scale": "tensor maths on an input",
    "quadrature": "integration points and weights",
    "window_positions": "slices of an occlusion grid",
    "spearman": "rank correlation of two tensors",
    "token_localization": "compares score tensors with ground-truth masks",
    "gaussian_blur": "blurs images",
    "logit_difference": "builds a metric function from class indices",
    "normalized": "rescales a metric function between two given outputs",
    "TokenInput": "parses token ids or a mapping of model inputs",
    "baseline_ids": "builds token ids from a config and an attention mask",
    "config_token_id": "reads a model's config",
    "latents_site": "builds a name",
    "error_site": "builds a name",
    "top_features": "encodes cached activations with an SAE; runs no model",
}

PUBLIC_MODULES = (
    gradlens,
    gradlens.cam,
    gradlens.attribution,
    gradlens.metrics,
    gradlens.relevance,
    gradlens.text,
    gradlens.sae,
)


def _public_callables() -> dict[str, Any]:
    """``{qualified name: object}`` of the functions and classes in the public ``__all__``s."""
    found = {}
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found[f"{module.__name__}.{name}"] = obj
    for name, function in METHODS.items():
        found[f"gradlens.METHODS[{name!r}]"] = function
    return found


# Combinations that fail today because of gradlens bugs being fixed elsewhere:
# (entry point, mode, outcome) -> reason. strict: a fixed bug turns the xfail into a failure,
# so the entry must then be removed.
KNOWN_FAILURES: dict[tuple[str, str, str], str] = {}


def _params(outcome: str, names: list[str]) -> list[Any]:
    return [
        pytest.param(
            name,
            mode,
            id=f"{name}-{mode}",
            marks=(
                [pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[(name, mode, outcome)])]
                if (name, mode, outcome) in KNOWN_FAILURES
                else []
            ),
        )
        for name in names
        for mode in MODES
    ]


def _run(name: str, prepared: Setup, target: Any, tmp_path: Path) -> Any:
    call = Call(prepared.model, prepared.x, target, tmp_path)
    with prepared.context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the metrics' "model in training mode" warning
        return ENTRY_POINTS[name].run(call)


def _expected(name: str, prepared: Setup, armed_model: bool) -> dict[str, Any]:
    """The state the model must be in afterwards: as before, except for a module that
    forwards like the model, whose buffers move as a plain forward moves them."""
    expected = snapshot(prepared.model, prepared.x)
    if ENTRY_POINTS[name].forwards_like_the_model and prepared.model.training:
        reference = copy.deepcopy(prepared.model)
        reference.get_submodule(ENTRY_POINTS[name].error_at).armed = armed_model
        with prepared.context():
            try:
                reference(prepared.x)
            except Boom:
                pass
        for buffer, value in zip(expected["buffers"].values(), reference.buffers(), strict=True):
            buffer["value"] = value.detach().clone()
    return expected


@pytest.mark.parametrize(("name", "mode"), _params("success", sorted(ENTRY_POINTS)))
def test_success_leaves_no_trace(name: str, mode: str, tmp_path: Path) -> None:
    prepared = setup(mode, ENTRY_POINTS[name].model)
    expected = _expected(name, prepared, armed_model=False)
    _run(name, prepared, None, tmp_path)
    assert_unchanged(expected, snapshot(prepared.model, prepared.x))


@pytest.mark.parametrize(
    ("name", "mode"),
    _params("bad_target", sorted(n for n, c in ENTRY_POINTS.items() if c.takes_target)),
)
def test_bad_target_raises_target_error_and_leaves_no_trace(
    name: str, mode: str, tmp_path: Path
) -> None:
    prepared = setup(mode, ENTRY_POINTS[name].model)
    expected = _expected(name, prepared, armed_model=False)
    with pytest.raises(TargetError, match=f"{BAD_TARGET} is out of range"):
        _run(name, prepared, BAD_TARGET, tmp_path)
    assert_unchanged(expected, snapshot(prepared.model, prepared.x))


def test_a_target_mixing_classes_and_lists_is_a_target_error() -> None:
    prepared = setup("eval")
    before = snapshot(prepared.model, prepared.x)
    with pytest.raises(TargetError, match="class indices"):
        gradlens.gradcam(prepared.model, prepared.x, CAM_LAYER, target=[0, [1, 2]])
    assert_unchanged(before, snapshot(prepared.model, prepared.x))


@pytest.mark.parametrize(
    ("name", "mode"),
    _params("raising_layer", sorted(n for n, c in ENTRY_POINTS.items() if c.runs_model)),
)
def test_a_layer_that_raises_gets_through_and_leaves_no_trace(
    name: str, mode: str, tmp_path: Path
) -> None:
    prepared = setup(mode, ENTRY_POINTS[name].model)
    expected = _expected(name, prepared, armed_model=True)
    with armed(prepared.model, ENTRY_POINTS[name].error_at), pytest.raises(Boom) as info:
        _run(name, prepared, None, tmp_path)
    assert info.value is RAISED[-1]  # the error itself: not wrapped, not replaced
    assert_unchanged(expected, snapshot(prepared.model, prepared.x))


def _callables_without_a_case() -> list[str]:
    covered = {id(case.entry) for case in ENTRY_POINTS.values()}
    return [
        qualified
        for qualified, obj in _public_callables().items()
        if id(obj) not in covered and qualified.rpartition(".")[2] not in EXEMPT
    ]


def test_every_public_callable_has_a_case_or_an_exemption() -> None:
    missing = _callables_without_a_case()
    assert not missing, (
        "public callables without a contract case: "
        + ", ".join(missing)
        + " -- add a Case to ENTRY_POINTS in tests/test_contract.py (or, for a class or "
        "helper that never runs a model, an entry with the reason to EXEMPT)"
    )


def test_a_new_public_function_without_a_case_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def patch(model: torch.nn.Module, edits: Any) -> None:
        """A public function that nobody gave a case."""

    monkeypatch.setattr(gradlens, "patch", patch, raising=False)
    monkeypatch.setattr(gradlens, "__all__", [*gradlens.__all__, "patch"])
    assert _callables_without_a_case() == ["gradlens.patch"]


def test_exemptions_name_public_callables_without_a_case() -> None:
    public = {q.rpartition(".")[2]: obj for q, obj in _public_callables().items()}
    covered = {id(case.entry) for case in ENTRY_POINTS.values()}
    stale = [name for name in EXEMPT if name not in public or id(public[name]) in covered]
    assert not stale, f"EXEMPT names that are not public or have a case: {stale}"


def test_every_registered_method_has_a_case() -> None:
    assert set(METHODS) <= set(ENTRY_POINTS), (
        f"methods of a kind ContractNet cannot explain: {sorted(set(METHODS) - set(ENTRY_POINTS))}"
        " -- give them a case with a model of their kind"
    )


# -- the checks themselves can fail -------------------------------------------------------


def _add_forward_hook(s: Setup) -> None:
    s.model.block1.register_forward_hook(lambda *args: None)


def _add_global_hook(s: Setup) -> Callable[[], None]:
    return torch.nn.modules.module.register_module_forward_hook(lambda *args: None).remove


def _add_state_dict_hook(s: Setup) -> None:
    s.model.head._register_state_dict_hook(lambda *args: None)


def _add_tensor_hook(s: Setup) -> None:
    s.x.register_hook(lambda grad: grad)


def _flip_grad_mode(s: Setup) -> None:
    torch.set_grad_enabled(not torch.is_grad_enabled())


def _flip_training(s: Setup) -> None:
    s.model.block2[1].train(not s.model.block2[1].training)


def _flip_requires_grad(s: Setup) -> None:
    s.model.stem[0].weight.requires_grad_(not s.model.stem[0].weight.requires_grad)


def _set_a_grad(s: Setup) -> None:
    s.model.stem[0].weight.grad = torch.zeros_like(s.model.stem[0].weight)


def _replace_a_grad(s: Setup) -> None:
    s.model.head[3].weight.grad = s.model.head[3].weight.grad.clone()


def _accumulate_into_a_grad(s: Setup) -> None:
    s.model.block1[0].bias.grad += 1


def _move_running_mean(s: Setup) -> None:
    s.model.block2[1].running_mean.add_(1)


def _switch_the_attention_kernel(s: Setup) -> None:
    s.model.block1.fused_attn = True  # as timm's attention modules flag their kernel


def _edit_input(s: Setup) -> None:
    with torch.no_grad():
        s.x.mul_(2)


def _step_a_parameter(s: Setup) -> None:
    with torch.no_grad():
        s.model.head[3].bias.add_(1)


SABOTAGE = [
    _add_forward_hook,
    _add_global_hook,
    _add_state_dict_hook,
    _add_tensor_hook,
    _flip_grad_mode,
    _flip_training,
    _flip_requires_grad,
    _set_a_grad,
    _replace_a_grad,
    _accumulate_into_a_grad,
    _move_running_mean,
    _switch_the_attention_kernel,
    _edit_input,
    _step_a_parameter,
]


@pytest.mark.parametrize("sabotage", SABOTAGE, ids=lambda f: f.__name__.lstrip("_"))
def test_the_snapshot_sees_each_kind_of_side_effect(sabotage: Callable[[Setup], Any]) -> None:
    prepared = setup("eval")
    before = snapshot(prepared.model, prepared.x)
    grad_mode = torch.is_grad_enabled()
    cleanup = None
    try:
        cleanup = sabotage(prepared)
        assert len(differences(before, snapshot(prepared.model, prepared.x))) == 1
    finally:
        torch.set_grad_enabled(grad_mode)
        if cleanup is not None:
            cleanup()


def test_an_untouched_model_has_no_differences() -> None:
    prepared = setup("train")
    before = snapshot(prepared.model, prepared.x)
    assert differences(before, snapshot(prepared.model, prepared.x)) == []
