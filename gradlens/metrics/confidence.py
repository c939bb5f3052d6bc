"""Average drop and increase in confidence (Chattopadhyay et al., "Grad-CAM++", WACV 2018):
the class probability on the image against that on the image weighted by the map."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.checks import check_inputs, entry_point
from ..core.chunks import check_batch_size, chunks
from ..core.output_selection import OutputSpec
from ..maps import normalize
from ..targets.scoring import Target
from ._common import _check_images, _classes, _logits, _reduce_maps, _score, _untouched

__all__ = ["average_drop", "increase_in_confidence"]


def _confidences(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Target,
    batch_size: int,
    output: OutputSpec,
) -> tuple[Tensor, Tensor]:
    """``(Y, O)``: class probabilities on the images and on the explanation maps."""
    check_inputs({"images": images})
    check_batch_size(batch_size)
    maps = _reduce_maps(maps, tuple(images.shape[-2:]))
    _check_images(images, maps)
    weights = normalize(maps)
    images = images.detach()
    explanations = images * weights[:, None].to(images.device, images.dtype)
    with _untouched(model):
        classes = _classes(model, images, target, output, batch_size)
        y, o = [], []
        for part in chunks(images.shape[0], batch_size):
            y.append(_score(_logits(model, images[part], output), classes[part], "probability"))
            o.append(
                _score(_logits(model, explanations[part], output), classes[part], "probability")
            )
    return torch.cat(y).cpu().clone(), torch.cat(o).cpu().clone()


@entry_point
def average_drop(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Target = None,
    *,
    batch_size: int = 64,
    output: OutputSpec = None,
) -> float:
    """Average drop in % (Chattopadhyay et al., "Grad-CAM++", WACV 2018).

    With ``Y`` the target class's softmax probability on the image and ``O`` on the
    explanation ``E = image * M`` (``M`` the map min-max normalised to [0, 1] per sample;
    a constant map gives ``M = 0``)::

        average drop = 100 * mean_b( max(0, Y_b - O_b) / Y_b )

    Lower is better: the highlighted region alone keeps the class's confidence.

    Args:
        model, images, maps, target, output: see the module docstring.
        batch_size: samples per forward.

    Returns:
        A float in [0, 100].

    Raises:
        ValueError: bad shapes or ``batch_size`` < 1.
        TargetError: a target that is not one class per sample.
    """
    y, o = _confidences(model, images, maps, target, batch_size, output)
    return float(((y - o).clamp(min=0) / y).mean() * 100)


@entry_point
def increase_in_confidence(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Target = None,
    *,
    batch_size: int = 64,
    output: OutputSpec = None,
) -> float:
    """Increase in confidence in % (Chattopadhyay et al., "Grad-CAM++", WACV 2018).

    The percentage of samples whose class probability on the explanation map is higher
    than on the image, ``100 * mean_b [O_b > Y_b]``, with ``Y``, ``O`` and the explanation
    as in :func:`average_drop`. Higher is better.

    Args:
        model, images, maps, target, output: see the module docstring.
        batch_size: samples per forward.

    Returns:
        A float in [0, 100].

    Raises:
        ValueError, TargetError: as for :func:`average_drop`.
    """
    y, o = _confidences(model, images, maps, target, batch_size, output)
    return float((o > y).double().mean() * 100)
