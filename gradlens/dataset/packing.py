"""Token sources packed into fixed-length windows: SAELens' default packing.

Documents are concatenated with the BOS id between them and cut into windows of
``context_size`` tokens; with ``prepend_bos`` each window starts with BOS and holds
``context_size - 1`` document tokens. The last, partial window is dropped. Precisely, with
``B`` the BOS id and documents read in order:

* a window is filled from the documents in turn; a document that does not fit goes on in
  the next window, where it is continued (not restarted);
* a new window starts with ``B`` when ``prepend_bos`` (unless its first token is ``B``
  already), so a document cut at a window boundary resumes after a ``B``;
* inside a window, ``B`` separates a document from the one before it (unless the
  document starts with ``B`` itself); at the start of a window the window's own ``B``
  is the separator;
* empty documents are skipped.

For documents ``[1, 2, 3]``, ``[4, 5]``, ``[6, 7, 8, 9]``, ``B = 0``, ``context_size = 4``:
windows ``[0, 1, 2, 3]``, ``[0, 4, 5, 0]``, ``[0, 6, 7, 8]``; ``[0, 9]`` is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TokenInputError
from ..targets.language import config_token_id

__all__ = ["bos_id", "documents", "windows"]


def windows(
    docs: Iterable[np.ndarray], context_size: int, bos: int, prepend_bos: bool
) -> Iterator[np.ndarray]:
    """The windows of ``docs`` (see the module docstring for the rules).

    Args:
        docs: 1-D integer arrays, one per document.
        context_size: the tokens per window (>= 2).
        bos: the BOS id (the separator, and position 0 with ``prepend_bos``).
        prepend_bos: start every window with ``bos``.

    Yields:
        ``(context_size,)`` int64 arrays, in order; the partial last window is not yielded.
    """
    window = np.empty(context_size, dtype=np.int64)
    filled = 0
    for doc in docs:
        i, n = 0, len(doc)
        while i < n:
            if filled == 0:
                if prepend_bos and doc[i] != bos:
                    window[0], filled = bos, 1
            elif i == 0 and doc[0] != bos:
                window[filled] = bos
                filled += 1
            take = min(context_size - filled, n - i)
            window[filled : filled + take] = doc[i : i + take]
            filled, i = filled + take, i + take
            if filled == context_size:
                yield window.copy()
                filled = 0


def documents(
    tokens: Any, tokenizer: Any = None, text_column: str = "text", chunk: int = 256
) -> Iterator[np.ndarray]:
    """The documents of a token source as 1-D int64 arrays.

    Args:
        tokens: a Hugging Face ``datasets.Dataset`` or ``IterableDataset`` with an
            ``input_ids`` column, or with a text column (then ``tokenizer`` is needed); or any
            iterable of token-id sequences (lists, arrays, 1-D tensors).
        tokenizer: a ``tokenizers.Tokenizer`` or a Hugging Face tokenizer, for text; special
            tokens are not added (BOS comes from the packing).
        text_column: the text column's name.
        chunk: rows read (and texts tokenized) together.

    Raises:
        TokenInputError: a dataset with neither column, text without a tokenizer, or a
            document that is not a 1-D sequence of integers.
    """
    columns = _column_names(tokens)
    if columns is None:
        for doc in tokens:
            yield _ids(doc)
        return
    if "input_ids" in columns:
        for batch in tokens.select_columns(["input_ids"]).iter(batch_size=chunk):
            for ids in batch["input_ids"]:
                yield _ids(ids)
        return
    if text_column not in columns:
        raise TokenInputError(
            f"the dataset has no 'input_ids' column and no text column {text_column!r} (it has "
            f"{sorted(columns)}); pass text_column= to name the text column"
        )
    if tokenizer is None:
        raise TokenInputError(
            f"the dataset holds text ({text_column!r}): pass tokenizer= (a tokenizers.Tokenizer "
            "or a Hugging Face tokenizer) to turn it into token ids"
        )
    for batch in tokens.select_columns([text_column]).iter(batch_size=chunk):
        yield from _encode(tokenizer, list(batch[text_column]))


def bos_id(bos_token_id: int | None, tokenizer: Any, model: nn.Module) -> int:
    """The BOS id: ``bos_token_id``, else the tokenizer's, else ``model.config.bos_token_id``.

    Raises:
        TokenInputError: none of them gives an integer id.
    """
    if bos_token_id is not None:
        if not isinstance(bos_token_id, int) or isinstance(bos_token_id, bool):
            raise TokenInputError(f"bos_token_id must be an int, got {bos_token_id!r}")
        return bos_token_id
    from_tokenizer = _tokenizer_bos(tokenizer)
    if from_tokenizer is not None:
        return from_tokenizer
    try:
        return config_token_id(model, "bos", argument="bos_token_id")
    except TokenInputError as exc:
        raise TokenInputError(
            "the windows need a BOS id (it separates documents and, with prepend_bos, starts "
            "each window): pass bos_token_id=<id>, or a tokenizer with a bos_token_id, or use "
            f"a model whose config has one ({exc})"
        ) from None


def _column_names(tokens: Any) -> list[str] | None:
    """The columns of a Hugging Face dataset, ``None`` for any other iterable."""
    if not hasattr(tokens, "select_columns"):
        return None
    names = getattr(tokens, "column_names", None)
    if names is None:  # an IterableDataset whose features are unknown
        names = list(next(iter(tokens)).keys())
    return list(names)


def _ids(doc: Any) -> np.ndarray:
    array = doc.detach().cpu().numpy() if isinstance(doc, torch.Tensor) else np.asarray(doc)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise TokenInputError(
            "each document must be a 1-D sequence of integer token ids, got an array of shape "
            f"{array.shape} and dtype {array.dtype}"
        )
    return array.astype(np.int64, copy=False)


def _encode(tokenizer: Any, texts: list[str]) -> Iterator[np.ndarray]:
    if hasattr(tokenizer, "encode_batch"):  # a tokenizers.Tokenizer
        for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
            yield np.asarray(encoding.ids, dtype=np.int64)
        return
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        yield np.asarray(ids, dtype=np.int64)


def _tokenizer_bos(tokenizer: Any) -> int | None:
    value = getattr(tokenizer, "bos_token_id", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
