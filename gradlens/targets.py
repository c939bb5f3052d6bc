"""Targets: what is being explained, turned into one score per sample (or K per sample).

A *target* says which number of the model output an explanation is about:

* ``None`` -- the top-scoring class of each sample (logits of shape ``(B, num_classes)``),
  or the output itself when the model returns one number per sample (shape ``(B,)``);
  for a language model's logits ``(B, T, vocabulary)`` classes are read at the last
  position ``T - 1`` (the next-token prediction: batches of prompts of different lengths
  must be left-padded so that every prompt ends there);
* an ``int`` -- that class for every sample;
* a sequence or 1-D tensor of length ``B`` -- one class per sample;
* a ``(B, K)`` tensor or a list of ``B`` lists of ``K`` classes -- ``K`` targets per sample;
* a callable ``output -> scores`` of shape ``(B,)`` (or ``(B, K)``) -- anything else, e.g.
  :func:`segmentation`, :func:`regression`, :func:`probability`, :func:`detection` below.

A structured output (a mapping or dataclass, e.g. a Hugging Face ``ModelOutput``) with a
``logits`` tensor is scored on it; any other structured output needs ``output=`` (see
:func:`select_output`) or a callable target.

:func:`scores` is the single place where gradlens turns a target into scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from .errors import OutputSelectionError, TargetError

__all__ = [
    "Target",
    "OutputSpec",
    "select_output",
    "scores",
    "probability",
    "segmentation",
    "regression",
    "detection",
    "token",
    "sequence",
]

Target = Union[None, int, Sequence[int], Sequence[Sequence[int]], Tensor, Callable[[Any], Tensor]]
OutputSpec = Union[None, int, str, Callable[[Any], Tensor]]


def select_output(output: Any, output_spec: OutputSpec = None) -> Tensor:
    """Pick the logits tensor out of a model output.

    Args:
        output: whatever the model returned: a tensor, tuple/list, dict or dataclass.
        output_spec: ``None`` (the output must be a tensor, or a mapping or dataclass with a
            ``logits`` tensor, such as every Hugging Face ``ModelOutput`` of a model with a
            head), an index (tuple/list), a key (dict, or attribute name of a dataclass /
            HF-style output) or a function ``output -> tensor``.

    Returns:
        The selected tensor.

    Raises:
        OutputSelectionError: the output is structured, has no ``logits`` entry and no
            ``output_spec`` was given, or the spec does not exist in it, or it does not lead
            to a tensor.
    """
    if output_spec is None:
        if isinstance(output, Tensor):
            return output
        logits = _logits_entry(output)
        if logits is not None:
            return logits
        raise OutputSelectionError(
            f"the model returned a {type(output).__name__}, not a tensor; pass output= "
            f"(an index, a key or a function) to say which part holds the scores"
            f"{_describe_structure(output)}, or pass a callable target"
        )
    if callable(output_spec):
        selected = output_spec(output)
    else:
        try:
            if isinstance(output, Mapping):
                selected = output[output_spec]
            elif isinstance(output, Sequence) and isinstance(output_spec, int):
                selected = output[output_spec]
            elif dataclasses.is_dataclass(output) and isinstance(output_spec, str):
                selected = getattr(output, output_spec)
            else:
                raise TypeError(f"cannot index a {type(output).__name__}")
        except (KeyError, IndexError, AttributeError, TypeError) as exc:
            raise OutputSelectionError(
                f"output={output_spec!r} does not exist in the model output"
                f"{_describe_structure(output)}"
            ) from exc
    if not isinstance(selected, Tensor):
        raise OutputSelectionError(
            f"output={output_spec!r} selected a {type(selected).__name__}, not a tensor"
        )
    return selected


def _logits_entry(output: Any) -> Tensor | None:
    """The ``logits`` tensor of a mapping or dataclass output (a Hugging Face
    ``ModelOutput`` is both), or ``None``."""
    if isinstance(output, Mapping):
        value = output.get("logits")
    elif dataclasses.is_dataclass(output):
        value = getattr(output, "logits", None)
    else:
        return None
    return value if isinstance(value, Tensor) else None


def _describe_structure(output: Any) -> str:
    if isinstance(output, Mapping):
        return f" (keys: {', '.join(map(repr, output.keys()))})"
    if dataclasses.is_dataclass(output):
        names = [f.name for f in dataclasses.fields(output)]
        return f" (fields: {', '.join(names)})"
    if isinstance(output, (tuple, list)):
        kinds = [type(o).__name__ for o in output]
        return f" (items 0..{len(output) - 1}: {', '.join(kinds)})"
    return ""


def scores(
    output: Any, target: Target, batch_size: int, output_spec: OutputSpec = None
) -> tuple[Tensor, Tensor | None]:
    """Turn a model output and a target into the scores to explain.

    Args:
        output: the raw model output.
        target: see the module docstring.
        batch_size: ``B``, the number of samples in the input.
        output_spec: see :func:`select_output`; ignored for callable targets, which get
            the raw output.

    Returns:
        ``(scores, classes)``: ``scores`` has shape ``(B,)`` or ``(B, K)`` (``K`` targets per
        sample) and keeps its autograd graph; ``classes`` holds the class indices
        (same shape, ``int64``), or ``None`` for callable targets and 1-D outputs.

    Raises:
        TargetError: a class out of range, a target whose length is not ``B``, ragged
            lists, or a callable returning the wrong shape.
        OutputSelectionError: see :func:`select_output`.
    """
    if callable(target) and not isinstance(target, Tensor):
        value = target(output)
        if (
            not isinstance(value, Tensor)
            or value.ndim not in (1, 2)
            or value.shape[0] != batch_size
        ):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise TargetError(
                f"a callable target must return scores of shape ({batch_size},) -- one per "
                f"sample -- or ({batch_size}, K); it returned {shape}"
            )
        return value, None

    logits = select_output(output, output_spec)
    if logits.shape[0:1] != (batch_size,):
        raise TargetError(
            f"the selected output has shape {tuple(logits.shape)}, but the input holds "
            f"{batch_size} samples; dim 0 of the output must be the batch"
        )
    if logits.ndim == 1:
        if target is not None:
            raise TargetError(
                f"the model returns one number per sample (shape ({batch_size},)); "
                f"use target=None to explain it, not target={target!r}"
            )
        return logits, None
    if logits.ndim == 3:  # (B, T, V): a language model; class targets are read at the end
        logits = logits[:, -1]
    if logits.ndim != 2:
        raise TargetError(
            f"class targets need logits of shape (B, num_classes) or (B, T, vocabulary), got "
            f"{tuple(logits.shape)}; pass a callable target (e.g. "
            f"gradlens.targets.segmentation) for this output"
        )
    num_classes = logits.shape[1]
    if target is None:
        classes = logits.detach().argmax(dim=1)
    else:
        classes = _class_tensor(target, batch_size, num_classes, logits.device)
    if classes.ndim == 1:
        return logits.gather(1, classes[:, None])[:, 0], classes
    return logits.gather(1, classes), classes


def _class_tensor(
    target: Target, batch_size: int, num_classes: int, device: torch.device
) -> Tensor:
    """Class indices of shape ``(B,)`` or ``(B, K)`` for an int, sequence or tensor target."""
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index, got the bool {target}")
    if isinstance(target, int):
        classes = torch.full((batch_size,), target, dtype=torch.long)
    else:
        if isinstance(target, Tensor):
            if target.is_floating_point() or target.is_complex():
                raise TargetError(
                    f"a target tensor must hold integer class indices, got {target.dtype}"
                )
            with torch.inference_mode(False):  # an ordinary copy, also of an inference tensor
                classes = target.detach().to("cpu", torch.long, copy=True)
            if classes.ndim == 0:
                classes = classes.expand(batch_size)
        else:
            try:
                rows = list(target)  # type: ignore[arg-type]
            except TypeError:
                raise TargetError(
                    f"target must be None, an int, a sequence of ints, a (B, K) tensor or a "
                    f"callable, got {type(target).__name__}"
                ) from None
            nested = [
                r for r in rows if isinstance(r, (Sequence, Tensor)) and not isinstance(r, str)
            ]
            if nested:
                lengths = {len(r) for r in nested}
                if len(lengths) > 1:
                    raise TargetError(
                        f"every sample needs the same number of targets; got lists of "
                        f"lengths {sorted(lengths)}"
                    )
            try:
                classes = torch.as_tensor(rows, dtype=torch.long)
            except (TypeError, ValueError) as exc:
                raise TargetError(
                    f"could not read target {target!r} as class indices: {exc}"
                ) from None
        if classes.ndim not in (1, 2) or classes.shape[0] != batch_size:
            raise TargetError(
                f"target has shape {tuple(classes.shape)}; expected ({batch_size},) for one "
                f"class per sample or ({batch_size}, K) for K classes per sample"
            )
    bad = (classes < 0) | (classes >= num_classes)
    if bad.any():
        raise TargetError(
            f"class index {int(classes[bad][0])} is out of range: the model has "
            f"{num_classes} classes, so valid targets are 0..{num_classes - 1}"
        )
    return classes.to(device)


def probability(
    class_index: int | Sequence[int] | Tensor, output_spec: OutputSpec = None
) -> Callable[[Any], Tensor]:
    """Target the softmax probability (instead of the logit) of a class.

    Returns:
        A callable ``output -> (B,)`` giving ``softmax(logits)[b, class_b]``.
    """

    def target(output: Any) -> Tensor:
        logits = select_output(output, output_spec)
        if logits.ndim == 3:  # a language model: the next-token distribution
            logits = logits[:, -1]
        classes = _class_tensor(class_index, logits.shape[0], logits.shape[1], logits.device)
        probs = torch.softmax(logits, dim=1)
        return probs.gather(1, classes if classes.ndim == 2 else classes[:, None]).squeeze(1)

    return target


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
    """

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


