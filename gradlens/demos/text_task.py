"""A synthetic text task with ground truth, the text counterpart of the shapes benchmark, and
the tiny transformer classifier that learns it.

Every sequence is a run of random *distractor* tokens holding one or two *trigger* tokens
at random positions. The triggers decide the label: each class owns
``triggers_per_class`` trigger tokens, and a sequence of class ``c`` holds only triggers
of class ``c``. Distractors are drawn independently of the label, so they never decide
it. Because the trigger positions are known (:attr:`TextTaskData.triggers`), per-token
attributions can be scored against the truth (:func:`gradlens.metrics.token_localization`).

Vocabulary (``vocab_size`` ids, 64 by default; :func:`vocabulary` gives their strings):

====================================  ==========================================
ids                                   tokens
====================================  ==========================================
0 (:data:`PAD_ID`)                    ``<pad>``: fills sequences up to ``T``
1 (:data:`UNK_ID`)                    ``<unk>``: reserved, never in the data
2 (:data:`MASK_ID`)                   ``<mask>``: reserved, never in the data
3 .. 3 + C * k - 1                    triggers ``c0a``, ``c0b``, ``c1a``, ...:
                                      id ``3 + c * k + j`` is trigger ``j`` of class ``c``
3 + C * k .. ``vocab_size`` - 1       distractors ``w0``, ``w1``, ...
====================================  ==========================================

(``C`` classes, ``k`` triggers per class.) The reserved ids never occur in the data, so
they are neutral baselines and replacements for attribution methods and the ERASER
metrics. Sequences are padded on the right; ``attention_mask`` is 1 on real tokens and 0
on padding, as in Hugging Face tokenizers.

:class:`TinyTextClassifier` (token and position embeddings, two
:class:`torch.nn.TransformerEncoder` layers, a masked mean over the real tokens and a
linear head) learns the task to >= 0.98 held-out accuracy in a few hundred steps
(:func:`gradlens.demos.training.train_text_model`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "PAD_ID",
    "UNK_ID",
    "MASK_ID",
    "TextTaskData",
    "make_text_task",
    "vocabulary",
    "trigger_ids",
    "TextClassifierConfig",
    "TinyTextClassifier",
]

PAD_ID = 0
"""The padding token id."""
UNK_ID = 1
"""The unknown-token id (reserved: never in the data)."""
MASK_ID = 2
"""The mask-token id (reserved: never in the data)."""
_SPECIAL = ("<pad>", "<unk>", "<mask>")


def trigger_ids(num_classes: int = 4, triggers_per_class: int = 2) -> Tensor:
    """``(num_classes, triggers_per_class)`` int64: the trigger token ids of each class."""
    first = len(_SPECIAL)
    return torch.arange(first, first + num_classes * triggers_per_class).view(num_classes, -1)


def vocabulary(
    vocab_size: int = 64, num_classes: int = 4, triggers_per_class: int = 2
) -> tuple[str, ...]:
    """The token strings, indexed by id: ``<pad>``, ``<unk>``, ``<mask>``, the triggers
    ``c{class}{a, b, ...}``, then the distractors ``w0``, ``w1``, ... (module docstring)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    if triggers_per_class > len(letters):
        raise ValueError(f"at most {len(letters)} triggers per class, got {triggers_per_class}")
    triggers = [f"c{c}{letters[j]}" for c in range(num_classes) for j in range(triggers_per_class)]
    distractors = [f"w{i}" for i in range(vocab_size - len(_SPECIAL) - len(triggers))]
    return _SPECIAL + tuple(triggers) + tuple(distractors)


