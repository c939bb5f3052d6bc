"""gradlens.demos.text_task: the synthetic text task is deterministic and its triggers alone
decide the label; the tiny text classifier ignores padding and learns the task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradlens.demos.text_task import (
    MASK_ID,
    PAD_ID,
    UNK_ID,
    TextClassifierConfig,
    TinyTextClassifier,
    make_text_task,
    trigger_ids,
    vocabulary,
)
from gradlens.demos.training import Recipe, accuracy, train, train_text_model

from . import zoo


@pytest.fixture(scope="module")
def data():
    return make_text_task(400, seed=3)


def test_same_seed_gives_the_same_data_and_another_seed_does_not():
    a, b, c = make_text_task(50, seed=1), make_text_task(50, seed=1), make_text_task(50, seed=2)
    for field in ("input_ids", "attention_mask", "labels", "triggers"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.input_ids, c.input_ids)


def test_shapes_and_dtypes(data):
    assert data.input_ids.shape == (400, 24) and data.input_ids.dtype == torch.int64
    assert data.attention_mask.shape == (400, 24) and data.attention_mask.dtype == torch.int64
    assert data.labels.shape == (400,) and data.labels.dtype == torch.int64
    assert data.triggers.shape == (400, 24) and data.triggers.dtype == torch.bool
    assert len(data) == 400 and len(data[5:9]) == 4 and len(data[7]) == 1


def test_lengths_vary_and_padding_is_on_the_right_with_the_pad_id(data):
    lengths = data.attention_mask.sum(1)
    assert int(lengths.min()) == 8 and int(lengths.max()) == 24
    # right padding: the mask is 1 for the first `length` positions, then 0
    assert torch.equal(data.attention_mask, (torch.arange(24) < lengths[:, None]).long())
    assert torch.equal(data.input_ids == PAD_ID, data.attention_mask == 0)


def test_labels_are_balanced(data):
    counts = torch.bincount(data.labels, minlength=4)
    assert counts.tolist() == [100, 100, 100, 100]


def test_one_or_two_triggers_of_the_label_s_class_and_nothing_else_decides(data):
    counts = data.triggers.sum(1)
    assert set(counts.tolist()) == {1, 2}
    assert not bool((data.triggers & (data.attention_mask == 0)).any())
    classes = trigger_ids()  # (4, 2)
    for ids, triggers, label in zip(data.input_ids, data.triggers, data.labels):
        assert set(ids[triggers].tolist()) <= set(classes[label].tolist())
    # every other real token is a distractor: not a trigger of any class, not a special id
    real = data.attention_mask.bool() & ~data.triggers
    assert int(data.input_ids[real].min()) == 3 + classes.numel()
    assert not bool(torch.isin(data.input_ids, torch.tensor([UNK_ID, MASK_ID])).any())


def test_distractors_carry_no_class_information(data):
    """Each distractor id is about as frequent in every class (a chi-square-like bound)."""
    real = data.attention_mask.bool() & ~data.triggers
    per_class = torch.stack(
        [torch.bincount(data.input_ids[real & (data.labels[:, None] == c)], minlength=64)
         for c in range(4)]
    )[:, 11:].double()  # fmt: skip
    expected = per_class.sum(0, keepdim=True) / 4
    assert float(((per_class - expected).abs() / expected.sqrt()).max()) < 4.5


def test_vocabulary_and_tokens(data):
    words = vocabulary()
    assert len(words) == 64 and words[:5] == ("<pad>", "<unk>", "<mask>", "c0a", "c0b")
    assert words[9:12] == ("c3a", "c3b", "w0") and words[-1] == "w52"
    assert data.vocabulary == words
    tokens = data.tokens(0)
    assert len(tokens) == int(data.attention_mask[0].sum()) and "<pad>" not in tokens
    triggers = [t for t, hit in zip(tokens, data.triggers[0].tolist()) if hit]
    assert triggers and all(t.startswith(f"c{int(data.labels[0])}") for t in triggers)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_classes": 1}, "num_classes >= 2"),
        ({"vocab_size": 12}, "at least 4 are needed"),
        ({"length": (2, 10), "max_triggers": 3}, "max_triggers <= length"),
    ],
)
def test_bad_task_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_text_task(4, **options)


def test_the_classifier_looks_like_a_hugging_face_model_to_attribution_code():
    model = TinyTextClassifier()
    assert model.get_input_embeddings() is model.embeddings
    assert isinstance(model.embeddings, nn.Embedding) and model.embeddings.num_embeddings == 64
    config = model.config
    assert (config.pad_token_id, config.unk_token_id, config.mask_token_id) == (0, 1, 2)
    assert config.vocab_size == 64 and config.num_labels == 4


def test_padding_changes_nothing(data):
    torch.manual_seed(0)
    model = TinyTextClassifier().eval()
    batch = data[:6]
    logits = model(**batch.inputs)
    assert logits.shape == (6, 4)
    # other ids on the padding, and four more padded columns, give the same logits
    ids = batch.input_ids.masked_fill(batch.attention_mask == 0, 17)
    ids = torch.cat([ids, torch.full((6, 4), 5)], 1)
    mask = torch.cat([batch.attention_mask, torch.zeros(6, 4, dtype=torch.long)], 1)
    torch.testing.assert_close(model(ids, attention_mask=mask), logits)
    # without a mask every position is real
    one = batch[0]
    length = int(one.attention_mask.sum())
    torch.testing.assert_close(model(one.input_ids[:, :length]), logits[:1])
    with torch.inference_mode():  # the fused inference path agrees
        torch.testing.assert_close(model(**batch.inputs), logits.detach())


def test_sequences_longer_than_the_positions_are_refused():
    model = TinyTextClassifier(TextClassifierConfig(max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(torch.ones(1, 9, dtype=torch.long))


def test_the_text_names_are_importable_from_gradlens_data():
    import gradlens.data

    assert gradlens.data.make_text_task is make_text_task
    assert gradlens.data.TinyTextClassifier is TinyTextClassifier
    assert {"make_text_task", "TextTaskData", "TinyTextClassifier"} <= set(gradlens.data.__all__)


class LogitsInADict(nn.Module):
    """A Hugging Face-like wrapper: keyword inputs in, ``{"logits": ...}`` out."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.inner(input_ids, attention_mask=attention_mask)}


