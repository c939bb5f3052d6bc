"""The subcommands: ``layers``, ``cam``, ``extract``, ``demo`` and ``bench``; each takes the
parsed arguments and returns the exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import registry
from ..core.selection import select_layers
from ..dataset.api import extract_dataset
from ..dataset.sources import ImageFiles, image_folder
from ..maps import to_2d
from .images import load_image, save_npy, save_png, unique_stems
from .messages import one_line
from .models import load_model, parse_device, random_weights_note


def layers(args: argparse.Namespace) -> int:
    """``gradlens layers``: print the model's layers with their output shapes."""
    from ..layering.discovery import layers as layer_table

    model, _ = load_model(args.model, args.weights, num_classes=args.num_classes)
    example = torch.randn(1, *args.input_size, generator=torch.Generator().manual_seed(0))
    try:
        table = layer_table(model, example)
    except RuntimeError as exc:
        raise ValueError(
            f"{args.model} does not run on an input of shape {tuple(example.shape)} "
            f"({one_line(exc)}); pass --input-size C H W"
        ) from None
    print(table)
    return 0


def cam(args: argparse.Namespace) -> int:
    """``gradlens cam``: maps for image files, saved as overlays (PNG) and raw maps (.npy)."""
    from ..viz.images import overlay  # matplotlib: imported only when drawing

    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image: {', '.join(missing)}")
    method = registry.get(args.method)
    device = parse_device(args.device)
    model, preprocess = load_model(
        args.model, args.weights, num_classes=args.num_classes, image_size=args.image_size
    )
    model.to(device)
    options: dict[str, Any] = {}
    if args.layer is not None:
        if not registry.info(args.method).needs_layer:
            raise ValueError(f"the method {args.method!r} takes no --layer")
        select_layers(model, args.layer)  # an unknown layer fails here, with suggestions
        options["layer"] = args.layer
    _note(random_weights_note(args.model, args.weights, "maps"))
    images = [preprocess.image(load_image(p)) for p in paths]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(paths)
    for start in range(0, len(images), args.batch_size):
        chunk = torch.stack(images[start : start + args.batch_size])
        maps = method(model, preprocess.normalize(chunk).to(device), target=args.target, **options)
        for i, image in enumerate(chunk):
            raw = maps[i].detach().float().cpu()
            base = f"{stems[start + i]}_{args.method}"
            save_npy(out / f"{base}.npy", raw)
            save_png(out / f"{base}.png", overlay(image, to_2d(raw[None])[0], alpha=args.alpha))
            print(f"{paths[start + i]} -> {out / base}.png, {out / base}.npy")
    return 0


def extract(args: argparse.Namespace) -> int:
    """``gradlens extract``: the features of a folder of images, one ``.npy`` per layer."""
    dataset = image_folder(args.data)  # a missing or empty folder fails before the model loads
    shard = _parse_shard(args.shard)
    device = parse_device(args.device)
    started = _init_distributed(device)
    try:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if started and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        model, preprocess = load_model(
            args.model, args.weights, num_classes=args.num_classes, image_size=args.image_size
        )
        if rank == 0:
            _note(random_weights_note(args.model, args.weights, "features"))
        model.to(device)
        # both folder layouts (ImageFiles, torchvision's ImageFolder) apply .transform to each
        # image; the Dataset type that image_folder declares has no such attribute
        dataset.transform = preprocess  # type: ignore[attr-defined]
        names = dataset.names if isinstance(dataset, ImageFiles) else None
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            num_workers=args.workers,
            shuffle=False,
            pin_memory=device.type == "cuda",
        )
        manifest = extract_dataset(
            model,
            loader,
            args.layers,
            args.out,
            reduce=POOLS[args.pool],
            dtype=args.dtype,
            sample_names=names,
            shard=shard,
            overwrite=args.overwrite,
            progress=True,
        )
        if rank == 0:
            if names is None:  # class sub-folders: the labels go next to the features
                _write_labels(Path(args.out), dataset, manifest.row_offset, manifest.n_samples)
            for name in manifest.layers:
                shape = "x".join(map(str, manifest.shapes[name]))
                print(
                    f"{name}: {shape} {manifest.dtype} -> {Path(args.out) / manifest.files[name]}"
                )
    finally:
        if started:
            torch.distributed.destroy_process_group()
    return 0


def demo(args: argparse.Namespace) -> int:
    """``gradlens demo``: train a tiny CNN on synthetic shapes and score every method;
    ``--vit``: train a tiny vision transformer and score the attention methods;
    ``--text``: train a tiny text transformer and score the per-token attributions."""
    # each demo trains a model: imported only when asked for
    if args.text:
        from ..demos.text import run_text_demo

        run_text_demo(out=args.out, seed=args.seed, quick=args.quick, progress=True)
    elif args.vit:
        from ..demos.vit import run_vit_demo

        run_vit_demo(out=args.out, seed=args.seed, quick=args.quick, progress=True)
    else:
        from ..demos.image import run_demo

        run_demo(out=args.out, seed=args.seed, quick=args.quick, progress=True)
    return 0


def bench(args: argparse.Namespace) -> int:
    """``gradlens bench``: train the ground-truth tasks, score every method that applies and
    write the leaderboard (an unknown task or method fails before any training)."""
    # trains three models: imported only when asked for
    from ..bench.api import run
    from ..bench.tasks import TASKS

    tasks = list(TASKS) if args.tasks is None else args.tasks
    run(tasks, args.methods, out=args.out, quick=args.quick, seed=args.seed, progress=True)
    return 0


def _note(line: str | None) -> None:
    if line is not None:
        print(line, file=sys.stderr)


def _avg_pool(t: Tensor) -> Tensor:
    return t.mean(tuple(range(2, t.ndim))) if t.ndim > 2 else t


def _max_pool(t: Tensor) -> Tensor:
    return t.amax(tuple(range(2, t.ndim))) if t.ndim > 2 else t


POOLS: dict[str, Callable[[Tensor], Tensor] | None] = {
    "none": None,
    "avg": _avg_pool,
    "max": _max_pool,
}
"""``--pool``: how ``gradlens extract`` reduces each feature map before saving."""


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(
            f"--shard {text!r}: write it as K/N, e.g. 0/4 for the first of four"
        ) from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: K must be in 0..N-1")
    return index, count


def _init_distributed(device: torch.device) -> bool:
    """Join the process group that torchrun describes in the environment, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def _write_labels(out: Path, dataset: Any, start: int, count: int) -> None:
    """``labels.npy`` (the class index of every row) and ``classes.txt`` next to the features."""
    np.save(out / "labels.npy", np.asarray(dataset.targets[start : start + count], dtype=np.int64))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in dataset.classes))
