""":func:`cache_activations`: a language model's activations over a token corpus, written as
a sharded Hugging Face dataset as it goes (resumable, split across ``torchrun`` ranks).

The run: pack the token source into windows (:mod:`~gradlens.dataset.packing`), group them
into shards of ``shard_size`` windows, and for each shard this rank owns (shard ``k`` belongs
to rank ``k % world``) run the windows through :func:`~gradlens.core.extract.extract` in
batches of ``batch_size`` (inference mode, no tape, the forward stops after the last hook
point) and hand the shard to a background writer (:mod:`~gradlens.dataset.shards`).
Batches never cross a shard boundary, so every window is computed in the same batch
whatever the number of processes and however often the run was resumed. Every rank reads
the whole token source (packing is cheap next to the forward) and skips the windows of
other ranks' shards; a resumed run skips the shards already written after checking that
the source still gives the same token ids for them. When every rank is done, rank 0
assembles the shards into one dataset in window order
(:mod:`~gradlens.dataset.cache_directory`).
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.checks import entry_point
from ..core.extract import extract
from ..core.output_selection import OutputSpec
from ..core.selection import Layers, select_layers
from ..errors import ManifestMismatchError, OutputSelectionError, TokenInputError
from . import cache_directory
from .distributed import Dist
from .identity import describe, describe_options, fingerprint
from .manifest import Manifest, PathLike, gradlens_version
from .packing import bos_id, documents, windows
from .run import progress_bar
from .shards import (
    STORAGE,
    TOKEN_COLUMN,
    Buffers,
    Shard,
    ShardWriter,
    import_datasets,
    shard_path,
    storage_name,
    to_storage,
    token_digest,
)
from .sources import model_device

__all__ = ["cache_activations"]


@entry_point
def cache_activations(
    model: nn.Module,
    tokens: Iterable[Any],
    hook_points: Layers,
    out_dir: PathLike,
    *,
    context_size: int = 128,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float32,
    prepend_bos: bool = True,
    bos_token_id: int | None = None,
    tokenizer: Any = None,
    text_column: str = "text",
    shard_size: int = 256,
    output: OutputSpec | Mapping[str, OutputSpec] = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> Any:
    """Cache the activations of a language model's hook points over a token corpus.

    The documents of ``tokens`` are packed as SAELens packs them: concatenated with the BOS
    id between documents, cut into windows of ``context_size`` tokens with BOS at position
    0 when ``prepend_bos`` (so a window holds ``context_size - 1`` document tokens), the
    partial last window dropped (see :mod:`gradlens.dataset.packing`). Each batch of
    windows runs through :func:`~gradlens.extract` -- inference mode, no autograd tape, the
    forward stopped after the last hook point -- and ``out_dir`` receives a Hugging Face
    dataset, one row per window, in window order:

    * one ``Array2D`` column ``(context_size, d)`` per hook point, named by the hook point
      (an output ``(B, T, *rest)`` is stored flattened to ``d = prod(rest)``, e.g. heads
      times head size);
    * ``token_ids``: the window's int32 token ids ``(context_size,)``.

    This is the layout of SAELens' ``CacheActivationsRunner``: ``datasets.load_from_disk``
    reads it, and a one-hook float32 or float16 cache can be given to SAELens as
    ``cached_activations_path`` with ``use_cached_activations=True``. Shards of
    ``shard_size`` windows are written (``save_to_disk``) as the run goes; until the run
    completes ``out_dir`` holds only them and a progress record, and ``load_from_disk``
    fails on it. The same call again resumes after the last complete shard and gives the
    same cache, row for row and value for value; a call again after completion returns the
    cache without running the model.

    Storage dtypes (``dtype``): ``torch.float32`` (default, the model's values when it runs
    in float32); ``torch.float16`` (2 bytes a value: 11 significant bits, about 3 decimal
    digits, values up to +-65504 -- larger ones become inf); ``torch.bfloat16`` (2 bytes: 8
    significant bits, about 2 decimal digits, float32's range up to +-3.4e38). Arrow has no
    bfloat16, so a bfloat16 cache stores each value's bit pattern in a ``uint16`` column
    and says so in the dataset description and the manifest: read it with
    :func:`~gradlens.load_activations` (``load_from_disk`` gives the raw ``uint16``
    numbers, and SAELens would read them as numbers). ``torch.float64`` is stored as is.

    Under ``torchrun`` (``torch.distributed`` initialised) rank ``r`` of ``W`` computes the
    shards ``k`` with ``k % W == r`` and every rank reads the whole token source; rank 0
    assembles one dataset, equal to a one-process run's. On several machines, give
    ``out_dir`` on a shared filesystem and launch ``torchrun --nnodes=M --node_rank=i
    --nproc_per_node=N --rdzv_backend=c10d --rdzv_endpoint=host0:29500 script.py`` on each
    machine.

    Args:
        model: a language model taking token ids ``(B, T)`` as its first argument (a Hugging
            Face model, a TransformerLens ``TransformerBridge``, ...); inputs go to the
            device of its first parameter. It runs as given: a model in train mode gets a
            warning (dropout changes activations).
        tokens: the documents: a Hugging Face ``datasets.Dataset`` or ``IterableDataset``
            with an ``input_ids`` column, or with a text column (``text_column``; then
            ``tokenizer`` is required); or any iterable of token-id sequences (lists,
            arrays, 1-D tensors). It is read once per call (and per rank).
        hook_points: module names, glob patterns, types or filters (see
            :mod:`gradlens.selection`), e.g. ``["transformer.h.3"]``, ``"blocks.*.hook_out"``
            or TransformerLens hook points of a ``TransformerBridge``.
        out_dir: the cache's directory (created if needed; must be empty or hold this cache).
        context_size: tokens per window (>= 2).
        batch_size: windows per forward (>= 1).
        dtype: the storage dtype (see above).
        prepend_bos: start every window with the BOS id.
        bos_token_id: the BOS id; default: ``tokenizer.bos_token_id``, else
            ``model.config.bos_token_id``.
        tokenizer: a ``tokenizers.Tokenizer`` or Hugging Face tokenizer for a text column
            (special tokens are not added: the packing adds BOS).
        text_column: the text column of a dataset without ``input_ids``.
        shard_size: windows per shard (>= 1): the unit of writing and of resuming, and of
            memory (about three shards of activations are in memory at once).
        output: picks the tensor of a hook point whose output is a tuple or a structured
            output (an index, a key or a function; or ``{hook point: spec}``), as
            ``select=`` of :func:`~gradlens.extract`.
        forward_kwargs: keyword inputs for the model with every batch.
        resume: continue (or return) a cache of the same call found in ``out_dir``; with
            ``False`` an existing cache is refused unless ``overwrite``.
        overwrite: replace whatever cache ``out_dir`` holds.
        progress: show a tqdm bar (tokens/s) on rank 0 when stderr is a terminal.

    Returns:
        The cache as a ``datasets.Dataset`` (``datasets.load_from_disk(out_dir)``), on every
        rank.

    Raises:
        LayerNotFoundError: a hook point selects nothing (before any forward).
        ValueError: ``context_size < 2``, ``batch_size < 1``, ``shard_size < 1``, an
            unsupported ``dtype``, a hook point whose output is not ``(B, T, ...)``.
        TokenInputError: no BOS id from ``bos_token_id``, the tokenizer or the model's
            config; text without a tokenizer; a dataset without ``input_ids`` or the text
            column; documents that are not 1-D integer sequences; no full window.
        OutputSelectionError: a hook point gives a structured output and ``output`` does
            not pick a tensor of it.
        ManifestMismatchError: ``out_dir`` holds a cache of another call (another model,
            hook points, context size, dtype, token source ...), named in the message, and
            ``overwrite`` is not set.
        FileExistsError: ``out_dir`` holds a cache and ``resume=False``, or files that are
            not a cache, and ``overwrite`` is not set.
    """
    _check_sizes(context_size, batch_size, shard_size)
    storage = storage_name(dtype)
    names = list(select_layers(model, hook_points))
    if TOKEN_COLUMN in names:
        raise ValueError(f"a hook point may not be named {TOKEN_COLUMN!r}: that is the ids column")
    bos = bos_id(bos_token_id, tokenizer, model)
    import_datasets()
    kwargs = dict(forward_kwargs or {})
    out = Path(out_dir)
    packed = _shards(
        windows(documents(tokens, tokenizer, text_column), context_size, bos, prepend_bos),
        shard_size,
    )
    first = next(packed, None)
    if first is None:
        raise TokenInputError(
            f"the tokens give no full window of context_size={context_size} tokens"
        )
    options = describe_options(
        {
            "context_size": context_size,
            "prepend_bos": prepend_bos,
            "bos_token_id": bos,
            "shard_size": shard_size,
            "output": output,
            "forward_kwargs": kwargs,
            "tokens": _source(tokens, tokenizer, text_column),
        }
    )
    wanted = Manifest(
        kind="activations",
        layers=names,
        files={name: name for name in [*names, TOKEN_COLUMN]},
        shapes={},
        dtype=storage,
        n_samples=0,
        row_offset=0,
        dataset_size=0,
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        fingerprint=fingerprint(model),
        gradlens_version=gradlens_version(),
        options=options,
    )
    dist = Dist()
    state = dist.from_rank0(lambda: cache_directory.prepare(out, wanted, resume, overwrite))
    datasets = import_datasets()
    if state.complete:
        return datasets.load_from_disk(str(out))
    if model.training:
        warnings.warn(
            "the model is in train mode: dropout changes the activations; call model.eval() "
            "for reproducible activations",
            stacklevel=3,
        )
    job = _Forward(model, names, storage, output, kwargs, context_size, batch_size)
    bar = progress_bar("caching", None, 0, progress and dist.rank == 0, dist.world, "tokens")
    writer = ShardWriter(out, names, storage, state.manifest.fingerprint)
    n_windows = 0
    try:
        for k, ids in enumerate(itertools.chain([first], packed)):
            n_windows += len(ids)
            done = state.shards.get(k)
            if done is not None:
                _check_written(done, k, ids)
            elif k % dist.world == dist.rank:
                buffers = writer.buffers()
                writer.put(Shard(k, k * shard_size, ids, job(ids, buffers, bar), buffers))
    except BaseException:
        writer.abandon()
        raise
    finally:
        if bar is not None:
            bar.close()
    writer.close()
    dist.barrier()
    dist.from_rank0(lambda: _finish(out, state.manifest, n_windows, shard_size, context_size))
    return datasets.load_from_disk(str(out))


class _Forward:
    """``ids (n, T) -> {hook point: (n, T, d) stored values}``, in batches through
    :func:`extract`."""

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        storage: str,
        output: OutputSpec | Mapping[str, OutputSpec],
        kwargs: dict[str, Any],
        context_size: int,
        batch_size: int,
    ) -> None:
        self.model, self.names, self.storage, self.output = model, names, storage, output
        self.kwargs, self.context_size, self.batch_size = kwargs, context_size, batch_size
        self.device = model_device(model)

    def __call__(self, ids: np.ndarray, buffers: Buffers, bar: Any) -> dict[str, np.ndarray]:
        """The activations of the windows ``ids``, as views of ``buffers`` (a reused set,
        where a buffer of another shape or dtype is replaced)."""
        n = len(ids)
        values: dict[str, np.ndarray] = {}
        for start in range(0, n, self.batch_size):
            x = torch.from_numpy(ids[start : start + self.batch_size])
            if self.device is not None:
                x = x.to(self.device)
            acts = extract(
                self.model,
                x,
                self.names,
                select=self.output,
                forward_kwargs=self.kwargs,
                dtype=STORAGE[self.storage][0],
            )
            for name in self.names:
                array = to_storage(self._flat(acts[name], name, len(x)), self.storage)
                if name not in values:
                    values[name] = _buffer(buffers, name, n, array)
                elif values[name].shape[2] != array.shape[2]:
                    raise ValueError(
                        f"{name!r} gave width {array.shape[2]} after {values[name].shape[2]}"
                    )
                values[name][start : start + len(x)] = array
            if bar is not None:
                bar.update(len(x) * self.context_size)
        return values

    def _flat(self, value: Any, name: str, b: int) -> Tensor:
        if not isinstance(value, Tensor):
            raise OutputSelectionError(
                f"{name!r} returned a {type(value).__name__}, not a tensor: pass output= (an "
                "index, a key or a function) to pick the activation tensor"
            )
        if value.ndim < 3 or tuple(value.shape[:2]) != (b, self.context_size):
            raise ValueError(
                f"{name!r} gave shape {tuple(value.shape)} for {b} windows of "
                f"{self.context_size} tokens: a cached hook point must give (batch, tokens, ...)"
                "; pick another hook point, or pass output= to pick another tensor"
            )
        return value.reshape(b, self.context_size, -1)


def _buffer(buffers: Buffers, name: str, n: int, first: np.ndarray) -> np.ndarray:
    """``(n, *first.shape[1:])`` rows of ``buffers[name]``, which is made (again) when it
    is missing or cannot hold them."""
    shape, held = first.shape[1:], buffers.get(name)
    if held is None or held.shape[1:] != shape or held.dtype != first.dtype or len(held) < n:
        held = buffers[name] = np.empty((n, *shape), dtype=first.dtype)
    return held[:n]


def _finish(
    out: Path, manifest: Manifest, n_windows: int, shard_size: int, context_size: int
) -> Manifest:
    """Rank 0, after every rank is done: check the shards and assemble the dataset."""
    shards = cache_directory.written_shards(out)
    cache_directory.check_shards(shards, n_windows, shard_size)
    info = import_datasets().DatasetInfo.from_directory(str(shard_path(out, 0)))
    shapes = {name: [n_windows, *info.features[name].shape] for name in manifest.layers}
    shapes[TOKEN_COLUMN] = [n_windows, context_size]
    final = dataclasses.replace(
        manifest, shapes=shapes, n_samples=n_windows, dataset_size=n_windows
    )
    return cache_directory.assemble(out, final, len(shards))


def _check_written(record: dict[str, Any], k: int, ids: np.ndarray) -> None:
    if record["windows"] != len(ids) or record["tokens"] != token_digest(ids):
        raise ManifestMismatchError(
            f"the token source changed: the windows of shard {k} differ from those in the "
            "cache; pass overwrite=True to start again, or give the tokens it was written from"
        )


def _shards(windows: Iterator[np.ndarray], shard_size: int) -> Iterator[np.ndarray]:
    """The windows in groups of ``shard_size`` (the last may be smaller), as ``(n, T)``."""
    while group := list(itertools.islice(windows, shard_size)):
        yield np.stack(group)


def _source(tokens: Any, tokenizer: Any, text_column: str) -> dict[str, Any]:
    """What identifies the token source before it is read: a Hugging Face dataset's
    fingerprint, the tokenizer and the text column. Any other source is checked by the
    token digest of every written shard as the run passes it (a generator made again for
    the resumed run is the same source when it gives the same tokens)."""
    described: dict[str, Any] = {}
    fingerprint_ = getattr(tokens, "_fingerprint", None)
    if isinstance(fingerprint_, str):
        described["dataset"] = fingerprint_
    if tokenizer is not None:
        described["text_column"] = text_column
        described["tokenizer"] = _tokenizer(tokenizer)
    return described


def _tokenizer(tokenizer: Any) -> Any:
    core = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(core, "to_str"):
        return describe(core.to_str().encode())
    return {"class": type(tokenizer).__qualname__, "size": len(tokenizer)}


def _check_sizes(context_size: int, batch_size: int, shard_size: int) -> None:
    for name, value, least in [
        ("context_size", context_size, 2),
        ("batch_size", batch_size, 1),
        ("shard_size", shard_size, 1),
    ]:
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
