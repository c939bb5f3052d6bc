"""The engine's modified backward passes: module rules (``override_backward``) and
function rules (``override_functions``)."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from gradlens.core.backward import PerCall, override_backward, override_functions
from gradlens.errors import LayerNotFoundError


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))


def _halved_gradient(module: nn.Module, inputs: Any, output: Tensor, grad: Tensor) -> Any:
    (x,) = inputs
    return (grad @ module.weight / 2,)


def test_a_module_rule_replaces_the_gradient_through_the_module() -> None:
    model = _mlp()
    x = torch.randn(5, 4, requires_grad=True)
    (plain,) = torch.autograd.grad(model(x).sum(), x)
    with override_backward(model, {"0": _halved_gradient}):
        (ruled,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(ruled, plain / 2)


def test_a_module_rule_leaves_the_forward_values_unchanged() -> None:
    model = _mlp()
    x = torch.randn(5, 4, requires_grad=True)
    with override_backward(model, {nn.Linear: _halved_gradient}):
        out = model(x)
    torch.testing.assert_close(out, model(x))


def test_a_module_rule_gets_the_detached_inputs_and_output() -> None:
    model = _mlp()
    x = torch.randn(5, 4, requires_grad=True)
    seen: dict[str, Any] = {}

    def rule(module: nn.Module, inputs: Any, output: Tensor, grad: Tensor) -> Any:
        seen.update(inputs=inputs, output=output, grad=grad)
        return (grad @ module.weight,)

    with override_backward(model, {"2": rule}):
        out = model(x)
        torch.autograd.grad(out.sum(), x)
    assert not seen["inputs"][0].requires_grad and not seen["output"].requires_grad
    torch.testing.assert_close(seen["output"], out.detach())
    torch.testing.assert_close(seen["grad"], torch.ones(5, 2))


def test_module_rules_come_off_on_exit_also_when_the_block_raises() -> None:
    model = _mlp()
    x = torch.randn(5, 4, requires_grad=True)
    with pytest.raises(KeyError), override_backward(model, {"0": _halved_gradient}):
        raise KeyError
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    (expected,) = torch.autograd.grad(_mlp()(x).sum(), x)
    torch.testing.assert_close(grad, expected)
    assert all(not m._forward_hooks for m in model.modules())


def test_a_module_rule_is_not_applied_without_a_tape() -> None:
    model = _mlp()
    calls = []

    def rule(*args: Any) -> Any:
        calls.append(1)
        return (None,)

    with override_backward(model, {"0": rule}), torch.no_grad():
        model(torch.randn(2, 4))
    assert calls == []


def test_a_rule_with_the_wrong_number_of_gradients_is_an_error() -> None:
    model = _mlp()
    x = torch.randn(5, 4, requires_grad=True)
    with override_backward(model, {"0": lambda *args: ()}):
        out = model(x)
    with pytest.raises(RuntimeError, match="returned 0 gradients for 1 input"):
        torch.autograd.grad(out.sum(), x)


def test_a_spec_that_selects_nothing_is_refused_before_any_hook() -> None:
    model = _mlp()
    with pytest.raises(LayerNotFoundError):
        override_backward(model, {"fc": _halved_gradient})
    assert all(not m._forward_hooks for m in model.modules())


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) + x


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _Residual()

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) + 1


def test_a_function_rule_applies_only_inside_the_selected_modules() -> None:
    torch.manual_seed(0)
    model = _Outer()
    x = torch.randn(2, 3)
    seen = []

    def doubled_add(func: Any, args: Any, kwargs: Any) -> Any:
        seen.append(func)
        return func(*args, **kwargs) * 2

    with override_functions(model, {Tensor.add: doubled_add}, within="block"):
        out = model(x)
    torch.testing.assert_close(out, (model.block.inner(x) + x) * 2 + 1)
    assert seen == [Tensor.add]


def test_a_function_handler_may_decline_with_not_implemented() -> None:
    model = _Outer()
    x = torch.randn(2, 3)
    with override_functions(model, {Tensor.add: lambda f, a, k: NotImplemented}):
        out = model(x)
    torch.testing.assert_close(out, model(x))


def test_function_rules_come_off_on_exit() -> None:
    model = _Outer()
    x = torch.randn(2, 3)
    with (
        pytest.raises(KeyError),
        override_functions(model, {Tensor.add: lambda f, a, k: 0}, within=_Residual),
    ):
        raise KeyError
    torch.testing.assert_close(model(x), model.block.inner(x) + x + 1)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_rule_on_an_in_place_module_reads_the_input_before_the_module_ran() -> None:
    model = _mlp()  # its ReLU works in place
    x = torch.randn(5, 4, requires_grad=True)
    seen: dict[str, Tensor] = {}

    def identity_rule(module: nn.Module, inputs: Any, output: Tensor, grad: Tensor) -> Any:
        seen.update(input=inputs[0], output=output)
        return (grad,)

    with override_backward(model, {"1": identity_rule}):
        out = model(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
    hidden = model[0](x).detach()
    torch.testing.assert_close(seen["input"], hidden)
    torch.testing.assert_close(seen["output"], hidden.relu())
    # the ReLU's own backward (which would zero the negative part) did not run
    torch.testing.assert_close(grad, (torch.ones(5, 2) @ model[2].weight) @ model[0].weight)


def test_a_per_call_rule_is_made_at_each_call_of_a_reused_module() -> None:
    torch.manual_seed(0)
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    x = torch.randn(2, 3, requires_grad=True)
    made: list[Tensor] = []

    def factory(module: nn.Module, inputs: Any, output: Tensor) -> Any:
        made.append(inputs[0])
        scale = float(len(made))
        return lambda module, inputs, output, grad: (grad * scale,)

    with override_backward(model, {"1": PerCall(factory)}):
        out = model(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
    assert len(made) == 2
    torch.testing.assert_close(made[1], model[2](model[0](x).relu()).detach())
    expected = 2 * torch.ones(2, 3) @ model[2].weight @ model[0].weight
    torch.testing.assert_close(grad, expected)


def test_without_keep_output_the_rule_gets_no_output() -> None:
    model = _mlp()
    x = torch.randn(5, 4, requires_grad=True)
    seen: list[Any] = []

    def rule(module: nn.Module, inputs: Any, output: Any, grad: Tensor) -> Any:
        seen.append(output)
        return (grad @ module.weight,)

    with override_backward(model, {"0": rule}, keep_output=False):
        (grad,) = torch.autograd.grad(model(x).sum(), x)
    (expected,) = torch.autograd.grad(model(x).sum(), x)
    assert seen == [None]
    torch.testing.assert_close(grad, expected)


class _KeepsATemporary(nn.Module):
    """Multiplies by a tensor made inside forward, which its own backward would keep."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[Any] = []

    def forward(self, x: Tensor) -> Tensor:
        factor = torch.full_like(x, 3.0)
        self.made.append(weakref.ref(factor))
        return x * factor


