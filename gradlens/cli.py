"""The ``gradlens`` command line: ``layers``, ``cam``, ``extract`` and ``demo``.

Every subcommand has ``--help`` with examples. Errors the user can fix (a bad path, an
unknown model, layer or method, weights that cannot be downloaded) print one line
``gradlens: error: ...`` on stderr and exit with status 2; set ``GRADLENS_DEBUG=1`` to see
the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import inspect
import io
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["main", "build_parser", "load_model", "Preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}

MODEL_HELP = (
    "a torchvision model name (resnet18, vit_b_16, ...) or 'module:callable' of your own code "
    "(the module is imported from the current directory or the Python path; the callable "
    "returns an nn.Module, or names an nn.Module object)"
)
WEIGHTS_HELP = (
    "a file saved with torch.save(model.state_dict()), a torchvision weights enum "
    "(ResNet18_Weights.IMAGENET1K_V1, or DEFAULT for the model's default weights; needs "
    "the internet the first time), or 'none' for a random initialisation (seeded; the default)"
)


# -- models and images ----------------------------------------------------------------------


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
        return TF.center_crop(tensor, [self.crop, self.crop]).float() / 255

    def normalize(self, image: Tensor) -> Tensor:
        """Normalise a ``(..., 3, H, W)`` image in [0, 1] with ``mean`` and ``std``."""
        mean = torch.tensor(self.mean, dtype=image.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype).view(-1, 1, 1)
        return (image - mean) / std

    def __call__(self, picture: Any) -> Tensor:
        """The model input for a PIL image (usable as a torchvision dataset transform)."""
        return self.normalize(self.image(picture))


def load_model(
    spec: str,
    weights: str | None = None,
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, Preprocess]:
    """Build a model from a command-line spec, in eval mode, with its preprocessing.

    Args:
        spec: a torchvision model name, or ``"module:callable"`` (see ``MODEL_HELP``).
        weights: a state-dict file, a torchvision weights enum name, or ``None``/``"none"``
            for a random initialisation (seeded with 0, so that it is the same every run).
        num_classes: the number of outputs of a torchvision classifier (for weights
            fine-tuned on another number of classes, or a small random model).
        image_size: the input side; default: the weights' crop size, else 224.

    Returns:
        ``(model, preprocess)``: the preprocessing of the torchvision weights enum, else
        ImageNet mean/std at ``image_size``.

    Raises:
        ValueError: an unknown model or weights name, weights that do not fit the model.
        FileNotFoundError: a weights path that does not exist.
        ConnectionError: torchvision weights that cannot be downloaded.
    """
    random_init = weights is None or weights.lower() == "none"
    with torch.random.fork_rng(devices=[]):  # a seeded random init, the caller's RNG untouched
        torch.manual_seed(0)
        if ":" in spec and not Path(spec).exists():
            model, enum = _user_model(spec), None
            if not random_init and not Path(weights).exists() and not _looks_like_path(weights):
                raise ValueError(
                    f"--weights {weights!r}: a model of your own takes a state-dict file"
                )
        else:
            enum = _weights_enum(spec, weights)
            model = _torchvision_model(spec, enum, num_classes)
    if not random_init and enum is None:
        _load_state_dict(model, Path(weights))
    preprocess = (
        _preprocess_of(enum, image_size)
        if enum is not None
        else Preprocess.for_size(image_size or 224)
    )
    return model.eval(), preprocess


def _preprocess_of(enum: Any, image_size: int | None) -> Preprocess:
    """The evaluation transform of torchvision weights, optionally at another input size."""
    preset = enum.transforms()
    crop = int(_first(getattr(preset, "crop_size", None), 224))
    resize = int(_first(getattr(preset, "resize_size", None), round(crop * 256 / 224)))
    size = image_size or crop
    interpolation = getattr(preset, "interpolation", None)
    return Preprocess(
        round(size * resize / crop),
        size,
        tuple(getattr(preset, "mean", IMAGENET_MEAN)),
        tuple(getattr(preset, "std", IMAGENET_STD)),
        getattr(interpolation, "value", "bilinear"),
    )


def _first(value: Any, default: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def _looks_like_path(text: str | None) -> bool:
    return text is not None and (
        os.sep in text or "/" in text or Path(text).suffix in {".pt", ".pth", ".bin", ".ckpt"}
    )


def _user_model(spec: str) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's code is found from here
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for --model {spec}: {exc}") from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ValueError(
            f"{module_name!r} has no attribute {attribute!r} (--model {spec})"
        ) from None
    model = target if isinstance(target, nn.Module) else target()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"--model {spec}: {attribute}() returned a {type(model).__name__}, not an nn.Module"
        )
    return model


def _weights_enum(model_name: str, weights: str | None) -> Any:
    """The torchvision weights enum named by ``weights``, or ``None`` (random or a file)."""
    from torchvision import models

    if weights is None or weights.lower() == "none" or Path(weights).exists():
        return None
    if _looks_like_path(weights):
        raise FileNotFoundError(f"no such weights file: {weights}")
    try:
        if "." in weights:
            return models.get_weight(weights)
        return models.get_model_weights(model_name)[weights]
    except (ValueError, KeyError, AttributeError):
        try:
            choices = ", ".join(
                ["DEFAULT"] + [w.name for w in models.get_model_weights(model_name)]
            )
        except ValueError:
            choices = "none"
        raise ValueError(
            f"--weights {weights!r} is neither a file nor a torchvision weights enum; for "
            f"{model_name} use a file, 'none', or one of: {choices}"
        ) from None


def _torchvision_model(name: str, enum: Any, num_classes: int | None) -> nn.Module:
    from torchvision import models

    try:
        builder = models.get_model_builder(name)
    except ValueError:
        hints = difflib.get_close_matches(name, models.list_models(), n=3)
        raise ValueError(
            f"unknown model {name!r}: not a torchvision model name"
            + (f" (did you mean {', '.join(map(repr, hints))}?)" if hints else "")
            + " and not 'module:callable'"
        ) from None
    options: dict[str, Any] = {}
    parameters = inspect.signature(builder).parameters
    if "weights_backbone" in parameters:
        options["weights_backbone"] = None  # never download a backbone for a random model
    if num_classes is not None:
        options["num_classes"] = num_classes
    if enum is not None:
        _download(enum)
    return models.get_model(name, weights=enum, **options)


def _download(enum: Any) -> None:
    """Fetch torchvision weights into the torch hub cache, or fail with one clear line."""
    captured = io.StringIO()
    try:
        # torch.hub prints "Downloading: ..." even when it cannot
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            torch.hub.load_state_dict_from_url(enum.url, progress=False, check_hash=True)
    except Exception as exc:
        raise ConnectionError(
            f"could not download the weights {type(enum).__name__}.{enum.name} from {enum.url} "
            f"({_one_line(exc)}); without internet access, download the file elsewhere and "
            "pass it with --weights PATH (or put it in the torch hub cache)"
        ) from None


def _load_state_dict(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read {path} as a state dict ({_one_line(exc)}); save the weights with "
            "torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"the weights in {path} do not fit {type(model).__name__}: {_one_line(exc)}"
        ) from None


def _load_image(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.load()
            return picture.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {_one_line(exc)}") from None


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return device


# -- subcommands ------------------------------------------------------------------------------


def _cmd_layers(args: argparse.Namespace) -> int:
    from .summary import layers

    model, _ = load_model(args.model, args.weights, num_classes=args.num_classes)
    example = torch.randn(1, *args.input_size, generator=torch.Generator().manual_seed(0))
    try:
        table = layers(model, example)
    except RuntimeError as exc:
        raise ValueError(
            f"{args.model} does not run on an input of shape {tuple(example.shape)} "
            f"({_one_line(exc)}); pass --input-size C H W"
        ) from None
    print(table)
    return 0


def _cmd_cam(args: argparse.Namespace) -> int:
    from .registry import METHODS
    from .selection import select_layers

    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image: {', '.join(missing)}")
    method = _method(args.method, METHODS)
    try:
        from .viz import overlay
    except ImportError as exc:
        raise ValueError(f"overlays need gradlens.viz, which cannot be imported: {exc}") from None
    device = _device(args.device)
    model, preprocess = load_model(
        args.model, args.weights, num_classes=args.num_classes, image_size=args.image_size
    )
    model.to(device)
    options: dict[str, Any] = {}
    if args.layer is not None:
        if not _accepts(method, "layer"):
            raise ValueError(f"the method {args.method!r} takes no --layer")
        select_layers(model, args.layer)  # an unknown layer fails here, with suggestions
        options["layer"] = args.layer
    images = [preprocess.image(_load_image(p)) for p in paths]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(paths)
    for start in range(0, len(images), args.batch_size):
        chunk = torch.stack(images[start : start + args.batch_size])
        maps = method(model, preprocess.normalize(chunk).to(device), target=args.target, **options)
        for i, image in enumerate(chunk):
            raw = maps[i].detach().float().cpu()
            base = f"{stems[start + i]}_{args.method}"
            _save_npy(out / f"{base}.npy", raw)
            picture = overlay(image, _heatmap(raw, image.shape[-2:]), alpha=args.alpha)
            _save_png(out / f"{base}.png", picture)
            print(f"{paths[start + i]} -> {out / base}.png, {out / base}.npy")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from torchvision.datasets import ImageFolder

    from .dataset import extract_dataset

    data = Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(f"no such data folder: {data}")
    shard = _parse_shard(args.shard)
    device = _device(args.device)
    started = _init_distributed(device)
    try:
        if started and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        model, preprocess = load_model(
            args.model, args.weights, num_classes=args.num_classes, image_size=args.image_size
        )
        model.to(device)
        try:
            dataset = ImageFolder(str(data), transform=preprocess)
        except (FileNotFoundError, RuntimeError) as exc:
            raise FileNotFoundError(
                f"{data} is not an image folder (one sub-folder per class): {_one_line(exc)}"
            ) from None
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
            reduce=_POOLS[args.pool],
            dtype=args.dtype,
            shard=shard,
            overwrite=args.overwrite,
            progress=True,
        )
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0:
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


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        demo = importlib.import_module("gradlens.demo")
    except ImportError as exc:
        raise ValueError(f"the demo is not available in this installation ({exc})") from None
    demo.run_demo(out=args.out, seed=args.seed, quick=args.quick, progress=True)
    return 0


# -- helpers of the subcommands ---------------------------------------------------------------


def _method(name: str, methods: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
    if name in methods:
        return methods[name]
    hints = difflib.get_close_matches(name, list(methods), n=3)
    raise ValueError(
        f"unknown method {name!r}"
        + (f" (did you mean {', '.join(map(repr, hints))}?)" if hints else "")
        + f"; available: {', '.join(sorted(methods)) or 'none registered'}"
    )


def _accepts(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems, with ``_1``, ``_2`` ... added where two images share one."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return stems


def _heatmap(raw: Tensor, size: Sequence[int]) -> Tensor:
    """A ``(H, W)`` map in [0, 1] at the image size, from a CAM map or an input-shaped attribution."""
    heat = raw.abs().amax(0) if raw.ndim == 3 else raw
    if heat.ndim != 2:
        raise ValueError(f"cannot draw a map of shape {tuple(raw.shape)} over an image")
    if tuple(heat.shape) != tuple(size):
        heat = torch.nn.functional.interpolate(
            heat[None, None], size=tuple(size), mode="bilinear", align_corners=False
        )[0, 0]
    low, high = heat.min(), heat.max()
    return (heat - low) / (high - low) if high > low else torch.zeros_like(heat)


def _save_npy(path: Path, tensor: Tensor) -> None:
    import numpy as np

    np.save(path, tensor.numpy())


def _save_png(path: Path, picture: Any) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(picture, dtype=np.uint8)).save(path)


def _avg_pool(t: Tensor) -> Tensor:
    return t.mean(tuple(range(2, t.ndim))) if t.ndim > 2 else t


def _max_pool(t: Tensor) -> Tensor:
    return t.amax(tuple(range(2, t.ndim))) if t.ndim > 2 else t


_POOLS: dict[str, Callable[[Tensor], Tensor] | None] = {
    "none": None,
    "avg": _avg_pool,
    "max": _max_pool,
}


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
    import numpy as np

    np.save(out / "labels.npy", np.asarray(dataset.targets[start : start + count], dtype=np.int64))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in dataset.classes))


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


# -- the parser -------------------------------------------------------------------------------


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

--data is an ImageFolder (one sub-folder per class). DIR receives <layer>.npy of shape
(N, ...), manifest.json, labels.npy (each row's class index) and classes.txt. Rerunning
the same command resumes an interrupted run, and does nothing after a complete one.
Load the result with: arrays, manifest = gradlens.load_features(DIR)
"""