def test_train_and_accuracy_read_keyword_inputs_and_structured_outputs(data):
    torch.manual_seed(0)
    plain = TinyTextClassifier()
    wrapped = LogitsInADict(TinyTextClassifier())
    wrapped.inner.load_state_dict(plain.state_dict())
    small = data[:64]
    train(plain, (small.inputs, small.labels), epochs=1, batch_size=16, progress=False)
    train(wrapped, small, epochs=1, batch_size=16, progress=False)
    for a, b in zip(plain.parameters(), wrapped.inner.parameters()):
        torch.testing.assert_close(a, b)
    assert accuracy(wrapped, data.inputs, data.labels, batch_size=100) == accuracy(
        plain, data.inputs, data.labels
    )


def test_the_quick_recipe_learns_the_task(trained_text_model):
    model, test, acc = trained_text_model
    assert isinstance(model, TinyTextClassifier) and not model.training
    assert len(test) == 500 and acc >= 0.98


def test_train_text_model_trains_the_model_it_is_given_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    state = torch.random.get_rng_state()
    tiny = Recipe(n_train=32, n_test=16, epochs=1, batch_size=16, lr=1e-3)
    trained, test, acc = train_text_model(tiny, model=model, seed=4, progress=False)
    assert trained is model and len(test) == 16 and 0.0 <= acc <= 1.0
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(test.input_ids, make_text_task(16, seed=5).input_ids)


def test_train_text_model_trains_a_hugging_face_classifier_through_its_model_output():
    pytest.importorskip("transformers")
    bert = zoo.hf_bert(num_labels=4, width=16, layers=1)  # its padding token is PAD_ID, 0
    before = [p.detach().clone() for p in bert.classifier.parameters()]
    tiny = Recipe(n_train=64, n_test=16, epochs=1, batch_size=32, lr=1e-3)
    trained, _, acc = train_text_model(tiny, model=bert, progress=False)
    assert trained is bert and not bert.training and 0.0 <= acc <= 1.0
    assert all(not torch.equal(a, b) for a, b in zip(before, bert.classifier.parameters()))