def regression(index: int | None = None, output_spec: OutputSpec = None) -> Callable[[Any], Tensor]:
    """Target a regression output.

    Args:
        index: the column of a ``(B, D)`` output; ``None`` for a ``(B,)`` or ``(B, 1)`` output.
        output_spec: picks the tensor out of a structured output (see :func:`select_output`).

    Returns:
        A callable target, ``output -> (B,)`` scores.
    """

    def target(output: Any) -> Tensor:
        values = select_output(output, output_spec)
        if values.ndim == 2 and index is None and values.shape[1] == 1:
            return values[:, 0]
        if index is None:
            return values
        return values[:, index]

    return target


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
            f"a {type(output).__name__}{_describe_structure(output)}"
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


def token(
    cls: int | Sequence[int] | Tensor, position: int = -1, output_spec: OutputSpec = None
) -> Callable[[Any], Tensor]:
    """Target the logit of a class at one sequence position of ``(B, T, V)`` logits.

    For a language model ``position=-1`` with ``cls`` a token id is the logit of the next
    token after the input.

    Args:
        cls: the class (token id): an int, one per sample (``B`` ints), or ``K`` per sample
            (a ``(B, K)`` tensor or ``B`` lists of ``K`` ints).
        position: the sequence position (negative counts from the end).
        output_spec: picks the logits out of a structured output (see :func:`select_output`).

    Returns:
        A callable ``output -> (B,)`` (or ``(B, K)``) giving ``logits[b, position, cls_b]``.
        When the output holds ``n * B`` rows (``n`` stacked copies of the batch, as the methods
        that evaluate modified copies make), per-sample classes are repeated for each copy.

    Raises:
        TargetError: ``cls`` is not integer ids; when called, logits that are not 3-D, a
            position or a class out of range, or a batch that is not a multiple of ``cls``'s.
    """
    if isinstance(cls, int) and not isinstance(cls, bool):
        cls_ids = torch.tensor([cls])
    else:
        cls_ids = _ids(cls, "targets.token's cls")
        if cls_ids.ndim == 0:
            cls_ids = cls_ids[None]

    def target(output: Any) -> Tensor:
        logits = _sequence_logits(select_output(output, output_spec), "targets.token")
        rows, length, vocab = logits.shape
        if not -length <= position < length:
            raise TargetError(
                f"position {position} is out of range for a sequence of {length} positions"
            )
        classes = _per_row(cls_ids, rows, vocab, logits.device)
        at_position = logits[:, position]
        if classes.ndim == 1:
            return at_position.gather(1, classes[:, None])[:, 0]
        return at_position.gather(1, classes)

    return target