DEMO_EXAMPLES = """examples:
  gradlens demo
  gradlens demo --quick --out /tmp/demo

Trains a tiny CNN on synthetic shapes (nothing is downloaded), runs every registered
method on held-out images and scores the maps against the known object masks.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``gradlens`` argument parser with its four subcommands."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gradlens",
        description="Gradient-aware interpretability for PyTorch models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'gradlens COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"gradlens {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
        return commands.add_parser(
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
    layers.set_defaults(run=_cmd_layers)

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
    cam.set_defaults(run=_cmd_cam)

    extract = command(
        "extract", "write a dataset's features of chosen layers to .npy files", EXTRACT_EXAMPLES
    )
    _model_arguments(extract)
    extract.add_argument(
        "--data", required=True, metavar="FOLDER", help="an ImageFolder: one sub-folder per class"
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
        choices=sorted(_POOLS),
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
    extract.set_defaults(run=_cmd_extract)

    demo = command(
        "demo", "train a tiny CNN on synthetic shapes and score every method", DEMO_EXAMPLES
    )
    demo.add_argument(
        "--out",
        default="gradlens-demo",
        metavar="DIR",
        help="output directory (default: gradlens-demo)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    demo.set_defaults(run=_cmd_demo)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gradlens`` command line; returns the exit status (0, or 2 on errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("gradlens: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("GRADLENS_DEBUG"):
            raise
        print(f"gradlens: error: {_describe_error(exc)}", file=sys.stderr)
        return 2


def _describe_error(exc: Exception) -> str:
    from .errors import GradlensError

    expected = (GradlensError, ValueError, OSError, KeyError)
    text = _one_line(exc)
    return text if isinstance(exc, expected) else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
