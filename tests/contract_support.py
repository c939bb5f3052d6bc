"""The model, inputs and state snapshot of the contract test (tests/test_contract.py).

``ContractNet`` is a small CNN with everything that can go wrong: BatchNorm (buffers that
train-mode forwards update), Dropout (train-mode randomness), an in-place ReLU, and
:class:`ErrorModule` s (after and inside the last convolution block) that raise
:class:`Boom` when armed. ``ContractViT`` is the same for the attention entry points: the
fused attention kernel and ``nn.MultiheadAttention``, attention dropout, BatchNorm, an
:class:`ErrorModule` after the attention.

:func:`snapshot` records everything gradlens promises not to change (the global
``torch.backends.mha`` fast-path setting too); :func:`assert_unchanged` compares two
snapshots and names what differs. They are the one model-state check of the whole test
suite: every test that says "the model is left as it was" uses them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.modules.module as module_globals
from torch import Tensor, nn

NUM_CLASSES = 3
BATCH = 2
SIZE = 8
CAM_LAYER = "block2"
"""The last convolution block: it runs before the error module."""

MODES = ("eval", "train", "frozen", "no_grad", "inference_mode")
"""How the model and input are set up and the call is made:

* ``eval``: ``model.eval()``; the input is a leaf that requires grad and has a ``.grad``;
* ``train``: ``model.train()`` (BatchNorm updates its statistics, Dropout is active); the
  input as in ``eval``;
* ``frozen``: ``model.eval()`` with every parameter ``requires_grad=False``; a plain input;
* ``no_grad``: ``model.eval()``; the call runs under ``torch.no_grad()``;
* ``inference_mode``: ``model.eval()``; the input is created and the call runs under
  ``torch.inference_mode()``.
"""


class Boom(Exception):
    """The distinctive error an armed :class:`ErrorModule` raises."""


RAISED: list[Boom] = []
"""Every :class:`Boom` raised since :func:`armed` was entered (also by copies of the model)."""


class ErrorModule(nn.Module):
    """The identity, or an error in the middle of the forward pass once ``armed``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: Tensor) -> Tensor:
        if self.armed:
            RAISED.append(Boom("ErrorModule was armed"))
            raise RAISED[-1]
        return x


class ContractNet(nn.Module):
    """stem -> block1 -> block2 -> boom -> head; ``(B, 3, 8, 8)`` -> ``(B, 3)`` logits.

    Two error modules: ``boom`` between ``block2`` and the head, and ``block2.2`` inside
    ``block2`` (between its BatchNorm and ReLU).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block1 = nn.Sequential(
            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True)
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), ErrorModule(), nn.ReLU()
        )
        self.boom = ErrorModule()
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, NUM_CLASSES)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.boom(self.block2(self.block1(self.stem(x)))))


class SelfAttention(nn.Module):
    """Two-head self-attention through ``F.scaled_dot_product_attention`` (the fused kernel,
    as timm and Hugging Face ``sdpa`` call it), with attention dropout in train mode."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, 2, width // 2).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=0.1 if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class ContractViT(nn.Module):
    """The contract's attention model: ``(B, 3, 8, 8)`` -> ``(B, 3)`` logits.

    ``patches`` (4 x 4 patches: a 2 x 2 grid) -> class token + positions -> ``attn0``
    (:class:`SelfAttention`, fused kernel) -> ``attn1`` (``nn.MultiheadAttention`` called
    with ``need_weights=False``, as torchvision does; its fast path is a global setting the
    capture switches off) -> ``boom`` (an :class:`ErrorModule`) -> ``head`` (BatchNorm on
    the class token, whose statistics train-mode forwards update; Dropout; linear).
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, width, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, width))
        self.position = nn.Parameter(torch.randn(1, 5, width) * 0.1)
        self.norm0 = nn.LayerNorm(width)
        self.attn0 = SelfAttention(width)
        self.norm1 = nn.LayerNorm(width)
        self.attn1 = nn.MultiheadAttention(width, 2, dropout=0.1, batch_first=True)
        self.boom = ErrorModule()
        self.head = nn.Sequential(
            nn.BatchNorm1d(width), nn.Dropout(0.5), nn.Linear(width, NUM_CLASSES)
        )

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)  # (B, 4, width)
        cls = self.class_token.expand(len(x), -1, -1)
        h = torch.cat([cls, tokens], dim=1) + self.position
        h = h + self.attn0(self.norm0(h))
        normed = self.norm1(h)
        h = h + self.attn1(normed, normed, normed, need_weights=False)[0]
        return self.head(self.boom(h)[:, 0])


MODELS = ("cnn", "transformer")
"""The contract's models: ``"cnn"`` (:class:`ContractNet`), ``"transformer"``
(:class:`ContractViT`, for the attention entry points)."""


@dataclass
class Setup:
    """A model and input prepared for one mode, and the context to call gradlens in."""

    model: ContractNet | ContractViT
    x: Tensor
    mode: str

    def context(self) -> contextlib.AbstractContextManager[Any]:
        if self.mode == "no_grad":
            return torch.no_grad()
        if self.mode == "inference_mode":
            return torch.inference_mode()
        return contextlib.nullcontext()


def make_model(kind: str = "cnn") -> ContractNet | ContractViT:
    """A model of ``kind`` (see :data:`MODELS`) with fixed weights and non-trivial BatchNorm
    statistics, in eval mode."""
    torch.manual_seed(0)
    model = ContractNet() if kind == "cnn" else ContractViT()
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_input() -> Tensor:
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def setup(mode: str, kind: str = "cnn") -> Setup:
    """The model of ``kind`` (see :data:`MODELS`) and the input for ``mode`` (see
    :data:`MODES`), with some ``.grad`` preset."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; one of {MODELS}")
    model = make_model(kind)
    if mode == "train":
        model.train()
    if mode == "frozen":
        model.requires_grad_(False)
    # known gradients that a call must neither replace nor accumulate into
    last = model.head[-1].weight
    last.grad = torch.full_like(last, 0.25)
    early = model.block1[0].bias if isinstance(model, ContractNet) else model.attn0.qkv.bias
    early.grad = torch.arange(float(early.numel()))
    if mode == "inference_mode":
        with torch.inference_mode():
            x = make_input()
    else:
        x = make_input()
        if mode in ("eval", "train"):
            x.requires_grad_(True)
            x.grad = torch.full_like(x, 0.5)
    return Setup(model, x, mode)