@dataclasses.dataclass(eq=False)
class TextTaskData:
    """A batch of synthetic sequences with their ground truth.

    Attributes:
        input_ids: ``(N, T)`` int64 token ids, padded on the right with :data:`PAD_ID`.
        attention_mask: ``(N, T)`` int64, 1 on real tokens and 0 on padding.
        labels: ``(N,)`` int64 classes.
        triggers: ``(N, T)`` bool, the positions of the trigger tokens (the ground truth);
            never on padding.
        vocabulary: the token strings, indexed by id (:func:`vocabulary`).
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    triggers: Tensor
    vocabulary: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> TextTaskData:
        """The samples at ``index`` (an int keeps a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TextTaskData(
            self.input_ids[index],
            self.attention_mask[index],
            self.labels[index],
            self.triggers[index],
            self.vocabulary,
        )

    @property
    def inputs(self) -> dict[str, Tensor]:
        """``{"input_ids": ..., "attention_mask": ...}``, the model's keyword inputs
        (``model(**data.inputs)``)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def tokens(self, index: int) -> list[str]:
        """The token strings of sample ``index``, without its padding."""
        length = int(self.attention_mask[index].sum())
        return [self.vocabulary[i] for i in self.input_ids[index, :length].tolist()]


def make_text_task(
    n: int,
    *,
    seed: int = 0,
    num_classes: int = 4,
    triggers_per_class: int = 2,
    vocab_size: int = 64,
    length: tuple[int, int] = (8, 24),
    max_triggers: int = 2,
) -> TextTaskData:
    """Generate ``n`` sequences of the synthetic text task (module docstring).

    The same arguments always give the same data; use another seed for a held-out split
    (:func:`gradlens.demos.training.train_text_model` trains on ``seed`` and tests on
    ``seed + 1``). Labels are balanced: every class occurs ``n // num_classes`` or
    ``n // num_classes + 1`` times, in random order. Each sequence's length is uniform in
    ``length`` (both ends included), its number of triggers uniform in
    ``1..max_triggers``, each trigger a uniform choice among its class's
    ``triggers_per_class`` (repeats allowed) at distinct uniform positions; the other
    real tokens are uniform distractors.

    Args:
        n: number of sequences.
        seed: seed of the numpy generator that draws everything.
        num_classes: number of classes (at least 2).
        triggers_per_class: trigger tokens owned by each class.
        vocab_size: number of token ids; at least 4 distractors must remain after the 3
            special ids and the triggers.
        length: the smallest and largest sequence length; ``T = length[1]``.
        max_triggers: the largest number of triggers in a sequence (at least 1, at most
            ``length[0]``).

    Returns:
        A :class:`TextTaskData` with ``input_ids``, ``attention_mask`` and ``triggers`` of
        shape ``(n, length[1])`` and ``labels (n,)``.

    Raises:
        ValueError: ``n < 0``, fewer than 2 classes or 1 trigger per class, too small a
            vocabulary, or a bad ``length`` or ``max_triggers``.
    """
    n_distractors = vocab_size - len(_SPECIAL) - num_classes * triggers_per_class
    if n < 0 or num_classes < 2 or triggers_per_class < 1:
        raise ValueError(
            f"need n >= 0, num_classes >= 2 and triggers_per_class >= 1; got n={n}, "
            f"num_classes={num_classes}, triggers_per_class={triggers_per_class}"
        )
    if n_distractors < 4:
        raise ValueError(
            f"vocab_size={vocab_size} leaves {n_distractors} distractor ids after 3 special "
            f"ids and {num_classes * triggers_per_class} triggers; at least 4 are needed"
        )
    low, high = length
    if not 1 <= max_triggers <= low <= high:
        raise ValueError(
            f"need 1 <= max_triggers <= length[0] <= length[1]; got max_triggers="
            f"{max_triggers}, length={length}"
        )
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes)
    lengths = rng.integers(low, high + 1, n)
    first_distractor = len(_SPECIAL) + num_classes * triggers_per_class
    ids = rng.integers(first_distractor, vocab_size, (n, high))
    # Trigger positions: the first `count` of a random order of each sequence's positions.
    count = rng.integers(1, max_triggers + 1, n)
    order = np.argsort(rng.random((n, high)) + (np.arange(high) >= lengths[:, None]), axis=1)
    rank = np.argsort(order, axis=1)  # rank[i, t]: place of position t in sample i's order
    triggers = rank < count[:, None]
    choice = rng.integers(0, triggers_per_class, (n, high))
    trigger_tokens = len(_SPECIAL) + labels[:, None] * triggers_per_class + choice
    ids = np.where(triggers, trigger_tokens, ids)
    real = np.arange(high) < lengths[:, None]
    ids = np.where(real, ids, PAD_ID)
    return TextTaskData(
        input_ids=torch.from_numpy(ids.astype(np.int64)),
        attention_mask=torch.from_numpy(real.astype(np.int64)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        triggers=torch.from_numpy(triggers),
        vocabulary=vocabulary(vocab_size, num_classes, triggers_per_class),
    )


@dataclasses.dataclass
class TextClassifierConfig:
    """The sizes and special token ids of a :class:`TinyTextClassifier`.

    Named as in Hugging Face configs, so code written for those (e.g. the ``"pad"``,
    ``"mask"`` and ``"unk"`` baselines of :func:`gradlens.token_attributions`) finds the
    special ids in ``model.config``.

    Attributes:
        vocab_size: number of token ids.
        num_labels: number of classes.
        max_position_embeddings: the longest sequence the position embedding covers.
        hidden_size: the token width.
        num_attention_heads: heads per attention layer (must divide ``hidden_size``).
        num_hidden_layers: encoder layers.
        intermediate_size: width of each layer's feed-forward block.
        dropout: dropout in the encoder layers (0 by default: the task is noise-free).
        pad_token_id, unk_token_id, mask_token_id: the special ids.
    """

    vocab_size: int = 64
    num_labels: int = 4
    max_position_embeddings: int = 32
    hidden_size: int = 32
    num_attention_heads: int = 2
    num_hidden_layers: int = 2
    intermediate_size: int = 64
    dropout: float = 0.0
    pad_token_id: int = PAD_ID
    unk_token_id: int = UNK_ID
    mask_token_id: int = MASK_ID


class TinyTextClassifier(nn.Module):
    """A tiny transformer encoder that classifies token sequences.

    Modules: ``embeddings`` (:class:`torch.nn.Embedding`, the token embedding returned by
    :meth:`get_input_embeddings`), ``positions`` (learned position embedding, added to the
    token embedding), ``encoder`` (a :class:`torch.nn.TransformerEncoder` of
    ``num_hidden_layers`` pre-norm :class:`torch.nn.TransformerEncoderLayer`, batch
    first, padding masked out of the attention, :class:`torch.nn.ReLU` modules in the
    feed-forward blocks) and ``classifier`` (linear). The class logits are the
    ``classifier`` of the mean of the encoder's outputs over the real (unmasked) tokens, so
    padding changes nothing.

    There is no LayerNorm before the head on purpose: it would make the logits invariant to
    the scale of the pooled vector, and Input x Gradient on the token embeddings then
    localised the trigger on only 0.74-0.88 of the held-out sequences (two seeds); without
    it, 0.997-0.999.

    Args:
        config: the sizes and special ids; the defaults fit :func:`make_text_task`'s.

    Input ``input_ids (B, T)`` int64 (``T <= max_position_embeddings``) and an optional
    ``attention_mask (B, T)`` (1 or ``True`` on real tokens; ``None``: all real); output
    logits ``(B, num_labels)``.
    """

    def __init__(self, config: TextClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = TextClassifierConfig() if config is None else config
        width = config.hidden_size
        self.embeddings = nn.Embedding(config.vocab_size, width)
        self.positions = nn.Embedding(config.max_position_embeddings, width)
        layer = nn.TransformerEncoderLayer(
            width,
            config.num_attention_heads,
            config.intermediate_size,
            dropout=config.dropout,
            activation=nn.ReLU(),  # a module, so guided backpropagation can guide it
            batch_first=True,
            norm_first=True,
        )
        # nested tensors would drop the padded positions from the layers' outputs
        self.encoder = nn.TransformerEncoder(
            layer, config.num_hidden_layers, enable_nested_tensor=False
        )
        self.classifier = nn.Linear(width, config.num_labels)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (``self.embeddings``), as on Hugging Face models."""
        return self.embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        batch, length = input_ids.shape
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequences of {length} tokens are longer than max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()
        positions = torch.arange(length, device=input_ids.device)
        x = self.embeddings(input_ids) + self.positions(positions)
        x = self.encoder(x, src_key_padding_mask=~real)
        # masked_fill, not a product: the fused inference path may leave nan on padding
        total = x.masked_fill(~real[:, :, None], 0.0).sum(1)
        pooled = total / real.sum(1, keepdim=True).clamp(min=1).to(x.dtype)
        logits: Tensor = self.classifier(pooled)
        return logits
