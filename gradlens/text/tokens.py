"""Per-token attributions of text models: :func:`token_attributions`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from .. import registry
from ..attribution.deep_lift import deeplift_shap
from ..attribution.occlusion import Size
from ..attribution.shap import gradient_shap
from ..core.checks import entry_point
from ..core.extract import extract
from ..core.output_selection import OutputSpec
from ..core.selection import Layers
from ..layering.resolve import single_layer
from ..targets.parse import check_target
from ..targets.scoring import Target
from .baselines import Baseline, baseline_ids, check_vocabulary
from .embedding import FromEmbeddings, embedding_layer
from .inputs import TokenInput, TokenInputs

__all__ = ["token_attributions", "REDUCTIONS", "TokenMethodOptions"]

REDUCTIONS = ("sum", "norm")
"""How an embedding's attribution ``(H,)`` becomes one number: the signed sum or its L2 norm."""


class TokenMethodOptions(TypedDict, total=False):
    """The keyword options :func:`token_attributions` passes on to its attribution method
    (``**options: Unpack[TokenMethodOptions]``): those of the layer-free registered
    attribution methods that it does not take itself. Each goes only to a method that has
    it; the defaults are the method's.

    Attributes:
        abs: ``"saliency"``: absolute gradients (default ``True``).
        steps: ``"integrated_gradients"``: the number of integration points (default 50).
        rule: ``"integrated_gradients"``: the quadrature rule (default
            ``"gausslegendre"``).
        batch_size: ``"integrated_gradients"``, ``"smoothgrad"``, ``"vargrad"``,
            ``"occlusion"``, ``"deeplift_shap"``, ``"gradient_shap"``: the number of stacked
            inputs per forward.
        n: ``"smoothgrad"``, ``"vargrad"``: the number of noise samples (default 50).
        sigma: ``"smoothgrad"``, ``"vargrad"``: the noise level as a fraction of each
            sample's embedding range (default 0.15).
        seed: ``"smoothgrad"``, ``"vargrad"``, ``"gradient_shap"``: seeds a new generator
            for the random draws.
        generator: ``"smoothgrad"``, ``"vargrad"``, ``"gradient_shap"``: the generator for
            the random draws.
        stdevs: ``"gradient_shap"``: the standard deviation of the noise added to the
            embeddings (default 0).
        window: ``"occlusion"``: the occluded window over ``(T, H)`` (default one whole
            token, ``(1, H)``).
        stride: ``"occlusion"``: the window's stride (default: the window).
        epsilon: the ``"lrp_*"`` methods and ``"attnlrp"``: the ε rule's stabiliser
            (default 1e-6 and 0).
        gamma: ``"lrp_epsilon_gamma_box"``: the γ rule's parameter (default 0.25).
        conv_gamma: ``"attnlrp"``: the γ rule on convolutions (``None``: the ε rule).
        linear_gamma: ``"attnlrp"``: the γ rule on ``nn.Linear`` layers (``None``: the ε rule).
        low: ``"lrp_epsilon_gamma_box"``: the lowest input value.
        high: ``"lrp_epsilon_gamma_box"``: the highest input value.
    """

    abs: bool
    steps: int
    rule: str
    batch_size: int | None
    n: int
    sigma: float
    seed: int | None
    generator: torch.Generator | None
    stdevs: float | tuple[float, ...]
    window: Size | list[Size]
    stride: Size | list[Size]
    epsilon: float
    gamma: float
    conv_gamma: float | None
    linear_gamma: float | None
    low: float | Tensor | None
    high: float | Tensor | None


