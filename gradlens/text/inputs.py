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

from ..core.checks import check_value
from ..core.inputs import ModelInput
from ..errors import TokenInputError

__all__ = ["TokenInputs", "TokenInput"]

TokenInputs = Union[Tensor, Mapping[str, Any]]
"""Token ids ``(B, T)`` (called as ``model(ids)``), or a mapping with ``"input_ids"`` and
optionally ``"attention_mask"`` (called as ``model(**inputs)``)."""


@dataclasses.dataclass(frozen=True)
class TokenInput:
    """A text model's input: the parsed :class:`~gradlens.core.inputs.ModelInput`, where its
    token ids are, and its attention mask.

    Attributes:
        model_input: the whole input, parsed once (``model(ids, **forward_kwargs)`` or
            ``model(**inputs, **forward_kwargs)``).
        ids_position: the index of the token ids among ``model_input.args``.
        ids: the token ids, ``(B, T)`` int64.
        attention_mask: ``(B, T)``, nonzero where a token is real, or ``None`` (all real).
    """

    model_input: ModelInput
    ids_position: int
    ids: Tensor
    attention_mask: Tensor | None

    @classmethod
    def parse(
        cls, inputs: TokenInputs, forward_kwargs: Mapping[str, Any] | None = None
    ) -> TokenInput:
        """Read token ids or a mapping of model inputs (and extra keyword inputs).

        Raises:
            InputTypeError: (a ``TypeError``) a NumPy array or a list of numbers.
            TokenInputError: no ``"input_ids"`` in a mapping, ids that are not a 2-D integer
                tensor, or an attention mask of another shape.
        """
        check_value(inputs, "inputs")
        if not isinstance(inputs, (Tensor, Mapping)):
            raise TokenInputError(
                f"inputs must be token ids (a (B, T) integer tensor) or a mapping with "
                f"'input_ids' (a dict or BatchEncoding), got {type(inputs).__name__}"
            )
        model_input = ModelInput.parse(inputs, forward_kwargs, name="inputs")
        position = 0
        if model_input.keys is not None:
            if "input_ids" not in model_input.keys:
                raise TokenInputError(
                    f"a mapping input needs the token ids under 'input_ids' (it has "
                    f"{', '.join(map(repr, model_input.keys)) or 'no keys'}); or pass the ids "
                    "tensor and the other inputs as forward_kwargs"
                )
            position = model_input.keys.index("input_ids")
        ids = model_input.args[position]
        if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point():
            kind = (
                f"a {ids.dtype} tensor of shape {tuple(ids.shape)}"
                if isinstance(ids, Tensor)
                else type(ids).__name__
            )
            raise TokenInputError(f"token ids must be a (B, T) integer tensor, got {kind}")
        mask = model_input.bind()[1].get("attention_mask")
        if mask is not None and (not isinstance(mask, Tensor) or mask.shape != ids.shape):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise TokenInputError(
                f"attention_mask has shape {shape}; it must match the token ids {tuple(ids.shape)}"
            )
        return cls(model_input, position, ids.long(), mask)

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments of the model call."""
        return self.model_input.bind()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the model call."""
        return self.model_input.bind()[1]

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
        ``ids`` (``(n * B, T)``): every other input whose dim 0 is the batch is repeated
        (:meth:`ModelInput.tile <gradlens.core.inputs.ModelInput.tile>`)."""
        copies = ids.shape[0] // self.batch_size
        tiled = self.model_input.tile(copies).with_args({self.ids_position: ids})
        return tiled.bind()
