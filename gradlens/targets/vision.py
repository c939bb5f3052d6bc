"""Targets of vision models that are not classifiers: :func:`segmentation` (a class over a
region of a segmentation output) and :func:`detection` (a detector's matched detections)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.output_selection import OutputSpec, describe_structure, select_output
from ..errors import TargetError
from .parse import class_ids

__all__ = ["segmentation", "detection"]


def segmentation(
    class_index: int, mask: Tensor | None = None, output_spec: OutputSpec = None
) -> Callable[[Any], Tensor]:
    """Target the summed logit of one class over a region of a segmentation output.

    Args:
        class_index: the class channel ``c`` of an output of shape ``(B, C, H, W)``.
        mask: optional ``(H, W)`` or ``(B, H, W)`` weights (bool or float); ``None`` sums
            over every pixel.
        output_spec: picks the logits out of a structured output; ``None`` reads a
            ``logits`` entry (Hugging Face), else an ``"out"`` entry (torchvision's
            segmentation models, whose output is ``{"out": ..., "aux": ...}``).

    Returns:
        A callable ``output -> (B,)``.

    Raises:
        TargetError: ``class_index`` is not one integer (at once).
    """
    if class_ids(class_index, "class_index").ndim != 0:
        raise TargetError(f"class_index must be one class channel (an int), got {class_index!r}")

    def target(output: Any) -> Tensor:
        logits = _segmentation_logits(output, output_spec)
        channel = logits[:, class_index]
        if mask is not None:
            channel = channel * mask.to(channel.device, channel.dtype)
        return channel.flatten(1).sum(1)

    return target


def _segmentation_logits(output: Any, output_spec: OutputSpec) -> Tensor:
    if output_spec is None and isinstance(output, Mapping) and "logits" not in output:
        out = output.get("out")
        if isinstance(out, Tensor):
            return out
    return select_output(output, output_spec)


def detection(
    boxes: Tensor | Sequence[Tensor], labels: Tensor | Sequence[Tensor], iou: float = 0.5
) -> Callable[[Any], Tensor]:
    """Target the detections that match reference boxes, for torchvision detection models.

    The model output is a list of ``B`` dicts with ``boxes`` ``(N, 4)`` (``x1, y1, x2, y2``),
    ``labels`` ``(N,)`` and ``scores`` ``(N,)``, as torchvision's Faster R-CNN, RetinaNet,
    SSD, FCOS and Mask R-CNN return in eval mode. For each reference box the prediction
    with the same label and the highest IoU at or above ``iou`` is taken and its score
    added: the target is one score per image, the summed confidence of the detections that
    found the reference objects. A reference box with no such prediction adds 0 (the map
    then explains nothing for that object: lower ``iou``, or lower the model's score
    threshold, e.g. ``box_score_thresh`` of Faster R-CNN, to match weaker detections).

    Args:
        boxes: reference boxes per image: a list of ``B`` tensors ``(M_b, 4)`` in the
            input image's pixel coordinates, or one ``(M, 4)`` tensor used for every image.
        labels: their classes: a list of ``B`` tensors ``(M_b,)`` or one ``(M,)`` tensor.
        iou: the smallest intersection over union of a match, in ``(0, 1]``.

    Returns:
        A callable ``output -> (B,)``.

    Raises:
        ValueError: ``iou`` outside ``(0, 1]`` (at once).
        TargetError: (when scored) an output that is not a list of dicts with ``boxes``,
            ``labels`` and ``scores``; reference boxes not ``(M, 4)``, labels of another
            length, or a list of references whose length is not the number of images.
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")

    def target(output: Any) -> Tensor:
        predictions = _detections(output)
        refs = _references(boxes, labels, len(predictions))
        per_image = []
        for prediction, (ref_boxes, ref_labels) in zip(predictions, refs):
            per_image.append(_matched_score(prediction, ref_boxes, ref_labels, iou))
        return torch.stack(per_image)

    return target


def _detections(output: Any) -> list[Mapping[str, Tensor]]:
    """The output as a list of per-image prediction dicts, or a TargetError."""
    keys = ("boxes", "labels", "scores")
    if (
        not isinstance(output, (list, tuple))
        or not output
        or not all(isinstance(p, Mapping) and all(k in p for k in keys) for p in output)
    ):
        raise TargetError(
            f"targets.detection needs the output of a torchvision detection model in eval "
            f"mode: a list of dicts with 'boxes', 'labels' and 'scores'; the model returned "
            f"a {type(output).__name__}{describe_structure(output)}"
        )
    return list(output)


def _references(
    boxes: Tensor | Sequence[Tensor], labels: Tensor | Sequence[Tensor], images: int
) -> list[tuple[Tensor, Tensor]]:
    """``(boxes (M, 4), labels (M,))`` per image."""
    if isinstance(boxes, Tensor) != isinstance(labels, Tensor):
        raise TargetError("give boxes and labels in the same form: both tensors or both lists")
    if isinstance(boxes, Tensor) and isinstance(labels, Tensor):
        pairs = [(boxes, labels)] * images
    else:
        box_list, label_list = list(boxes), list(labels)
        if len(box_list) != images or len(label_list) != images:
            raise TargetError(
                f"the model returned detections for {images} images, but the references "
                f"hold {len(box_list)} lists of boxes and {len(label_list)} of labels"
            )
        pairs = list(zip(box_list, label_list))
    checked = []
    for b, (ref_boxes, ref_labels) in enumerate(pairs):
        ref_boxes, ref_labels = torch.as_tensor(ref_boxes), torch.as_tensor(ref_labels)
        if ref_boxes.ndim != 2 or ref_boxes.shape[1] != 4:
            raise TargetError(
                f"reference boxes of image {b} have shape {tuple(ref_boxes.shape)}; "
                "expected (M, 4) as x1, y1, x2, y2"
            )
        if ref_labels.shape != (ref_boxes.shape[0],):
            raise TargetError(
                f"image {b} has {ref_boxes.shape[0]} reference boxes but labels of shape "
                f"{tuple(ref_labels.shape)}"
            )
        checked.append((ref_boxes, ref_labels))
    return checked


def _matched_score(
    prediction: Mapping[str, Tensor], ref_boxes: Tensor, ref_labels: Tensor, iou: float
) -> Tensor:
    """The summed score of the best-matching prediction of each reference box."""
    pred_scores = prediction["scores"]
    # starts the sum from the scores so that an image without a match still has a graph
    total = pred_scores.sum() * 0.0
    if ref_boxes.shape[0] == 0 or pred_scores.shape[0] == 0:
        return total
    pred_boxes = prediction["boxes"].detach()
    if not pred_boxes.is_floating_point():
        pred_boxes = pred_boxes.float()
    overlap = _box_iou(ref_boxes.to(pred_boxes), pred_boxes)  # (M, N)
    same = ref_labels.to(prediction["labels"].device)[:, None] == prediction["labels"][None, :]
    overlap = torch.where(same & (overlap >= iou), overlap, torch.full_like(overlap, -1.0))
    best_iou, best = overlap.max(dim=1)
    matched = best[best_iou >= 0]
    return total + pred_scores[matched].sum()


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every box of ``a`` ``(M, 4)`` with every box of ``b``
    ``(N, 4)``: ``(M, N)``."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return intersection / union.clamp(min=torch.finfo(union.dtype).tiny)