@entry_point
def token_attributions(
    model: nn.Module,
    inputs: TokenInputs,
    target: Target = None,
    *,
    method: str | Callable[..., Any] = "integrated_gradients",
    layer: Layers | None = None,
    baseline: Baseline = "pad",
    reduce: Literal["sum", "norm"] = "sum",
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    **options: Unpack[TokenMethodOptions],
) -> Tensor:
    """One attribution score per input token of a text model.

    The attribution method runs on the output of the input embedding layer, as on any
    floating-point input: the model is called on its token ids and attention mask with the
    embedding layer's output replaced by the embeddings being attributed (interpolated
    for Integrated Gradients, noisy for SmoothGrad), and each token's ``(H,)``
    attribution is reduced to one number. With ``method="integrated_gradients"``,
    ``reduce="sum"`` and a token baseline this is Captum's ``LayerIntegratedGradients`` on
    the embedding layer (same baseline ids, steps and rule) summed over the hidden size.

    Methods: any attribution of :data:`gradlens.registry.ATTRIBUTION_METHODS` that needs no
    layer of its own -- ``"saliency"`` (Simonyan et al. 2014), ``"input_x_gradient"``
    (Shrikumar et al. 2016: the embedding times its gradient), ``"integrated_gradients"``
    (Sundararajan et al. 2017), ``"smoothgrad"`` / ``"vargrad"`` (Smilkov et al. 2017;
    the noise scale is a fraction of each sample's embedding range), ``"occlusion"`` (each
    token in turn is replaced by the baseline's embedding; its score is the drop of the
    target score, or its absolute value for ``reduce="norm"``), ``"guided_backprop"``,
    ``"deeplift"``, ``"deeplift_shap"``, ``"gradient_shap"``, ``"attnlrp"`` (Achtibat et al.
    2024: the AttnLRP relevance of the word embeddings) -- or a function with their
    signature. Methods that take ``baselines=`` (Integrated Gradients, DeepLIFT) or
    ``baseline=`` (Occlusion) get the baseline's embeddings; DeepLiftShap and GradientSHAP
    get each sequence's own as a one-baseline distribution ``(B, 1, T, H)``.

    Args:
        model: the text model.
        inputs: token ids ``(B, T)`` (called as ``model(ids)``) or a mapping with
            ``"input_ids"`` and optionally ``"attention_mask"`` (a dict or a Hugging Face
            ``BatchEncoding``, called as ``model(**inputs)``).
        target: see :mod:`gradlens.targets`; for language models
            :func:`gradlens.targets.token` and :func:`gradlens.targets.sequence`.
        method: a registered attribution name or a function.
        layer: the embedding layer; ``None``: ``model.get_input_embeddings()`` where it
            exists, else the first ``nn.Embedding`` that runs.
        baseline: ``"pad"``, ``"mask"`` or ``"unk"`` (the token id from
            ``model.config.pad_token_id`` etc.), ``"zero"`` (zero embeddings), a token id, or
            the baseline's token ids ``(B, T)`` / ``(T,)``. Padding positions
            (``attention_mask == 0``) keep their own tokens in the baseline. Only read by
            methods that take a baseline.
        reduce: ``"sum"`` (the signed sum over the hidden size) or ``"norm"`` (its L2 norm).
        output: picks the logits out of a structured model output.
        forward_kwargs: further keyword inputs for the model.
        **options: passed to the method (:class:`TokenMethodOptions`: ``abs``, ``steps``,
            ``rule``, ``batch_size``, ``n``, ``sigma``, ``seed``, ``generator``,
            ``window``, ``stride``, ``epsilon``, ...); only those the method takes.

    Returns:
        ``(B, T)`` scores, ``(B, K, T)`` for ``K`` targets per sample; padding positions score
        exactly 0.

    Raises:
        LayerNotFoundError: the model has no embedding layer and ``layer`` is not given.
        TokenInputError: token ids that are not ``(B, T)`` integers, a mapping without
            ``input_ids``, a baseline the config does not name (the message names the config
            field and the explicit token-id alternative), or an id outside the vocabulary.
        ValueError: an unknown method or ``reduce``, a method that needs a layer of its own,
            ``return_delta=True``.
        TypeError: ``baselines=`` passed directly (use ``baseline=``), or an option the
            method does not take (before any forward pass).
        TargetError, OutputSelectionError: see :mod:`gradlens.targets`.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(
            f"reduce must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduce!r}"
        )
    attribute = _method(method)
    _check_options(attribute, options)
    # the ids, masks and baselines built here are saved for backward by the embedding
    # lookup: they must be ordinary tensors also when the caller is in inference mode
    with torch.inference_mode(False):
        return _token_attributions(
            model,
            inputs,
            target,
            attribute,
            layer,
            baseline,
            reduce,
            output,
            forward_kwargs,
            dict(options),
        )


def _token_attributions(
    model: nn.Module,
    inputs: TokenInputs,
    target: Target,
    attribute: Callable[..., Any],
    layer: Layers | None,
    baseline: Baseline,
    reduce: str,
    output: OutputSpec,
    forward_kwargs: Mapping[str, Any] | None,
    options: dict[str, Any],
) -> Tensor:
    tokens = TokenInput.parse(inputs, forward_kwargs)
    target = check_target(target, tokens.batch_size)
    name = embedding_layer(model, tokens) if layer is None else single_layer(model, layer)
    parameters = inspect.signature(attribute).parameters
    baseline_option = next((p for p in ("baselines", "baseline") if p in parameters), None)
    start_ids = None if baseline_option is None else baseline_ids(model, tokens, baseline)
    embeddings, start = _embed(model, name, tokens, start_ids)
    if baseline_option == "baselines":  # one per positional input of FromEmbeddings
        if _takes_a_distribution(attribute):  # each sequence's own baseline: (B, 1, T, H)
            start = start.unsqueeze(1)
        options["baselines"] = (start, *(None,) * len(tokens.args))
    elif baseline_option == "baseline":
        options["baseline"] = start
    whole_tokens = "window" in parameters and "window" not in options
    if whole_tokens:
        options["window"] = (1, embeddings.shape[-1])  # one whole token at a time

    wrapped = FromEmbeddings(model, name)
    result = attribute(
        wrapped,
        (embeddings, *tokens.args),
        target,
        output=output,
        forward_kwargs=tokens.kwargs,
        **options,
    )
    per_element = result[0] if isinstance(result, tuple) else result
    if whole_tokens:  # every element of a token holds the drop of occluding that token
        per_element = per_element[..., :1]
    scores = per_element.sum(-1) if reduce == "sum" else per_element.norm(dim=-1)
    real_tokens = tokens.real if scores.ndim == 2 else tokens.real[:, None]
    return torch.where(real_tokens.to(scores.device), scores, torch.zeros_like(scores))


def _embed(
    model: nn.Module, name: str, tokens: TokenInput, start_ids: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The embeddings of the tokens and of the baseline (``(B, T, H)`` each), from one
    inference forward stopped at the embedding layer; without baseline ids the baseline is
    zero embeddings (padding positions keep their own)."""
    module = model.get_submodule(name)
    check_vocabulary(module, tokens.ids, "the token ids")
    if start_ids is not None:
        check_vocabulary(module, start_ids, "the baseline")
    stacked = tokens.ids if start_ids is None else torch.cat([tokens.ids, start_ids])
    args, kwargs = tokens.with_ids(stacked)
    embedded = extract(model, args, name, forward_kwargs=kwargs)[name]
    if not isinstance(embedded, Tensor) or not embedded.is_floating_point() or embedded.ndim != 3:
        kind = tuple(embedded.shape) if isinstance(embedded, Tensor) else type(embedded).__name__
        raise ValueError(
            f"layer {name!r} returned {kind}; token attributions need an embedding layer that "
            "returns one (B, T, H) floating-point tensor"
        )
    batch = tokens.batch_size
    embeddings = embedded[:batch]
    if start_ids is not None:
        return embeddings, embedded[batch:]
    real = tokens.real[..., None].to(embeddings.device)
    return embeddings, torch.where(real, torch.zeros_like(embeddings), embeddings)


