"""Post-processing of explanation maps, in one place for every method, metric and figure.

* :func:`to_2d` -- the one rule that turns an input-shaped attribution ``(B, C, H, W)`` into
  a map ``(B, H, W)``: the sum of absolute values over channels.
* :func:`resize` -- bilinear resizing of the last two dimensions (``align_corners=False``).
* :func:`normalize` -- min-max normalisation of each map to ``[0, 1]``; a constant map
  becomes zeros, never NaN.
* :func:`safe_divide` -- ``n / d`` with a fallback (0) where ``d`` is 0, without NaN or
  infinite values (also in the gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["to_2d", "resize", "normalize", "safe_divide"]


def to_2d(maps: Tensor) -> Tensor:
    """``(B, H, W)`` maps from maps or input-shaped attributions.

    ``(B, C, H, W)`` attributions (one value per channel and pixel, e.g. saliency) are
    reduced to one importance per pixel by summing the absolute values over the channels
    (a ``(B, 1, H, W)`` map becomes its absolute value); ``(B, H, W)`` maps are returned as
    they are. The metrics, the demo and the command line all use this rule.

    Args:
        maps: ``(B, H, W)`` or ``(B, C, H, W)``.

    Returns:
        ``(B, H, W)``, same dtype and device.

    Raises:
        ValueError: ``maps`` has another number of dimensions.
    """
    if maps.ndim == 4:
        return maps.abs().sum(dim=1)
    if maps.ndim == 3:
        return maps
    raise ValueError(f"maps must have shape (B, H, W) or (B, C, H, W), got {tuple(maps.shape)}")


def resize(
    maps: Tensor, size: Sequence[int], *, mode: str = "bilinear", align_corners: bool = False
) -> Tensor:
    """Resize the last two dimensions of ``maps`` to ``size``.

    Args:
        maps: ``(..., h, w)`` floating-point maps, any number of leading dimensions.
        size: the new ``(H, W)`` (a tuple, or a ``torch.Size``).
        mode: a :func:`torch.nn.functional.interpolate` mode for 2-D data (``"bilinear"``,
            ``"nearest"``, ``"bicubic"``, ...).
        align_corners: passed to the interpolation for ``"bilinear"`` and ``"bicubic"``.

    Returns:
        ``(..., H, W)``; ``maps`` itself when it already has that size.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    corners = {"align_corners": align_corners} if mode in ("bilinear", "bicubic") else {}
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(flat, size=size, mode=mode, **corners).reshape(*maps.shape[:-2], *size)


def normalize(maps: Tensor) -> Tensor:
    """Min-max normalise each map (the last two dimensions) to ``[0, 1]``.

    Args:
        maps: ``(..., H, W)`` floating-point maps.

    Returns:
        Maps of the same shape whose minimum is 0 and maximum 1; a constant map becomes
        all zeros (not NaN).
    """
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return safe_divide(maps - low, span)


def safe_divide(numerator: Tensor, denominator: Tensor, default: Tensor | float = 0.0) -> Tensor:
    """``numerator / denominator`` where the denominator is not 0, else ``default``.

    The division never sees a zero denominator, so neither the result nor its gradient
    holds NaN or infinite values from it.

    Args:
        numerator, denominator: tensors that broadcast together.
        default: the value where ``denominator == 0`` (a number, or a tensor that
            broadcasts with the others).

    Returns:
        The broadcast quotient.
    """
    nonzero = denominator != 0
    quotient = numerator / torch.where(nonzero, denominator, 1)
    return torch.where(nonzero, quotient, default)
