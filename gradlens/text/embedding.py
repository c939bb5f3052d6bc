"""The input embedding layer: finding it (:func:`embedding_layer`), and running a model on
given embeddings instead of its own (:class:`FromEmbeddings`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core.checks import check_model, entry_point
from ..core.outputs import Replacement, replace_outputs
from ..core.recorder import Recorder
from ..errors import LayerNotExecutedError, LayerNotFoundError
from .inputs import TokenInput

__all__ = ["embedding_layer", "FromEmbeddings"]

_ONE_EMBEDDING = (
    "per-token attributions put one (B, T, H) tensor of embeddings in the place of the "
    "embedding layer's output (of the same shape and dtype): pass the layer that embeds the "
    "attributed ids, and runs once per forward pass, as layer= (an encoder-decoder sharing "
    "its embedding runs it twice)"
)


@entry_point
def embedding_layer(model: nn.Module, tokens: TokenInput) -> str:
    """The name of the model's input embedding layer.

    ``model.get_input_embeddings()`` where the model has it (Hugging Face models);
    otherwise its only ``nn.Embedding``, or, among several, the first one that runs on
    ``tokens`` (one inference forward, stopped once they have all run).

    Raises:
        LayerNotFoundError: the model has no embedding layer (pass ``layer=``).
    """
    modules: dict[str, nn.Module] = dict(model.named_modules())
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            found = getter()
        except (NotImplementedError, AttributeError):
            found = None
        for name, module in modules.items():
            if found is not None and module is found:
                return name
    candidates = [name for name, module in modules.items() if isinstance(module, nn.Embedding)]
    if not candidates:
        raise LayerNotFoundError(
            f"{type(model).__name__} has no input embedding layer: no get_input_embeddings() "
            "and no nn.Embedding; per-token attributions need the layer that turns token ids "
            "into vectors -- pass it as layer= (a name or module)"
        )
    if len(candidates) == 1:
        return candidates[0]
    recorder = Recorder(model, candidates, stop_early=True, reduce=lambda t: None)
    with torch.inference_mode(), recorder:
        recorder.forward(*tokens.args, **tokens.kwargs)
    calls = recorder.all_calls()
    if not calls:
        raise LayerNotFoundError(
            f"none of the nn.Embedding layers of {type(model).__name__} ran "
            f"({', '.join(candidates)}); pass the input embedding layer as layer="
        )
    return calls[0].name


class FromEmbeddings(nn.Module):
    """``model`` as a function of its input embeddings: ``forward(embeddings, *args,
    **kwargs)`` runs ``model(*args, **kwargs)`` with the output of the embedding layer
    replaced by ``embeddings``.

    The gradient attributions of :mod:`gradlens.attribution` then attribute to the
    embeddings as to any floating-point input (noise, interpolation, gradients), while the
    model still gets its token ids and attention mask. The model is held, not changed: the
    replacement's hooks exist only during each forward.

    Args:
        model: the model.
        layer: the dotted name of its embedding layer, which must run once per forward and
            return a ``(B, T, H)`` tensor.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        check_model(model)
        super().__init__()
        self.model = model
        self.layer = layer
        # the flag only (not .train()/.eval(), which would set every submodule's mode)
        self.training = model.training

    def forward(self, embeddings: Tensor, *args: Any, **kwargs: Any) -> Any:
        replacement = Replacement(embeddings, once=True, hint=_ONE_EMBEDDING)
        with replace_outputs(self.model, {self.layer: replacement}):
            output = self.model(*args, **kwargs)
        if replacement.calls == 0:
            raise LayerNotExecutedError(
                f"the embedding layer {self.layer!r} did not run in the forward pass; pass the "
                "layer that embeds the token ids as layer="
            )
        return output
