"""The two calls: :func:`extract_dataset` (layer outputs) and :func:`attribute_dataset` (the
maps of a registered method), each a :class:`~gradlens.dataset.run.Job` for the shared run."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from .. import registry
from ..core.checks import entry_point
from ..core.extract import extract
from ..core.inputs import Inputs
from ..core.output_selection import OutputSpec
from ..core.selection import Layers, select_layers
from ..targets.scoring import Target
from .identity import describe_options
from .manifest import Manifest, PathLike
from .options import MethodOptions
from .rows import Interval
from .run import Job, run, storage_dtype
from .sources import default_input


@entry_point
def extract_dataset(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Layers,
    out: PathLike,
    *,
    input_fn: Callable[[Any], Inputs] | None = None,
    n_samples: int | None = None,
    reduce: Callable[[Tensor], Any] | None = None,
    select: OutputSpec | Mapping[str, OutputSpec] = None,
    dtype: np.dtype | torch.dtype | str | None = None,
    stop_early: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
    sample_names: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    flush_every: int = 32,
) -> Manifest:
    """Write the outputs of the selected layers for every sample of a dataset to ``.npy`` files.

    Each batch goes through :func:`gradlens.extract` (no autograd tape, the forward pass
    stops after the last selected layer); layer ``name`` is written to ``out/<name>.npy`` of
    shape ``(N, *feature shape)``. See :mod:`gradlens.dataset` for the file layout, the
    resume protocol and the distributed protocol.

    Args:
        model: the model; inputs are moved to the device of its first parameter.
        loader: a :class:`~torch.utils.data.DataLoader` over a map-style dataset with
            ``len`` that reads it in order (``shuffle=False``, no custom sampler, no
            ``drop_last``); or any iterable of batches together with ``n_samples``
            (single process only; resuming re-reads, without computing, the finished batches).
        layers: layer names, patterns, types or filters (see :mod:`gradlens.selection`).
        out: the output directory (created if needed).
        input_fn: ``batch -> model input`` (a tuple for several positional inputs). Default:
            ``batch[0]`` for tuple/list batches (``(images, labels)``), the batch itself otherwise.
        n_samples: the number of samples an iterable yields (required for iterables; for a
            DataLoader it must equal ``len(loader.dataset)`` if given).
        reduce: applied to each activation inside the hook, as for :class:`~gradlens.Recorder`
            (e.g. ``lambda t: t.mean((2, 3))`` to store pooled features).
        select: picks one tensor of a structured layer output, as for the Recorder.
        dtype: storage dtype: float32 (default), float16 or float64.
        stop_early: stop each forward pass after the last selected layer.
        forward_kwargs: keyword inputs passed to the model with every batch.
        sample_names: a name for every dataset sample (file names, ids), in dataset order;
            stored in the manifest (``Manifest.sample_names``).
        shard: ``(k, K)``: write only rows ``[k*N//K, (k+1)*N//K)`` of the dataset into
            ``out`` (for machines without a shared filesystem; join with :func:`merge_shards`).
        overwrite: replace whatever ``out`` holds instead of refusing a different manifest.
        progress: show a tqdm progress bar (samples/s) on rank 0 when stderr is a terminal.
        flush_every: sync the files and record progress every this many batches (and at
            the end); a killed run repeats at most this many batches.

    Returns:
        The final :class:`Manifest` (``complete=True``); :func:`load_features` reads the arrays.

    Raises:
        LayerNotFoundError: a layer spec selects nothing.
        ManifestMismatchError: ``out`` holds the results of another call (another model,
            other layers or options) and ``overwrite`` is not set (a ``ValueError``); also
            when ``out`` holds results and an option (``reduce``, ``select`` ...) holds
            something gradlens cannot identify (e.g. a function whose closure holds a lock),
            so that this call cannot be told apart from another.
        ValueError: a shuffling or otherwise unordered loader, a missing or wrong
            ``n_samples`` or ``sample_names``, a bad ``dtype`` or ``shard``, or an output
            whose dim 0 is not the batch.
        FileExistsError: ``out`` holds a ``<layer>.npy`` not written by gradlens.
    """
    names = list(select_layers(model, layers))
    np_dtype, torch_dtype = storage_dtype(dtype)
    kwargs = dict(forward_kwargs or {})

    def compute(x: Inputs, batch: Any, rows: Interval) -> dict[str, Any]:
        return extract(
            model,
            x,
            names,
            stop_early=stop_early,
            forward_kwargs=kwargs,
            reduce=reduce,
            select=select,
            device="cpu",
            dtype=torch_dtype,
        )

    options = describe_options({"reduce": reduce, "select": select, "forward_kwargs": kwargs})
    job = Job(
        "features",
        names,
        options,
        np_dtype,
        compute,
        model,
        input_fn or default_input,
        sample_names=sample_names,
    )
    return run(
        job,
        loader,
        Path(out),
        n_samples=n_samples,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
        flush_every=flush_every,
    )


@entry_point
def attribute_dataset(
    method: str | Callable[..., Tensor],
    model: nn.Module,
    loader: Iterable[Any],
    out: PathLike,
    *,
    target: Target | str = None,
    input_fn: Callable[[Any], Inputs] | None = None,
    n_samples: int | None = None,
    dtype: np.dtype | torch.dtype | str | None = None,
    sample_names: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    flush_every: int = 32,
    **method_options: Unpack[MethodOptions],
) -> Manifest:
    """Write the maps of an explanation method for every sample of a dataset to a ``.npy`` file.

    The same machinery as :func:`extract_dataset` (ordered loader, resume, distributed
    ranks, shards), with ``method(model, x, target=..., **method_options)`` computing each
    batch's maps; they are written to ``out/<method name>.npy`` of shape
    ``(N, *map shape)``, e.g. ``(N, H, W)`` for CAM methods and ``(N, C, H, W)`` for
    input-space attributions.

    Args:
        method: a name in :data:`gradlens.registry.METHODS` (``"gradcam"``, ``"saliency"``,
            ...) or a function ``f(model, x, target=None, **options) -> Tensor`` with
            dim 0 = batch.
        model: the model.
        loader: an ordered DataLoader, or an iterable with ``n_samples`` (see
            :func:`extract_dataset`).
        out: the output directory.
        target: what to explain for each sample:

            * ``None`` (the top class), an ``int``, or a callable ``output -> scores``:
              passed to the method unchanged for every batch (see :mod:`gradlens.targets`);
            * ``"label"``: the labels in the batch -- ``batch[1]`` of a tuple/list batch,
              ``batch["label"]`` (or ``"labels"``) of a dict batch;
            * a sequence, array or tensor with one entry (or one row of ``K`` classes) per
              dataset sample: sliced to each batch's rows.
        input_fn: ``batch -> model input`` (see :func:`extract_dataset`).
        n_samples: the number of samples of an iterable of batches.
        dtype: storage dtype: float32 (default), float16 or float64.
        sample_names: a name for every dataset sample, stored in the manifest.
        shard: ``(k, K)``: only part ``k`` of ``K`` of the dataset (see :func:`merge_shards`).
        overwrite: replace whatever ``out`` holds.
        progress: show a progress bar on rank 0 when stderr is a terminal.
        flush_every: sync and record progress every this many batches.
        **method_options: passed to the method (e.g. ``layer="layer4"``, ``steps=16``):
            the options of the registered methods, :class:`~gradlens.dataset.MethodOptions`
            (``layer``, ``layers``, ``upsample``, ``normalize``, ``reshape``, ``output``,
            ``forward_kwargs``, ``select``, ``per_layer``, ``batch_size``,
            ``ablation_value``, ``skip_unchanged``, ``reuse_upstream``, ``score``,
            ``masks``, ``skip_constant``, ``channels_last``, ``fold_batchnorm``,
            ``head_fusion``, ``discard_ratio``, ``row``, ``abs``, ``interpolation``,
            ``baselines``, ``steps``, ``rule``, ``return_delta``, ``n``, ``sigma``,
            ``seed``, ``generator``, ``window``, ``stride``, ``baseline``); only those the
            method takes.

    Returns:
        The final :class:`Manifest`.

    Raises:
        ValueError: an unknown method name (the message lists close and registered names),
            a ``target`` of the wrong length or kind, and everything :func:`extract_dataset`
            raises.
        TypeError: an option the method does not take (before anything is written).
    """
    function = registry.get(method)
    registry.check_options(function, method_options, caller="attribute_dataset")
    name = method if isinstance(method, str) else _name(function)
    np_dtype, _ = storage_dtype(dtype)
    described = describe_options({"method": method, "target": target})
    options = {
        "method": described["method"],
        "method_options": describe_options(method_options),
        "target": described["target"],
    }
    pick_target = _TargetPicker(target)

    def compute(x: Inputs, batch: Any, rows: Interval) -> dict[str, Any]:
        maps = function(model, x, target=pick_target(batch, rows), **method_options)
        return {name: maps.detach() if isinstance(maps, Tensor) else maps}

    job = Job(
        "attributions",
        [name],
        options,
        np_dtype,
        compute,
        model,
        input_fn or default_input,
        sample_names=sample_names,
        check_rows=pick_target.check,
    )
    return run(
        job,
        loader,
        Path(out),
        n_samples=n_samples,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
        flush_every=flush_every,
    )


def _name(function: Callable[..., Any]) -> str:
    """The array name of a method given as a function (a partial's function's name)."""
    while isinstance(function, functools.partial):
        function = function.func
    return getattr(function, "__name__", None) or "attribution"


class _TargetPicker:
    """``(batch, dataset rows) -> target`` for :func:`attribute_dataset`'s ``target``."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.per_sample = isinstance(target, (Tensor, np.ndarray)) or (
            isinstance(target, Sequence) and not isinstance(target, str)
        )
        if isinstance(target, str) and target != "label":
            raise ValueError(
                f'target={target!r}: the only string target is "label" (the labels in the batch)'
            )

    def check(self, dataset_size: int) -> None:
        if self.per_sample and len(self.target) != dataset_size:
            raise ValueError(
                f"a per-sample target needs one entry per dataset sample ({dataset_size}), "
                f"got {len(self.target)}"
            )

    def __call__(self, batch: Any, rows: Interval) -> Any:
        if isinstance(self.target, str):
            return _labels(batch)
        if self.per_sample:
            part = self.target[rows[0] : rows[1]]
            return part if isinstance(part, Tensor) else torch.as_tensor(np.asarray(part))
        return self.target


def _labels(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    if isinstance(batch, Mapping):
        for key in ("label", "labels"):
            if key in batch:
                return batch[key]
    raise ValueError(
        'target="label" needs (inputs, labels, ...) batches or dict batches with a "label" '
        f"key; got a {type(batch).__name__}"
    )
