"""Sparse autoencoders spliced into a model: :func:`splice`.

Inside ``with splice(model, {hook_point: sae}):`` the hook point's output ``x`` is replaced
by

    decode(latents) + error,      latents = encode(x),   error = x - decode(encode(x))

which is ``x`` again (up to rounding), so the model computes what it computed before. The
latents and the error are new nodes of the forward pass, computed by two identity modules
that the splice names ``"<hook_point>.latents"`` and ``"<hook_point>.error"`` and attaches
to the model by name (:func:`gradlens.core.selection.attached_modules`: the model itself is
not changed). Every capture of gradlens selects them as it selects the model's own layers:
:func:`gradlens.record`, :func:`gradlens.extract`, :func:`gradlens.patch` with the
:mod:`gradlens.edits` helpers, :func:`gradlens.activation_patching`,
:func:`gradlens.attribution_patching`.

The error is computed from the latents as the SAE gives them, before any edit: an edit of
the latents (ablating one, steering with one) changes the reconstruction and leaves the
error as it was (the convention of Marks et al. 2024, "Sparse Feature Circuits"). The two
nodes are independent: the gradient with respect to the latents is that of the
reconstruction path only, ``W_dec``-side, and the gradient with respect to the error is the
gradient with respect to the hook point's output.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from torch import Tensor, nn

from ..core.buffers import preserve_buffers
from ..core.checks import entry_point
from ..core.output_selection import OutputSpec
from ..core.outputs import Edit, replace_outputs
from ..core.selection import (
    LayerSpec,
    attached_modules,
    in_model_order,
    select_layers,
)
from ..errors import RecorderStateError, SAEError
from .autoencoder import check_sae, input_width

__all__ = ["Splice", "SAESite", "splice", "latents_site", "error_site"]


def latents_site(hook_point: str) -> str:
    """The name of the latents of the SAE spliced at ``hook_point``: ``"<hook_point>.latents"``."""
    return f"{hook_point}.latents"


def error_site(hook_point: str) -> str:
    """The name of the error node of the SAE spliced at ``hook_point``: ``"<hook_point>.error"``."""
    return f"{hook_point}.error"


class _Node(nn.Module):
    """A named node of the spliced forward: its output is a new autograd node with the
    input's value (a view), so that a gradient taken with respect to it flows only through
    what uses it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view_as(x)


