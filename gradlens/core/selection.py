"""Layer selection: turning names, glob patterns, module types and filters into modules.

A *layer spec* is one of

* an exact dotted name, nested as deep as needed: ``"layer3.1.conv2"``, ``"features.7"``;
* a glob pattern, matched one dotted segment at a time (``*`` never crosses a dot,
  ``**`` spans any number of segments): ``"layer*.*.conv2"``, ``"**.relu"``;
* a module type, selecting every module of that type: ``nn.Conv2d``;
* a module object of the model;
* a filter function ``(name, module) -> bool``;

or a list mixing them. :func:`select_layers` resolves a spec to ``{name: module}`` in the
model's registration order and raises :class:`~gradlens.errors.LayerNotFoundError`, naming
the closest existing layers, for anything that selects nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Union, cast

from torch import nn

from ..errors import LayerNotFoundError

__all__ = ["LayerSpec", "Layers", "select_layers", "close_names", "named_modules"]

LayerSpec = Union[str, type[nn.Module], nn.Module, Callable[[str, nn.Module], bool]]
Layers = Union[LayerSpec, Sequence[LayerSpec]]

_GLOB_CHARS = set("*?[")


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` including the root (``""``); a ``torch.compile``d model is named as
    the original model (``"layer4"``, not ``"_orig_mod.layer4"``)."""
    original = getattr(model, "_orig_mod", None)
    return dict((original if isinstance(original, nn.Module) else model).named_modules())


def select_layers(model: nn.Module, layers: Layers) -> dict[str, nn.Module]:
    """Resolve a layer spec (or a list of them) to the selected modules.

    Args:
        model: the model whose submodules are selected.
        layers: a layer spec or a sequence of them (see the module docstring).

    Returns:
        ``{dotted name: module}`` in the order of ``model.named_modules()``; a module
        selected by several specs appears once.

    Raises:
        LayerNotFoundError: a spec selects nothing (the message lists the closest
            names, or the module types present), or the selection is empty.
        TypeError: a spec is of an unsupported kind.
    """
    named = named_modules(model)
    # only a list or tuple is a list of specs (a str is a Sequence too, but one spec)
    specs: list[LayerSpec] = (
        list(layers) if isinstance(layers, (list, tuple)) else [cast(LayerSpec, layers)]
    )
    if not specs:
        raise LayerNotFoundError(
            "the layer selection is empty; name at least one layer "
            f"(e.g. {_examples(named)}) -- gradlens.layers(model) lists them all"
        )
    chosen: set[str] = set()
    for spec in specs:
        chosen.update(_resolve(spec, named, model))
    return {name: module for name, module in named.items() if name in chosen}


def _resolve(spec: LayerSpec, named: dict[str, nn.Module], model: nn.Module) -> list[str]:
    if isinstance(spec, str):
        if _GLOB_CHARS & set(spec):
            hits = [n for n in named if n and _glob_match(spec, n)]
            if not hits:
                raise LayerNotFoundError(
                    f"the pattern {spec!r} matches no layer of {type(model).__name__}"
                    f"{_suggest(spec, named)}"
                )
            return hits
        if spec in named:
            return [spec]
        raise LayerNotFoundError(
            f"{type(model).__name__} has no layer named {spec!r}{_suggest(spec, named)}"
        )
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        hits = [n for n, m in named.items() if isinstance(m, spec)]
        if not hits:
            types = sorted({type(m).__name__ for m in named.values()})
            raise LayerNotFoundError(
                f"{type(model).__name__} has no module of type {spec.__name__}; "
                f"the types present are: {', '.join(types)}"
            )
        return hits
    if isinstance(spec, nn.Module):
        hits = [n for n, m in named.items() if m is spec]
        if not hits:
            raise LayerNotFoundError(
                f"the {type(spec).__name__} module given is not a submodule of "
                f"{type(model).__name__}"
            )
        return hits
    if callable(spec) and not isinstance(spec, type):  # a class that is not a Module: no filter
        hits = [n for n, m in named.items() if spec(n, m)]
        if not hits:
            raise LayerNotFoundError(
                f"the filter {getattr(spec, '__name__', spec)!r} selected no layer of "
                f"{type(model).__name__}; e.g. {_examples(named)}"
            )
        return hits
    raise TypeError(
        "a layer spec is a name, a glob pattern, a module type, a module or a "
        f"(name, module) -> bool filter; got {type(spec).__name__}"
    )


def _glob_match(pattern: str, name: str) -> bool:
    """Match dotted ``name`` against ``pattern`` segment by segment (``**`` = any segments)."""
    pat, parts = pattern.split("."), name.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(parts)
        if pat[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and fnmatchcase(parts[j], pat[i]) and match(i + 1, j + 1)

    return match(0, 0)


def close_names(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    """The existing names closest to ``name`` (for "did you mean" messages)."""
    candidates = [c for c in candidates if c]
    hits = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not hits:
        # a wrong index in a nested name ("layer9.1") is better served by its siblings
        stem = name.rsplit(".", 1)[0]
        hits = [
            c for c in candidates if c.startswith(stem + ".") and c.count(".") == name.count(".")
        ][:n]
    return hits


def _suggest(name: str, named: dict[str, nn.Module]) -> str:
    hits = close_names(name, list(named))
    if hits:
        return "; did you mean " + ", ".join(repr(h) for h in hits) + "?"
    return f"; it has e.g. {_examples(named)} -- gradlens.layers(model) lists them all"


def _examples(named: dict[str, nn.Module]) -> str:
    top = [n for n in named if n and "." not in n][:6]
    return ", ".join(repr(n) for n in top) or "no submodules at all"