def sequence(
    continuation_ids: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    per_token: bool = False,
    output_spec: OutputSpec = None,
) -> Callable[[Any], Tensor]:
    """Target the log-probability of a continuation under teacher forcing.

    The model must be run on the prompt followed by the continuation (``K`` tokens, the last
    ``K`` positions of the input; pad on the left, if at all). The logits at position
    ``t`` predict the token at ``t + 1``, so continuation token ``k`` (at position
    ``T - K + k``) is scored with ``log_softmax(logits[:, T - K + k - 1])``. The first
    continuation token therefore needs at least one prompt token before it.

    Args:
        continuation_ids: the continuation's token ids, ``(B, K)`` (or ``(K,)``, the same for
            every sample).
        per_token: ``False``: the per-sample sum of the ``K`` log-probabilities, ``(B,)``.
            ``True``: one score per continuation token, ``(B, K)``, which the methods
            differentiate in one batched backward (``K`` targets per sample).
        output_spec: picks the logits out of a structured output (see :func:`select_output`).

    Returns:
        A callable ``output -> (B,)`` or ``(B, K)``. When the output holds ``n * B`` rows
        (stacked copies of the batch), the continuation is repeated for each copy.

    Raises:
        TargetError: ``continuation_ids`` is not a 1-D or 2-D integer tensor or list, or is
            empty; when called, logits that are not 3-D, a sequence not longer than the
            continuation, a batch that is not a multiple of the continuation's, or a token
            id outside the vocabulary.
    """
    ids = _ids(continuation_ids, "continuation_ids")
    if ids.ndim == 1:  # the same continuation for every sample
        ids = ids[None]

    def target(output: Any) -> Tensor:
        logits = _sequence_logits(select_output(output, output_spec), "targets.sequence")
        rows, length, vocab = logits.shape
        k = ids.shape[-1]
        if length <= k:
            raise TargetError(
                f"the model saw {length} positions, but a continuation of {k} tokens needs at "
                f"least {k + 1}: run the model on the prompt followed by the continuation"
            )
        continuation = _per_row(ids, rows, vocab, logits.device)
        predicting = logits[:, length - k - 1 : length - 1]  # (rows, K, V)
        log_probs = torch.log_softmax(predicting, dim=-1)
        picked = log_probs.gather(2, continuation[:, :, None])[:, :, 0]
        return picked if per_token else picked.sum(1)

    return target


