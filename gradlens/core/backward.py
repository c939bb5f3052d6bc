"""Modified backward passes: :func:`override_backward` gives selected modules another
backward rule, and :func:`override_functions` reroutes chosen torch functions while
selected modules run.

Relevance propagation (LRP, AttnLRP) and DeepLIFT keep the model's forward pass and change
what flows backwards. Both contexts do that through hooks only; the model, its modules and
their ``forward`` methods are never edited, and the hooks come off on exit, also when the
block raises.

**Module rules.** While :func:`override_backward` is active, each call of a selected module
passes its output through an autograd function that is the identity forwards and, backwards,
hands the module's tensor inputs what the *rule* returns instead of the module's own
gradient::

    def halve(module, inputs, output, grad_output):
        return (grad_output @ module.weight / 2,)      # one entry per tensor input

    with override_backward(model, {"fc": halve}):
        out = model(x)
    grad, = torch.autograd.grad(out.sum(), x)          # flows through fc by the rule

A rule is ``(module, inputs, output, grad_output) -> grads``: ``inputs`` are the tensors
among the call's positional arguments (detached from the graph, so the rule can
differentiate its own recomputation of the module with respect to them), ``output`` the
module's output (detached; ``None`` with ``keep_output=False``), ``grad_output`` what
arrived at the output, and ``grads`` one tensor (or ``None``) per input. The module's own
backward does not run: the module's output is cut from its own graph, so autograd reaches
the inputs only through the rule, and the tensors the module's own backward would have
needed are freed with the output.

**Function rules.** :func:`override_functions` pushes a
:class:`torch.overrides.TorchFunctionMode` that, while one of the selected modules runs
(or during the whole block with ``within=None``), calls ``handler(func, args, kwargs)``
instead of each listed torch function; a handler returns the result, or ``NotImplemented``
to let the function run as usual. Inside a handler the mode is off, so the handler calls
torch functions normally. Residual additions, the products and softmax inside attention,
and functional activations get their rules this way.

**Per-call rules.** A rule that needs to know about each call when it happens (DeepLIFT
pairs every call of a nonlinearity with the same call in a reference pass) is given as
:class:`PerCall`: ``PerCall(factory)`` calls ``factory(module, inputs, output)`` (detached
tensors) at each forward call and uses the rule it returns for that call's backward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .hooks import HookSet
from .lifecycle import Capture
from .selection import Layers, LayerSpec, in_model_order, select_layers

__all__ = [
    "BackwardOverride",
    "FunctionHandler",
    "FunctionOverride",
    "ModuleRule",
    "PerCall",
    "override_backward",
    "override_functions",
]

ModuleRule = Callable[
    [nn.Module, tuple[Tensor, ...], Union[Tensor, None], Tensor], Sequence[Union[Tensor, None]]
]
"""``(module, inputs, output, grad_output) -> one gradient (or None) per input tensor``."""

RuleFactory = Callable[[nn.Module, tuple[Tensor, ...], Tensor], ModuleRule]
"""``(module, inputs, output) -> the rule for this call's backward`` (see :class:`PerCall`)."""


class PerCall:
    """A backward rule chosen per call: ``factory(module, inputs, output)`` runs at each
    forward call of the module (detached tensors) and returns the :data:`ModuleRule` for
    that call's backward.

    Args:
        factory: ``(module, inputs, output) -> rule``.
    """

    def __init__(self, factory: RuleFactory) -> None:
        self.factory = factory

    def __repr__(self) -> str:
        return f"PerCall({self.factory!r})"


FunctionHandler = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
"""``(func, args, kwargs) -> result``, or ``NotImplemented`` to run ``func`` unchanged."""


class _RuleBackward(torch.autograd.Function):
    """Identity on the output forwards; the module rule backwards.

    Arguments: ``(rule, module, keep_output, keep_inputs, [output], *inputs)``, the output
    detached from the module's own graph and passed inside a list, so that autograd does
    not take it for one of the function's inputs: it is returned as it is (no copy) and
    later layers may change it in place. A kept output is the one exception: the rule reads
    it, so a copy is returned instead.
    """

    @staticmethod
    def forward(
        ctx: Any,
        rule: ModuleRule,
        module: nn.Module,
        keep_output: bool,
        keep_inputs: bool,
        output_holder: list[Tensor],
        *inputs: Tensor,
    ) -> Tensor:
        (output,) = output_holder
        ctx.rule, ctx.module, ctx.keep_output = rule, module, keep_output
        kept = inputs if keep_inputs else ()
        ctx.save_for_backward(*kept, *((output,) if keep_output else ()))
        ctx.placeholders = None if keep_inputs else [_placeholder(t) for t in inputs]
        return output.clone() if keep_output else output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        kept, output = (saved[:-1], saved[-1]) if ctx.keep_output else (saved, None)
        inputs = kept if ctx.placeholders is None else ctx.placeholders
        detached = tuple(t.detach() for t in inputs)
        with torch.enable_grad():
            grads = tuple(ctx.rule(ctx.module, detached, output, grad_output))
        if len(grads) != len(inputs):
            raise RuntimeError(
                f"the backward rule {ctx.rule!r} of {type(ctx.module).__name__} returned "
                f"{len(grads)} gradients for {len(inputs)} input tensors"
            )
        return (None, None, None, None, None, *grads)


