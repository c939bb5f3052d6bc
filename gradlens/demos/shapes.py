"""A synthetic "shapes" benchmark with ground truth (the tiny CNN that learns it is in
:mod:`gradlens.demos.training`).

Every image holds exactly one *object* whose shape and colour decide its class, on a
textured grey background, next to a few small *distractors* that never decide the class.
Because the object's mask and box are known, attribution maps can be scored against the
truth (see :mod:`gradlens.metrics`).

Classes are ``shape x colour``: by default {circle, square, triangle} x {red, green, blue},
nine classes, named ``"red circle"``, ``"green circle"``, ... and numbered
``label = shape_index * len(colours) + colour_index``::

    0 red circle    1 green circle    2 blue circle
    3 red square    4 green square    5 blue square
    6 red triangle  7 green triangle  8 blue triangle

Image recipe (``size=64``):

* background: a grey level in [0.3, 0.6] with a smooth luminance texture (about +-0.15)
  and a faint smooth colour tint (about +-0.05 per channel);
* distractors: up to ``distractors`` small shapes (side 6-14 % of the image, 4-9 px) of
  any shape, coloured grey, yellow, cyan or magenta -- never a class colour, so they
  carry no class information; they are drawn *under* the object;
* object: a filled circle, axis-aligned square or upright triangle whose bounding box
  side is ``scale`` x ``size`` (default 20-42 %, 13-27 px), fully inside the image; its
  colour has the class channel in [0.75, 1] and the other two in [0, 0.3];
* pixel noise: uniform in +-``noise`` on every pixel, then clipped to [0, 1]. With the
  default ``noise=0.04`` every object pixel keeps its class channel the largest by at
  least 0.37, while elsewhere no channel exceeds both others by more than 0.18.

The :class:`~gradlens.demos.training.TinyCNN` of :mod:`gradlens.demos.training` learns the classes
to >= 95 % held-out accuracy, and Grad-CAM on its last block lands on the object.

The text counterpart -- token sequences whose label is decided by one or two trigger
tokens, with the trigger positions as ground truth, and the tiny transformer that learns
it -- is in :mod:`gradlens.demos.text_task`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SHAPES",
    "COLOURS",
    "ShapesData",
    "ShapesDataset",
    "make_shapes",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""The object shapes :func:`make_shapes` can draw."""

COLOURS: tuple[str, ...] = ("red", "green", "blue")
"""The class colours; colour ``i`` has RGB channel ``i`` dominant."""

# Distractor palette: RGB in [0, 1]; none has a single dominant channel, so none is a class colour.
_DISTRACTOR_COLOURS = np.array(
    [
        [0.85, 0.85, 0.85],  # light grey
        [0.15, 0.15, 0.15],  # dark grey
        [0.90, 0.90, 0.15],  # yellow
        [0.15, 0.90, 0.90],  # cyan
        [0.90, 0.15, 0.90],  # magenta
    ],
    dtype=np.float32,
)


