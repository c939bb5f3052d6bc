"""Evaluating per-token attributions against ground truth: the synthetic text task, the tiny
text transformer, token localisation and the ERASER scores.

Trains the :class:`~gradlens.demos.text_task.TinyTextClassifier` on the synthetic text task
(``--quick``: a few hundred sequences, one epoch), attributes the held-out sequences with
``gradlens.token_attributions`` and writes ``text_evaluation.txt``: a sample with its
triggers, and per method the localisation and the ERASER comprehensiveness and sufficiency
(tokens deleted, and replaced by the mask token).

Run: ``python examples/text_evaluation.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import parse_args

import gradlens
from gradlens import metrics
from gradlens.demos.text_task import make_text_task
from gradlens.demos.training import TEXT_RECIPE, Recipe, train_text_model


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    lines = []

    # --8<-- [start:task]
    data = make_text_task(4, seed=1)
    print(data.tokens(0), "label", int(data.labels[0]))
    print("triggers at", data.triggers[0].nonzero().flatten().tolist())
    # --8<-- [end:task]
    lines += [f"tokens: {' '.join(data.tokens(0))}", f"label: {int(data.labels[0])}"]
    lines.append(f"triggers at positions {data.triggers[0].nonzero().flatten().tolist()}")

    # the smoke run trains on less
    quick = Recipe(n_train=400, n_test=64, epochs=1, batch_size=32, lr=3e-3)
    recipe = quick if args.quick else TEXT_RECIPE
    # --8<-- [start:train]
    model, test, accuracy = train_text_model(recipe, seed=0, progress=False)
    # --8<-- [end:train]
    lines.append(f"held-out accuracy {accuracy:.3f} on {len(test)} sequences")

    lines.append(f"{'method':<22}{'localization':>13}{'compr.':>8}{'suff.':>8}{'compr. mask':>13}")
    for method in ("saliency", "input_x_gradient", "integrated_gradients"):
        # --8<-- [start:metrics]
        scores = gradlens.token_attributions(model, test.inputs, method=method)  # (B, T)
        hits = metrics.token_localization(scores, test.triggers, test.attention_mask)
        eraser = {"attention_mask": test.attention_mask}  # ERASER's bins, tokens deleted
        comp = metrics.comprehensiveness(model, test.input_ids, scores, **eraser)
        suff = metrics.sufficiency(model, test.input_ids, scores, **eraser)
        masked = metrics.comprehensiveness(model, test.input_ids, scores, removal="mask", **eraser)
        # --8<-- [end:metrics]
        lines.append(
            f"{method:<22}{hits.float().mean():>13.3f}{comp.mean():>8.3f}{suff.mean():>8.3f}"
            f"{masked.mean():>13.3f}"
        )
    report = args.out / "text_evaluation.txt"
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return [report]


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
