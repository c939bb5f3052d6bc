"""Benchmark of gradlens.cache_activations (issue 20): throughput with the writes against a
plain forward and against TransformerLens, and flat memory.

    python benchmarks/bench_cache.py [--tokens 262144] [--repeats 3] [--threads 1]
        [--skip-memory]

The model is the GPT-2 config of ``bench_generation.py`` (4 layers, width 256, 4 heads, 512
token ids; random init, eval mode, Hugging Face ``sdpa`` attention) with 128 positions. The
corpus is synthetic: documents of 20 to 400 random ids, packed into windows of 128 tokens
(BOS first, SAELens' packing), ``--tokens`` tokens of windows in all (256k by default), in
batches of 32 windows. The cached hook points are the residual stream after blocks 0 and 1
(``transformer.h.0``, ``transformer.h.1``), stored as float32 (256 KiB per window and hook).

1. Throughput, each case writing into a fresh directory (the previous round's output is
   removed before the clock starts: deleting 0.5 GB took up to 0.9 s here, which is no
   part of caching), in interleaved rounds, each round starting with another case (median
   and best wall time of ``--repeats``; tokens/s counts the windows' tokens, MB/s the
   activation bytes written). Each case also gets the CPU seconds of the whole process
   (user + system, all threads) and its minor page faults, which depend far less on other
   load than wall time does:

   * ``cache_activations``: the whole call on the same windows (given as documents that
     each fill one window): packing, forwards stopped after block 1,
     ``datasets`` shards of 256 windows written with ``save_to_disk``, assembly;
   * ``plain forward``: the same windows (packed beforehand) through ``model(ids)`` under
     ``torch.inference_mode()`` with a forward hook on block 1 that keeps both outputs
     and stops the forward by raising; nothing is written. Target: cache_activations
     >= 0.9x its tokens/s;
   * ``TransformerLens``: a ``TransformerBridge`` booted natively with the same sizes
     (random init): ``run_with_cache(ids, names_filter=[blocks.0.hook_out,
     blocks.1.hook_out])`` per batch (a whole forward), the activations gathered per
     shard and written with the same shard writer as gradlens (``save_to_disk``), in the
     same thread. Target: cache_activations >= 2x its tokens/s.

2. Per shard, each stage alone in this thread (thread CPU time, so that other load barely
   changes it): the stopped forward of one shard's 256 windows, and ``write_shard`` of
   its activations (wall and CPU: what the background writer spends on it, Arrow table
   and ``save_to_disk``). The writes' share of the forward bounds what the writes can
   cost: at most that share when they run on a busy second core, none when it is free.

3. Memory: peak anonymous memory (``RssAnon``, sampled every millisecond in a thread, as
   ``bench_dataset.py`` does: heap and tensors, not the page cache of the files written)
   of cache_activations over ``--tokens / 10`` and over ``--tokens`` tokens, each in a fresh
   process, the documents made on the fly, in shards of 32 windows (8 MiB), so that both
   runs write several shards: what a run holds at once is about three shards (one being
   computed, one queued, one being written), whatever the number of tokens. Target: the
   larger run's peak <= 1.10x the smaller's.

Page faults are the main source of noise on Linux with glibc: its ``malloc`` gives the
forward's large temporaries (16 MB MLP activations) back to the system and faults them in
again at a rate that changes from run to run (here 0.1 to 1.6 s of system time per 65k
tokens, in either forward). To measure without that noise, run every case under the same
fixed thresholds: ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``
(the script prints whether they are set).

Run with ``PYTHONPATH=.`` from the repository root when gradlens is not installed from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import gradlens
from gradlens.dataset.packing import windows
from gradlens.dataset.shards import Shard, write_shard

VOCAB, CONTEXT, BATCH, SHARD, WIDTH = 512, 128, 32, 256, 256
MEMORY_SHARD = 32  # windows per shard in the memory runs: 8 MiB of activations
BOS = 0
HOOKS = ["transformer.h.0", "transformer.h.1"]
MALLOC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
LENS_HOOKS = ["blocks.0.hook_out", "blocks.1.hook_out"]


def language_model() -> torch.nn.Module:
    """bench_generation's GPT-2 shape (4 layers, width 256, 4 heads) with 128 positions."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=4,
        n_embd=WIDTH,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        bos_token_id=BOS,
        eos_token_id=BOS,
    )
    return GPT2LMHeadModel(config).eval()


