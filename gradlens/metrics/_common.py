"""What the image metrics share: maps reduced to ``(B, H, W)``, the classes explained, the
scores of a forward, and the guard that leaves the model as it was."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..core.buffers import preserve_buffers
from ..core.chunks import chunks
from ..core.inputs import ModelInput
from ..core.output_selection import OutputSpec, select_output
from ..errors import TargetError
from ..maps import resize, to_2d
from ..passes import clean_pass
from ..targets.parse import target_rows
from ..targets.scoring import Target

Method = Callable[..., Tensor]


@dataclasses.dataclass(eq=False)
class MetricResult:
    """A metric with one number per sample.

    Attributes:
        scores: ``(B,)`` float64 on the CPU, one score per sample (the data-set score is
            usually their mean; NaN where a sample's score is undefined, e.g. a
            correlation with a constant side).
        classes: ``(B,)`` the class explained for each sample; ``None`` for the metrics
            that explain no class of their own (complexity, localisation) and those that
            re-run a method on perturbed inputs (robustness).
    """

    scores: Tensor
    classes: Tensor | None = None


def _reduce_maps(maps: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """``(B, H, W)`` float maps from ``(B, H, W)`` or ``(B, C, H, W)``
    (:func:`gradlens.maps.to_2d`), resized to ``size``."""
    if not isinstance(maps, Tensor):
        maps = torch.as_tensor(maps)
    maps = to_2d(maps.detach()).float()
    return maps if size is None else resize(maps, size)


def _check_images(images: Tensor, maps: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {images.shape[0]} images")


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Run forwards that leave ``model`` as it was (restores buffers in training mode)."""
    if model.training:
        warnings.warn(
            "the model is in training mode; metrics are usually computed in eval mode "
            "(call model.eval()). Its buffers will be restored afterwards.",
            UserWarning,
            stacklevel=5,
        )
    with preserve_buffers(model), torch.inference_mode():
        yield


def _logits(model: nn.Module, x: Tensor, output: OutputSpec) -> Tensor:
    return select_output(model(x), output)


def _classes(
    model: nn.Module,
    images: Tensor,
    target: Target,
    output: OutputSpec,
    batch_size: int | None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """``(B,)`` class indices: ``target`` parsed against the model's output on ``images``
    (or on token ids ``(B, T)`` with their ``attention_mask``)."""
    kwargs = None if attention_mask is None else {"attention_mask": attention_mask}
    return _classes_of(model, ModelInput.parse(images, kwargs), target, output, batch_size)


def _classes_of(
    model: nn.Module,
    model_input: ModelInput,
    target: Target,
    output: OutputSpec,
    batch_size: int | None,
) -> Tensor:
    """``(B,)`` class indices: ``target`` parsed against the model's output on any parsed
    input (chunks of ``batch_size`` samples)."""
    if target is not None and callable(target) and not isinstance(target, Tensor):
        raise TargetError(
            "this metric needs class targets (None, an int or one class per sample), not a callable"
        )
    batch = model_input.batch_size
    found = []
    for rows in chunks(batch, batch_size):
        part = target_rows(target, batch, rows.start, rows.stop)
        index = torch.arange(rows.start, rows.stop)
        classes = clean_pass(model, model_input.take(index), part, output=output).classes
        if classes is None or classes.ndim != 1:
            raise TargetError(
                "this metric needs logits of shape (B, num_classes) and one class per sample"
            )
        found.append(classes)
    return torch.cat(found)


def _score(logits: Tensor, classes: Tensor, score: str) -> Tensor:
    logits = logits.double()  # float64 keeps small probabilities (average drop divides by them)
    values = torch.softmax(logits, dim=1) if score == "probability" else logits
    return values.gather(1, classes[:, None].to(values.device))[:, 0]


def _maps_like(inputs: Tensor, attributions: Tensor) -> Tensor:
    """``(B, H, W)`` float64 maps for ``inputs (B, C, H, W)``: ``attributions`` shaped like the
    input or ``(B, h, w)``, reduced (:func:`gradlens.maps.to_2d`) and resized to the input.

    Raises:
        ValueError: ``inputs`` is not 4-D, the attributions are neither 3-D nor 4-D, or their
            batch differs from the inputs'.
    """
    if inputs.ndim != 4:
        raise ValueError(
            f"inputs must be images of shape (B, C, H, W), got {tuple(inputs.shape)}; this "
            "metric does not apply to token ids (B, T)"
        )
    if not isinstance(attributions, Tensor):
        attributions = torch.as_tensor(attributions)
    if attributions.ndim not in (3, 4):
        raise ValueError(
            "attributions must be shaped like the input (B, C, H, W) or be maps (B, H, W), "
            f"got {tuple(attributions.shape)}"
        )
    # float64 throughout: a float32 round trip would merge near-equal values (rank ties)
    maps = resize(to_2d(attributions.detach()).double(), tuple(inputs.shape[-2:]))
    _check_images(inputs, maps)
    return maps


def _normalise(maps: Tensor) -> Tensor:
    """Each map divided by its own largest absolute value (a zero map stays zero)."""
    peak = maps.flatten(1).abs().amax(dim=1).view(-1, *([1] * (maps.ndim - 1)))
    return maps / torch.where(peak == 0, torch.ones_like(peak), peak)


def _check_masks(masks: Tensor, maps: Tensor) -> Tensor:
    """``masks`` as bool ``(B, H, W)`` on the maps' device, checked against the maps."""
    if not isinstance(masks, Tensor):
        masks = torch.as_tensor(masks)
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks must have shape (B, H, W) = {tuple(maps.shape)}, got {tuple(masks.shape)}"
        )
    return masks.to(maps.device).bool()


def _result(scores: Tensor) -> MetricResult:
    """A :class:`MetricResult` holding an ordinary float64 CPU copy of ``scores``."""
    return MetricResult(scores=scores.detach().double().cpu().clone())