class SAESite(nn.Module):
    """What runs in place of a hook point's output: ``decode(latents) + error``.

    Its submodules ``latents`` and ``error`` are the two recordable nodes (attached to the
    model under ``"<hook_point>.latents"`` and ``"<hook_point>.error"`` by :func:`splice`).
    The SAE is kept as a plain attribute, not a submodule.

    Args:
        hook_point: the hook point's name (for messages).
        sae: the SAE (``encode``, ``decode``).

    Attributes:
        hook_point, sae: as given.
        latents, error: the two node modules.

    Raises:
        SAEError: (in the forward) the hook point's output is not a floating-point tensor,
            or its last dimension is not the SAE's input width.
    """

    sae: Any

    def __init__(self, hook_point: str, sae: Any) -> None:
        super().__init__()
        self.hook_point = hook_point
        self.__dict__["sae"] = sae  # not a submodule: the SAE is the user's
        self.latents = _Node()
        self.error = _Node()

    def forward(self, x: Tensor) -> Tensor:
        """``decode(latents) + error`` for the hook point's output ``x``."""
        self.check_width(x)
        raw = self.sae.encode(x)
        error = x - self.sae.decode(raw)  # from the latents before any edit
        latents = self.latents(raw)
        error = self.error(error)
        output: Tensor = self.sae.decode(latents) + error
        return output

    def check_width(self, x: Any) -> None:
        """Raise :class:`~gradlens.errors.SAEError` unless ``x`` is a floating-point tensor
        whose last dimension the SAE encodes."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim == 0:
            kind = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
            raise SAEError(
                f"hook point {self.hook_point!r} returned {kind}; an SAE is spliced into one "
                "floating-point tensor (for a structured output, pass select= to pick it)"
            )
        width = input_width(self.sae)
        if width is not None and x.shape[-1] != width:
            raise SAEError(
                f"the SAE at {self.hook_point!r} encodes vectors of width {width}, but the hook "
                f"point returns shape {tuple(x.shape)} (width {x.shape[-1]}): is it the SAE "
                "of another hook point or model?"
            )


class Splice:
    """The context manager :func:`splice` returns.

    Attributes:
        model: the model.
        hook_points: the hook points' names, in model order.
        sites: ``{hook point: SAESite}``.
        select: the ``select=`` spec(s) it was given.
    """

    def __init__(
        self,
        model: nn.Module,
        saes: Mapping[str, Any],
        select: OutputSpec | Mapping[str, OutputSpec] = None,
    ) -> None:
        self.model = model
        self.sites = {name: SAESite(name, sae) for name, sae in saes.items()}
        self.hook_points = list(self.sites)
        self.select = select
        self._stack: ExitStack | None = None

    @property
    def names(self) -> dict[str, tuple[str, str]]:
        """``{hook point: (latents site name, error site name)}``."""
        return {hp: (latents_site(hp), error_site(hp)) for hp in self.hook_points}

    def __enter__(self) -> Splice:
        if self._stack is not None:
            raise RecorderStateError("this splice is already active; it cannot be entered twice")
        nodes = {}
        for hook_point, site in self.sites.items():
            nodes[latents_site(hook_point)] = site.latents
            nodes[error_site(hook_point)] = site.error
        with ExitStack() as stack:
            stack.enter_context(preserve_buffers(self.model))
            stack.enter_context(attached_modules(self.model, nodes))
            edits: dict[LayerSpec | tuple[LayerSpec, ...], Edit] = {
                hp: self._edit(site) for hp, site in self.sites.items()
            }
            stack.enter_context(replace_outputs(self.model, edits, select=self.select))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @staticmethod
    def _edit(site: SAESite) -> Edit:
        def edit(name: str, module: nn.Module, output: Any) -> Any:
            return site(output)

        return edit

    def __repr__(self) -> str:
        state = "active" if self._stack is not None else "inactive"
        return f"Splice({type(self.model).__name__}, {self.hook_points}, {state})"


@entry_point
def splice(
    model: nn.Module,
    saes: Mapping[LayerSpec, Any],
    *,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
) -> Splice:
    """Splice sparse autoencoders into a model while the returned context is active.

    Example::

        sae = gradlens.sae.SparseAutoencoder(d_in=768, n_latents=16384)
        with gradlens.sae.splice(gpt2, {"transformer.h.6.mlp": sae}):
            logits = gpt2(ids).logits                       # as without the SAE (1e-5)
            z = gradlens.extract(gpt2, ids, "transformer.h.6.mlp.latents")
            with gradlens.patch(gpt2, {"transformer.h.6.mlp.latents": ablate_latent_7}):
                ablated = gpt2(ids).logits

    Each hook point's output ``x`` becomes ``decode(encode(x)) + error`` with
    ``error = x - decode(encode(x))`` (see :mod:`gradlens.sae.splice`); the latents
    ``(..., n_latents)`` and the error ``(..., d_in)`` are sites named
    ``"<hook_point>.latents"`` and ``"<hook_point>.error"`` for every capture of gradlens
    entered inside the block. The SAE is called on the hook point's output as it is (same
    device and dtype): move and cast the SAE to match the model. Each forward costs one
    ``encode`` and two ``decode`` calls per hook point (the error's and the output's).
    Leaving the block takes the hooks and the names off, also when it raises, and restores
    the buffers that train-mode forwards inside it changed (as :func:`gradlens.patch`); the
    model and the SAEs are never changed.

    Args:
        model: the model.
        saes: ``{hook point: SAE}``; a hook point is a layer spec of
            :mod:`gradlens.selection` selecting exactly one module (its name, usually); an
            SAE is any object with ``encode(x) -> latents`` and ``decode(latents) -> x_hat``
            acting on the last dimension (SAELens' ``SAE``,
            :class:`~gradlens.sae.SparseAutoencoder`). An SAE that says its input width
            (``d_in``, ``cfg.d_in`` or ``W_enc``) is checked against the hook point's
            output in the forward.
        select: for hook points returning a structure (tuple, dict, ``ModelOutput``): which
            of its tensors the SAE reads and replaces (an index, a key or a function), for
            all hook points or as ``{name: spec}``.

    Returns:
        A :class:`Splice` context manager, not yet entered.

    Raises:
        LayerNotFoundError: a hook point selects no module (with "did you mean").
        SAEError: a hook point selects several modules, or an SAE lacks ``encode`` or
            ``decode``; in the forward: a hook point's output whose width is not its SAE's
            (see :class:`SAESite`).
        TypeError: ``saes`` is not a mapping.
    """
    if not isinstance(saes, Mapping) or not saes:
        raise TypeError(
            "saes must be a non-empty mapping {hook point: SAE}, e.g. "
            "{'transformer.h.6.mlp': sae}; got "
            + (type(saes).__name__ if not isinstance(saes, Mapping) else "an empty mapping")
        )
    resolved: dict[str, Any] = {}
    modules: dict[str, nn.Module] = {}
    for spec, sae in saes.items():
        selected = list(select_layers(model, spec).items())
        if len(selected) != 1:
            raise SAEError(
                f"the hook point {spec!r} selects {len(selected)} modules "
                f"({', '.join(repr(n) for n, _ in selected[:4])}"
                f"{', ...' if len(selected) > 4 else ''}); "
                "give each SAE the name of one module"
            )
        name, modules[name] = selected[0]
        if name in resolved:
            raise SAEError(f"two SAEs are given for hook point {name!r}; splice one per hook point")
        check_sae(sae, name)
        resolved[name] = sae
    # in model order, hook names (a TransformerBridge's aliases) included
    order = in_model_order(model, modules)
    return Splice(model, {name: resolved[name] for name in order}, select)
