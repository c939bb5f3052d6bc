"""Per-token attributions: which input tokens a text classifier's prediction rests on, and
which earlier tokens each generated token of a language model rests on.

Uses a tiny BERT classifier and a tiny GPT-2 built from Hugging Face configs (random
weights, nothing downloaded), and compares ``generation_attributions`` with Captum's
``LLMGradientAttribution`` (with a word-level tokenizer built offline). Writes
``token_attributions.txt``.

Run: ``python examples/token_attributions.py [--quick] [--out DIR]``
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from _common import parse_args
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

import gradlens
from gradlens import targets


def models() -> tuple[BertForSequenceClassification, GPT2LMHeadModel]:
    torch.manual_seed(0)
    # --8<-- [start:models]
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=512,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )  # pad_token_id=0
    ).eval()
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=512, bos_token_id=0, eos_token_id=0)
    ).eval()  # no pad_token_id
    # --8<-- [end:models]
    return bert, gpt2


def classifier(bert: BertForSequenceClassification, steps: int) -> list[str]:
    # --8<-- [start:tokens]
    batch = {  # what a tokenizer returns (a dict or a BatchEncoding): no tokenizer needed
        "input_ids": torch.tensor([[101, 7, 52, 9, 300, 102], [101, 44, 17, 102, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
    }
    scores = gradlens.token_attributions(bert, batch, target=2, steps=steps)
    # (2, 6): Integrated Gradients from the [PAD] baseline (model.config.pad_token_id),
    # summed over the hidden size; the padding positions score exactly 0
    # --8<-- [end:tokens]
    lines = [f"token_attributions (integrated_gradients): {_rows(scores)}"]
    # --8<-- [start:methods]
    for method in ("saliency", "input_x_gradient", "smoothgrad", "occlusion"):
        scores = gradlens.token_attributions(bert, batch, 2, method=method)
        lines.append(f"{method}: {_rows(scores)}")
    norms = gradlens.token_attributions(bert, batch, 2, reduce="norm", baseline=100, steps=steps)
    # --8<-- [end:methods]
    lines.append(f"integrated_gradients, baseline=100, reduce='norm': {_rows(norms)}")
    return lines


def language_model(gpt2: GPT2LMHeadModel, steps: int) -> list[str]:
    # --8<-- [start:generation]
    prompt = torch.tensor([[15, 201, 33, 87, 410, 9]])  # (B, P) = (1, 6)
    continuation = torch.tensor([[77, 5, 190]])  # (B, K) = (1, 3): e.g. model.generate's
    rows = gradlens.generation_attributions(gpt2, prompt, continuation)
    # (1, 3, 9): row k attributes log p(continuation[k]) to the 6 + k tokens before it
    # (Input x Gradient; all 3 rows from one forward and one batched backward)
    integrated = gradlens.generation_attributions(
        gpt2,
        prompt,
        continuation,
        method="integrated_gradients",
        baseline=0,
        steps=steps,
    )
    # --8<-- [end:generation]
    # --8<-- [start:targets]
    ids = torch.cat([prompt, continuation], dim=1)
    whole = gradlens.token_attributions(  # the summed log-probability of the continuation
        gpt2, ids, targets.sequence(continuation), method="input_x_gradient"
    )
    next_token = gradlens.token_attributions(  # the logit of token 42 after the prompt
        gpt2, prompt, targets.token(42), baseline=0, steps=steps
    )
    # --8<-- [end:targets]
    assert torch.allclose(whole, rows.sum(1), atol=1e-5)  # rows add up to the whole
    return [
        "generation_attributions (input_x_gradient), row k over prompt + continuation:",
        *(f"  k={k}: {_values(rows[0, k])}" for k in range(rows.shape[1])),
        f"generation_attributions (integrated_gradients), row 2: {_values(integrated[0, 2])}",
        f"targets.token(42) after the prompt: {_values(next_token[0])}",
    ]


def captum_comparison(steps: int) -> list[str]:
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(62)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0)
    ).eval()
    text, continuation = "w3 w14 w15 w9 w26", torch.tensor([7, 11, 40])
    # --8<-- [start:captum-llm]
    # Captum: one attribution per generated token, each a forward and backward of all steps
    llm = LLMGradientAttribution(LayerIntegratedGradients(model, model.transformer.wte), tokenizer)
    result = llm.attribute(TextTokenInput(text, tokenizer), target=continuation, n_steps=steps)
    theirs = result.token_attr  # (K, P): the prompt tokens only

    # gradlens: token ids in, all K rows at once; Captum's baseline is token 0 on the prompt
    # and the generated tokens themselves after it
    ids = tokenizer.encode(text, return_tensors="pt")  # (1, P)
    baseline = torch.cat([torch.zeros_like(ids), continuation[None]], dim=1)
    rows = gradlens.generation_attributions(
        model,
        ids,
        continuation,
        method="integrated_gradients",
        baseline=baseline,
        steps=steps,
    )  # (1, K, P + K): also the earlier generated tokens (0 with this baseline)
    # --8<-- [end:captum-llm]
    difference = float((rows[0, :, : ids.shape[1]] - theirs).abs().max())
    assert difference < 1e-5, difference
    return [f"gradlens vs Captum LLMGradientAttribution: max |difference| {difference:.1e}"]


def _rows(scores: torch.Tensor) -> str:
    return " | ".join(_values(row) for row in scores)


def _values(row: torch.Tensor) -> str:
    return " ".join(f"{float(v):+.1e}" for v in row)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    warnings.filterwarnings("ignore", module="transformers")
    steps = 8 if args.quick else 32
    bert, gpt2 = models()
    lines = classifier(bert, steps) + language_model(gpt2, steps) + captum_comparison(steps)
    report = args.out / "token_attributions.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [report]


if __name__ == "__main__":
    main()
