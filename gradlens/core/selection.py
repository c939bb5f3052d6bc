"""Layer selection: turning names, glob patterns, module types and filters into modules.

A *layer spec* is one of

* an exact dotted name, nested as deep as needed: ``"layer3.1.conv2"``, ``"features.7"``;
* a glob pattern, matched one dotted segment at a time (``*`` never crosses a dot,
  ``**`` spans any number of segments): ``"layer*.*.conv2"``, ``"**.relu"``;
* a module type, selecting every module of that type: ``nn.Conv2d``;
* a module object of the model;
* a filter function ``(name, module) -> bool``;

or a list mixing them. An exact name may also be one of the hook names of a TransformerLens
model (its ``hook_dict``: the names ``run_with_cache`` takes), such as a
``TransformerBridge``'s aliases ``"blocks.0.hook_resid_pre"`` (another name of
``"blocks.0.hook_in"``) or ``"blocks.0.ln1.hook_normalized"`` (a module that
``named_modules()`` lists under another path): the module is selected under the name given.
:func:`select_layers` resolves a spec to ``{name: module}`` in the
model's registration order and raises :class:`~gradlens.errors.LayerNotFoundError`, naming
the closest existing layers, for anything that selects nothing.

Modules that are not submodules of a model can be made selectable by name for the length
of a ``with`` block with :func:`attached_modules` (a method that computes new nodes inside a
layer's output, as ``gradlens.sae.splice`` does, names them this way): every capture then
finds them as it finds the model's own layers.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Union, cast
from weakref import WeakKeyDictionary

from torch import nn

from ..errors import LayerNotFoundError

__all__ = [
    "LayerSpec",
    "Layers",
    "attached_modules",
    "in_model_order",
    "select_layers",
    "close_names",
    "named_modules",
]

LayerSpec = Union[str, type[nn.Module], nn.Module, Callable[[str, nn.Module], bool]]
Layers = Union[LayerSpec, Sequence[LayerSpec]]

_GLOB_CHARS = set("*?[")


# model -> {name: module} of the modules attached to it by active attached_modules blocks
_ATTACHED: WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = WeakKeyDictionary()


def _unwrapped(model: nn.Module) -> nn.Module:
    original = getattr(model, "_orig_mod", None)
    return original if isinstance(original, nn.Module) else model


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` including the root (``""``); a ``torch.compile``d model is named as
    the original model (``"layer4"``, not ``"_orig_mod.layer4"``). Modules attached with
    :func:`attached_modules` follow the subtree of their parent name (``"h.0.mlp.sites"``
    right after ``"h.0.mlp"`` and its submodules), or come last when no parent exists."""
    base = _unwrapped(model)
    named = dict(base.named_modules())
    attached = _ATTACHED.get(base)
    if not attached:
        return named
    order = list(named)
    for name in attached:
        order.insert(_insertion_point(order, name), name)
    modules = {**named, **attached}
    return {name: modules[name] for name in order}


def _insertion_point(order: list[str], name: str) -> int:
    """The index after the subtree of ``name``'s closest existing ancestor in ``order``."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:cut])
        if parent in order:
            start = order.index(parent)
            end = start + 1
            while end < len(order) and order[end].startswith(parent + "."):
                end += 1
            return end
    return len(order)


@contextmanager
def attached_modules(model: nn.Module, modules: Mapping[str, nn.Module]) -> Iterator[None]:
    """Make modules that are not submodules of ``model`` selectable by name in the block.

    The model is not changed (no attribute is set, ``model.named_modules()`` is as before):
    the names are kept beside it, in a registry that :func:`named_modules` -- and so
    :func:`select_layers`, the :class:`~gradlens.core.recorder.Recorder`, ``extract``,
    ``replace_outputs`` and every method built on them -- reads. A forward hook on an
    attached module fires when something calls the module during the model's forward
    (e.g. an edit of one of the model's layers). Only the given names are attached, not
    the attached modules' own submodules.

    Example::

        probe = nn.Identity()
        with attached_modules(model, {"layer4.probe": probe}):
            with replace_outputs(model, {"layer4": lambda n, m, out: probe(out)}):
                features = extract(model, x, "layer4.probe")["layer4.probe"]

    Args:
        model: the model.
        modules: ``{dotted name: module}``; the names must be new to the model.

    Yields:
        Nothing; on exit (also when the block raises) the names are removed.

    Raises:
        ValueError: a name is empty, is already the name of one of the model's modules, or
            is attached already by an active block.
        TypeError: a value is not an ``nn.Module``.
    """
    base = _unwrapped(model)
    own = dict(base.named_modules())
    attached = _ATTACHED.get(base, {})
    new = dict(modules)
    for name, module in new.items():
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"an attached module must be an nn.Module; {name!r} is {type(module).__name__}"
            )
        if not name:
            raise ValueError("cannot attach a module under the empty name (the model's own)")
        if name in own:
            raise ValueError(
                f"cannot attach {name!r}: it already names a module of {type(model).__name__}"
            )
        if name in attached:
            raise ValueError(f"cannot attach {name!r}: a module is attached under it already")
    attached = _ATTACHED.setdefault(base, {})
    attached.update(new)
    try:
        yield
    finally:
        for name in new:
            attached.pop(name, None)
        if not attached:
            _ATTACHED.pop(base, None)


def select_layers(model: nn.Module, layers: Layers) -> dict[str, nn.Module]:
    """Resolve a layer spec (or a list of them) to the selected modules.

    Args:
        model: the model whose submodules are selected.
        layers: a layer spec or a sequence of them (see the module docstring).

    Returns:
        ``{dotted name: module}`` in the order of ``model.named_modules()``; a module
        selected by several specs appears once (under a hook name given, as well as under
        its own name if that is selected too).

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
    chosen: dict[str, nn.Module] = {}
    for spec in specs:
        hook = _hook_name(spec, named, model)
        if hook is not None:
            chosen[cast(str, spec)] = hook
        else:
            chosen.update((name, named[name]) for name in _resolve(spec, named, model))
    return _ordered(named, chosen)


def in_model_order(model: nn.Module, modules: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """``modules`` (``{name: module}`` as :func:`select_layers` gives them, hook names
    included) in the order of the model's modules, a hook name right after the module's
    own name."""
    return _ordered(named_modules(model), modules)


def _ordered(named: dict[str, nn.Module], chosen: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    others: dict[int, list[str]] = {}
    for name, module in chosen.items():
        if name not in named:
            others.setdefault(id(module), []).append(name)
    ordered: dict[str, nn.Module] = {}
    for name, module in named.items():
        if name in chosen:
            ordered[name] = module
        for other in others.pop(id(module), []):
            ordered[other] = module
    return ordered


def _hook_name(spec: LayerSpec, named: dict[str, nn.Module], model: nn.Module) -> nn.Module | None:
    """The module a TransformerLens hook name (a key of the model's ``hook_dict``) stands for,
    when ``spec`` is such a name and no module path; ``None`` otherwise."""
    if not isinstance(spec, str) or spec in named or _GLOB_CHARS & set(spec):
        return None
    hook_dict = getattr(_unwrapped(model), "hook_dict", None)
    module = hook_dict.get(spec) if isinstance(hook_dict, Mapping) else None
    if isinstance(module, nn.Module) and any(m is module for m in named.values()):
        return module
    return None


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
