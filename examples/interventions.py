"""Interventions: ablate a stage of the shapes CNN, steer a small GPT-2, and patch activations.

Three parts:

1. zero- and mean-ablation of each stage of the tiny CNN of ``gradlens.demos.training``
   trained on the synthetic shapes, and of more and more channels of its last stage,
   watching the held-out accuracy fall;
2. a small GPT-2 (2 layers, width 64) trained in a few seconds to copy the first token of
   a prompt to the end, steered towards another answer by adding a vector to its residual
   stream, in ``model.generate``;
3. activation patching of that model's residual stream (layer x position), with the
   attribution-patching estimate beside it.

Writes ``interventions.txt`` (accuracies, steering, patching tables) and
``interventions.png`` (the two heat maps). ``--quick`` trains both models only briefly.

Run: ``python examples/interventions.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from _common import parse_args, save_figure, shapes_model
from torch import Tensor, nn

import gradlens
from gradlens import viz
from gradlens.demos import training
from gradlens.metrics import logit_difference, normalized, spearman

VOCAB, LENGTH = 16, 8  # content tokens 0..15, prompts of 8 tokens
QUERY = VOCAB  # the last token of every prompt: "which token came first?"


def ablation(quick: bool) -> list[str]:
    model, test, accuracy = shapes_model(quick)
    images, labels = test.images, test.labels
    lines = [f"held-out accuracy of the shapes CNN: {accuracy:.3f}", "", "stage ablation:"]
    for stage in ["features.1", "features.2", "features.3"]:
        # --8<-- [start:ablate]
        with gradlens.patch(model, {stage: gradlens.edits.zero()}):
            zeroed = training.accuracy(model, images, labels)
        with gradlens.patch(model, {stage: gradlens.edits.mean()}):  # the batch mean
            averaged = training.accuracy(model, images, labels)
        # --8<-- [end:ablate]
        lines.append(f"  {stage}: zero-ablated {zeroed:.3f}, mean-ablated {averaged:.3f}")
    lines += ["", "zeroing the first k of the 64 channels of features.3:"]
    for k in [0, 8, 16, 32, 48, 64]:
        # --8<-- [start:channels]
        channels = list(range(k))  # positions index dimension 1: the channels of a feature map
        with gradlens.patch(model, {"features.3": gradlens.edits.zero(positions=channels)}):
            kept = training.accuracy(model, images, labels)
        # --8<-- [end:channels]
        lines.append(f"  k={k:2d}: accuracy {kept:.3f}")
    assert training.accuracy(model, images, labels) == accuracy  # the model is untouched
    return lines


def copy_prompts(n: int, seed: int) -> Tensor:
    """``n`` prompts: 7 random content tokens, then the query token; the answer is the first."""
    prompts = torch.randint(0, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    prompts[:, -1] = QUERY
    return prompts


def copy_model(steps: int) -> nn.Module:
    """A 2-layer GPT-2 trained to answer the query with the prompt's first token."""
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=VOCAB + 1,
        n_positions=LENGTH + 4,
        bos_token_id=QUERY,
        eos_token_id=QUERY,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        prompts = copy_prompts(128, seed=step + 1000)
        logits = model(prompts, use_cache=False).logits[:, -1]
        loss = nn.functional.cross_entropy(logits, prompts[:, 0])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def answers(model: nn.Module, prompts: Tensor) -> Tensor:
    with torch.no_grad():
        return model(prompts).logits[:, -1].argmax(-1)


