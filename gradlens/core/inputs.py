"""The model input, parsed once: :class:`ModelInput`.

A method receives ``x`` and ``forward_kwargs``. ``x`` is a tensor (``model(x)``), a tuple of
positional inputs (``model(*x)``), a mapping of named inputs such as a Hugging Face
``BatchEncoding`` (``model(**x)``), or a list of image tensors (``model(images)``, the
torchvision detection models). :meth:`ModelInput.parse` reads them once into the positional and
keyword inputs, the batch size, the image size and the device; everything downstream
(:func:`gradlens.passes.differentiate`, the CAMs, the attributions) uses those facts and
the batch operations here (:meth:`~ModelInput.tile`, :meth:`~ModelInput.take`) instead of
looking at ``x`` again.

The *user inputs* are held in :attr:`ModelInput.args` whatever their form: the positional
inputs, or the values of a mapping (then :attr:`ModelInput.keys` names them and they are
passed by keyword). Methods that perturb or differentiate inputs therefore address them by
position in every case, and :meth:`ModelInput.rebuild` gives results back in the user's form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .checks import check_inputs

__all__ = ["Inputs", "ModelInput", "as_args", "usable", "prepare", "batch_size"]

Inputs = Any  # a tensor, a tuple of positional inputs, a mapping of named inputs, a list of images

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """A model input ready for ``model(*args, **kwargs)``, with the facts methods need.

    Attributes:
        args: the user inputs: the positional inputs, or the values of a mapping input
            (tensors made under ``torch.inference_mode()`` are replaced by ordinary copies,
            which autograd can use).
        kwargs: the further keyword inputs, ``forward_kwargs`` (same treatment).
        batch_size: ``B``: the length of a list of images, else dim 0 of the first tensor
            with a batch dimension (user inputs first, then keyword inputs).
        image_size: ``(H, W)`` of the first 4-D user input (the image), of the images of a
            list when they all have the same size, or ``None``.
        device: the device of the first tensor, where results are returned.
        is_tuple: the user passed a tuple of positional inputs (results then come back as
            tuples, see :meth:`rebuild`).
        keys: for a mapping input, its keys: ``args[i]`` is passed as ``keys[i]=``.
    """

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    batch_size: int
    image_size: tuple[int, int] | None
    device: torch.device
    is_tuple: bool = False
    keys: tuple[str, ...] | None = None

    @classmethod
    def parse(
        cls, x: Inputs, forward_kwargs: Mapping[str, Any] | None = None, *, name: str = "x"
    ) -> ModelInput:
        """Read a method's ``x`` and ``forward_kwargs``, checking them on the way.

        A floating-point input holding NaN or inf gives one ``UserWarning`` naming it (once
        per user call, see :func:`gradlens.core.checks.warn_non_finite`).

        Args:
            x: a tensor (``model(x)``), a tuple of positional inputs (``model(*x)``), a
                mapping of named inputs, e.g. a ``BatchEncoding`` (``model(**x)``), a list
                of image tensors (``model(x)``, one sample per image), or a
                :class:`ModelInput` (returned as it is).
            forward_kwargs: further keyword inputs for the model.
            name: what the user called ``x``, for messages.

        Returns:
            The parsed input.

        Raises:
            InputTypeError: (a ``TypeError``) a NumPy array or a list of numbers among the
                inputs: "pass a torch.Tensor (torch.from_numpy(...))".
            TypeError: no tensor among the inputs (nothing to read a batch size from), a
                mapping input whose keys are also in ``forward_kwargs``, or
                ``forward_kwargs`` given with an already parsed input.
        """
        if isinstance(x, ModelInput):
            if forward_kwargs:
                raise TypeError("forward_kwargs belong to the parsed ModelInput already")
            return x
        check_inputs({name: x}, forward_kwargs)
        keys = None
        if isinstance(x, Mapping):
            keys = tuple(str(k) for k in x)
            both = sorted(set(keys) & set(forward_kwargs or {}))
            if both:
                raise TypeError(f"{', '.join(both)} given both in the input and in forward_kwargs")
            x = tuple(x.values())
        args, kwargs = prepare(x, forward_kwargs)
        tensors = _tensors(args, kwargs)
        if not tensors:
            raise TypeError(
                "cannot find the batch size: no tensor among the inputs (give a tensor, a "
                "tuple or mapping of tensors, or a list of image tensors)"
            )
        return cls(
            args=args,
            kwargs=kwargs,
            batch_size=_batch_size(args, tensors),
            image_size=next(filter(None, map(_image_size, args)), None),
            device=tensors[0].device,
            is_tuple=isinstance(x, tuple) and keys is None,
            keys=keys,
        )

    def bind(self, args: Sequence[Any] | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(positional, keyword)`` arguments for the model, with ``args`` (default:
        :attr:`args`) in the places of the user inputs."""
        values = self.args if args is None else tuple(args)
        if self.keys is None:
            return values, dict(self.kwargs)
        return (), {**dict(zip(self.keys, values)), **self.kwargs}

    def call(self, model: nn.Module) -> Any:
        """Call ``model`` on the input."""
        args, kwargs = self.bind()
        return model(*args, **kwargs)

    @property
    def x(self) -> Inputs:
        """The user inputs in the form the user gave them (a tensor or list, a tuple, or a
        dict for a mapping)."""
        return self.rebuild(self.args)

    @property
    def image_position(self) -> int | None:
        """The position of the image (the first 4-D user input tensor), or ``None``."""
        return next((i for i, a in enumerate(self.args) if _is_image(a)), None)

    def rebuild(self, values: Sequence[T]) -> T | tuple[T, ...] | dict[str, T]:
        """Per-input results in the form of the user's input: the one value for a single
        input, a tuple aligned with the positional inputs for a tuple input, a dict with
        the same keys for a mapping input."""
        if self.keys is not None:
            return dict(zip(self.keys, values))
        return tuple(values) if self.is_tuple else values[0]

    def with_args(self, replacements: Mapping[int, Any]) -> ModelInput:
        """The same input with the positional inputs at some positions replaced (by tensors
        with the same batch size)."""
        args = tuple(replacements.get(i, a) for i, a in enumerate(self.args))
        return dataclasses.replace(self, args=args)

    def tile(self, times: int) -> ModelInput:
        """``times`` copies of the batch stacked along dim 0, copy-major (row ``j * B + b``
        is copy ``j`` of sample ``b``, as ``x.repeat(times, ...)``): every tensor whose dim 0
        is the batch is repeated, and so is a list of images; everything else is passed
        unchanged."""
        if times == 1:
            return self

        def repeat(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
            if isinstance(value, list):
                return value * times
            return value.repeat(times, *([1] * (value.ndim - 1)))

        return self._per_sample(repeat, self.batch_size * times)

    def take(self, rows: Tensor) -> ModelInput:
        """The samples ``rows`` (a 1-D index tensor, repeats allowed) of every tensor whose
        dim 0 is the batch, and of a list of images."""

        def select(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
            if isinstance(value, list):
                return [value[i] for i in rows.tolist()]
            return value[rows.to(value.device)]

        return self._per_sample(select, int(rows.numel()))

    def _per_sample(self, edit: Any, new_batch_size: int) -> ModelInput:
        def apply(value: Any) -> Any:
            if _has_batch(value, self.batch_size) or _is_image_list(value):
                return edit(value)
            return value

        return dataclasses.replace(
            self,
            args=tuple(apply(a) for a in self.args),
            kwargs={k: apply(v) for k, v in self.kwargs.items()},
            batch_size=new_batch_size,
        )


def _tensors(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Tensor]:
    """The tensors among the inputs (also the images of a list), user inputs first."""
    found: list[Tensor] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            found.append(value)
        elif _is_image_list(value):
            found.extend(value)
    return found


def _batch_size(args: Sequence[Any], tensors: Sequence[Tensor]) -> int:
    """The batch size rule: the length of a list of images among the user inputs, else
    dim 0 of the first tensor that has dimensions."""
    for value in args:
        if _is_image_list(value):
            return len(value)
        if isinstance(value, Tensor) and value.ndim > 0:
            return int(value.shape[0])
    for t in tensors:
        if t.ndim > 0:
            return int(t.shape[0])
    raise TypeError("cannot find the batch size: no tensor with a batch dimension among the inputs")


def _is_image(value: Any) -> bool:
    return isinstance(value, Tensor) and value.ndim == 4


def _is_image_list(value: Any) -> bool:
    """A list of ``(C, H, W)`` image tensors, one per sample (torchvision detectors)."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, Tensor) and v.ndim == 3 for v in value)
    )


def _image_size(value: Any) -> tuple[int, int] | None:
    """``(H, W)`` of a 4-D image batch, or of a list of images that all share it."""
    if _is_image(value):
        return int(value.shape[-2]), int(value.shape[-1])
    if _is_image_list(value):
        sizes = {(int(v.shape[-2]), int(v.shape[-1])) for v in value}
        return sizes.pop() if len(sizes) == 1 else None
    return None


def _has_batch(value: Any, batch: int) -> bool:
    return isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch


def as_args(x: Inputs) -> tuple[Any, ...]:
    """The user inputs as a tuple: a tuple is unpacked, a mapping gives its values,
    anything else is one input."""
    if isinstance(x, Mapping):
        return tuple(x.values())
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
    args = tuple([usable(v) for v in a] if _is_image_list(a) else usable(a) for a in as_args(x))
    kwargs = {k: usable(v) for k, v in (forward_kwargs or {}).items()}
    return args, kwargs


def batch_size(x: Inputs, forward_kwargs: Mapping[str, Any] | None = None) -> int:
    """``B`` of a model input, by the rule of :attr:`ModelInput.batch_size` (without
    parsing, so inference tensors are not copied)."""
    args = as_args(x)
    return _batch_size(args, _tensors(args, forward_kwargs or {}))
