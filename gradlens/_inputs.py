"""The model input, parsed once: :class:`ModelInput`.

A method receives ``x`` (a tensor, or a tuple of positional inputs called as ``model(*x)``)
and ``forward_kwargs``. :meth:`ModelInput.parse` reads them once into the positional and
keyword inputs, the batch size, the image size and the device; everything downstream
(:func:`gradlens._explain.differentiate`, the CAMs, the attributions) uses those facts and
the batch operations here (:meth:`~ModelInput.tile`, :meth:`~ModelInput.take`) instead of
looking at ``x`` again. A new kind of input (a mapping called as ``model(**x)``, a list of
images) is a change to :meth:`ModelInput.parse` and :meth:`ModelInput.rebuild` only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["Inputs", "ModelInput", "as_args", "usable", "prepare", "batch_size"]

Inputs = Any  # a tensor, or a tuple of positional inputs

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """A model input ready for ``model(*args, **kwargs)``, with the facts methods need.

    Attributes:
        args: the positional inputs (tensors made under ``torch.inference_mode()`` are
            replaced by ordinary copies, which autograd can use).
        kwargs: the keyword inputs (same treatment).
        batch_size: ``B``, dim 0 of the first tensor with a batch dimension (positional
            inputs first, then keyword inputs).
        image_size: ``(H, W)`` of the first 4-D positional tensor (the image), or ``None``.
        device: the device of the first tensor, where results are returned.
        is_tuple: the user passed a tuple of positional inputs (results then come back as
            tuples, see :meth:`rebuild`).
    """

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    batch_size: int
    image_size: tuple[int, int] | None
    device: torch.device
    is_tuple: bool = False

    @classmethod
    def parse(cls, x: Inputs, forward_kwargs: Mapping[str, Any] | None = None) -> ModelInput:
        """Read a method's ``x`` and ``forward_kwargs``.

        Args:
            x: a tensor (``model(x)``), a tuple of positional inputs (``model(*x)``), or a
                :class:`ModelInput` (returned as it is).
            forward_kwargs: keyword inputs for the model.

        Returns:
            The parsed input.

        Raises:
            TypeError: no tensor among the inputs (nothing to read a batch size from), or
                ``forward_kwargs`` given with an already parsed input.
        """
        if isinstance(x, ModelInput):
            if forward_kwargs:
                raise TypeError("forward_kwargs belong to the parsed ModelInput already")
            return x
        args, kwargs = prepare(x, forward_kwargs)
        tensors = _tensors(args, kwargs)
        return cls(
            args=args,
            kwargs=kwargs,
            batch_size=_batch_size(tensors),
            image_size=next(
                ((int(a.shape[-2]), int(a.shape[-1])) for a in args if _is_image(a)), None
            ),
            device=tensors[0].device,
            is_tuple=isinstance(x, tuple),
        )

    def call(self, model: nn.Module) -> Any:
        """``model(*args, **kwargs)``."""
        return model(*self.args, **self.kwargs)

    @property
    def x(self) -> Inputs:
        """The positional inputs in the form the user gave them (a tensor or a tuple)."""
        return self.args if self.is_tuple else self.args[0]

    @property
    def image_position(self) -> int | None:
        """The position of the image (the first 4-D positional tensor), or ``None``."""
        return next((i for i, a in enumerate(self.args) if _is_image(a)), None)

    def rebuild(self, values: Sequence[T]) -> T | tuple[T, ...]:
        """Per-position results in the form of the user's input: the one value for a
        single input, a tuple aligned with the positional inputs for a tuple input."""
        return tuple(values) if self.is_tuple else values[0]

    def with_args(self, replacements: Mapping[int, Any]) -> ModelInput:
        """The same input with the positional inputs at some positions replaced (by tensors
        with the same batch size)."""
        args = tuple(replacements.get(i, a) for i, a in enumerate(self.args))
        return dataclasses.replace(self, args=args)

    def tile(self, times: int) -> ModelInput:
        """``times`` copies of the batch stacked along dim 0, copy-major (row ``j * B + b``
        is copy ``j`` of sample ``b``, as ``x.repeat(times, ...)``): every tensor whose dim 0
        is the batch is repeated, everything else is passed unchanged."""
        if times == 1:
            return self
        return self._per_sample(
            lambda t: t.repeat(times, *([1] * (t.ndim - 1))), self.batch_size * times
        )

    def take(self, rows: Tensor) -> ModelInput:
        """The samples ``rows`` (a 1-D index tensor, repeats allowed) of every tensor whose
        dim 0 is the batch."""
        return self._per_sample(lambda t: t[rows.to(t.device)], int(rows.numel()))

    def _per_sample(self, edit: Any, new_batch_size: int) -> ModelInput:
        def apply(value: Any) -> Any:
            return edit(value) if _has_batch(value, self.batch_size) else value

        return dataclasses.replace(
            self,
            args=tuple(apply(a) for a in self.args),
            kwargs={k: apply(v) for k, v in self.kwargs.items()},
            batch_size=new_batch_size,
        )


def _tensors(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Tensor]:
    """The tensors among the inputs, positional ones first."""
    return [v for v in (*args, *kwargs.values()) if isinstance(v, Tensor)]


def _batch_size(tensors: Sequence[Tensor]) -> int:
    """The batch size rule: dim 0 of the first tensor that has dimensions."""
    for t in tensors:
        if t.ndim > 0:
            return int(t.shape[0])
    raise TypeError("cannot find the batch size: no tensor with a batch dimension among the inputs")


def _is_image(value: Any) -> bool:
    return isinstance(value, Tensor) and value.ndim == 4


def _has_batch(value: Any, batch: int) -> bool:
    return isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch


def as_args(x: Inputs) -> tuple[Any, ...]:
    """Positional arguments for ``model(*args)``: a tuple is unpacked, anything else is one
    argument."""
    return tuple(x) if isinstance(x, tuple) else (x,)


def usable(value: Any) -> Any:
    """An ordinary copy of a tensor made under ``torch.inference_mode()`` (which autograd
    cannot use); anything else is returned unchanged."""
    if isinstance(value, Tensor) and value.is_inference():
        with torch.inference_mode(False):
            return value.clone()
    return value


def prepare(
    x: Inputs, forward_kwargs: Mapping[str, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` ready for ``model(*args, **kwargs)``, without inference tensors."""
    args = tuple(usable(a) for a in as_args(x))
    kwargs = {k: usable(v) for k, v in (forward_kwargs or {}).items()}
    return args, kwargs


def batch_size(x: Inputs, forward_kwargs: Mapping[str, Any] | None = None) -> int:
    """``B`` of a model input, by the rule of :attr:`ModelInput.batch_size` (without
    parsing, so inference tensors are not copied)."""
    return _batch_size(_tensors(as_args(x), forward_kwargs or {}))
