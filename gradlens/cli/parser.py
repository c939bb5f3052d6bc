"""The ``gradlens`` argument parser: five subcommands, each with ``--help`` and examples."""

from __future__ import annotations

import argparse

from ..version import __version__
from . import commands
from .models import MODEL_HELP, WEIGHTS_HELP

LAYERS_EXAMPLES = """examples:
  gradlens layers resnet18
  gradlens layers vit_b_16
  gradlens layers mypackage.models:build_net --input-size 1 28 28

The marked row is the layer that CAM methods use when no layer is given.
"""

CAM_EXAMPLES = """examples:
  gradlens cam cat.jpg dog.jpg --model resnet50 --weights ResNet50_Weights.DEFAULT --out maps
  gradlens cam img/*.png --model resnet18 --weights finetuned.pt --num-classes 10 \\
      --layer layer4 --method gradcampp --target 3 --out maps
  gradlens cam scan.png --model mynet:build --weights mynet.pt --method saliency --out maps

For each IMAGE it writes DIR/<name>_<method>.png (the map over the image) and
DIR/<name>_<method>.npy (the raw map: (H, W) for CAM methods, input-shaped for attributions).
"""

EXTRACT_EXAMPLES = """examples:
  gradlens extract --model resnet50 --weights ResNet50_Weights.DEFAULT \\
      --data imagenet/val --layers layer3 layer4 --pool avg --out features
  torchrun --standalone --nproc_per_node=4 --no-python gradlens extract --model resnet18 \\
      --data images --layers layer4 --out features     # 4 processes, one set of files

--data is a folder of image files, or one with one sub-folder of images per class.
DIR receives <layer>.npy of shape (N, ...) and manifest.json; for a folder of image files
the manifest lists the file names (sorted, one per row), for class sub-folders DIR also
receives labels.npy (each row's class index) and classes.txt. Rerunning the same command
resumes an interrupted run, and does nothing after a complete one.
Load the result with: arrays, manifest = gradlens.load_features(DIR)
"""

DEMO_EXAMPLES = """examples:
  gradlens demo
  gradlens demo --quick --out /tmp/demo
  gradlens demo --vit --out /tmp/vit-demo
  gradlens demo --text

Trains a tiny CNN on synthetic shapes (nothing is downloaded), runs every registered
method on held-out images and scores the maps against the known object masks. With --vit
it trains a tiny vision transformer instead (about two minutes on two CPU cores) and scores
attention rollout, gradient-weighted attention rollout and Grad-CAM. With --text it trains
a tiny transformer on a synthetic text task, runs every per-token attribution method on
held-out sequences and scores the tokens against the known triggers.
"""


BENCH_EXAMPLES = """examples:
  gradlens bench --quick
  gradlens bench --tasks shapes-cnn,text --methods gradcam,saliency,integrated_gradients
  gradlens bench --out docs/bench --seed 1

Trains a tiny CNN and a tiny ViT on synthetic shapes and a tiny transformer on a synthetic
text task (nothing is downloaded), runs every registered method that applies (or
--methods) on held-out samples and scores each with localisation against the known ground
truth, faithfulness, randomisation, robustness and complexity metrics. DIR receives
leaderboard.csv, leaderboard.md (one ranked table per task) and leaderboard.png (a heat
map). The same --seed gives the same tables but for the seconds_per_sample column.
"""


