"""AttnLRP: layer-wise relevance propagation for transformers, :func:`attnlrp`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.inputs import Inputs, ModelInput
from ..core.output_selection import OutputSpec
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
        output: picks the logits out of a structured model output.
        forward_kwargs: keyword inputs for the model (e.g. an attention mask).

    Returns:
        The relevance shaped like ``inputs`` (``(B, K, *x.shape[1:])`` for ``K`` targets per
        sample); a tuple (``None`` for non-float inputs) or a dict for tuple or mapping
        inputs, as for :func:`gradlens.input_x_gradient`.

    Raises:
        RelevanceError: an attention module computed its attention with a kernel the rules
            cannot see (flash or flex attention, a custom operator); the message names it.
        TargetError, OutputSelectionError: see :mod:`gradlens.targets`.
        TypeError: no floating-point input.
        ValueError: a negative ``epsilon``.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    parsed = ModelInput.parse(inputs, forward_kwargs)
    floats = [
        i for i, a in enumerate(parsed.args) if isinstance(a, Tensor) and a.is_floating_point()
    ]
    if not floats:
        raise TypeError(
            "attnlrp attributes to floating-point inputs, and the model input holds none; for "
            "token ids use gradlens.token_attributions(model, ids, method='attnlrp')"
        )
    result = differentiate(
        model,
        parsed,
        target,
        wrt_inputs=True,
        output=output,
        hooks=attnlrp_hooks(model, epsilon=epsilon),
    )
    multi = result.scores.ndim == 2
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
