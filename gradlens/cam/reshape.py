"""Turning a layer's activation (or gradient) into the ``(B, C, h, w)`` layout CAMs work on.

Layouts (``reshape=``):

* ``None`` -- automatic:

  - 4-D outputs are NCHW, unless their dims 1-2 match the input image's aspect ratio and
    their dims 2-3 do not, as Swin's ``(B, H, W, C)`` outputs do; those are NHWC. When
    both match (e.g. ``(B, 16, 16, 16)`` for a square image) the output is read as NCHW:
    pass ``reshape="nhwc"`` to say otherwise.
  - 3-D token outputs ``(B, N, C)`` (dim 0 must be the batch; sequence-first outputs
    need ``reshape=``) become ``(B, C, h, w)`` when the ``N`` tokens tile the image's
    aspect ratio (a square number of tokens for a square image), or when ``N - 1`` do --
    the leading token is then taken to be a class token and dropped (ViT).

* ``"nchw"`` / ``"nhwc"`` -- a 4-D output in that layout.
* a callable ``tensor -> (B, C, h, w) tensor`` -- anything else (several class or
  distillation tokens, sequence-first outputs, ...). It is applied to the activation and,
  with the same meaning, to each gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

from torch import Tensor

__all__ = ["Reshape", "to_nchw", "channel_axis"]

Reshape = Union[None, str, Callable[[Tensor], Tensor]]

_LAYOUTS = ("nchw", "nhwc")


def to_nchw(
    tensor: Tensor,
    *,
    batch: int,
    image_size: tuple[int, int] | None,
    reshape: Reshape = None,
    layer: str = "the layer",
) -> Tensor:
    """``tensor`` as ``(B, C, h, w)`` (a view where possible; dtype unchanged).

    Args:
        tensor: a layer's output (or the gradient with respect to it), batch first.
        batch: ``B``, the number of samples.
        image_size: ``(H, W)`` of the input image, used to recognise layouts; ``None``
            when the input is not an image (then square token grids and NCHW are assumed).
        reshape: ``None`` (automatic), ``"nchw"``, ``"nhwc"`` or a callable (see the module
            docstring).
        layer: the layer's name, for error messages.

    Returns:
        A ``(B, C, h, w)`` tensor.

    Raises:
        ValueError: the layout cannot be recognised (the message suggests ``reshape=``),
            ``reshape`` is an unknown string, or a callable returned another shape.
    """
    if callable(reshape):
        result = reshape(tensor)
        if not isinstance(result, Tensor) or result.ndim != 4 or result.shape[0] != batch:
            got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise ValueError(
                f"reshape= must return a (B, C, h, w) tensor with B = {batch}; for {layer!r} "
                f"(output {tuple(tensor.shape)}) it returned {got}"
            )
        return result
    if reshape is not None and reshape not in _LAYOUTS:
        raise ValueError(
            f"reshape={reshape!r} is not a layout; use None, 'nchw', 'nhwc' or a callable"
        )
    if tensor.ndim == 0 or tensor.shape[0] != batch:
        raise ValueError(
            f"{layer!r} returns a tensor of shape {tuple(tensor.shape)} whose dim 0 is not the "
            f"batch size {batch} (a sequence-first output?); pass reshape= a function returning "
            "(B, C, h, w)"
        )
    if reshape is not None:
        if tensor.ndim != 4:
            raise ValueError(
                f"reshape={reshape!r} needs a 4-D output, "
                f"but {layer!r} returns {tuple(tensor.shape)}"
            )
        return tensor if reshape == "nchw" else tensor.permute(0, 3, 1, 2)
    if tensor.ndim == 4:
        return tensor.permute(0, 3, 1, 2) if is_nhwc(tensor.shape, image_size) else tensor
    if tensor.ndim == 3:
        return _tokens_to_nchw(tensor, image_size, layer)
    raise ValueError(
        f"{layer!r} returns a {tensor.ndim}-D tensor of shape {tuple(tensor.shape)}; CAMs need "
        "(B, C, h, w), (B, h, w, C) or (B, tokens, C) outputs -- choose a spatial layer "
        "(gradlens.layers(model, x) lists the output shapes) or pass reshape= a function "
        "returning (B, C, h, w)"
    )


def is_nhwc(shape: tuple[int, ...], image_size: tuple[int, int] | None) -> bool:
    """Whether a 4-D ``shape`` reads as ``(B, H, W, C)``: dims 1-2 have the image's aspect
    ratio and dims 2-3 do not."""
    if image_size is None:
        return False
    return _same_ratio(shape[1], shape[2], image_size) and not _same_ratio(
        shape[2], shape[3], image_size
    )


def _same_ratio(h: int, w: int, image_size: tuple[int, int]) -> bool:
    return h * image_size[1] == w * image_size[0]


def token_grid(tokens: int, image_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """``(h, w)`` with ``h * w = tokens`` and the image's aspect ratio (square without an
    image), or ``None``."""
    height, width = image_size if image_size is not None else (1, 1)
    h = round(math.sqrt(tokens * height / width))
    if h < 1 or tokens % h:
        return None
    w = tokens // h
    return (h, w) if h * width == w * height else None


def _tokens_to_nchw(tensor: Tensor, image_size: tuple[int, int] | None, layer: str) -> Tensor:
    batch, tokens, channels = tensor.shape
    for skip in (0, 1):  # without, then with a leading class token
        grid = token_grid(tokens - skip, image_size) if tokens > skip else None
        if grid is not None:
            return tensor[:, skip:].transpose(1, 2).reshape(batch, channels, *grid)
    raise ValueError(
        f"{layer!r} returns {tokens} tokens of {channels} channels (shape {tuple(tensor.shape)}); "
        f"neither {tokens} nor {tokens - 1} tokens form a grid of the input's aspect ratio. "
        "Pass reshape= a function returning (B, C, h, w) (e.g. dropping several leading tokens)"
    )


def channel_axis(
    tensor: Tensor, *, image_size: tuple[int, int] | None, reshape: Reshape
) -> int | None:
    """The axis of ``tensor`` (a layer output in its own layout) that :func:`to_nchw`
    reads as channels, or ``None`` for a callable ``reshape``."""
    if callable(reshape):
        return None
    if reshape == "nhwc" or tensor.ndim == 3:
        return tensor.ndim - 1
    if reshape is None and tensor.ndim == 4 and is_nhwc(tensor.shape, image_size):
        return 3
    return 1
