"""A small sparse autoencoder, and what gradlens reads from any SAE: :func:`check_sae`,
:func:`input_width`.

gradlens treats an SAE as duck-typed: any object with ``encode(x) -> latents`` and
``decode(latents) -> x_hat`` over the last dimension of ``x`` (SAELens' ``SAE`` objects,
a transcoder's encoder/decoder pair wrapped in one module, or :class:`SparseAutoencoder`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SAEError

__all__ = ["SparseAutoencoder", "check_sae", "input_width"]


class SparseAutoencoder(nn.Module):
    """A ReLU sparse autoencoder with a pre-encoder bias (Bricken et al. 2023, "Towards
    Monosemanticity"; Cunningham et al. 2023):

        encode(x) = ReLU((x - b_dec) W_enc + b_enc)        (..., d_in) -> (..., n_latents)
        decode(z) = z W_dec + b_dec                        (..., n_latents) -> (..., d_in)

    The decoder's rows start as random unit vectors, the encoder as their transpose and the
    biases at zero (draws from torch's global generator: seed it for a fixed SAE). Small
    enough for tests and examples; train it with any optimiser (e.g. the reconstruction
    error plus an L1 penalty on the latents).

    Args:
        d_in: the width of the activations it encodes (the hook point's last dimension).
        n_latents: the number of latents.

    Attributes:
        d_in, n_latents: as given.
        W_enc: ``(d_in, n_latents)``; b_enc: ``(n_latents,)``; W_dec: ``(n_latents, d_in)``;
            b_dec: ``(d_in,)``.

    Raises:
        ValueError: a width that is not a positive int.
    """

    def __init__(self, d_in: int, n_latents: int) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("n_latents", n_latents)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.d_in = d_in
        self.n_latents = n_latents
        directions = torch.randn(n_latents, d_in)
        directions = directions / directions.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(directions)
        self.W_enc = nn.Parameter(directions.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def encode(self, x: Tensor) -> Tensor:
        """The latents ``(..., n_latents)`` of activations ``x`` ``(..., d_in)``."""
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, latents: Tensor) -> Tensor:
        """The reconstruction ``(..., d_in)`` of latents ``(..., n_latents)``."""
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, n_latents={self.n_latents}"


def check_sae(sae: Any, hook_point: str) -> None:
    """Check that ``sae`` can be spliced: it has callable ``encode`` and ``decode``.

    Raises:
        SAEError: one of them is missing (the message names the hook point).
    """
    missing = [m for m in ("encode", "decode") if not callable(getattr(sae, m, None))]
    if missing:
        raise SAEError(
            f"the SAE for {hook_point!r} ({type(sae).__name__}) has no {' or '.join(missing)} "
            "method; gradlens needs encode(x) -> latents and decode(latents) -> x_hat "
            "(as SAELens' SAE and gradlens.sae.SparseAutoencoder have)"
        )


def input_width(sae: Any) -> int | None:
    """The width an SAE encodes, where it says: its ``d_in``, its ``cfg.d_in`` (SAELens),
    or the first dimension of its ``W_enc``; ``None`` when it says nothing."""
    for value in (getattr(sae, "d_in", None), getattr(getattr(sae, "cfg", None), "d_in", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    weight = getattr(sae, "W_enc", None)
    if isinstance(weight, Tensor) and weight.ndim == 2:
        return int(weight.shape[0])
    return None