def _placeholder(tensor: Tensor) -> Tensor:
    """A ``meta`` tensor with ``tensor``'s shape and dtype: what a rule that reads no input
    values gets in place of the inputs."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


class BackwardOverride(Capture[None]):
    """The context manager :func:`override_backward` returns.

    Attributes:
        model: the model.
        rules: ``{module name: rule}`` for every selected module, in model order.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Mapping[str, nn.Module],
        rules: Mapping[str, ModuleRule | PerCall],
        keep_output: bool = True,
        keep_inputs: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.rules = {name: rules[name] for name in modules}
        self.keep_output = keep_output
        self.keep_inputs = keep_inputs
        self._modules = dict(modules)
        self._hooks = HookSet()
        self._pending: dict[nn.Module, list[tuple[Tensor, ...] | None]] = {}

    def _open(self) -> None:
        for name, rule in self.rules.items():
            module = self._modules[name]
            self._hooks.forward_pre(module, self._copy_inputs)
            self._hooks.forward(module, self._hook(rule), always_call=True)

    def _close(self) -> None:
        self._hooks.remove()
        self._pending.clear()

    def _copy_inputs(self, module: nn.Module, args: Any) -> Any:
        """Keep the call's tensor inputs. A module that works in place (``inplace=True``,
        as ``nn.ReLU(inplace=True)``) must not rewrite the history of the tensors the
        rule's gradients are for: it runs on detached aliases of them (it changes their
        values, as it would without the rule), or, when the rule reads the input values
        (``keep_inputs``), on copies."""
        inputs = tuple(a for a in args if isinstance(a, Tensor))
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in inputs):
            self._pending.setdefault(module, []).append(None)
            return None
        self._pending.setdefault(module, []).append(inputs)
        if not getattr(module, "inplace", False):
            return None
        protect = Tensor.clone if self.keep_inputs else Tensor.detach
        return tuple(protect(a) if isinstance(a, Tensor) and a.requires_grad else a for a in args)

    def _hook(self, rule: ModuleRule | PerCall) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            stack = self._pending.get(module)
            inputs = stack.pop() if stack else None
            if inputs is None or not isinstance(output, Tensor):
                return None
            call_rule = rule
            if isinstance(rule, PerCall):
                detached = tuple(t.detach() for t in inputs)
                call_rule = rule.factory(module, detached, output.detach())
            return _RuleBackward.apply(
                call_rule, module, self.keep_output, self.keep_inputs, [output.detach()], *inputs
            )

        return hook

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"BackwardOverride({type(self.model).__name__}, layers={list(self.rules)}, {state})"


def override_backward(
    model: nn.Module,
    rules: Mapping[LayerSpec, ModuleRule | PerCall],
    *,
    keep_output: bool = True,
    keep_inputs: bool = True,
) -> BackwardOverride:
    """Give the selected modules another backward rule while the returned context is active.

    Every call of a selected module (a module reused by several blocks too) is overridden
    when grad mode is on and one of its positional tensor inputs requires grad; other
    calls run unchanged. A module whose output is not a tensor keeps its backward.
    Overridden calls of a module with ``inplace=True`` run it on copies of its inputs when
    the rule reads them (``keep_inputs``), so that it cannot overwrite what the rule reads;
    a model that relies on such a module changing its input in place, rather than on its
    return value, is then not supported. Without ``keep_inputs`` the module changes its
    input in place as usual.

    Memory: each overridden call keeps its tensor inputs (with ``keep_inputs``) and its
    output (with ``keep_output``) until the backward, and the tensors the module's own
    backward would have kept are freed.

    Args:
        model: the model.
        rules: ``{layer spec: rule}``, each key a layer spec of :mod:`gradlens.core.selection`
            (a name, glob, module type, module or filter) and each rule a function
            ``(module, inputs, output, grad_output) -> grads`` (see the module docstring),
            or a :class:`PerCall` that makes one such rule per call.
        keep_output: keep each call's output for its rule; ``False`` for rules that do not
            read it (they get ``output=None``), which saves one tensor per call and its
            copy.
        keep_inputs: keep each call's tensor inputs for its rule; ``False`` for rules that
            read only their shapes (they get ``meta`` tensors of the same shape and dtype),
            which frees them after the forward and lets in-place modules run without a copy.

    Returns:
        A context manager (:class:`BackwardOverride`); entering it registers the hooks,
        leaving it removes them, also when the block raises.

    Raises:
        LayerNotFoundError: a layer spec selects nothing.
        ValueError: two specs select the same module.
        TypeError: a rule is not callable.
    """
    chosen: dict[str, ModuleRule | PerCall] = {}
    spec_of: dict[str, Any] = {}
    modules: dict[str, nn.Module] = {}
    for spec, rule in rules.items():
        if not callable(rule) and not isinstance(rule, PerCall):
            raise TypeError(
                f"the backward rule for {spec!r} must be a function "
                f"(module, inputs, output, grad_output) -> grads; got {type(rule).__name__}"
            )
        for name, module in select_layers(model, spec).items():
            if name in chosen:
                raise ValueError(
                    f"layer {name!r} is selected by both {spec_of[name]!r} and {spec!r}; "
                    "give each module one backward rule"
                )
            modules[name], chosen[name], spec_of[name] = module, rule, spec
    ordered = in_model_order(model, modules)
    return BackwardOverride(model, ordered, chosen, keep_output, keep_inputs)


