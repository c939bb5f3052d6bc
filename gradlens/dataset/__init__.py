"""Dataset-scale extraction and attribution, streamed to ``.npy`` files, resumable, distributed;
and the activation cache of language models for SAEs and probes (:func:`cache_activations`).

:func:`extract_dataset` runs a model over a whole dataset and writes the outputs of the
selected layers to one ``.npy`` file per layer; :func:`attribute_dataset` does the same for
the maps of any method of :data:`gradlens.registry.METHODS`. :func:`load_features`
memory-maps the result. What lands in the output directory ``out``::

    out/manifest.json           what was computed: layers, shapes, dtype, model, progress
    out/<layer name>.npy        one array per layer, shape (N, *feature shape)
    out/.gradlens-progress/     per-rank progress files while a run is incomplete

How it works:

* Each ``.npy`` file is created at its final shape ``(N, *feature_shape)`` with
  :func:`numpy.lib.format.open_memmap` (the feature shape comes from the first batch) and
  filled with positioned writes (``os.pwrite`` at the row's byte offset): no array of the
  whole dataset is ever held in memory, and no dirty memory-mapped pages accumulate, so the
  process's anonymous memory stays flat whatever ``N`` is.
* Every ``flush_every`` batches the written data is synced to disk (``fdatasync``) and only
  then the rows are recorded as completed in a small per-rank progress file. A run that is
  killed resumes, when the same call is made again, at the first row not recorded: since
  rows are recorded at batch boundaries the batches are the same as in an uninterrupted
  run, and so are the files, byte for byte. Calling it again after completion reads the
  manifest and returns without running the model.
* "The same call" is checked, not assumed: the manifest records the model's fingerprint,
  the layers and a description of every option, functions included (by their code,
  closure and defaults), and another call is refused with
  :class:`~gradlens.errors.ManifestMismatchError`. A call with an option that cannot be
  described (e.g. a function whose closure holds a lock) does not resume at all: pass
  ``overwrite=True`` or another ``out``.
* Under :mod:`torch.distributed` (e.g. ``torchrun --nproc_per_node=N``), rank ``r`` of
  ``W`` processes handles the contiguous rows ``[r*n//W, (r+1)*n//W)`` -- no padding, no
  row skipped or duplicated -- and all ranks write into the same files. Rank 0 creates the
  files before a barrier and writes the final manifest after one.

Scaling out:

* One machine, several processes: launch the script with ``torchrun --nproc_per_node=N``
  and call ``torch.distributed.init_process_group("nccl")`` (``"gloo"`` on CPU; with nccl
  also ``torch.cuda.set_device(local_rank)``) before :func:`extract_dataset`; inputs follow
  the model's device.
* Several machines with a shared filesystem (Lustre, GPFS, ...): run torchrun on each with
  ``--nnodes=M --node_rank=i --nproc_per_node=N --rdzv_backend=c10d
  --rdzv_endpoint=host0:29500`` and an output directory on the shared filesystem; all
  ``M*N`` ranks split the rows and write into the same files. (NFS does not promise intact
  concurrent writes from several machines into one file: use shards there.)
* Several machines without a shared filesystem: give machine ``k`` of ``K`` a
  ``shard=(k, K)``; it writes rows ``[k*N//K, (k+1)*N//K)`` of the dataset to its own
  directory (and may itself run several processes with torchrun), and
  :func:`merge_shards` joins the copied directories.

The package, one file per part:

* ``api``: :func:`extract_dataset` and :func:`attribute_dataset`, each a job for ``run``;
  ``options``: :class:`MethodOptions`, the options ``attribute_dataset`` passes on;
* ``run``: the run they share: split the rows, resume, compute, write, record progress;
* ``manifest``: :class:`Manifest`; ``identity``: the descriptions of options and of the
  model that decide whether two calls are the same;
* ``directory``: the output directory checked, created, finished and read
  (:func:`load_features`);
* ``storage``: ``.npy`` files written row by row, per-rank progress files (checkpoints);
  ``rows``: row ranges and :func:`shard_range`;
* ``sources``: ordered DataLoaders, iterables of batches, image folders;
* ``distributed``: the ``torch.distributed`` group and :func:`merge_shards`.

The activation cache (:func:`cache_activations`, a Hugging Face dataset written in shards):

* ``cache``: :func:`cache_activations`, the run (windows in shards, shards to ranks,
  batches through ``extract``);
* ``packing``: token sources and SAELens' packing into windows;
* ``shards``: shards written with ``save_to_disk`` by a background thread, storage dtypes;
* ``cache_directory``: the directory checked, resumed, assembled;
* ``cache_reader``: :func:`load_activations` (bfloat16 included).
"""

from __future__ import annotations

from .api import attribute_dataset, extract_dataset
from .cache import cache_activations
from .cache_reader import ActivationCache, load_activations
from .directory import load_features
from .distributed import merge_shards
from .manifest import Manifest
from .options import MethodOptions
from .rows import shard_range

__all__ = [
    "ActivationCache",
    "Manifest",
    "MethodOptions",
    "extract_dataset",
    "attribute_dataset",
    "cache_activations",
    "load_activations",
    "load_features",
    "merge_shards",
    "shard_range",
]