def _sequence_logits(logits: Tensor, name: str) -> Tensor:
    if logits.ndim != 3:
        raise TargetError(
            f"{name} needs logits of shape (B, T, vocabulary), got {tuple(logits.shape)}"
        )
    return logits


def _ids(values: int | Sequence[int] | Sequence[Sequence[int]] | Tensor, name: str) -> Tensor:
    """Integer ids as a 1-D or 2-D int64 CPU tensor (an ordinary copy), checked."""
    try:
        with torch.inference_mode(False):  # an ordinary copy, also of an inference tensor
            tensor = torch.as_tensor(values).detach().to("cpu", copy=True)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(
            f"{name} must be integer ids: an int, a list or a tensor, got {values!r}"
        ) from None
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TargetError(f"{name} must hold integer ids, got {tensor.dtype}")
    if tensor.ndim > 2 or tensor.numel() == 0:
        raise TargetError(f"{name} must be 1-D or 2-D and not empty, got {tuple(tensor.shape)}")
    return tensor.long()


def _per_row(classes: Tensor, rows: int, num_classes: int, device: torch.device) -> Tensor:
    """Per-sample classes ``(S,)`` or ``(S, K)`` for ``rows`` output rows: repeated copy-major
    when the output holds ``n`` stacked copies of the ``S`` samples, then checked."""
    samples = classes.shape[0]
    if rows != samples:
        if rows % samples:
            raise TargetError(
                f"the target has {samples} samples, but the model output holds {rows} rows; "
                f"give one entry per sample"
            )
        classes = classes.repeat(rows // samples, *([1] * (classes.ndim - 1)))
    return _class_tensor(classes, rows, num_classes, device)