def _check_options(attribute: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Refuse the options token attributions cannot pass on, before any forward pass."""
    if "baselines" in options:
        raise TypeError(
            "token_attributions takes the baseline as baseline= (a token id, 'pad', 'mask', "
            "'unk', 'zero' or token ids), not baselines="
        )
    if options.get("return_delta"):
        raise ValueError(
            "token_attributions reduces each token's attribution to one number; "
            "return_delta=True is not supported"
        )
    registry.check_options(attribute, options, caller="token_attributions")


def _method(method: str | Callable[..., Any]) -> Callable[..., Any]:
    """The attribution function; registered methods that need a layer of their own are
    refused."""
    function = registry.get(method, "attribution")
    if isinstance(method, str) and registry.INFO[method].needs_layer:
        raise ValueError(
            f"{method!r} needs a layer of its own; token attributions run a method on the "
            "embedding layer's output -- choose one of "
            + ", ".join(sorted(registry.names("attribution", needs_layer=False)))
        )
    return function


def _takes_a_distribution(attribute: Callable[..., Any]) -> bool:
    """Whether ``baselines=`` of ``attribute`` is a distribution of baselines
    (:func:`~gradlens.attribution.deeplift_shap`, :func:`~gradlens.attribution.gradient_shap`)."""
    while isinstance(attribute, functools.partial):
        attribute = attribute.func
    return attribute in (deeplift_shap, gradient_shap)
