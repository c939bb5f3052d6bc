"""Attention probabilities under any attention kernel (engine side).

:mod:`~gradlens.core.attention.capture` holds :class:`AttentionCapture`;
:mod:`~gradlens.core.attention.mode` the torch-function mode that reroutes fused attention
through :mod:`~gradlens.core.attention.maths`; :mod:`~gradlens.core.attention.encoder` the
fix-up for ``nn.TransformerEncoder``'s padded outputs; and
:mod:`~gradlens.core.attention.probabilities` the tape-free :func:`attentions`. The public
names are re-exported by :mod:`gradlens.attention`, beside the methods built on them.
"""