def steering(model: nn.Module) -> list[str]:
    prompts = copy_prompts(64, seed=1)
    prompts[:, 0] = 3  # every prompt starts with token 3, so the answer is 3
    towards = prompts.clone()
    towards[:, 0] = 11  # the same prompts starting with 11
    # --8<-- [start:steer]
    # a steering vector (Turner et al. 2023): the mean difference of the residual stream
    # after block 0, at the query position, between prompts that start with 11 and the
    # same prompts starting with 3
    layer = "transformer.h.0"
    vector = (
        gradlens.extract(model, towards, layer)[layer][:, -1]
        - gradlens.extract(model, prompts, layer)[layer][:, -1]
    ).mean(0)  # (64,)
    with gradlens.patch(model, {layer: gradlens.edits.add(vector, scale=1.0)}):
        steered = answers(model, prompts)  # added at every position of every forward
        generated = model.generate(prompts[:2], max_new_tokens=3, do_sample=False)
    # --8<-- [end:steer]
    plain = model.generate(prompts[:2], max_new_tokens=3, do_sample=False)
    lines = [
        f"answers of 64 prompts starting with token 3: {_counts(answers(model, prompts))}",
        f"steered towards 11 (scale 1): {_counts(steered)}",
    ]
    for scale in [0.25, 0.5, 0.75]:
        with gradlens.patch(model, {layer: gradlens.edits.add(vector, scale)}):
            lines.append(f"  scale {scale}: {_counts(answers(model, prompts))}")
    lines.append(f"model.generate, 3 new tokens for 2 prompts: {plain[:, -3:].tolist()}")
    lines.append(f"the same, steered: {generated[:, -3:].tolist()}")
    return lines


def _counts(tokens: Tensor) -> str:
    values, counts = tokens.unique(return_counts=True)
    return ", ".join(f"{int(c)} x token {int(v)}" for v, c in zip(values, counts))


def patching(model: nn.Module, out: Path) -> tuple[list[str], Path]:
    clean = copy_prompts(16, seed=2)
    corrupted = clean.clone()
    corrupted[:, 0] = (clean[:, 0] + 5) % VOCAB  # another first token, so another answer
    # --8<-- [start:patching]
    residual_stream = ["transformer.drop", "transformer.h.0", "transformer.h.1"]
    # the logit of the clean answer minus that of the corrupted one, per prompt
    difference = logit_difference(clean[:, 0], corrupted[:, 0], output="logits")
    with torch.no_grad():  # 0 = the corrupted run, 1 = the clean run
        metric = normalized(difference, model(clean), model(corrupted))
    measured = gradlens.activation_patching(
        model, clean, corrupted, residual_stream, metric, positions="each"
    )  # (3, 8): one batched forward for all 24 (layer, position) cases
    estimated = gradlens.attribution_patching(
        model, clean, corrupted, residual_stream, metric, positions="each"
    )  # (3, 8): two forwards and one backward
    fig = viz.patching_heatmap(
        {"activation patching": measured, "attribution patching (estimate)": estimated},
        layers=["before block 0", "after block 0", "after block 1"],
        positions=["first"] + [f"t{i}" for i in range(1, LENGTH - 1)] + ["query"],
    )
    # --8<-- [end:patching]
    path = save_figure(fig, out / "interventions.png")
    rho = float(spearman(estimated.flatten()[None], measured.flatten()[None])[0])
    lines = ["activation patching, normalised (rows: before block 0, after 0, after 1):"]
    lines += ["  " + " ".join(f"{v:6.2f}" for v in row.tolist()) for row in measured]
    lines += ["attribution patching estimate:"]
    lines += ["  " + " ".join(f"{v:6.2f}" for v in row.tolist()) for row in estimated]
    lines.append(f"Spearman rank correlation of the two: {rho:.3f}")
    return lines, path


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    lines = ablation(args.quick)
    model = copy_model(steps=3 if args.quick else 80)
    accuracy = float(
        (answers(model, copy_prompts(512, seed=3)) == copy_prompts(512, 3)[:, 0]).float().mean()
    )
    lines += ["", f"copy task: the GPT-2 answers {accuracy:.3f} of held-out prompts right", ""]
    lines += steering(model)
    patch_lines, figure = patching(model, args.out)
    lines += [""] + patch_lines
    report = args.out / "interventions.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [report, figure]


if __name__ == "__main__":
    main()
