"""Images in and out: preprocessing for the model, reading image files, writing maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .messages import one_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: resize the shorter side, centre-crop, scale to [0, 1], normalise.

    Attributes:
        resize: the shorter side after resizing.
        crop: the side of the centre crop (the model's input size).
        mean, std: per-channel normalisation.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    """

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def for_size(
        cls,
        size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
    ) -> Preprocess:
        """The usual evaluation recipe: resize to ``size * 256 / 224``, crop ``size``."""
        return cls(round(size * 256 / 224), size, tuple(mean), tuple(std), interpolation)

    def image(self, picture: Any) -> Tensor:
        """A PIL image as a float ``(3, crop, crop)`` tensor in [0, 1] (not normalised)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        tensor = TF.pil_to_tensor(picture.convert("RGB"))
        tensor = TF.resize(
            tensor, [self.resize], InterpolationMode(self.interpolation), antialias=True
        )
        cropped: Tensor = TF.center_crop(tensor, [self.crop, self.crop])
        return cropped.float() / 255

    def normalize(self, image: Tensor) -> Tensor:
        """Normalise a ``(..., 3, H, W)`` image in [0, 1] with ``mean`` and ``std``."""
        mean = torch.tensor(self.mean, dtype=image.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype).view(-1, 1, 1)
        return (image - mean) / std

    def __call__(self, picture: Any) -> Tensor:
        """The model input for a PIL image (usable as a torchvision dataset transform)."""
        return self.normalize(self.image(picture))


def load_image(path: Path) -> Any:
    """The image file at ``path`` as an RGB PIL image.

    Raises:
        ValueError: the file is not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.load()
            return picture.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {one_line(exc)}") from None


def unique_stems(paths: list[Path]) -> list[str]:
    """File stems, with ``_1``, ``_2`` ... added where two images share one."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        number = seen.get(path.stem, 0)
        seen[path.stem] = number + 1
        stems.append(path.stem if number == 0 else f"{path.stem}_{number}")
    return stems


def save_npy(path: Path, tensor: Tensor) -> None:
    """Save a CPU tensor as ``.npy``."""
    np.save(path, tensor.numpy())


def save_png(path: Path, picture: Any) -> None:
    """Save an ``(H, W, 3)`` uint8 array as PNG."""
    from PIL import Image

    Image.fromarray(np.asarray(picture, dtype=np.uint8)).save(path)