@dataclasses.dataclass(eq=False)
class ShapesData:
    """A batch of synthetic shapes images with their ground truth.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 class indices into ``class_names``.
        masks: ``(N, H, W)`` bool, the visible pixels of the object (the object is drawn
            last, so it is never occluded).
        boxes: ``(N, 4)`` int64 ``(x0, y0, x1, y1)``, the tight box around ``masks``; ``x0``,
            ``y0`` inclusive and ``x1``, ``y1`` exclusive (``masks[i, y0:y1, x0:x1]``
            holds the whole object).
        class_names: ``"colour shape"`` names, indexed by label.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    boxes: Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> ShapesData:
        """The samples at ``index`` (an int keeps a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return ShapesData(
            self.images[index],
            self.labels[index],
            self.masks[index],
            self.boxes[index],
            self.class_names,
        )


class ShapesDataset(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """A :class:`torch.utils.data.Dataset` view of a :class:`ShapesData`.

    Example: ``ShapesDataset(make_shapes(1000, seed=1))[0]`` is ``(image, label)`` with an
    image of shape ``(3, 64, 64)`` and an int64 scalar label.
    """

    def __init__(self, data: ShapesData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.data.images[index], self.data.labels[index]


def make_shapes(
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    shapes: Sequence[str] = SHAPES,
    colours: Sequence[str] = COLOURS,
    scale: tuple[float, float] = (0.2, 0.42),
    distractors: int = 3,
    noise: float = 0.04,
) -> ShapesData:
    """Generate ``n`` shapes images (see the module docstring for the recipe).

    The same arguments always give the same data. Labels are balanced: every class occurs
    ``n // num_classes`` or ``n // num_classes + 1`` times, in random order.

    Args:
        n: number of images.
        size: image height and width in pixels (at least 16).
        seed: seed of the numpy generator that draws everything.
        shapes: the object shapes used as classes, a subset of :data:`SHAPES`.
        colours: the object colours used as classes, a subset of :data:`COLOURS`.
        scale: range of the object's bounding-box side as a fraction of ``size``.
        distractors: the maximum number of distractors per image (each image gets
            0..``distractors``, uniformly).
        noise: amplitude of the uniform pixel noise.

    Returns:
        A :class:`ShapesData` with ``images (n, 3, size, size)``, ``labels (n,)``,
        ``masks (n, size, size)``, ``boxes (n, 4)`` and
        ``len(shapes) * len(colours)`` class names.

    Raises:
        ValueError: ``n < 0``, ``size < 16``, an unknown or repeated shape or colour, or a
            ``scale`` range outside (0, 1] or smaller than 2 pixels.
    """
    shape_ids = _indices(shapes, SHAPES, "shape")
    colour_ids = _indices(colours, COLOURS, "colour")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    if not 0 < scale[0] <= scale[1] <= 1 or scale[0] * size < 2:
        raise ValueError(
            f"scale must satisfy 0 < low <= high <= 1 with low * size >= 2 pixels, got {scale}"
        )
    rng = np.random.default_rng(seed)
    num_classes = len(shape_ids) * len(colour_ids)
    labels = rng.permutation(np.arange(n) % num_classes)
    class_names = tuple(f"{COLOURS[c]} {SHAPES[s]}" for s in shape_ids for c in colour_ids)

    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    chunk = 256  # bounds the memory of the (chunk, size, size) temporaries
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sl = slice(start, stop)
        images[sl], masks[sl] = _draw(
            rng,
            np.asarray(shape_ids)[labels[sl] // len(colour_ids)],
            np.asarray(colour_ids)[labels[sl] % len(colour_ids)],
            size,
            scale,
            distractors,
            noise,
        )
    return ShapesData(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels.astype(np.int64)),
        masks=torch.from_numpy(masks),
        boxes=torch.from_numpy(_boxes(masks)),
        class_names=class_names,
    )


def _indices(names: Sequence[str], known: tuple[str, ...], what: str) -> list[int]:
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in known]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"{what}s must be distinct names from {known}, got {list(names)}")
    return [known.index(name) for name in names]


def _shape_masks(
    shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int
) -> np.ndarray:
    """``(n, size, size)`` masks of shapes with centre ``(cx, cy)`` and half-side ``r``."""
    grid = np.arange(size, dtype=np.float32)
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    r = r[:, None, None]
    inside_box = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    circle = dx**2 + dy**2 <= r**2
    triangle = inside_box & (np.abs(dx) <= (dy + r) / 2)  # apex up, base at cy + r
    kind = shape[:, None, None]
    masks: np.ndarray = np.where(kind == 0, circle, np.where(kind == 1, inside_box, triangle))
    return masks


def _draw(
    rng: np.random.Generator,
    shape: np.ndarray,
    colour: np.ndarray,
    size: int,
    scale: tuple[float, float],
    distractors: int,
    noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    n: int = shape.shape[0]
    f32 = np.float32
    # Background: grey level + smooth luminance texture + faint smooth tint.
    # Texture: 6 x 6 random values per channel, bilinearly upsampled (as two matrix products).
    interpolated = F.interpolate(torch.eye(6)[None], size=size, mode="linear", align_corners=False)
    up = interpolated[0].T.numpy().astype(f32)  # (size, 6)
    coarse = (
        rng.uniform(-1, 1, (n, 4, 6, 6)).astype(f32)
        * np.array([0.15, 0.05, 0.05, 0.05], f32)[:, None, None]
    )
    smooth = up @ coarse @ up.T  # (n, 4, size, size)
    grey = rng.uniform(0.3, 0.6, (n, 1, 1, 1)).astype(f32)
    images = (grey + smooth[:, :1]) + smooth[:, 1:]

    def place(low: float, high: float, count: int) -> tuple[np.ndarray, ...]:
        r = rng.uniform(low * size, high * size, count).astype(f32) / 2
        cx = rng.uniform(r, size - 1 - r).astype(f32)
        cy = rng.uniform(r, size - 1 - r).astype(f32)
        return cx, cy, r

    # Distractors, each present with probability depending on how many this image gets.
    count = rng.integers(0, distractors + 1, n)
    for slot in range(distractors):
        cx, cy, r = place(0.06, 0.14, n)
        kind = rng.integers(0, len(SHAPES), n)
        rgb = _DISTRACTOR_COLOURS[rng.integers(0, len(_DISTRACTOR_COLOURS), n)]
        drawn = _shape_masks(kind, cx, cy, r, size) & (slot < count)[:, None, None]
        np.copyto(images, rgb[:, :, None, None], where=drawn[:, None])

    # The object, drawn last.
    cx, cy, r = place(scale[0], scale[1], n)
    mask = _shape_masks(shape, cx, cy, r, size)
    rgb = rng.uniform(0.0, 0.3, (n, 3)).astype(f32)
    rgb[np.arange(n), colour] = rng.uniform(0.75, 1.0, n)
    np.copyto(images, rgb[:, :, None, None], where=mask[:, None])

    images += (2 * noise) * rng.random(images.shape, dtype=f32) - noise
    return np.clip(images, 0.0, 1.0, out=images), mask


def _boxes(masks: np.ndarray) -> np.ndarray:
    """Tight ``(x0, y0, x1, y1)`` boxes (exclusive end) of ``(N, H, W)`` non-empty masks."""
    n, height, width = masks.shape
    cols: np.ndarray = np.any(masks, axis=1)
    rows: np.ndarray = np.any(masks, axis=2)
    x0 = cols.argmax(axis=1)
    x1 = width - cols[:, ::-1].argmax(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = height - rows[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)
