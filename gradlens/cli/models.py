"""Models from the command line: torchvision names or ``module:callable``, weights from a
file, a torchvision weights enum or none (a seeded random initialisation)."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import io
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .images import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .messages import one_line

MODEL_HELP = (
    "a torchvision model name (resnet18, vit_b_16, ...) or 'module:callable' of your own code "
    "(the module is imported from the current directory or the Python path; the callable "
    "returns an nn.Module, or names an nn.Module object)"
)
WEIGHTS_HELP = (
    "a file saved with torch.save(model.state_dict()), a torchvision weights enum "
    "(ResNet18_Weights.IMAGENET1K_V1, or DEFAULT for the model's default weights; needs "
    "the internet the first time), or 'none' for a random initialisation (seeded; also the "
    "default, for which cam and extract print a note)"
)


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
    chosen = _chosen_weights(weights)
    with torch.random.fork_rng(devices=[]):  # a seeded random init, the caller's RNG untouched
        torch.manual_seed(0)
        if _is_user_model(spec):
            model, enum = _user_model(spec), None
            if chosen is not None and not Path(chosen).exists() and not _looks_like_path(chosen):
                raise ValueError(
                    f"--weights {weights!r}: a model of your own takes a state-dict file"
                )
        else:
            enum = _weights_enum(spec, chosen)
            model = _torchvision_model(spec, enum, num_classes)
    if chosen is not None and enum is None:
        _load_state_dict(model, Path(chosen))
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
    """The torchvision weights enum named by ``weights``, or ``None`` (random or a file).

    ``weights`` is a file or an enum name, or ``None`` for a random initialisation (as
    :func:`_chosen_weights` gives it)."""
    from torchvision import models

    if weights is None or Path(weights).exists():
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
    model: nn.Module = models.get_model(name, weights=enum, **options)
    return model


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
            f"({one_line(exc)}); without internet access, download the file elsewhere and "
            "pass it with --weights PATH (or put it in the torch hub cache)"
        ) from None


def _load_state_dict(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read {path} as a state dict ({one_line(exc)}); save the weights with "
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
            f"the weights in {path} do not fit {type(model).__name__}: {one_line(exc)}"
        ) from None


def parse_device(name: str | None) -> torch.device:
    """The device named by ``--device`` (default: cuda if available, else cpu).

    Raises:
        ValueError: an unknown device name, or cuda without a CUDA device.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return chosen


def random_weights_note(spec: str, weights: str | None, what: str) -> str | None:
    """The line telling that a torchvision model runs with random weights because no
    ``--weights`` was given, or ``None``.

    An explicit ``--weights none`` gets no note, nor does a model of the user's own code
    (``module:callable``), whose callable may load weights itself.

    Args:
        spec: the ``--model`` value.
        weights: the ``--weights`` value (``None`` when not given).
        what: what the command computes (``"maps"``, ``"features"``).

    Returns:
        The line to print on stderr, or ``None``.
    """
    if weights is not None or _is_user_model(spec):
        return None
    from torchvision import models

    try:
        example = f"{models.get_model_weights(spec).__name__}.DEFAULT"
    except (ValueError, KeyError, AttributeError):
        example = "NAME (a torchvision weights enum)"
    return (
        f"gradlens: note: {spec} has random weights (no --weights given), so the {what} come "
        f"from an untrained network; pass --weights FILE (a saved state dict) or --weights "
        f"{example}"
    )


def _chosen_weights(weights: str | None) -> str | None:
    """The ``--weights`` value, or ``None`` for a random initialisation (no value, or
    ``"none"``)."""
    return None if weights is None or weights.lower() == "none" else weights


def _is_user_model(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists()
