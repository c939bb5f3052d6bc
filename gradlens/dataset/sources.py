"""Where the batches come from: ordered DataLoaders, iterables of batches, and image folders.

A source yields, for the rows still to compute, ``(file row, batch, model input)``. A
DataLoader over a map-style dataset is re-created over a
:class:`~torch.utils.data.Subset` for each range of rows, so no finished sample is loaded
again; any other iterable is read from the start and its finished batches skipped.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)

from ..core.inputs import Inputs
from ..core.inputs import batch_size as input_batch_size
from .rows import Interval, intersect

PathLike = Union[str, "os.PathLike[str]"]

# the suffixes torchvision's ImageFolder reads, so that both folder layouts take the same files
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
)


def default_input(batch: Any) -> Any:
    """The default ``input_fn``: ``batch[0]`` for tuple/list batches, else the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class Source:
    """Where batches come from: ``batches(todo, start, input_fn)`` yields ``(file row, batch,
    model input)`` for the batches that hold rows of ``todo``.

    Attributes:
        size: the number of samples of the whole dataset.
    """

    size: int

    def batches(
        self, todo: list[Interval], start: int, input_fn: Callable[[Any], Inputs]
    ) -> Iterator[tuple[int, Any, Inputs]]:
        """The batches holding the file rows ``todo`` (dataset rows ``todo + start``)."""
        raise NotImplementedError


class LoaderSource(Source):
    """An ordered DataLoader over a map-style dataset of ``size`` samples: each interval gets
    a loader over a :class:`~torch.utils.data.Subset`, so no finished sample is loaded
    again."""

    def __init__(self, loader: DataLoader[Any], size: int) -> None:
        self.loader = loader
        self.size = size

    def batches(
        self, todo: list[Interval], start: int, input_fn: Callable[[Any], Inputs]
    ) -> Iterator[tuple[int, Any, Inputs]]:
        for a, b in todo:
            if (a + start, b + start) == (0, self.size):
                loader = self.loader
            else:
                loader = _subset_loader(self.loader, range(a + start, b + start))
            row = a
            for batch in loader:
                x = input_fn(batch)
                yield row, batch, x
                row += input_batch_size(x)
            if row != b:
                raise ValueError(f"the loader yielded rows {a}..{row} where {a}..{b} were expected")


class IterableSource(Source):
    """Any iterable of batches of known total size; finished batches are read but not computed."""

    def __init__(self, iterable: Iterable[Any], size: int) -> None:
        self.iterable = iterable
        self.size = size

    def batches(
        self, todo: list[Interval], start: int, input_fn: Callable[[Any], Inputs]
    ) -> Iterator[tuple[int, Any, Inputs]]:
        row = 0
        for batch in self.iterable:
            if row >= self.size:
                raise ValueError(f"the iterable yielded more than n_samples={self.size} samples")
            x = input_fn(batch)
            k = input_batch_size(x)
            if intersect((row, row + k), todo):
                yield row, batch, x
            row += k
        if row != self.size:
            raise ValueError(f"the iterable yielded {row} samples, but n_samples={self.size}")


def source(loader: Iterable[Any], n_samples: int | None, one_process: bool) -> Source:
    """The :class:`Source` for what was passed as ``loader``.

    Args:
        loader: a DataLoader, or any iterable of batches.
        n_samples: the number of samples (required for iterables without ``len``).
        one_process: no other rank or shard reads the same data.

    Raises:
        ValueError: an unordered loader, a missing or wrong ``n_samples``, or an iterable
            in a distributed run or a shard.
    """
    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        _check_ordered(loader)
        size = _length(loader.dataset)
        if size is not None:
            if n_samples is not None and n_samples != size:
                raise ValueError(
                    f"n_samples={n_samples} but the loader's dataset has {size} samples; to "
                    "process part of a dataset, wrap it in torch.utils.data.Subset"
                )
            return LoaderSource(loader, size)
    if n_samples is None:
        raise ValueError(
            "n_samples is required for an iterable of batches (or a dataset without len): "
            "pass the number of samples it yields"
        )
    if not one_process:
        raise ValueError(
            "distributed runs and shards need a DataLoader over a map-style dataset with len "
            "(each rank loads its own index range); an iterable of batches works in one "
            "process only"
        )
    return IterableSource(loader, int(n_samples))


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer that holds values (``None`` if
    it has none: then inputs stay where they are). ``meta`` placeholders are skipped: the
    weights of a model offloaded by accelerate, whose hooks move the inputs themselves."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if not tensor.is_meta:
            return tensor.device
    return None