@contextlib.contextmanager
def armed(model: nn.Module, name: str = "boom") -> Iterator[None]:
    """The model's forward raises :class:`Boom` at the error module ``name``."""
    module = model.get_submodule(name)
    if not isinstance(module, ErrorModule):
        raise ValueError(f"{name!r} is not an ErrorModule of the model")
    module.armed = True
    RAISED.clear()
    try:
        yield
    finally:
        module.armed = False


def _hook_dicts(obj: Any) -> dict[str, list[tuple[Any, Any]]]:
    """Every ``*hook*`` dict attribute of ``obj``, as item lists (handles and functions)."""
    return {
        name: list(value.items())
        for name, value in vars(obj).items()
        if "hook" in name and isinstance(value, dict)
    }


def _tensor_state(t: Tensor | None) -> dict[str, Any] | None:
    """A tensor's state. A meta tensor (a weight that accelerate keeps offloaded and loads
    inside the module's forward) has no values, and accelerate puts a new meta tensor in
    its place after every forward: its device, shape, dtype and flags are what it keeps,
    its values are checked in the offload store (:func:`_offloaded_weights`)."""
    if t is None:
        return None
    grad = t.grad if not t.is_inference() else None
    meta = t.is_meta
    return {
        "object": None if meta else t,
        "value": (t.device, t.shape, t.dtype) if meta else t.detach().clone(),
        "is_inference": t.is_inference(),
        "requires_grad": t.requires_grad,
        "grad": grad,
        "grad_value": None if grad is None else grad.detach().clone(),
        "backward_hooks": None if t._backward_hooks is None else list(t._backward_hooks.items()),
        "post_accumulate_grad_hooks": (
            None
            if getattr(t, "_post_accumulate_grad_hooks", None) is None
            else list(t._post_accumulate_grad_hooks.items())
        ),
    }


def _accelerate_state(module: nn.Module) -> tuple[Any, Any, Any]:
    """What accelerate's dispatch puts on a module: its ``_hf_hook``, the replaced instance
    ``forward`` and the ``_old_forward`` it wraps (``None`` where absent)."""
    state = vars(module)
    return state.get("_hf_hook"), state.get("forward"), state.get("_old_forward")


def _offloaded_weights(module: nn.Module) -> dict[str, Tensor]:
    """The values of a module's own meta parameters and buffers, read where accelerate
    keeps them offloaded (on the CPU or on disk: its ``AlignDevicesHook``'s
    ``weights_map``), by name."""
    weights = getattr(vars(module).get("_hf_hook"), "weights_map", None)
    own = {**module._parameters, **module._buffers}
    offloaded = [name for name, t in own.items() if t is not None and t.is_meta]
    if weights is None or not offloaded:
        return {}
    return {name: torch.as_tensor(weights[name]).detach().clone() for name in offloaded}


def _attention_settings(module: nn.Module) -> tuple[Any, Any]:
    """A Hugging Face model's attention kernel and a timm attention's fused flag."""
    config = getattr(module, "config", None)
    return getattr(config, "_attn_implementation", None), getattr(module, "fused_attn", None)


