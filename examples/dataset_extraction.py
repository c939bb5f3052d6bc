"""Dataset-scale extraction: stream features and maps to disk, resume, shard, and ``torchrun``.

Runs on the synthetic shapes (``gradlens.demos.shapes``) with a random-init tiny CNN
(``gradlens.demos.training``): extracts pooled features of two layers for every image,
Grad-CAM maps for every image, interrupts a run and resumes it, splits the work into shards
and merges them, and runs the same extraction with ``torchrun --nproc_per_node=2`` (CPU,
``gloo``), checking that every route writes the same arrays. Writes ``dataset_extraction.txt``.

Run: ``python examples/dataset_extraction.py [--quick] [--out DIR]``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch
from _common import parse_args
from torch.utils.data import DataLoader, Dataset

import gradlens.cam  # noqa: F401  (registers the CAM methods by name)
from gradlens.dataset import attribute_dataset, extract_dataset, load_features, merge_shards
from gradlens.demos.shapes import ShapesDataset, make_shapes
from gradlens.demos.training import TinyCNN


def build(n: int) -> tuple[TinyCNN, ShapesDataset]:
    torch.manual_seed(0)
    return TinyCNN().eval(), ShapesDataset(make_shapes(n, seed=0))


def features_and_maps(
    model: TinyCNN, dataset: ShapesDataset, out: Path
) -> dict[str, tuple[int, ...]]:
    # --8<-- [start:extract]
    loader = DataLoader(dataset, batch_size=64)  # in order: row i is dataset[i]
    extract_dataset(
        model,
        loader,
        ["features.2", "features.3"],
        out / "features",
        reduce=lambda t: t.mean((2, 3)),
        progress=False,
    )
    arrays, manifest = load_features(out / "features")  # memory-mapped .npy files
    features = arrays["features.3"]  # (N, 64)

    attribute_dataset(
        "gradcam", model, loader, out / "cams", target="label", layer="features.3", progress=False
    )
    maps, _ = load_features(out / "cams")  # maps["gradcam"]: (N, 64, 64)
    # --8<-- [end:extract]
    return {
        "features.3": features.shape,
        "gradcam": maps["gradcam"].shape,
        "rows done": manifest.completed,
    }


class Interrupted(Dataset):
    """The dataset, raising KeyboardInterrupt once when ``stop_at`` is read (a killed job)."""

    def __init__(self, dataset: Dataset, stop_at: int) -> None:
        self.dataset, self.stop_at = dataset, stop_at

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index == self.stop_at:
            self.stop_at = -1
            raise KeyboardInterrupt
        return self.dataset[index]


def resume(model: TinyCNN, dataset: ShapesDataset, out: Path) -> bool:
    # --8<-- [start:resume]
    flaky = DataLoader(Interrupted(dataset, stop_at=len(dataset) // 2), batch_size=16)
    try:
        extract_dataset(
            model,
            flaky,
            ["features.3"],
            out / "resumed",
            reduce=lambda t: t.mean((2, 3)),
            flush_every=1,
            progress=False,
        )
    except KeyboardInterrupt:
        pass  # half the rows are on disk
    extract_dataset(
        model,
        flaky,
        ["features.3"],
        out / "resumed",
        reduce=lambda t: t.mean((2, 3)),
        flush_every=1,
        progress=False,
    )  # the same call: continues where it stopped
    # --8<-- [end:resume]
    resumed, _ = load_features(out / "resumed")
    reference = extract_reference(model, dataset, out)
    return bool(np.allclose(resumed["features.3"], reference, atol=1e-6))


def extract_reference(model: TinyCNN, dataset: ShapesDataset, out: Path) -> np.ndarray:
    extract_dataset(
        model,
        DataLoader(dataset, batch_size=16),
        ["features.3"],
        out / "reference",
        reduce=lambda t: t.mean((2, 3)),
        progress=False,
    )
    return np.asarray(load_features(out / "reference")[0]["features.3"])


def shards(model: TinyCNN, dataset: ShapesDataset, out: Path) -> bool:
    loader = DataLoader(dataset, batch_size=16)
    # --8<-- [start:shards]
    for k in range(3):  # on three machines, one part each
        extract_dataset(
            model,
            loader,
            ["features.3"],
            out / f"part{k}",
            shard=(k, 3),
            reduce=lambda t: t.mean((2, 3)),
            progress=False,
        )
    merge_shards([out / f"part{k}" for k in range(3)], out / "merged")  # afterwards, on one machine
    # --8<-- [end:shards]
    merged, _ = load_features(out / "merged")
    return bool(
        np.allclose(merged["features.3"], extract_reference(model, dataset, out), atol=1e-6)
    )


# The script torchrun starts twice: everything after init_process_group is the ordinary call.
WORKER = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from gradlens.demos.shapes import ShapesDataset, make_shapes
    from gradlens.dataset import extract_dataset
    from gradlens.demos.training import TinyCNN

    # --8<-- [start:torchrun]
    dist.init_process_group("gloo")                       # "nccl" for one GPU per process
    torch.manual_seed(0)
    model = TinyCNN().eval()
    loader = DataLoader(ShapesDataset(make_shapes(int(sys.argv[2]), seed=0)), batch_size=16)
    extract_dataset(model, loader, ["features.3"], sys.argv[1], reduce=lambda t: t.mean((2, 3)),
                    progress=False)                       # each rank writes its own rows
    dist.destroy_process_group()
    # --8<-- [end:torchrun]
""")


def torchrun(model: TinyCNN, dataset: ShapesDataset, out: Path) -> bool:
    script = out / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(out / "distributed"),
        str(len(dataset)),
    ]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=300)
    distributed, _ = load_features(out / "distributed")
    return bool(
        np.allclose(distributed["features.3"], extract_reference(model, dataset, out), atol=1e-6)
    )


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    model, dataset = build(100 if args.quick else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines = [f"{len(dataset)} images: {features_and_maps(model, dataset, work)}"]
        lines.append(f"interrupted and resumed == uninterrupted: {resume(model, dataset, work)}")
        lines.append(f"3 shards merged == one run: {shards(model, dataset, work)}")
        lines.append(
            f"torchrun --nproc_per_node=2 == one process: {torchrun(model, dataset, work)}"
        )
    report = args.out / "dataset_extraction.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [report]


if __name__ == "__main__":
    main()
