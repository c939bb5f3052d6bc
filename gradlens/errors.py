"""Every exception gradlens raises on purpose lives here, under :class:`GradlensError`."""

from __future__ import annotations

__all__ = [
    "GradlensError",
    "LayerNotFoundError",
    "LayerNotExecutedError",
    "GradientNotAvailableError",
    "TargetError",
    "OutputSelectionError",
    "InPlaceBackwardHookError",
    "RecorderStateError",
    "NotRecordedError",
    "ManifestMismatchError",
    "InterventionError",
    "AttentionCaptureError",
    "AttentionRolloutError",
    "TokenInputError",
    "InputTypeError",
    "SAEError",
    "RelevanceRuleError",
    "RelevanceError",
]


class GradlensError(Exception):
    """Base class of all errors raised by gradlens."""


class LayerNotFoundError(GradlensError, KeyError, ValueError):
    """A layer name, pattern, type or filter selected no module of the model.

    Subclasses both :class:`KeyError` (a name lookup failed) and :class:`ValueError`
    (a bad argument), so either ``except`` clause catches it. Unlike a plain
    ``KeyError`` its ``str()`` is the readable message, not a quoted repr.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LayerNotExecutedError(GradlensError, KeyError):
    """A selected layer exists but did not run during the recorded forward pass."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GradientNotAvailableError(GradlensError, RuntimeError):
    """A gradient was asked for that was never computed (no backward yet, or no graph)."""


class TargetError(GradlensError, ValueError):
    """A target (class index, per-sample list, callable, score) does not fit the model output."""


class OutputSelectionError(GradlensError, ValueError):
    """A structured output (tuple, dict, dataclass) needs ``output=``/``select=`` to pick one."""


class InPlaceBackwardHookError(GradlensError, RuntimeError):
    """A full backward hook met an in-place operation (PyTorch cannot hook such a module)."""


class RecorderStateError(GradlensError, RuntimeError):
    """A Recorder (or a ``replace_outputs`` context) was used in the wrong state (entered
    twice, used outside its ``with`` block)."""


class NotRecordedError(GradlensError, KeyError):
    """A Recorder was asked for something it was not told to record (a call's inputs
    without ``inputs=True``, input gradients without ``backward_hooks=True``).

    A :class:`KeyError`, like any failed lookup in the Recorder's record mappings; its
    ``str()`` is the readable message.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ManifestMismatchError(GradlensError, ValueError):
    """A dataset output directory holds results of another call (another model, other
    layers or options), so they cannot be resumed or merged with this one."""


class InterventionError(GradlensError, ValueError):
    """An edit or a patching run does not fit the model: a patch whose shape does not
    broadcast to the layer's output, a position out of range, clean and corrupted inputs
    of different shapes, or a metric that returns the wrong shape."""


class AttentionCaptureError(GradlensError, RuntimeError):
    """Attention probabilities could not be captured: the model has no attention module, or
    an attention module computed its attention in a way gradlens cannot see (a flash or
    flex-attention kernel, a custom operator), so its probabilities would be missing."""


class AttentionRolloutError(GradlensError, ValueError):
    """The captured attention cannot be rolled out to one row over the input's tokens:
    windowed attention (Swin) has no global class-token row, layers attend over different
    token counts or across sequences, or the chosen row does not exist."""


class TokenInputError(GradlensError, ValueError):
    """A text model's input does not fit a per-token method: token ids that are not a 2-D
    integer tensor, a mapping without ``input_ids``, a baseline token the model's config does
    not name, or a continuation whose batch is not the prompt's."""


class InputTypeError(GradlensError, TypeError):
    """A model or model input of a type gradlens cannot run: a model that is not an
    ``nn.Module``, or a NumPy array or list of numbers where a ``torch.Tensor`` is needed.
    A :class:`TypeError`, raised before any hook is registered."""


class SAEError(GradlensError, ValueError):
    """A sparse autoencoder does not fit where it is spliced: it lacks ``encode`` or
    ``decode``, its input width is not the hook point's output width, or its hook point
    selects several modules (one that selects none is a :class:`LayerNotFoundError`)."""


class RelevanceError(GradlensError, RuntimeError):
    """Relevance propagation (:func:`gradlens.lrp`, :func:`gradlens.attnlrp`) cannot be
    applied: an attention module computed its attention with a kernel the rules cannot see
    (a flash or flex-attention kernel, a custom operator), so its products would get no
    rule; the base of :class:`RelevanceRuleError`."""


class RelevanceRuleError(RelevanceError, TypeError, ValueError):
    """An LRP composite that cannot be applied: an unknown composite name, a value that is
    not a rule, a rule option the composite does not take, a module with parameters that no
    rule covers (the message names it and its type), or offloaded (meta) weights. Raised
    before any hook is registered, except for a module without a rule, found when the
    relevance reaches it; a :class:`TypeError` and a :class:`ValueError`."""
