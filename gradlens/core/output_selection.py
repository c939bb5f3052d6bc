"""Which tensor of a structured model output holds the scores: :func:`select_output`.

A model may return a tensor, a tuple or list, a mapping or a dataclass (a Hugging Face
``ModelOutput`` is both). An *output spec* -- ``None``, an index, a key or a function --
says which of its tensors is meant; the Recorder's ``select=``, ``replace_outputs`` and the
methods' ``output=`` all read it here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from torch import Tensor

from ..errors import OutputSelectionError

__all__ = ["OutputSpec", "describe_structure", "select_output"]

OutputSpec = Union[None, int, str, Callable[[Any], Tensor]]


def select_output(output: Any, output_spec: OutputSpec = None) -> Tensor:
    """Pick the logits tensor out of a model output.

    Args:
        output: whatever the model returned: a tensor, tuple/list, dict or dataclass.
        output_spec: ``None`` (the output must be a tensor, or a mapping or dataclass with a
            ``logits`` tensor, such as every Hugging Face ``ModelOutput`` of a model with a
            head), an index (tuple/list), a key (dict, or attribute name of a dataclass /
            HF-style output) or a function ``output -> tensor``.

    Returns:
        The selected tensor.

    Raises:
        OutputSelectionError: the output is structured, has no ``logits`` entry and no
            ``output_spec`` was given, or the spec does not exist in it, or it does not lead
            to a tensor.
    """
    if output_spec is None:
        if isinstance(output, Tensor):
            return output
        logits = _logits_entry(output)
        if logits is not None:
            return logits
        raise OutputSelectionError(
            f"the model returned a {type(output).__name__}, not a tensor; pass output= "
            f"(an index, a key or a function) to say which part holds the scores"
            f"{describe_structure(output)}, or pass a callable target"
        )
    if callable(output_spec):
        selected = output_spec(output)
    else:
        try:
            if isinstance(output, Mapping):
                selected = output[output_spec]
            elif isinstance(output, Sequence) and isinstance(output_spec, int):
                selected = output[output_spec]
            elif dataclasses.is_dataclass(output) and isinstance(output_spec, str):
                selected = getattr(output, output_spec)
            else:
                raise TypeError(f"cannot index a {type(output).__name__}")
        except (KeyError, IndexError, AttributeError, TypeError) as exc:
            raise OutputSelectionError(
                f"output={output_spec!r} does not exist in the model output"
                f"{describe_structure(output)}"
            ) from exc
    if not isinstance(selected, Tensor):
        raise OutputSelectionError(
            f"output={output_spec!r} selected a {type(selected).__name__}, not a tensor"
        )
    return selected


def _logits_entry(output: Any) -> Tensor | None:
    """The ``logits`` tensor of a mapping or dataclass output (a Hugging Face
    ``ModelOutput`` is both), or ``None``."""
    if isinstance(output, Mapping):
        value = output.get("logits")
    elif dataclasses.is_dataclass(output):
        value = getattr(output, "logits", None)
    else:
        return None
    return value if isinstance(value, Tensor) else None


def describe_structure(output: Any) -> str:
    if isinstance(output, Mapping):
        return f" (keys: {', '.join(map(repr, output.keys()))})"
    if dataclasses.is_dataclass(output):
        names = [f.name for f in dataclasses.fields(output)]
        return f" (fields: {', '.join(names)})"
    if isinstance(output, (tuple, list)):
        kinds = [type(o).__name__ for o in output]
        return f" (items 0..{len(output) - 1}: {', '.join(kinds)})"
    return ""
