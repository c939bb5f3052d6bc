"""gradlens.token_attributions: one score per input token, on tiny HF BERT and GPT-2 configs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import gradlens
from gradlens import targets
from gradlens.errors import LayerNotFoundError, TokenInputError
from gradlens.text import TokenInput, baseline_ids

from .contract_support import assert_unchanged, snapshot
from .zoo import hf_bert, token_ids

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8


def _masked_batch() -> dict[str, torch.Tensor]:
    """Two sequences of 8 tokens, the second with 3 padding positions at the end."""
    ids = token_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# -- equal to Captum ---------------------------------------------------------------------


def test_integrated_gradients_equals_captum_layer_ig_on_bert(tiny_bert: nn.Module) -> None:
    from captum.attr import LayerIntegratedGradients

    ids = token_ids(2, 8)
    mask = torch.ones_like(ids)
    ours = gradlens.token_attributions(
        tiny_bert, {"input_ids": ids, "attention_mask": mask}, [0, 2], steps=STEPS
    )

    def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return tiny_bert(input_ids=input_ids, attention_mask=attention_mask).logits

    layer = LayerIntegratedGradients(logits, tiny_bert.bert.embeddings.word_embeddings)
    theirs = layer.attribute(
        ids,
        baselines=torch.zeros_like(ids),  # BertConfig's pad_token_id
        target=[0, 2],
        additional_forward_args=(mask,),
        n_steps=STEPS,
        method="gausslegendre",
    )
    torch.testing.assert_close(ours, theirs.sum(-1), atol=1e-5, rtol=0)


def test_integrated_gradients_equals_captum_layer_ig_on_gpt2(tiny_gpt2: nn.Module) -> None:
    from captum.attr import LayerIntegratedGradients

    ids = token_ids(2, 10)
    ours = gradlens.token_attributions(tiny_gpt2, ids, targets.token(7), baseline=5, steps=STEPS)

    def next_token_logits(input_ids: torch.Tensor) -> torch.Tensor:
        return tiny_gpt2(input_ids).logits[:, -1]

    layer = LayerIntegratedGradients(next_token_logits, tiny_gpt2.transformer.wte)
    theirs = layer.attribute(
        ids, baselines=torch.full_like(ids, 5), target=7, n_steps=STEPS, method="gausslegendre"
    )
    torch.testing.assert_close(ours, theirs.sum(-1), atol=1e-5, rtol=0)


# -- the methods and the reductions --------------------------------------------------------


def test_input_x_gradient_is_the_embedding_layers_gradient_x_activation_summed(
    tiny_gpt2: nn.Module,
) -> None:
    ids = token_ids(2, 6)
    target = targets.token(3)
    ours = gradlens.token_attributions(tiny_gpt2, ids, target, method="input_x_gradient")
    layer = gradlens.layer_gradient_x_activation(tiny_gpt2, ids, "transformer.wte", target)
    torch.testing.assert_close(ours, layer.sum(-1), atol=1e-6, rtol=0)


def test_norm_is_the_l2_norm_over_the_hidden_size(tiny_bert: nn.Module) -> None:
    ids = token_ids(1, 6)
    ours = gradlens.token_attributions(tiny_bert, ids, 1, baseline=3, reduce="norm", steps=STEPS)
    layer = gradlens.layer_integrated_gradients(
        tiny_bert,
        ids,
        "bert.embeddings.word_embeddings",
        1,
        baselines=torch.full_like(ids, 3),
        steps=STEPS,
    )
    torch.testing.assert_close(ours, layer.norm(dim=-1), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("saliency", {}),
        ("input_x_gradient", {}),
        ("integrated_gradients", {"steps": 4}),
        ("smoothgrad", {"n": 4, "seed": 0}),
        ("vargrad", {"n": 4, "seed": 0}),
        ("occlusion", {}),
        ("deeplift", {}),
        ("deeplift_shap", {}),
        ("gradient_shap", {"n": 4, "seed": 0}),
    ],
)
def test_every_layer_capable_method_gives_one_score_per_token_and_zero_on_padding(
    tiny_bert: nn.Module, method: str, options: dict
) -> None:
    inputs = _masked_batch()
    scores = gradlens.token_attributions(tiny_bert, inputs, 1, method=method, **options)
    assert scores.shape == (2, 8)
    assert torch.equal(scores[1, 5:], torch.zeros(3))
    assert scores[0].abs().sum() > 0 and scores[1, :5].abs().sum() > 0


def test_distribution_methods_pair_each_sequence_with_its_own_baseline(
    tiny_bert: nn.Module,
) -> None:
    # with one baseline per sequence (here a different token for each), DeepLiftShap is
    # DeepLIFT: no sequence is paired with the other's baseline
    inputs = _masked_batch()
    starts = torch.tensor([[4] * 8, [5] * 8])
    shap = gradlens.token_attributions(
        tiny_bert, inputs, 1, method="deeplift_shap", baseline=starts
    )
    single = gradlens.token_attributions(tiny_bert, inputs, 1, method="deeplift", baseline=starts)
    torch.testing.assert_close(shap, single)


def test_occlusion_scores_a_token_by_replacing_it_with_the_baselines_embedding(
    tiny_gpt2: nn.Module,
) -> None:
    ids = token_ids(1, 5)
    target = targets.token(9)
    scores = gradlens.token_attributions(tiny_gpt2, ids, target, method="occlusion", baseline=4)
    with torch.no_grad():
        clean = tiny_gpt2(ids).logits[0, -1, 9]
        occluded = ids.clone()
        occluded[0, 2] = 4
        # the position embedding stays: only the token embedding is replaced
        drop = clean - tiny_gpt2(occluded).logits[0, -1, 9]
    torch.testing.assert_close(scores[0, 2], drop, atol=1e-5, rtol=0)


def test_k_targets_per_sample_give_one_row_per_target(tiny_gpt2: nn.Module) -> None:
    ids = token_ids(2, 6)
    both = gradlens.token_attributions(
        tiny_gpt2, ids, targets.token([[1, 2], [3, 4]]), method="saliency"
    )
    first = gradlens.token_attributions(tiny_gpt2, ids, targets.token([1, 3]), method="saliency")
    assert both.shape == (2, 2, 6)
    torch.testing.assert_close(both[:, 0], first, atol=1e-6, rtol=0)


# -- baselines ------------------------------------------------------------------------------


def test_a_config_token_baseline_keeps_padding_positions_own_tokens() -> None:
    model = nn.Identity()
    model.config = SimpleNamespace(mask_token_id=9)  # what a HF config holds
    inputs = _masked_batch()
    base = baseline_ids(model, TokenInput.parse(inputs), "mask")
    assert base is not None
    assert torch.equal(base[0], torch.full((8,), 9))
    assert torch.equal(base[1], torch.tensor([9, 9, 9, 9, 9, 0, 0, 0]))


def test_a_token_id_baseline_replaces_every_real_token() -> None:
    inputs = _masked_batch()
    base = baseline_ids(nn.Identity(), TokenInput.parse(inputs), 7)
    assert base is not None
    assert torch.equal(base[0], torch.full((8,), 7))
    assert torch.equal(base[1], torch.tensor([7, 7, 7, 7, 7, 0, 0, 0]))


def test_zero_baseline_is_the_token_whose_embedding_is_zero() -> None:
    torch.manual_seed(0)
    model = _TwoEmbeddings(padding_idx=0).eval()  # token 0 embeds to zeros
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    zero = gradlens.token_attributions(model, ids, [0, 2], baseline="zero", steps=STEPS)
    token_0 = gradlens.token_attributions(model, ids, [0, 2], baseline=0, steps=STEPS)
    torch.testing.assert_close(zero, token_0, atol=1e-6, rtol=0)
    assert zero.abs().sum() > 0


def test_a_pad_baseline_on_a_config_without_padding_names_the_field_and_the_alternative(
    tiny_gpt2: nn.Module,
) -> None:
    ids = token_ids(1, 4)
    before = snapshot(tiny_gpt2, ids)
    with pytest.raises(TokenInputError, match=r"model\.config\.pad_token_id.*baseline=<id>"):
        gradlens.token_attributions(tiny_gpt2, ids, targets.token(1))
    assert_unchanged(before, snapshot(tiny_gpt2, ids))


# -- the embedding layer -------------------------------------------------------------------


class _TwoEmbeddings(nn.Module):
    """Position embeddings registered first, token embeddings run first."""

    def __init__(self, padding_idx: int | None = None) -> None:
        super().__init__()
        self.positions = nn.Embedding(16, 4)
        self.tokens = nn.Embedding(10, 4, padding_idx=padding_idx)
        self.head = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.tokens(ids)
        hidden = hidden + self.positions(torch.arange(ids.shape[1]))
        return self.head(torch.tanh(hidden).mean(1))


def test_without_get_input_embeddings_the_first_embedding_that_runs_is_used() -> None:
    torch.manual_seed(0)
    model = _TwoEmbeddings().eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    ours = gradlens.token_attributions(model, ids, 1, method="input_x_gradient")
    expected = gradlens.layer_gradient_x_activation(model, ids, "tokens", 1).sum(-1)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


class _SharedEmbedding(nn.Module):
    """An encoder-decoder in miniature: one embedding runs twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(8, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head((self.embed(ids) + self.embed(ids.flip(1))).mean(1))


def test_an_embedding_layer_that_runs_twice_is_refused_with_the_way_out() -> None:
    model = _SharedEmbedding().eval()
    ids = torch.tensor([[1, 2, 3]])
    before = snapshot(model, ids)
    with pytest.raises(ValueError, match="'embed' runs more than once.*layer="):
        gradlens.token_attributions(model, ids, 1, method="saliency")
    assert_unchanged(before, snapshot(model, ids))


def test_embeddings_of_another_shape_or_dtype_are_refused_naming_both() -> None:
    model = _TwoEmbeddings().eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    wrapped = gradlens.text.FromEmbeddings(model, "tokens")
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\).*shape \(1, 3, 4\).*\(B, T, H\)"):
        wrapped(torch.zeros(1, 3, 4), ids)
    with pytest.raises(ValueError, match="float32 on cpu.*float64 on cpu"):
        wrapped(torch.zeros(1, 4, 4, dtype=torch.float64), ids)