def _names(text: str) -> list[str]:
    """A comma-separated list of names (blanks around the commas ignored)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``gradlens`` argument parser with its five subcommands."""
    parser = argparse.ArgumentParser(
        prog="gradlens",
        description="Gradient-aware interpretability for PyTorch models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'gradlens COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"gradlens {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
        return subparsers.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    layers = command("layers", "list a model's layers with their output shapes", LAYERS_EXAMPLES)
    layers.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    layers.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        default=[3, 224, 224],
        metavar="N",
        help="the shape of one input sample (default: 3 224 224)",
    )
    layers.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    layers.add_argument(
        "--num-classes", type=int, default=None, help="outputs of a torchvision classifier"
    )
    layers.set_defaults(run=commands.layers)

    cam = command(
        "cam", "compute maps for images and save overlays (PNG) and raw maps (.npy)", CAM_EXAMPLES
    )
    cam.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    _model_arguments(cam)
    cam.add_argument(
        "--layer", default=None, help="the layer to explain (default: the method's choice)"
    )
    cam.add_argument(
        "--method", default="gradcam", help="a method of gradlens.METHODS (default: gradcam)"
    )
    cam.add_argument(
        "--target", type=int, default=None, help="the class to explain (default: the top class)"
    )
    cam.add_argument("--out", required=True, metavar="DIR", help="output directory")
    cam.add_argument(
        "--alpha", type=float, default=0.5, help="opacity of the map in the overlay (default: 0.5)"
    )
    cam.add_argument(
        "--batch-size", type=int, default=16, help="images per forward pass (default: 16)"
    )
    cam.set_defaults(run=commands.cam)

    extract = command(
        "extract", "write a dataset's features of chosen layers to .npy files", EXTRACT_EXAMPLES
    )
    _model_arguments(extract)
    extract.add_argument(
        "--data",
        required=True,
        metavar="FOLDER",
        help="a folder of image files, or of one sub-folder of images per class",
    )
    extract.add_argument(
        "--layers", required=True, nargs="+", metavar="LAYER", help="layer names or patterns"
    )
    extract.add_argument("--out", required=True, metavar="DIR", help="output directory")
    extract.add_argument("--batch-size", type=int, default=32, help="default: 32")
    extract.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (default: 0)"
    )
    extract.add_argument(
        "--pool",
        choices=sorted(commands.POOLS),
        default="none",
        help="average or max over the spatial dimensions before saving (default: none)",
    )
    extract.add_argument(
        "--dtype",
        choices=["float16", "float32", "float64"],
        default="float32",
        help="storage dtype (default: float32)",
    )
    extract.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="process only part K of N of the dataset (machines without a shared "
        "filesystem; join the parts with gradlens.merge_shards)",
    )
    extract.add_argument(
        "--overwrite", action="store_true", help="replace a different extraction in DIR"
    )
    extract.set_defaults(run=commands.extract)

    demo = command(
        "demo",
        "train a tiny CNN, ViT or text transformer on synthetic data and score the methods",
        DEMO_EXAMPLES,
    )
    demo.add_argument(
        "--out",
        default="gradlens-demo",
        metavar="DIR",
        help="output directory (default: gradlens-demo)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    kind = demo.add_mutually_exclusive_group()
    kind.add_argument(
        "--vit",
        action="store_true",
        help="the attention methods and Grad-CAM on a tiny vision transformer instead",
    )
    kind.add_argument(
        "--text",
        action="store_true",
        help="the per-token attributions of a tiny text transformer instead",
    )
    demo.set_defaults(run=commands.demo)

    bench = command(
        "bench",
        "score every method on ground-truth tasks and write a leaderboard",
        BENCH_EXAMPLES,
    )
    bench.add_argument(
        "--tasks",
        type=_names,
        default=None,
        metavar="A,B",
        help="comma-separated tasks: shapes-cnn, shapes-vit, text (default: all three)",
    )
    bench.add_argument(
        "--methods",
        type=_names,
        default=None,
        metavar="A,B",
        help="comma-separated registered methods (default: every method that applies)",
    )
    bench.add_argument(
        "--out",
        default="gradlens-bench",
        metavar="DIR",
        help="output directory (default: gradlens-bench)",
    )
    bench.add_argument(
        "--quick", action="store_true", help="a smoke run: small training, few samples"
    )
    bench.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    bench.set_defaults(run=commands.bench)
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="outputs of a torchvision classifier (e.g. for fine-tuned weights)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side in pixels (default: the weights' size, else 224)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)"
    )
