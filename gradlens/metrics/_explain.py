"""What the metrics that explain again share: the explanation method looked up by name or
taken as a callable, the draws of a ``generator``, and the method run on stacked copies."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import check_options, get
from ._common import _maps_like

Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``explain(model, x, classes) -> (rows, H, W)`` float64 maps at the size of ``x``."""

MethodSpec = str | Callable[..., Any]
"""A registered method's name (:data:`gradlens.METHODS`) or a callable
``method(model, x, target=...) -> attributions``."""


def explainer(method: MethodSpec, options: Mapping[str, Any] | None, *, caller: str) -> Explainer:
    """``method`` (a name looked up in the registry, or a callable) with its ``options``
    checked before any work, as a function returning float64 maps ``(rows, H, W)``.

    Raises:
        ValueError: an unknown method name.
        TypeError: ``method`` is neither a name nor a callable, or an option it does not take.
    """
    if not (isinstance(method, str) or callable(method)):
        raise TypeError(
            f"method must be a registered method's name or a callable, got {type(method).__name__}"
        )
    function = get(method)
    options = dict(options or {})
    check_options(function, options, caller=caller)

    def explain(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
        with torch.inference_mode(False):
            attributions = function(model, x, target=classes, **options)
        return _maps_like(x, attributions)

    return explain


def private_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a new CPU generator seeded with 0 (reproducible by default; the
    global RNG is never drawn from)."""
    return torch.Generator().manual_seed(0) if generator is None else generator


def draw(
    kind: str, shape: tuple[int, ...], scale: float, generator: torch.Generator, like: Tensor
) -> Tensor:
    """``scale * N(0, 1)`` (``kind="gaussian"``) or ``U(-scale, scale)`` (``"uniform"``)
    noise of ``shape``, drawn on the generator's device and moved to ``like``'s."""
    device = generator.device
    if kind == "gaussian":
        noise = torch.randn(shape, generator=generator, device=device) * scale
    else:
        noise = (torch.rand(shape, generator=generator, device=device) * 2 - 1) * scale
    return noise.to(like.device, like.dtype)
