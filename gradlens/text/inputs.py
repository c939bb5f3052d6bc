"""Token inputs, parsed once: :class:`TokenInput`.

A text model is called with token ids as its first positional input (``model(ids)``) or
with a mapping (a dict or a Hugging Face ``BatchEncoding``) as ``model(**inputs)``. A
tokenizer is never assumed: everything here works on the ids and the attention mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import Tensor

from .._inputs import prepare
from ..errors import TokenInputError

__all__ = ["TokenInputs", "TokenInput"]

TokenInputs = Union[Tensor, Mapping[str, Any]]
"""Token ids ``(B, T)`` (called as ``model(ids)``), or a mapping with ``"input_ids"`` and
optionally ``"attention_mask"`` (called as ``model(**inputs)``)."""


@dataclasses.dataclass(frozen=True)
class TokenInput:
    """A text model's input: where its token ids are, and its attention mask.

    Attributes:
        args: the positional inputs (``(ids,)`` for an ids tensor, ``()`` for a mapping).
        kwargs: the keyword inputs (the mapping's entries, plus any ``forward_kwargs``).
        ids: the token ids, ``(B, T)`` int64.
        attention_mask: ``(B, T)``, nonzero where a token is real, or ``None`` (all real).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    ids: Tensor
    attention_mask: Tensor | None

    @classmethod
    def parse(
        cls, inputs: TokenInputs, forward_kwargs: Mapping[str, Any] | None = None
    ) -> TokenInput:
        """Read token ids or a mapping of model inputs (and extra keyword inputs).

        Raises:
            TokenInputError: no ``"input_ids"`` in a mapping, ids that are not a 2-D integer
                tensor, or an attention mask of another shape.
        """
        if isinstance(inputs, Mapping):
            args, kwargs = prepare((), {**inputs, **(forward_kwargs or {})})
            if "input_ids" not in kwargs:
                raise TokenInputError(
                    f"a mapping input needs the token ids under 'input_ids' (it has "
                    f"{', '.join(map(repr, kwargs)) or 'no keys'}); or pass the ids tensor "
                    "and the other inputs as forward_kwargs"
                )
            ids = kwargs["input_ids"]
        elif isinstance(inputs, Tensor):
            args, kwargs = prepare(inputs, forward_kwargs)
            ids = args[0]
        else:
            raise TokenInputError(
                f"inputs must be token ids (a (B, T) integer tensor) or a mapping with "
                f"'input_ids' (a dict or BatchEncoding), got {type(inputs).__name__}"
            )
        if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point():
            kind = (
                f"a {ids.dtype} tensor of shape {tuple(ids.shape)}"
                if isinstance(ids, Tensor)
                else type(ids).__name__
            )
            raise TokenInputError(f"token ids must be a (B, T) integer tensor, got {kind}")
        mask = kwargs.get("attention_mask")
        if mask is not None and (not isinstance(mask, Tensor) or mask.shape != ids.shape):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise TokenInputError(
                f"attention_mask has shape {shape}; it must match the token ids {tuple(ids.shape)}"
            )
        return cls(args=args, kwargs=kwargs, ids=ids.long(), attention_mask=mask)

    @property
    def batch_size(self) -> int:
        """``B``."""
        return int(self.ids.shape[0])

    @property
    def real(self) -> Tensor:
        """``(B, T)`` bool: the positions that hold real tokens (not padding)."""
        if self.attention_mask is None:
            return torch.ones_like(self.ids, dtype=torch.bool)
        return self.attention_mask != 0

    def with_ids(self, ids: Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` for ``n`` stacked copies of the batch whose token ids are
        ``ids`` (``(n * B, T)``): every other input whose dim 0 is the batch is repeated."""
        copies = ids.shape[0] // self.batch_size

        def repeat(value: Any) -> Any:
            if copies > 1 and isinstance(value, Tensor) and value.ndim > 0:
                if value.shape[0] == self.batch_size:
                    return value.repeat(copies, *([1] * (value.ndim - 1)))
            return value

        if self.args:
            return (ids, *map(repeat, self.args[1:])), {
                k: repeat(v) for k, v in self.kwargs.items()
            }
        kwargs = {k: repeat(v) for k, v in self.kwargs.items()}
        kwargs["input_ids"] = ids
        return (), kwargs
