"""AttnLRP: layer-wise relevance propagation for transformers, :func:`attnlrp`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
from ..core.selection import Layers
from ..layering.resolve import single_layer
from ..passes import differentiate
from ..registry import register
from ..targets.scoring import Target
from .transformer_rules import attnlrp_hooks

__all__ = ["attnlrp"]

Relevance = Union[Tensor, tuple[Union[Tensor, None], ...], dict[str, Union[Tensor, None]]]


@register("attnlrp", "attribution", needs_layer=False, multi_target=True)
@entry_point
def attnlrp(
    model: nn.Module,
    inputs: Inputs,
    target: Target = None,
    *,
    epsilon: float = 0.0,
    conv_gamma: float | None = None,
    linear_gamma: float | None = None,
    layer: Layers | None = None,
    output: OutputSpec = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Relevance:
    """AttnLRP relevance of each input element for the target score of a transformer.

    Achtibat et al. (2024), "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
    Transformers" (ICML). The relevance ``R`` of the explained score (the logit itself is
    the relevance that starts the pass) is propagated backwards by one rule per operation:

    ========================================  ===============================================
    operation                                 rule
    ========================================  ===============================================
    linear layer ``z = W x + b``              ε-rule ``R_x = x ⊙ Wᵀ (R_z / (z + ε))``
    softmax ``s = softmax(x)``                Taylor at the input
                                              ``R_x = x ⊙ (R_s − s Σ R_s)`` (bias absorbed)
    ``q·k`` and ``probs·v``, gated MLP        uniform: ``R_a = R_b = ½ Σ (a b / c) R_c``
    products ``act(gate(x)) * up(x)``
    LayerNorm / RMSNorm (Gemma's too)         identity on the normalisation: ``σ`` (RMS)
                                              held constant; the mean subtraction and the
                                              affine map by the ε-rule
    elementwise GELU, SiLU, tanh-GELU, tanh   identity ``R_x = R_y``
    sums (residuals, position embeddings)     ε-rule ``R_a = a / (a + b) R_c``
    ========================================  ===============================================

    The pass is Input × Gradient with modified backward passes (``R_x = x ⊙ g_x``), one
    forward and one batched backward; it runs on the model's own attention kernel
    (``scaled_dot_product_attention``, timm's fused attention, ``nn.MultiheadAttention``,
    eager), never switching the model to eager and never editing it.

    Args:
        model: the transformer.
        inputs: its floating-point input ``(B, ...)`` (images, or embeddings), or a tuple of
            positional inputs; for token ids use
            ``gradlens.token_attributions(model, ids, method="attnlrp")``.
        target: see :mod:`gradlens.targets`; ``None`` explains each sample's top class.
        epsilon: the ε of the ε-rule on linear layers (``nn.Linear``, convolutions, GPT-2's
            ``Conv1D``); ``0`` (as in the authors' ``lxt``) leaves their gradient plain.
        conv_gamma: the γ-rule instead of the ε-rule on convolutions (``nn.Conv1d/2d/3d``:
            the patch embedding of torchvision, timm and Hugging Face ViTs), with this γ;
            ``None`` (default): the ε-rule. The γ-rule (Montavon et al. 2019, the
            generalised form of :class:`gradlens.lrp.Gamma`) shares an output's relevance
            in proportion to ``a⁺(w + γw⁺) + a⁻(w + γw⁻)`` (outputs ``z > 0``; the signs
            of the favoured weights swap for ``z < 0``), so contributions that agree with
            the output's sign get more of it: the authors use it on ViTs' convolution and
            linear layers for less noisy heat maps (Achtibat et al. 2024; lxt's ViT
            example searches γ in {0.1, 0.25, 100} for convolutions).
        linear_gamma: the γ-rule on ``nn.Linear`` modules (called as modules: the
            projections inside ``F.multi_head_attention_forward`` are not), with this γ
            (lxt's ViT example searches {0, 0.01, 0.05, 0.1, 1}); ``None`` (default): the
            ε-rule, exactly lxt's AttnLRP.
        layer: the layer whose output's relevance is returned (as :func:`gradlens.lrp`'s
            ``layer=`` and Captum's ``LayerLRP``): ``activation ⊙ gradient`` there, the
            relevance that reaches it, shaped like its output. ``None``: the input's. With a
            layer the input need not be floating point (token ids and the embedding layer).
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model (e.g. an attention mask).

    Returns:
        The relevance shaped like ``inputs`` (``(B, K, *x.shape[1:])`` for ``K`` targets per
        sample); a tuple (``None`` for non-float inputs) or a dict for tuple or mapping
        inputs, as for :func:`gradlens.input_x_gradient`. With ``layer``: shaped like the
        layer's output (``(B, K, ...)`` for ``K`` targets).

    Raises:
        RelevanceError: an attention module computed its attention with a kernel the rules
            cannot see (flash or flex attention, a custom operator); the message names it.
        TargetError, OutputSelectionError: see :mod:`gradlens.targets`.
        TypeError: no floating-point input (without ``layer``).
        LayerNotFoundError: ``layer`` selects no module.
        ValueError: a negative ``epsilon``, ``conv_gamma`` or ``linear_gamma``; ``layer``
            selects several modules or its output is not a tensor.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    for option, gamma in (("conv_gamma", conv_gamma), ("linear_gamma", linear_gamma)):
        if gamma is not None and gamma < 0:
            raise ValueError(f"{option} must be >= 0 (or None for the ε-rule), got {gamma}")
    parsed = ModelInput.parse(inputs, forward_kwargs)
    name = None if layer is None else single_layer(model, layer)
    floats = [
        i for i, a in enumerate(parsed.args) if isinstance(a, Tensor) and a.is_floating_point()
    ]
    if name is None and not floats:
        raise TypeError(
            "attnlrp attributes to floating-point inputs, and the model input holds none; for "
            "token ids use gradlens.token_attributions(model, ids, method='attnlrp')"
        )
    result = differentiate(
        model,
        parsed,
        target,
        layers=name,
        wrt_inputs=name is None,
        output=output,
        hooks=attnlrp_hooks(
            model, epsilon=epsilon, conv_gamma=conv_gamma, linear_gamma=linear_gamma
        ),
    )
    multi = result.scores.ndim == 2
    if name is not None:
        activation, gradient = result.activations[name], result.gradients[name]
        if not (isinstance(gradient, Tensor) and isinstance(activation, Tensor)):
            raise ValueError(f"layer {name!r} does not return a tensor")
        at_layer: Tensor = (
            gradient.movedim(0, 1) * activation.unsqueeze(1) if multi else gradient * activation
        )
        return at_layer
    relevance: list[Tensor | None] = [None] * len(parsed.args)
    for i in floats:
        x = result.inputs[i]
        grad = result.input_gradients[i]
        if grad is None:
            grad = x.new_zeros((result.scores.shape[1], *x.shape) if multi else x.shape)
        relevance[i] = grad.movedim(0, 1) * x.unsqueeze(1) if multi else grad * x
    rebuilt = parsed.rebuild(relevance)
    assert rebuilt is not None
    return rebuilt