class _FunctionRuleMode(TorchFunctionMode):
    def __init__(self, owner: FunctionOverride) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        handler = self.owner.handlers.get(func)
        if handler is not None and self.owner._depth > 0:
            result = handler(func, args, kwargs)
            if result is not NotImplemented:
                return result
        return func(*args, **kwargs)


class FunctionOverride(Capture[None]):
    """The context manager :func:`override_functions` returns.

    Attributes:
        model: the model.
        handlers: ``{torch function: handler}``.
        within: the names of the modules inside which the handlers apply (``None``: the
            whole block).
    """

    def __init__(
        self,
        model: nn.Module,
        handlers: Mapping[Callable[..., Any], FunctionHandler],
        modules: Mapping[str, nn.Module] | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.handlers = dict(handlers)
        self.within = None if modules is None else list(modules)
        self._modules = dict(modules or {})
        self._hooks = HookSet()
        self._mode = _FunctionRuleMode(self)
        self._depth = 0

    def _open(self) -> None:
        self._depth = 1 if self.within is None else 0
        for module in self._modules.values():
            self._hooks.forward_pre(module, self._enter_module)
            self._hooks.forward(module, self._leave_module, always_call=True)
        self._mode.__enter__()

    def _close(self) -> None:
        try:
            self._mode.__exit__(None, None, None)
        finally:
            self._hooks.remove()
            self._depth = 0

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        self._depth += 1

    def _leave_module(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth -= 1

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        where = "everywhere" if self.within is None else f"within={self.within}"
        names = [getattr(f, "__qualname__", repr(f)) for f in self.handlers]
        return f"FunctionOverride({type(self.model).__name__}, {names}, {where}, {state})"


def override_functions(
    model: nn.Module,
    handlers: Mapping[Callable[..., Any], FunctionHandler],
    *,
    within: Layers | None = None,
) -> FunctionOverride:
    """Reroute torch functions through handlers while selected modules run.

    Example (a residual addition that splits the gradient in proportion to its summands)::

        def proportional_add(func, args, kwargs):
            a, b = args
            if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
                return NotImplemented
            return ProportionalSum.apply(a, b)

        with override_functions(model, {Tensor.add: proportional_add,
                                        Tensor.add_: proportional_add},
                                within=BasicBlock):
            out = model(x)

    A function reaches the handler under the name PyTorch dispatches it by: ``a + b`` and
    ``a.add(b)`` are ``Tensor.add``, ``a += b`` is ``Tensor.add_``, ``torch.add(a, b)`` is
    ``torch.add``, ``a @ b`` is ``Tensor.matmul``; list each form the model may use. A
    handler of an in-place function that returns a new tensor is right for ``a += b``
    (Python rebinds ``a`` to the result) but not for a bare ``a.add_(b)`` statement.

    Args:
        model: the model.
        handlers: ``{torch function: handler}``, each handler
            ``(func, args, kwargs) -> result`` or ``NotImplemented`` to run ``func`` as usual.
        within: the modules inside whose forward the handlers apply (a layer spec of
            :mod:`gradlens.core.selection`: name, glob, type, list...); ``None``: anywhere
            while the context is active.

    Returns:
        A context manager (:class:`FunctionOverride`); leaving it removes the mode and the
        hooks, also when the block raises.

    Raises:
        LayerNotFoundError: ``within`` selects nothing.
        TypeError: a handler is not callable.
    """
    for func, handler in handlers.items():
        if not callable(handler):
            raise TypeError(
                f"the handler for {getattr(func, '__qualname__', func)!r} must be a function "
                f"(func, args, kwargs) -> result; got {type(handler).__name__}"
            )
    modules = None if within is None else select_layers(model, within)
    return FunctionOverride(model, handlers, modules)
