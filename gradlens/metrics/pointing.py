"""The pointing game (Zhang et al., ECCV 2016): is the map's maximum on the object?"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import _reduce_maps

__all__ = ["pointing_game"]


def pointing_game(
    maps: Tensor,
    masks: Tensor | None = None,
    boxes: Tensor | None = None,
    *,
    tolerance: float = 0,
) -> Tensor:
    """The pointing game (Zhang et al., "Top-down neural attention by excitation backprop",
    ECCV 2016).

    A sample is a hit when the map's maximum lies within ``tolerance`` pixels (Euclidean
    distance between pixel centres) of a pixel of the object; ``tolerance=0`` requires the
    maximum to be on the object. The maximum is the *first* maximal pixel in row-major
    order (``argmax`` of the flattened map: the top-most, then left-most of tied maxima).
    The paper uses a 15 px tolerance at 224 px. The accuracy over a data set is
    ``hits.float().mean()``.

    Args:
        maps: ``(B, H, W)`` or ``(B, C, H, W)`` (see the module docstring); resized
            bilinearly to the masks' size when ``masks`` is given and the sizes differ.
        masks: ``(B, H, W)`` bool (or 0/1) object masks.
        boxes: ``(B, 4)`` ``(x0, y0, x1, y1)``, ``x0``, ``y0`` inclusive and ``x1``, ``y1``
            exclusive (as :class:`gradlens.demos.shapes.ShapesData` boxes), in the pixels of the
            maps, which are used at their own size (upsample them to the image first).
        tolerance: the largest distance in pixels that still counts as a hit.

    Returns:
        ``(B,)`` bool, on the maps' device. An empty mask or box is always a miss.

    Raises:
        ValueError: neither or both of ``masks`` and ``boxes``, mismatched shapes, or a
            negative ``tolerance``.
    """
    if (masks is None) == (boxes is None):
        raise ValueError("pass exactly one of masks= and boxes=")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    size = None if masks is None else tuple(masks.shape[-2:])
    maps = _reduce_maps(maps, size)
    batch, height, width = maps.shape
    if masks is not None:
        if masks.shape != (batch, height, width):
            raise ValueError(
                f"masks must have shape {(batch, height, width)}, got {tuple(masks.shape)}"
            )
        region = masks.to(maps.device).bool()
    else:
        boxes = torch.as_tensor(boxes, device=maps.device)
        if boxes.shape != (batch, 4):
            raise ValueError(f"boxes must have shape ({batch}, 4), got {tuple(boxes.shape)}")
        xs = torch.arange(width, device=maps.device)
        ys = torch.arange(height, device=maps.device)
        inside_x = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])  # (B, W)
        inside_y = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])  # (B, H)
        region = inside_y[:, :, None] & inside_x[:, None, :]
    peak = maps.flatten(1).argmax(dim=1)
    py, px = peak // width, peak % width
    ys = torch.arange(height, device=maps.device).view(1, -1, 1)
    xs = torch.arange(width, device=maps.device).view(1, 1, -1)
    distance2 = (ys - py.view(-1, 1, 1)) ** 2 + (xs - px.view(-1, 1, 1)) ** 2
    distance2 = torch.where(
        region, distance2.float(), torch.full_like(distance2, math.inf, dtype=torch.float)
    )
    return distance2.flatten(1).amin(dim=1) <= tolerance**2