def snapshot(model: nn.Module, x: Tensor | None = None) -> dict[str, Any]:
    """Everything gradlens promises not to change, for :func:`assert_unchanged`.

    Global state (grad mode, inference mode, the ``nn.MultiheadAttention`` fast path, the
    global module hooks); per module: its hook dicts, train flag, identity, attention
    settings (a Hugging Face config's ``_attn_implementation``, timm's ``fused_attn``), and
    for a model dispatched by accelerate its ``_hf_hook``, replaced ``forward`` and the
    values of its offloaded weights; per parameter and buffer, and for the input ``x`` if
    given: the tensor object, its values (device, shape and dtype for a meta tensor),
    ``requires_grad``, ``is_inference()``, ``.grad`` (object and values) and tensor hooks.
    """
    return {
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "mha_fastpath": torch.backends.mha.get_fastpath_enabled(),
        "global_hooks": {
            name: list(value.items())
            for name, value in vars(module_globals).items()
            if name.startswith("_global_") and "hook" in name and isinstance(value, dict)
        },
        "module_hooks": {name: _hook_dicts(m) for name, m in model.named_modules()},
        "training": {name: m.training for name, m in model.named_modules()},
        "modules": {name: m for name, m in model.named_modules()},
        "attention_settings": {name: _attention_settings(m) for name, m in model.named_modules()},
        "accelerate": {name: _accelerate_state(m) for name, m in model.named_modules()},
        "offloaded": {name: _offloaded_weights(m) for name, m in model.named_modules()},
        "parameters": {name: _tensor_state(p) for name, p in model.named_parameters()},
        "buffers": {name: _tensor_state(b) for name, b in model.named_buffers()},
        "input": _tensor_state(x),
    }


def _compare_tensor(
    where: str, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> list[str]:
    if before is None or after is None:
        return [] if before is after else [f"{where}: appeared or disappeared"]
    problems = []
    if after["object"] is not before["object"]:
        problems.append(f"{where}: replaced by another tensor")
    if isinstance(before["value"], tuple) or isinstance(after["value"], tuple):
        if after["value"] != before["value"]:
            problems.append(
                f"{where}: (device, shape, dtype) {before['value']} -> {after['value']}"
            )
    elif not torch.equal(after["value"], before["value"]):
        problems.append(f"{where}: values changed")
    if after["is_inference"] != before["is_inference"]:
        problems.append(
            f"{where}: is_inference {before['is_inference']} -> {after['is_inference']}"
        )
    if after["requires_grad"] != before["requires_grad"]:
        problems.append(
            f"{where}: requires_grad {before['requires_grad']} -> {after['requires_grad']}"
        )
    if after["grad"] is not before["grad"]:
        problems.append(f"{where}: .grad replaced ({before['grad'] is None} was None)")
    elif before["grad_value"] is not None and not torch.equal(
        after["grad_value"], before["grad_value"]
    ):
        problems.append(f"{where}: .grad values changed")
    for hooks in ("backward_hooks", "post_accumulate_grad_hooks"):
        if after[hooks] != before[hooks]:
            problems.append(f"{where}: tensor {hooks} changed: {before[hooks]} -> {after[hooks]}")
    return problems


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two :func:`snapshot` results, one line per difference."""
    problems = []
    for flag in ("grad_enabled", "inference_mode", "mha_fastpath"):
        if after[flag] != before[flag]:
            problems.append(f"torch {flag}: {before[flag]} -> {after[flag]}")
    for name, hooks in before["global_hooks"].items():
        if after["global_hooks"].get(name) != hooks:
            problems.append(f"global {name} changed: {hooks} -> {after['global_hooks'].get(name)}")
    if list(after["modules"]) != list(before["modules"]) or any(
        after["modules"][n] is not m for n, m in before["modules"].items()
    ):
        problems.append("the module tree changed")
    for name, hooks in before["module_hooks"].items():
        for kind, items in hooks.items():
            now = after["module_hooks"].get(name, {}).get(kind)
            if now != items:
                problems.append(f"module {name or '<root>'}: {kind} {items} -> {now}")
    for name, settings in before["attention_settings"].items():
        now = after["attention_settings"].get(name)
        if now != settings:
            problems.append(f"module {name or '<root>'}: attention settings {settings} -> {now}")
    for name, state in before["accelerate"].items():
        now = after["accelerate"].get(name)
        if now is None or any(a is not b for a, b in zip(now, state)):
            problems.append(
                f"module {name or '<root>'}: accelerate hook or forward {state} -> {now}"
            )
    for name, weights in before["offloaded"].items():
        now = after["offloaded"].get(name, {})
        if list(now) != list(weights) or any(
            not torch.equal(now[k], w) for k, w in weights.items()
        ):
            problems.append(f"module {name or '<root>'}: offloaded weights changed")
    for name, training in before["training"].items():
        if after["training"].get(name) != training:
            problems.append(f"module {name or '<root>'}: training {training} -> {not training}")
    for group in ("parameters", "buffers"):
        if list(after[group]) != list(before[group]):
            problems.append(
                f"{group} added or removed: {list(before[group])} -> {list(after[group])}"
            )
            continue
        for name, state in before[group].items():
            problems += _compare_tensor(f"{group[:-1]} {name}", state, after[group][name])
    problems += _compare_tensor("input x", before["input"], after["input"])
    return problems


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Fail naming every difference between two snapshots."""
    problems = differences(before, after)
    assert not problems, "the call left side effects:\n  " + "\n  ".join(problems)