def to_device(x: Any, device: torch.device | None) -> Any:
    """``x`` (a tensor, or tuples, lists and dicts of them) moved to ``device``."""
    if device is None:
        return x
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True) if x.device != device else x
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(to_device(v, device) for v in x)
    if isinstance(x, list):
        return [to_device(v, device) for v in x]
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


# -- image folders ------------------------------------------------------------------------------


class ImageFiles(Dataset[Any]):
    """The image files directly inside a folder, in sorted order, without labels.

    Hidden files (names starting with ``.``) are left out.

    Args:
        root: the folder.
        transform: applied to each RGB PIL image (e.g. the model's preprocessing).

    Attributes:
        names: the file names, sorted; ``dataset[i]`` is ``transform(image names[i])``.
    """

    def __init__(self, root: PathLike, transform: Callable[[Any], Any] | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        self.names = sorted(
            path.name
            for path in self.root.iterdir()
            if path.is_file() and _is_image(path) and not path.name.startswith(".")
        )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Any:
        from PIL import Image

        with Image.open(self.root / self.names[index]) as picture:
            image = picture.convert("RGB")
        return image if self.transform is None else self.transform(image)


def image_folder(root: PathLike, transform: Callable[[Any], Any] | None = None) -> Dataset[Any]:
    """The images of a folder as a dataset, in either of two layouts.

    * One sub-folder per class (``root/<class>/<image>``): torchvision's ``ImageFolder``,
      whose samples are ``(image, class index)``, with ``.classes`` and ``.targets``.
    * Image files directly in ``root``: :class:`ImageFiles`, whose samples are the
      images alone, in sorted file-name order, with ``.names``.

    Args:
        root: the folder.
        transform: applied to each RGB PIL image.

    Returns:
        The dataset.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds no images in either layout.
        ValueError: ``root`` holds both image files and sub-folders with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root}")
    files = ImageFiles(root, transform)
    if len(files):
        classes = sorted(
            path.name
            for path in root.iterdir()
            if path.is_dir() and any(_is_image(p) for p in path.rglob("*"))
        )
        if classes:
            raise ValueError(
                f"{root} holds image files and sub-folders with images ({', '.join(classes[:3])}"
                f"{', ...' if len(classes) > 3 else ''}): give a folder of image files, or one "
                "with one sub-folder of images per class"
            )
        return files
    from torchvision.datasets import ImageFolder

    try:
        folder: Dataset[Any] = ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FileNotFoundError(
            f"{root} holds no images: give a folder of image files, or one with one sub-folder "
            f"of images per class ({' '.join(str(exc).split())})"
        ) from None
    return folder


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


# -- DataLoaders --------------------------------------------------------------------------------


def _check_ordered(loader: DataLoader[Any]) -> None:
    batches = loader.batch_sampler
    if batches is None:
        raise ValueError("the DataLoader must batch its samples (batch_size=None is not supported)")
    sampler = getattr(batches, "sampler", None)
    if isinstance(sampler, RandomSampler) or isinstance(loader.sampler, RandomSampler):
        raise ValueError(
            "the DataLoader shuffles (shuffle=True): rows would not match dataset indices and a "
            "resumed run would write other samples; use shuffle=False"
        )
    if type(batches) is not BatchSampler or not isinstance(sampler, SequentialSampler):
        raise ValueError(
            "the DataLoader must read the dataset in order (no sampler=/batch_sampler= other "
            f"than sequential ones; got {type(sampler).__name__}); gradlens splits the dataset "
            "between torch.distributed ranks itself"
        )
    if batches.drop_last:
        raise ValueError(
            "the DataLoader drops its last batch (drop_last=True): those rows would never be "
            "written"
        )


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


def _subset_loader(loader: DataLoader[Any], indices: range) -> DataLoader[Any]:
    """A DataLoader like ``loader`` over ``Subset(loader.dataset, indices)``."""
    batches = loader.batch_sampler
    assert isinstance(batches, BatchSampler)  # _check_ordered accepted only a BatchSampler
    options: dict[str, Any] = dict(
        batch_size=batches.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
    )
    if loader.num_workers > 0:
        options.update(
            prefetch_factor=loader.prefetch_factor,
            multiprocessing_context=loader.multiprocessing_context,
        )
    if hasattr(loader, "in_order"):
        options["in_order"] = loader.in_order
    return DataLoader(Subset(loader.dataset, indices), **options)
