"""Tiny Hugging Face text models built from configs (random weights, nothing downloaded),
shared by the per-token attribution tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

VOCAB = 64
NUM_LABELS = 3


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 language model (width 32, vocabulary 64, no padding token), in eval mode."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    """A 2-layer BERT classifier (width 32, 3 labels; pad token 0), in eval mode."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=NUM_LABELS,
    )
    return BertForSequenceClassification(config).eval()


def token_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    """Random ids in ``1..VOCAB-2`` (never the padding token 0 nor GPT-2's end token)."""
    return torch.randint(
        1, VOCAB - 1, (batch, length), generator=torch.Generator().manual_seed(seed)
    )