def test_a_model_without_an_embedding_layer_is_refused_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    ids = torch.tensor([[1, 2, 3, 0]])
    before = snapshot(model, ids)
    with pytest.raises(LayerNotFoundError, match="no input embedding layer.*layer="):
        gradlens.token_attributions(model, ids, 1)
    assert_unchanged(before, snapshot(model, ids))


def test_a_mapping_without_input_ids_is_refused(tiny_bert: nn.Module) -> None:
    with pytest.raises(TokenInputError, match="'input_ids'"):
        gradlens.token_attributions(tiny_bert, {"ids": token_ids(1, 4)}, 1)


def test_float_inputs_are_refused(tiny_bert: nn.Module) -> None:
    with pytest.raises(TokenInputError, match="integer tensor"):
        gradlens.token_attributions(tiny_bert, torch.rand(1, 4), 1)


# -- zero side effects ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "train", "frozen", "no_grad", "inference_mode"])
def test_the_model_is_left_untouched(mode: str) -> None:
    model = hf_bert()
    if mode == "train":
        model.train()
    if mode == "frozen":
        model.requires_grad_(False)
    classifier = model.classifier.weight
    if classifier.requires_grad:
        classifier.grad = torch.full_like(classifier, 0.25)
    inputs = _masked_batch()
    before = snapshot(model, inputs["input_ids"])
    context = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}
    with context.get(mode, torch.enable_grad()):
        gradlens.token_attributions(model, inputs, 1, steps=2)
    assert_unchanged(before, snapshot(model, inputs["input_ids"]))


def test_an_int_target_on_a_language_model_is_that_token_at_the_last_position(
    tiny_gpt2: nn.Module,
) -> None:
    ids = token_ids(2, 6)
    as_int = gradlens.token_attributions(tiny_gpt2, ids, 11, method="input_x_gradient")
    as_token = gradlens.token_attributions(
        tiny_gpt2, ids, targets.token(11), method="input_x_gradient"
    )
    torch.testing.assert_close(as_int, as_token, atol=0, rtol=0)
