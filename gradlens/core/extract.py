"""Feature extraction: :func:`extract` (no tape, early stop) and :class:`Extractor` (a wrapper)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .checks import entry_point
from .inputs import Inputs, ModelInput
from .output_selection import OutputSpec
from .recorder import Recorder
from .selection import Layers

__all__ = ["extract", "Extractor"]


@entry_point
def extract(
    model: nn.Module,
    x: Inputs,
    layers: Layers,
    *,
    stop_early: bool = True,
    every_call: bool = False,
    forward_kwargs: Mapping[str, Any] | None = None,
    reduce: Callable[[Tensor], Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The outputs of the selected layers for input ``x``, computed without an autograd tape.

    The forward pass stops as soon as every selected layer has run once (``stop_early``),
    so extracting an early layer costs only the network up to it. The returned tensors are
    ordinary tensors (not inference-mode tensors), usable in later autograd computations
    such as training a probe.

    Args:
        model: the model.
        x: its input; a tuple is passed as several positional inputs.
        layers: layer names, patterns, types or filters (see :mod:`gradlens.selection`).
        stop_early: stop the forward pass once every selected layer has run. A module that
            runs several times in one pass (shared blocks, loops) then contributes only the
            calls made before the stop: pass ``stop_early=False`` (with ``every_call``) to
            get all of them.
        every_call: return a list of every call's output per layer instead of the last one.
        forward_kwargs: keyword inputs for the model (e.g. an attention mask).
        reduce, select, device, dtype: as for :class:`~gradlens.Recorder`.

    Returns:
        ``{name: output}`` in model order (``{name: [output, ...]}`` with ``every_call``).

    Raises:
        LayerNotFoundError: a layer spec selects nothing.
        LayerNotExecutedError: a selected layer did not run.
    """
    args, kwargs = ModelInput.parse(x, forward_kwargs).bind()
    recorder = Recorder(
        model,
        layers,
        stop_early=stop_early,
        reduce=reduce,
        select=select,
        device=device,
        dtype=dtype,
    )
    # records are copied out of inference mode as ordinary tensors by the Recorder
    with torch.inference_mode(), recorder:
        recorder.forward(*args, **kwargs)
    if every_call:
        return {name: [c.activation for c in recorder.calls(name)] for name in recorder.names}
    return {name: recorder.activations[name] for name in recorder.names}


class Extractor(nn.Module):
    """Wrap a model so that its forward returns ``(output, features)``.

    ``features`` is ``{name: output of that layer}`` for the selected layers, attached to
    the autograd graph (so a loss on features trains the model). Hooks are registered only
    for the duration of each forward call: between calls the wrapped model carries no
    gradlens hooks. Works with ``torch.onnx.export`` (features become extra outputs).

    Args:
        model: the model to wrap (registered as the submodule ``model``).
        layers: layer names, patterns, types or filters.
        capture: optional function applied to each feature inside the hook (e.g. pooling).

    Example::

        extractor = gradlens.Extractor(resnet, ["layer1", "layer4"])
        logits, features = extractor(images)
    """

    def __init__(
        self, model: nn.Module, layers: Layers, capture: Callable[[Tensor], Any] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.capture = capture
        self.layer_names = list(Recorder(model, layers).modules)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Run the model; returns ``(output, {name: feature})``."""
        recorder = Recorder(
            self.model, self.layer_names, detach=False, reduce=self.capture, restore_buffers=False
        )
        with recorder:
            output = self.model(*args, **kwargs)
        return output, {name: recorder.activations[name] for name in self.layer_names}