def test_an_overridden_module_frees_what_its_own_backward_would_keep() -> None:
    module = _KeepsATemporary()
    x = torch.randn(2, 3, requires_grad=True)
    out = module(x)
    assert module.made[0]() is not None  # the plain graph keeps the factor
    with override_backward(module, {"": lambda m, i, o, g: (g * 3,)}):
        out = module(x)
    assert module.made[1]() is None
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, torch.full_like(x, 3.0))


def test_without_keep_inputs_the_rule_gets_meta_inputs_of_the_same_shape() -> None:
    model = _mlp()
    x = torch.randn(5, 4, requires_grad=True)
    seen: list[Tensor] = []

    def rule(module: nn.Module, inputs: Any, output: Any, grad: Tensor) -> Any:
        seen.append(inputs[0])
        return (grad,)

    with override_backward(model, {"1": rule}, keep_inputs=False, keep_output=False):
        (grad,) = torch.autograd.grad(model(x).sum(), x)
    (placeholder,) = seen
    assert placeholder.is_meta and placeholder.shape == (5, 3)
    assert placeholder.dtype == x.dtype
    torch.testing.assert_close(grad, (torch.ones(5, 2) @ model[2].weight) @ model[0].weight)


def test_without_keep_inputs_an_in_place_module_changes_its_input_as_it_would_alone() -> None:
    hidden = nn.Linear(4, 3)
    relu = nn.ReLU(inplace=True)
    x = torch.randn(5, 4, requires_grad=True)
    kept: list[Tensor] = []

    def forward(x: Tensor) -> Tensor:
        h = hidden(x)
        kept.append(h)
        return relu(h)

    wrapper = nn.ModuleDict({"hidden": hidden, "relu": relu})
    rules = {"relu": lambda m, i, o, g: (g,)}
    with override_backward(wrapper, rules, keep_inputs=False, keep_output=False):
        out = forward(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
    assert out.data_ptr() == kept[0].data_ptr()  # no copy: the module ran on its input
    torch.testing.assert_close(kept[0], out)  # which it changed in place, as without a rule
    torch.testing.assert_close(grad, torch.ones(5, 3) @ hidden.weight)


def test_with_keep_inputs_an_in_place_module_runs_on_a_copy() -> None:
    model = _mlp()
    x = torch.randn(5, 4, requires_grad=True)
    with override_backward(model, {"1": lambda m, i, o, g: (g,)}):
        hidden = model[0](x)
        out = model[1](hidden)
    assert out.data_ptr() != hidden.data_ptr()
    assert (hidden < 0).any()  # the input kept its negative values