def lens_model() -> torch.nn.Module:
    """A TransformerLens bridge of the same sizes, booted from a config (random init)."""
    import transformer_lens as lens
    from transformer_lens.model_bridge import TransformerBridge

    config = lens.TransformerBridgeConfig(
        n_layers=4,
        d_model=WIDTH,
        n_ctx=CONTEXT,
        d_head=WIDTH // 4,
        n_heads=4,
        d_mlp=4 * WIDTH,
        d_vocab=VOCAB,
        act_fn="gelu_new",
        normalization_type="LN",
        seed=0,
    )
    return TransformerBridge.boot_native(config).eval()


def documents(tokens: int, seed: int = 0) -> Iterator[list[int]]:
    """Random documents of 20 to 400 ids in 1..511, enough for ``tokens`` tokens of windows
    (made on the fly: the corpus itself takes no memory)."""
    generator = np.random.default_rng(seed)
    made = 0
    while made < tokens + 2 * CONTEXT:
        n = int(generator.integers(20, 401))
        made += n + 1
        yield generator.integers(1, VOCAB, size=n).tolist()


def windows_of(tokens: int) -> torch.Tensor:
    """The first ``tokens // CONTEXT`` windows of the corpus, ``(N, CONTEXT)``."""
    n = tokens // CONTEXT
    packed = windows((np.asarray(d) for d in documents(tokens)), CONTEXT, BOS, True)
    return torch.from_numpy(np.stack([w for _, w in zip(range(n), packed)]))


class _Stop(Exception):
    pass


