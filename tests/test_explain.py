"""gradlens.passes.clean_pass: the one forward that fixes the target on the clean input."""

from __future__ import annotations

import torch
from torch import nn

from gradlens.core.inputs import ModelInput
from gradlens.passes import clean_pass

from .contract_support import assert_unchanged, snapshot


def linear_model() -> nn.Module:
    """logits = x @ W.T: for x = e_i the logits are row i of W.T."""
    model = nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 3], [0, 0, 0]]))
    return model.eval()


X = torch.eye(3)[:2]  # sample 0 -> class 0 (logit 1), sample 1 -> class 1 (logit 2)


def test_none_becomes_the_top_class_of_each_sample():
    clean = clean_pass(linear_model(), ModelInput.parse(X))
    assert torch.equal(clean.target, torch.tensor([0, 1]))
    assert torch.equal(clean.scores, torch.tensor([1.0, 2.0]))
    assert not clean.scores.is_inference() and not clean.target.is_inference()


def test_an_int_target_becomes_one_class_per_sample():
    clean = clean_pass(linear_model(), ModelInput.parse(X), 2)
    assert torch.equal(clean.target, torch.tensor([2, 2]))
    assert torch.equal(clean.scores, torch.tensor([0.0, 0.0]))


def test_stacked_copies_explain_the_classes_of_the_first_copy():
    # copy 0: the input; copy 1: the third basis vector, whose top class is 2
    both = ModelInput.parse(torch.cat([X, torch.eye(3)[2:].repeat(2, 1)]))
    clean = clean_pass(linear_model(), both, copies=2)
    assert torch.equal(clean.target, torch.tensor([0, 1]))
    assert torch.equal(clean.scores, torch.tensor([1.0, 2.0, 0.0, 0.0]))


def test_a_callable_target_is_kept_and_scores_it():
    clean = clean_pass(linear_model(), ModelInput.parse(X), lambda out: out.sum(1))
    assert callable(clean.target) and clean.classes is None
    assert torch.equal(clean.scores, torch.tensor([1.0, 2.0]))


def test_layers_are_recorded_and_train_mode_buffers_kept():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).train()
    before = snapshot(model)
    clean = clean_pass(model, ModelInput.parse(torch.randn(4, 3)), layers="1")
    assert clean.activations["1"].shape == (4, 3) and clean.calls == {"1": 1}
    assert_unchanged(before, snapshot(model))
