"""What an attention capture records: :class:`AttentionCall` per captured map, and the
:class:`Frame` of each captured module while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

__all__ = ["AttentionCall", "Frame"]


@dataclass
class AttentionCall:
    """The attention probabilities captured from one attention computation.

    Attributes:
        name: the dotted name of the module that computed them.
        index: the order of this capture among all captures of the pass (0, 1, ...).
        probs: the post-softmax probabilities ``(B, heads, N_query, N_key)`` (before any
            attention dropout), detached (and passed through the capture's ``reduce``).
        kernel: how they were captured: ``"scaled_dot_product_attention"``,
            ``"multi_head_attention_forward"`` or ``"softmax"``.
        gradient: the gradient of the score with respect to ``probs`` once a backward has
            run (``grad=True``); for a ``(B, K)`` score taken with ``Recorder.grad`` it has a
            leading dimension ``K``.
    """

    name: str
    index: int
    probs: Tensor
    kernel: str
    gradient: Tensor | None = None
    _live: Tensor | None = field(default=None, repr=False)


@dataclass
class Frame:
    """A captured or selected module that is running."""

    name: str
    module: nn.Module
    selected: bool
    produced: bool = False
    uncaptured: list[str] = field(default_factory=list)
