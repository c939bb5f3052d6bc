"""Explaining a prediction with SAE features: train a sparse autoencoder on a small GPT-2's
residual stream, splice it in, find the latents that drive a next-token prediction, ablate
one, and list the windows where it fires most.

The model is the copy-task GPT-2 of ``examples/interventions.py`` (it answers a query token
with the prompt's first token). Its residual stream after blocks 0 and 1 is cached to disk
over a synthetic corpus of prompts with ``gradlens.cache_activations`` (a sharded
``datasets`` dataset with ``token_ids`` and one column per hook point), and a tiny SAE is
trained on the block-0 column with a few lines of plain PyTorch.

Writes ``sae_features.txt`` (reconstruction, attributions, ablation) and
``sae_features.md`` (the max-activating windows of the top latent), and the cache under
``activations/``. ``--quick`` trains the
model and the SAE only briefly.

Run: ``python examples/sae_features.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import datasets
import torch
from _common import parse_args
from interventions import LENGTH, QUERY, copy_model, copy_prompts
from torch import Tensor, nn

import gradlens

HOOK = "transformer.h.0"  # the residual stream after block 0, (B, T, 64)


def activation_cache(model: nn.Module, windows: Tensor, out: Path) -> datasets.Dataset:
    """Cache the residual stream after blocks 0 and 1 over the prompts, one window each."""
    # --8<-- [start:cache]
    corpus = [windows.flatten().tolist()]  # one long document: its windows are the prompts
    cache = gradlens.cache_activations(
        model,
        corpus,
        ["transformer.h.0", "transformer.h.1"],  # two hook points, one forward (stops after h.1)
        out / "activations",
        context_size=LENGTH,
        prepend_bos=False,  # the copy task's prompts have no BOS
        bos_token_id=QUERY,  # the separator between documents (none here: one document)
        batch_size=256,
        overwrite=True,
        progress=False,
    )
    # --8<-- [end:cache]
    return cache


def train_sae(cache: datasets.Dataset, n_latents: int, steps: int) -> nn.Module:
    # --8<-- [start:train]
    acts = cache.with_format("torch")[:][HOOK].flatten(0, 1)  # (windows * T, 64)
    torch.manual_seed(0)
    sae = gradlens.sae.SparseAutoencoder(d_in=acts.shape[-1], n_latents=n_latents)
    optimiser = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = acts[torch.randint(len(acts), (512,))]
        latents = sae.encode(batch)
        loss = (sae.decode(latents) - batch).pow(2).sum(-1).mean() + latents.sum(-1).mean()  # L1
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # --8<-- [end:train]
    return sae


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    model = copy_model(steps=3 if args.quick else 80)
    cache = activation_cache(model, copy_prompts(64 if args.quick else 2048, seed=7), args.out)
    sae = train_sae(cache, n_latents=128, steps=20 if args.quick else 1500)
    prompts = copy_prompts(4, seed=8)
    answer = prompts[:, 0]  # the copy task's answer: the first token

    # --8<-- [start:splice]
    latents_site, error_site = f"{HOOK}.latents", f"{HOOK}.error"
    with torch.no_grad(), gradlens.sae.splice(model, {HOOK: sae}):
        sites = gradlens.extract(model, prompts, [latents_site, error_site])
        spliced = model(prompts).logits
        zero = gradlens.edits.zero()
        with gradlens.patch(model, {latents_site: zero, error_site: zero}):
            start = model(prompts).logits  # the hook point's output is decode(0)
    with torch.no_grad():
        plain = model(prompts).logits
    # spliced == plain: decode(latents) + error is the hook point's output again
    # --8<-- [end:splice]
    z, error = sites[latents_site], sites[error_site]
    residual = gradlens.extract(model, prompts, HOOK)[HOOK]
    explained = 1 - error.pow(2).sum() / (residual - residual.mean((0, 1))).pow(2).sum()

    # --8<-- [start:attribute]
    result = gradlens.sae.feature_attributions(
        model, prompts, answer, saes={HOOK: sae}, method="integrated_gradients", steps=64
    )[HOOK]
    at_query = result.latents[:, -1]  # (B, n_latents): each latent's share at the query
    top = at_query.mean(0).topk(3)  # the latents that push the answer most
    # --8<-- [end:attribute]

    latent = int(top.indices[0])

    # --8<-- [start:ablate]
    def ablate(latents: Tensor) -> Tensor:
        return latents.index_fill(-1, torch.tensor([latent]), 0.0)

    with torch.no_grad(), gradlens.sae.splice(model, {HOOK: sae}):
        with gradlens.patch(model, {f"{HOOK}.latents": ablate}):
            ablated = model(prompts).logits[:, -1]

    # --8<-- [end:ablate]
    def answer_logit(logits: Tensor) -> list[float]:
        return [round(v, 4) for v in logits.gather(1, answer[:, None])[:, 0].tolist()]

    # --8<-- [start:top]
    examples = gradlens.sae.top_features(cache, sae, HOOK, latent, k=5)
    table = gradlens.viz.top_features_table(examples, format="markdown", context=3)
    # --8<-- [end:top]

    lines = [
        f"SAE on {HOOK}: {sae.n_latents} latents, "
        f"{float((z > 0).float().sum(-1).mean()):.1f} active per token on average, "
        f"{float(explained):.3f} of the variance explained",
        f"largest logit change from splicing it in: {float((spliced - plain).abs().max()):.2e}",
        "integrated gradients: the latents' and the error's attributions add up to "
        f"{[round(v, 4) for v in result.total().tolist()]}, the answer logit's change from "
        f"decode(0) is {answer_logit(plain[:, -1] - start[:, -1])}",
        "latents that push the answer most at the query position: "
        + ", ".join(f"{int(i)} ({float(v):+.3f})" for v, i in zip(top.values, top.indices)),
        f"error node's share at the query: {[round(v, 4) for v in result.error[:, -1].tolist()]}",
        f"answer logit: {answer_logit(plain[:, -1])}",
        f"with latent {latent} ablated: {answer_logit(ablated)}",
    ]
    report = args.out / "sae_features.txt"
    report.write_text("\n".join(lines) + "\n")
    tables = args.out / "sae_features.md"
    tables.write_text(table + "\n")
    print(report.read_text())
    print(table)
    return [report, tables]


if __name__ == "__main__":
    main()
