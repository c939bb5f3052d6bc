"""What identifies a call: stable descriptions of its options and a fingerprint of the model.

An output directory is resumed (or returned as finished) only for the same call. The
manifest records every option that shapes the results as a JSON-safe description that is
equal for equal options in any process (a rerun of the script, another rank) and differs
when the option would compute something else:

* ``None``, numbers, strings: themselves; lists, tuples and mappings: item by item (long
  strings and containers as a digest); tensors and arrays: shape, dtype and a digest of the
  data;
* Python functions and lambdas: their qualified name and a digest of what they compute --
  byte code, constants and names (of nested code too), closure cells, defaults and keyword
  defaults, each described in turn; ``functools.partial``: its function, arguments and
  keywords; bound methods: the function and the object it is bound to; built-in functions:
  their qualified name (and the object a built-in method is bound to);
* ``nn.Module`` objects: class, ``repr``, train/eval flags and the parameter fingerprint;
  other objects: class and attributes (``vars``), or a ``repr`` of their own that shows no
  memory address.

The values of global variables a function reads are not described, only their names.
What has no description -- an object without attributes whose ``repr`` is an address (a
lock, an open file), a built-in without a qualified name -- is recorded as unidentifiable,
and a call with such an option refuses to resume (see :func:`unidentified`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import json
import math
import re
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

UNIDENTIFIABLE = "unidentifiable"
LONG = 32  # containers with more items are recorded as a digest of their descriptions
# (and texts of more than 200 characters as a digest), to keep manifests small

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_BUILTINS = (
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
)


class Unidentifiable(Exception):
    """An option has no stable description; the message says why (internal to the package)."""


def describe_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: description}`` of each option, ``{"unidentifiable": why}`` where there is none.

    Args:
        options: the options of a call, by name.

    Returns:
        A JSON-safe dict with the same keys (see the module docstring for the descriptions).
    """
    described: dict[str, Any] = {}
    for name, value in options.items():
        try:
            described[name] = describe(value)
        except Unidentifiable as exc:
            described[name] = {UNIDENTIFIABLE: str(exc)}
    return described


def unidentified(options: Any, path: str = "") -> list[str]:
    """The options of a :func:`describe_options` result that have no description.

    Args:
        options: described options (nested dicts are searched too).
        path: the name of ``options`` itself, prefixed to the names found.

    Returns:
        ``["name: why", ...]``, empty when every option is identified.
    """
    if not isinstance(options, Mapping):
        return []
    if set(options) == {UNIDENTIFIABLE}:
        return [f"{path}: {options[UNIDENTIFIABLE]}"]
    found: list[str] = []
    for name, value in options.items():
        found += unidentified(value, f"{path}.{name}" if path else str(name))
    return found


def describe(value: Any) -> Any:
    """A JSON-safe description of ``value``, stable across processes (see the module docstring).

    Args:
        value: an option of a call.

    Returns:
        ``None``, a number, a string, or lists and dicts of them.

    Raises:
        Unidentifiable: ``value`` (or something it holds) has no stable description.
    """
    try:
        return _describe(value, ())
    except RecursionError:
        raise Unidentifiable(f"{_kind(value)} is nested too deeply to be described") from None