def plain_forward(
    model: torch.nn.Module, ids: torch.Tensor, collect: dict[str, list[torch.Tensor]] | None = None
) -> Callable[[], object]:
    """The windows through the model under inference_mode, stopped after block 1 by a hook
    that keeps the two outputs; nothing written (``collect`` gathers every batch's outputs,
    for the per-shard breakdown)."""
    blocks = model.transformer.h

    def run() -> object:
        kept: dict[str, torch.Tensor] = {}

        def keep(name: str, last: bool) -> Callable[..., None]:
            def hook(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
                kept[name] = output
                if collect is not None:
                    collect[name].append(output.clone())
                if last:
                    raise _Stop

            return hook

        handles = [
            blocks[0].register_forward_hook(keep(HOOKS[0], False)),
            blocks[1].register_forward_hook(keep(HOOKS[1], True)),
        ]
        try:
            with torch.inference_mode():
                for start in range(0, len(ids), BATCH):
                    try:
                        model(ids[start : start + BATCH])
                    except _Stop:
                        pass
        finally:
            for handle in handles:
                handle.remove()
        return kept

    return run


def transformer_lens(bridge: torch.nn.Module, ids: torch.Tensor, out: Path) -> Callable[[], None]:
    """run_with_cache per batch, the activations written per shard with the same writer
    (into ``out/shards``, made by the case's untimed setup)."""

    def run() -> None:
        for k, first in enumerate(range(0, len(ids), SHARD)):
            shard_ids = ids[first : first + SHARD]
            parts: dict[str, list[np.ndarray]] = {name: [] for name in LENS_HOOKS}
            for start in range(0, len(shard_ids), BATCH):
                with torch.inference_mode():
                    _, cache = bridge.run_with_cache(
                        shard_ids[start : start + BATCH], names_filter=LENS_HOOKS
                    )
                for name in LENS_HOOKS:
                    parts[name].append(cache[name].numpy())
            values = {name: np.concatenate(parts[name]) for name in LENS_HOOKS}
            write_shard(out, Shard(k, first, shard_ids.numpy(), values), LENS_HOOKS, "float32", "x")

    return run


def cache_call(
    model: torch.nn.Module,
    source: Callable[[], Iterator[object]],
    out: Path,
    shard_size: int = SHARD,
) -> Callable[[], object]:
    def run() -> object:
        return gradlens.cache_activations(
            model,
            source(),
            HOOKS,
            out,
            context_size=CONTEXT,
            batch_size=BATCH,
            shard_size=shard_size,
            overwrite=True,
            progress=False,
        )

    return run


def fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


@dataclass
class Case:
    """A timed ``run`` after an untimed ``setup`` (removing the previous round's output)."""

    run: Callable[[], object]
    setup: Callable[[], None] = lambda: None


@dataclass
class Measured:
    wall: float
    cpu: float  # user + system seconds of the whole process
    faults: int  # minor page faults of the whole process


def measure(case: Case) -> Measured:
    case.setup()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    case.run()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Measured(wall, cpu, after.ru_minflt - before.ru_minflt)


def throughput(tokens: int, repeats: int, root: Path) -> None:
    model, bridge = language_model(), lens_model()
    ids = windows_of(tokens)
    n_tokens = ids.numel()
    written = len(ids) * len(HOOKS) * CONTEXT * WIDTH * 4 / 1e6
    cases = {
        # the packed windows as documents: each starts with BOS and fills one window, so
        # the packing inside the call gives these windows again (the others' windows)
        "cache_activations": Case(
            cache_call(model, lambda: iter(ids.numpy()), root / "gradlens"),
            lambda: shutil.rmtree(root / "gradlens", ignore_errors=True),
        ),
        "plain forward": Case(plain_forward(model, ids)),
        "TransformerLens": Case(
            transformer_lens(bridge, ids, root / "lens"), lambda: fresh(root / "lens" / "shards")
        ),
    }
    runs: dict[str, list[Measured]] = {name: [] for name in cases}
    order = list(cases)
    for round_ in range(repeats + 1):  # round 0 warms up
        # each round starts with another case: the case after TransformerLens' full forwards
        # finds malloc's heap shaped by them and pays more page faults
        for name in order[round_ % 3 :] + order[: round_ % 3]:
            measured = measure(cases[name])
            if round_:
                runs[name].append(measured)
    print(
        f"\n1. Throughput: {len(ids)} windows of {CONTEXT} tokens ({n_tokens} tokens), hooks "
        f"{' + '.join(HOOKS)}, float32 ({written:.0f} MB of activations), batches of {BATCH}, "
        f"median of {repeats}"
    )
    print(
        f"{'':<20}{'median s':>9}{'tokens/s':>10}{'MB/s':>8}{'best s':>8}{'tokens/s':>10}"
        f"{'CPU s':>8}{'faults':>9}"
    )
    speed, cpu = {}, {}
    for name, ms in runs.items():
        median, best = statistics.median(m.wall for m in ms), min(m.wall for m in ms)
        cpu[name] = statistics.median(m.cpu for m in ms)
        speed[name] = n_tokens / median
        mb = f"{written / median:>8.1f}" if name != "plain forward" else f"{'-':>8}"
        print(
            f"{name:<20}{median:>9.2f}{n_tokens / median:>10.0f}{mb}{best:>8.2f}"
            f"{n_tokens / best:>10.0f}{cpu[name]:>8.2f}"
            f"{statistics.median(m.faults for m in ms):>9.0f}"
        )
    for other, target in (("plain forward", 0.9), ("TransformerLens", 2)):
        ratio = speed["cache_activations"] / speed[other]
        by_cpu = cpu[other] / cpu["cache_activations"]
        print(
            f"target: cache_activations >= {target}x {other}'s tokens/s -> {ratio:.3f} "
            f"(by CPU seconds: {by_cpu:.3f})"
        )


def breakdown(tokens: int, root: Path, shards: int = 3) -> None:
    """Per shard: the stopped forward and ``write_shard``, each alone in this thread."""
    model = language_model()
    ids = windows_of(min(tokens, shards * SHARD * CONTEXT))
    forward_cpu, write_wall, write_cpu = [], [], []
    fresh(root / "breakdown" / "shards")
    for k, first in enumerate(range(0, len(ids), SHARD)):
        shard_ids = ids[first : first + SHARD]
        collect: dict[str, list[torch.Tensor]] = {name: [] for name in HOOKS}
        start = time.thread_time()
        plain_forward(model, shard_ids, collect)()
        forward_cpu.append(time.thread_time() - start)
        values = {name: torch.cat(collect[name]).numpy() for name in HOOKS}
        shard = Shard(k, first, shard_ids.numpy(), values)
        start, start_cpu = time.perf_counter(), time.thread_time()
        write_shard(root / "breakdown", shard, HOOKS, "float32", "x")
        write_wall.append(time.perf_counter() - start)
        write_cpu.append(time.thread_time() - start_cpu)
    mb = min(SHARD, len(ids)) * len(HOOKS) * CONTEXT * WIDTH * 4 / 1e6
    f, w, wc = (statistics.median(x) for x in (forward_cpu, write_wall, write_cpu))
    print(
        f"\n2. Per shard of {min(SHARD, len(ids))} windows ({mb:.0f} MB of activations), each "
        f"stage alone, median of {len(forward_cpu)} shards"
    )
    print(f"stopped forward: {f:.3f} CPU s ({SHARD * CONTEXT / f:.0f} tokens per CPU second)")
    print(
        f"write_shard: {w:.3f} s wall, {wc:.3f} CPU s ({mb / w:.0f} MB/s); "
        f"{wc / f:.1%} of the forward's CPU time; {w * len(ids) / SHARD:.2f} s wall over "
        f"{len(ids)} windows"
    )
    print(
        f"bound on cache_activations / plain forward: {f / (f + wc):.3f} with the writes on a "
        f"busy core (no overlap), about 1 with a free core for the writer thread"
    )


def rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def memory_child(tokens: int) -> None:
    """Run in a fresh process: peak RssAnon during cache_activations over ``tokens`` tokens."""
    model = language_model()
    peak, stop = [rss_anon_kib()], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon_kib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    before = rss_anon_kib()
    with tempfile.TemporaryDirectory(dir=".") as out:
        sampler.start()
        start = time.perf_counter()
        ds = cache_call(model, lambda: documents(tokens), Path(out) / "cache", MEMORY_SHARD)()
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        rows = len(ds)  # type: ignore[arg-type]
        del ds
    print(json.dumps({"before": before, "peak": peak[0], "seconds": seconds, "windows": rows}))


def memory(tokens: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-child", str(tokens)]
    command += ["--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=262144)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: steady figures on a shared machine; 0: torch's default)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    print(
        f"gradlens {gradlens.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    fixed = [name for name in MALLOC if name in os.environ]
    print(f"malloc thresholds fixed: {', '.join(fixed) if fixed else 'no (glibc defaults)'}")
    with tempfile.TemporaryDirectory(dir=".") as root:
        throughput(args.tokens, args.repeats, Path(root))
        breakdown(args.tokens, Path(root))
    if args.skip_memory:
        return
    print("\n3. Peak anonymous memory (RssAnon) of cache_activations, each size in a fresh process")
    sizes = (args.tokens // 10, args.tokens)
    results = {n: memory(n) for n in sizes}
    print(f"{'tokens':>8}{'windows':>9}{'before (MiB)':>14}{'peak (MiB)':>12}{'seconds':>9}")
    for n, r in results.items():
        print(
            f"{n:>8}{r['windows']:>9}{r['before'] / 1024:>14.1f}{r['peak'] / 1024:>12.1f}"
            f"{r['seconds']:>9.1f}"
        )
    ratio = results[sizes[1]]["peak"] / results[sizes[0]]["peak"]
    print(f"target: peak({sizes[1]}) <= 1.10 x peak({sizes[0]}) -> {ratio:.3f}")


if __name__ == "__main__":
    main()
