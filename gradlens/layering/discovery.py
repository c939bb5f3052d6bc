"""Listing layers (:func:`layers`) and choosing the default CAM layer (:func:`default_layer`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.inputs import Inputs, ModelInput
from ..core.recorder import Call, Recorder
from ..core.selection import named_modules
from ..errors import LayerNotFoundError

__all__ = ["LayerInfo", "LayerTable", "layers", "default_layer"]


@dataclass(frozen=True)
class LayerInfo:
    """One row of :func:`layers`.

    Attributes:
        name: dotted module name.
        type: the module's class name.
        output_shape: the shape of its (last) output for the example input, a tuple of
            shapes for structured outputs, or ``None`` without an example (or if it did not run).
        calls: how many times it ran for the example input (``None`` without one).
        default: ``True`` for the layer a CAM method would pick with ``layer=None``.
    """

    name: str
    type: str
    output_shape: Any = None
    calls: int | None = None
    default: bool = False


class LayerTable(list[LayerInfo]):
    """A list of :class:`LayerInfo` that prints as a table."""

    def __str__(self) -> str:
        rows = [("name", "type", "output shape", "")]
        for info in self:
            shape = "" if info.output_shape is None else _format_shape(info.output_shape)
            rows.append(
                (info.name, info.type, shape, "<- default CAM layer" if info.default else "")
            )
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(
            f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
            for r in rows
        )

    def names(self) -> list[str]:
        """The layer names, in model order."""
        return [info.name for info in self]


def _format_shape(shape: Any) -> str:
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return "(" + ", ".join(map(str, shape)) + ")"
    if isinstance(shape, (tuple, list)):
        return "[" + ", ".join(_format_shape(s) for s in shape) + "]"
    return str(shape)


def _signature(t: Tensor) -> tuple[Any, ...]:
    # shape, storage, strides and version identify "the same tensor value" across modules
    return (
        tuple(t.shape),
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        t.stride(),
        t._version,
    )


def _probe(model: nn.Module, inputs: ModelInput) -> Recorder:
    recorder = Recorder(model, lambda name, module: name != "", reduce=_signature)
    # outside inference mode: the signature needs version counters, which inference tensors lack
    with torch.inference_mode(False), torch.no_grad(), recorder:
        args, kwargs = inputs.bind()
        recorder.forward(*args, **kwargs)
    return recorder


def _shape_of(signature: Any) -> Any:
    if isinstance(signature, tuple) and len(signature) == 5 and isinstance(signature[0], tuple):
        return signature[0]
    if isinstance(signature, (tuple, list)):
        return tuple(_shape_of(s) for s in signature)
    if isinstance(signature, Mapping):
        return tuple(_shape_of(s) for s in signature.values())
    return None


def _default_from(recorder: Recorder, model: nn.Module, inputs: ModelInput) -> str | None:
    """The default CAM layer of a forward pass on ``inputs`` (the rules of
    :func:`default_layer`)."""
    calls = recorder.all_calls()
    attention = _attention_names(model)
    spatial = [
        c
        for c in calls
        if _is_spatial(c.activation)
        and not any(c.name != a and _within(c.name, a) for a in attention)
    ]
    token_norm = _token_norm_before_last_attention(
        calls, named_modules(model), attention, inputs.batch_size
    )
    sees_image = inputs.image_size is not None or (
        token_norm is not None and bool(spatial) and spatial[0].index < token_norm.index
    )
    if token_norm is not None and sees_image:
        if not spatial or spatial[-1].index < token_norm.index:
            return token_norm.name
    if not spatial:
        return None
    last = spatial[-1]
    # the same tensor returned by nested modules (layer4, layer4.1, layer4.1.relu); only
    # nested ones count: a freed tensor's memory can be reused by a later, unrelated output
    # of the same shape, which then has the same signature
    same = [
        c.name
        for c in spatial
        if c.activation == last.activation
        and (_within(c.name, last.name) or _within(last.name, c.name))
    ]
    return min(same, key=lambda n: (len(n), n))


def _is_spatial(signature: Any) -> bool:
    shape = _shape_of(signature)
    return (
        isinstance(shape, tuple)
        and len(shape) == 4
        and all(isinstance(s, int) for s in shape)
        and shape[2] * shape[3] > 1
    )


def _is_tokens(signature: Any, batch: int) -> bool:
    """A ``(B, N, C)`` token tensor with ``N > 1`` (batch first: ``B = batch``)."""
    shape = _shape_of(signature)
    return (
        isinstance(shape, tuple)
        and len(shape) == 3
        and all(isinstance(s, int) for s in shape)
        and shape[0] == batch
        and shape[1] > 1
    )


def _is_norm(module: nn.Module) -> bool:
    # LlamaRMSNorm, T5LayerNorm and the like are not nn.LayerNorm subclasses
    # (nn.RMSNorm, from torch 2.4, is caught by its name)
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm")


def _within(name: str, ancestor: str) -> bool:
    """``name`` is ``ancestor`` or inside it (``""`` is the model)."""
    return ancestor == "" or name == ancestor or name.startswith(ancestor + ".")


def _attention_names(model: nn.Module) -> list[str]:
    # deferred: the attention package imports the CAMs, which import this module
    from ..core.attention.capture import attention_modules

    return [name for name in attention_modules(model) if name]


def _token_norm_before_last_attention(
    calls: list[Call], modules: Mapping[str, nn.Module], attention_names: list[str], batch: int
) -> Call | None:
    """The first token norm that runs before the last attention call in the same block.

    A *token norm* is a normalisation layer with a ``(B, N, C)`` output. The *block* of a
    norm call is the call of its closest ancestor that ran (the model when none did); the
    norm *opens* the first attention call that finishes after it within that block (the
    block itself counts when it is an attention module).
    """
    attention = set(attention_names)
    if not attention:
        return None
    ran = {c.name for c in calls}
    opened: list[tuple[int, int, Call]] = []  # (attention call index, norm call index, norm)
    for position, norm in enumerate(calls):
        if not (_is_norm(modules[norm.name]) and _is_tokens(norm.activation, batch)):
            continue
        block = _closest_ancestor(norm.name, ran)
        for later in calls[position + 1 :]:
            if later.name == block:  # the block returned: it ran no attention after the norm
                if block in attention:
                    opened.append((later.index, norm.index, norm))
                break
            if later.name in attention and _within(later.name, block):
                opened.append((later.index, norm.index, norm))
                break
    return max(opened, key=lambda o: (o[0], -o[1]))[2] if opened else None


def _closest_ancestor(name: str, ran: set[str]) -> str:
    while "." in name:
        name = name.rsplit(".", 1)[0]
        if name in ran:
            return name
    return ""


@entry_point
def layers(
    model: nn.Module,
    example_input: Inputs | None = None,
    *,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> LayerTable:
    """List a model's layers: names and types, and with an example input their output shapes.

    Args:
        model: the model.
        example_input: optional input (a tuple for several positional inputs); with it,
            one forward pass without tape gives each layer's output shape and call count,
            and marks the layer that CAM methods pick with ``layer=None``.
        forward_kwargs: keyword inputs for that forward pass.

    Returns:
        A :class:`LayerTable` (a list of :class:`LayerInfo`; ``print`` it for a table).
    """
    named = [(n, m) for n, m in named_modules(model).items() if n]
    if example_input is None:
        return LayerTable(LayerInfo(n, type(m).__name__) for n, m in named)
    inputs = ModelInput.parse(example_input, forward_kwargs)
    recorder = _probe(model, inputs)
    default = _default_from(recorder, model, inputs)
    calls_of: dict[str, list[Any]] = {}
    for call in recorder.all_calls():
        calls_of.setdefault(call.name, []).append(call)
    table = LayerTable()
    for name, module in named:
        calls = calls_of.get(name, [])
        shape = _shape_of(calls[-1].activation) if calls else None
        table.append(LayerInfo(name, type(module).__name__, shape, len(calls), name == default))
    return table


@entry_point
def default_layer(
    model: nn.Module, x: Inputs, *, forward_kwargs: Mapping[str, Any] | None = None
) -> str:
    """The layer CAM methods use when ``layer=None``.

    One forward pass without tape on the first sample of the input records every module's
    output, and two rules read it:

    * **Transformers** (blocks of ``(B, N, C)`` tokens): the input of the last attention,
      that is the first LayerNorm of the last block -- ``ln_1`` in torchvision's ViT,
      ``norm1`` in timm, ``layernorm_before`` in Hugging Face ViT and Swin -- as
      pytorch-grad-cam recommends (a ViT's last block reaches the head only through its
      class token, so its patch tokens get no gradient). Precisely: a *token norm* is a
      normalisation layer (``nn.LayerNorm``, ``nn.RMSNorm`` or a class whose name ends in
      ``Norm``) whose output is ``(B, N, C)`` with ``N > 1``. It *opens* an attention when
      an attention module (:func:`gradlens.core.attention.capture.attention_modules`:
      ``nn.MultiheadAttention`` or a class whose name contains ``Attention``) finishes
      after it inside its block -- the closest enclosing module that ran, itself counted
      when it is the attention module. The layer is the first token norm that opens the
      last attention call, so norms inside the attention (query/key norms) and the norm
      before the MLP are not chosen. Post-norm blocks (BERT's), whose norms come after
      the attention, open none.
    * **CNNs**: the last module, in the order modules finish, whose output is 4-D with more
      than one spatial position (so not a global pool), leaving out modules inside an
      attention module (their 4-D outputs are heads x queries x keys, not images); among
      nested modules returning that same tensor (``layer4``, ``layer4.1``,
      ``layer4.1.relu``) the shortest name.

    The transformer rule is for images: it applies when the input has a 4-D image tensor
    or a 4-D output (a patch convolution) runs before the norm; text transformers keep
    the CNN rule, which finds nothing (their CAM would be a grid of tokens: use
    :func:`gradlens.token_attributions` instead). When both rules find a layer, the later
    one wins: the token norm of a ViT (whose patch convolution runs first), the
    convolution after the transformer blocks of a hybrid model. Models whose blocks
    return channels-last ``(B, H, W, C)`` maps (torchvision's Swin) follow the CNN rule.

    Args:
        model: the model.
        x: its input, as for the CAM methods (only the first sample is run).
        forward_kwargs: keyword inputs for the model.

    Returns:
        The dotted name of the layer.

    Raises:
        LayerNotFoundError: neither rule finds a layer (a model without spatial outputs or
            attention blocks, or with post-norm blocks only): name the layer explicitly.
    """
    with torch.inference_mode(False):  # the sample taken must not be an inference tensor
        first = ModelInput.parse(x, forward_kwargs).take(torch.zeros(1, dtype=torch.long))
    recorder = _probe(model, first)
    name = _default_from(recorder, model, first)
    if name is None:
        raise LayerNotFoundError(
            f"{type(model).__name__} has no layer with a 4-D output of more than one spatial "
            "position, nor a LayerNorm of (B, N, C) tokens before an attention module, so no "
            "CAM layer can be chosen automatically; pass layer= "
            "(gradlens.layers(model, x) lists the layers and their output shapes)"
        )
    return name