def fingerprint(model: nn.Module) -> str:
    """A hash of the model's parameter and buffer names, shapes, dtypes and of 64 values
    sampled at fixed positions of each (cheap, exact and the same on every rank and device).
    The ``meta`` placeholders of weights that accelerate keeps offloaded have no values
    here: they count by name, shape and dtype only.

    Args:
        model: any module.

    Returns:
        32 hexadecimal digits.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            flat = tensor.detach().reshape(-1)
            if flat.numel() and not flat.is_meta:  # an offloaded weight's placeholder
                index = torch.linspace(
                    0, flat.numel() - 1, min(flat.numel(), 64), device="cpu"
                ).long()
                sample = flat[index.to(flat.device)].cpu().contiguous()
                digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


# -- the describers, most specific first ------------------------------------------------------


def _describe(value: Any, path: tuple[int, ...]) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return _short(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # NaN != NaN after a JSON trip
    if isinstance(value, np.generic):
        return _describe(value.item(), path)
    if isinstance(value, Tensor):
        return _tensor(value)
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, enum.Enum):
        return f"{_name(type(value))}.{value.name}"
    if isinstance(value, (bytes, bytearray)):
        return f"bytes[{len(value)}]:{_digest(bytes(value))}"
    if isinstance(value, (types.ModuleType)):
        return f"module {value.__name__}"
    if isinstance(value, type):
        return f"class {_name(value)}"
    if isinstance(value, types.CodeType):
        return _code(value, path)
    if id(value) in path:
        return "<cycle>"  # a structure that holds itself, e.g. a recursive closure
    path = (*path, id(value))
    if isinstance(value, Mapping):
        return _long({str(k): _describe(v, path) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return _long([_describe(v, path) for v in value])
    if isinstance(value, (set, frozenset)):
        items = [_describe(v, path) for v in value]
        return _long(sorted(items, key=lambda item: json.dumps(item, sort_keys=True)))
    if isinstance(value, functools.partial):
        return {
            "partial": _describe(value.func, path),
            "args": _describe(value.args, path),
            "keywords": _describe(value.keywords, path),
        }
    if isinstance(value, types.MethodType):
        return {"method": _describe(value.__func__, path), "self": _describe(value.__self__, path)}
    if isinstance(value, types.FunctionType):
        return _function(value, path)
    if isinstance(value, _BUILTINS):
        return _builtin(value, path)
    if isinstance(value, nn.Module):
        return _module(value)
    return _object(value, path)


def _function(function: types.FunctionType, path: tuple[int, ...]) -> str:
    parts = {
        "code": _code(function.__code__, path),
        "closure": [_cell(cell, path) for cell in function.__closure__ or ()],
        "defaults": _describe(function.__defaults__, path),
        "kwdefaults": _describe(function.__kwdefaults__, path),
    }
    return f"function {function.__module__}.{function.__qualname__} {_digest(parts)}"


def _code(code: types.CodeType, path: tuple[int, ...]) -> dict[str, Any]:
    return {
        "bytecode": _digest(code.co_code),
        "consts": [_describe(const, path) for const in code.co_consts],
        "names": list(code.co_names),
    }


def _cell(cell: types.CellType, path: tuple[int, ...]) -> Any:
    try:
        contents = cell.cell_contents
    except ValueError:  # a variable of the enclosing function not assigned yet
        return "<empty cell>"
    return _describe(contents, path)


def _builtin(function: Any, path: tuple[int, ...]) -> Any:
    qualname = getattr(function, "__qualname__", None)
    if not qualname:
        raise Unidentifiable(f"the built-in {function!r} has no qualified name")
    owner = getattr(function, "__self__", None)
    home = getattr(function, "__objclass__", type(owner))  # for methods of C classes
    module = getattr(function, "__module__", None) or getattr(home, "__module__", "?")
    name = f"builtin {module}.{qualname}"
    if owner is None or isinstance(owner, (types.ModuleType, type)):
        return name
    return {"builtin": name, "self": _describe(owner, path)}  # a method of one object


def _module(module: nn.Module) -> dict[str, Any]:
    return {
        "module": _name(type(module)),
        "repr": _digest(repr(module)),
        "training": _digest([m.training for m in module.modules()]),
        "fingerprint": fingerprint(module),
    }


def _object(value: Any, path: tuple[int, ...]) -> Any:
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict):
        described = {"object": _name(type(value)), "state": _describe(state, path)}
        call = type(value).__call__ if callable(value) else None
        if isinstance(call, types.FunctionType):
            described["call"] = _function(call, path)
        return described
    # mypy reads the class attribute type(value).__repr__ as a bound method, so it sees no
    # overlap with the plain function object.__repr__; at run time both are functions
    if type(value).__repr__ is not object.__repr__:  # type: ignore[comparison-overlap]
        text = repr(value)
        if not _ADDRESS.search(text):
            return {"object": _name(type(value)), "repr": _short(text)}
    raise Unidentifiable(
        f"{_kind(value)} has no stable description (no attributes, and its repr shows only "
        "its memory address)"
    )


def _tensor(tensor: Tensor) -> str:
    try:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    except (RuntimeError, TypeError) as exc:  # sparse, meta, quantized ...
        raise Unidentifiable(f"a {tensor.layout} tensor cannot be read ({exc})") from None
    dtype = str(tensor.dtype).removeprefix("torch.")
    return f"tensor{list(tensor.shape)}:{dtype}:{_digest(data)}"


def _array(array: np.ndarray) -> str:
    if array.dtype.hasobject:
        raise Unidentifiable("an array of Python objects cannot be described by its bytes")
    data = np.ascontiguousarray(array).tobytes()
    return f"array{list(array.shape)}:{array.dtype}:{_digest(data)}"


def _long(items: Any) -> Any:
    """``items`` itself, or a digest of them when there are more than :data:`LONG`."""
    if len(items) <= LONG:
        return items
    kind = "mapping" if isinstance(items, dict) else "list"
    return f"{kind}[{len(items)}]:{_digest(items)}"


def _short(text: str) -> str:
    """``text`` itself, or its length and a digest when it is longer than 200 characters."""
    return text if len(text) <= 200 else f"text[{len(text)}]:{_digest(text.encode())}"


def _digest(value: Any) -> str:
    data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _name(cls: type) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}"


def _kind(value: Any) -> str:
    return f"a {_name(type(value))}"
