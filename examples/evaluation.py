"""Evaluating explanations on the synthetic-shapes model: deletion/insertion, pointing game,
average drop, and the model-parameter randomisation test (why guided backprop fails it).

Trains the tiny CNN of ``gradlens.demos.training`` (``--quick``: one short epoch) and writes
``evaluation.txt`` (a table per method), ``deletion.png`` (deletion and insertion curves)
and ``randomization.png`` (Spearman correlation with the original maps as more and more
layers are re-initialised, top layer first).

Run: ``python examples/evaluation.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _common import parse_args, save_figure, shapes_model  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from gradlens import metrics  # noqa: E402
from gradlens.attribution import guided_backprop, integrated_gradients, saliency  # noqa: E402
from gradlens.cam import gradcam  # noqa: E402

LAYER = "features.3"


def explainers(steps: int) -> dict:
    # --8<-- [start:explainers]
    return {
        "gradcam": lambda model, x, target=None: gradcam(model, x, LAYER, target),
        "saliency": lambda model, x, target=None: saliency(model, x, target),
        "integrated gradients": lambda model, x, target=None: integrated_gradients(
            model, x, target, steps=steps
        ),
        "guided backprop": lambda model, x, target=None: guided_backprop(model, x, target),
        "random": lambda model, x, target=None: torch.rand(
            len(x), *x.shape[2:], generator=torch.Generator().manual_seed(0)
        ),
    }
    # --8<-- [end:explainers]


def scores(model: nn.Module, data, maps: Tensor) -> dict[str, float]:
    images, masks = data.images, data.masks
    # --8<-- [start:metrics]
    deletion = metrics.deletion(model, images, maps)  # lower AUC is better
    insertion = metrics.insertion(model, images, maps)  # higher AUC is better
    hits = metrics.pointing_game(maps, masks, tolerance=4)  # the paper's 15 px at 224 px, scaled
    drop = metrics.average_drop(model, images, maps)  # lower is better (percent)
    increase = metrics.increase_in_confidence(model, images, maps)  # higher is better (percent)
    # --8<-- [end:metrics]
    return {
        "deletion AUC": float(deletion.auc.mean()),
        "insertion AUC": float(insertion.auc.mean()),
        "pointing game": float(hits.float().mean()),
        "average drop": drop,
        "increase in conf.": increase,
        "_deletion": deletion,
        "_insertion": insertion,
    }


def randomisation(model: nn.Module, images: Tensor, method) -> metrics.RandomizationResult:
    # --8<-- [start:randomization]
    result = metrics.randomization_test(model, images, method)  # on a copy; the model is untouched
    names = result.layer_names  # ['classifier', 'features.3.1', 'features.3.0', ...]
    correlations = (
        result.correlations
    )  # (steps, B): Spearman rank correlation with the original maps
    # --8<-- [end:randomization]
    assert correlations.shape[0] == len(names)
    return result


def ordinary_target(method):
    """Work-around: the randomisation test passes classes computed under inference_mode,
    which the gradient methods cannot use yet (``targets.scores`` keeps the inference tensor)."""

    def call(model, x, target=None):
        if isinstance(target, Tensor) and target.is_inference():
            target = target.tolist()
        return method(model, x, target)

    return call


def curves_figure(results: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for name, r in results.items():
        for ax, key in zip(axes, ["_deletion", "_insertion"]):
            curve = r[key]
            ax.plot(
                curve.fractions.numpy(),
                curve.curve.mean(0).numpy(),
                label=f"{name} ({curve.auc.mean():.2f})",
            )
    for ax, title in zip(axes, ["deletion (lower is better)", "insertion (higher is better)"]):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(
            "fraction of pixels removed" if "deletion" in title else "fraction of pixels inserted"
        )
        ax.set_ylabel("target probability")
        ax.legend(fontsize=7, title="method (AUC)", title_fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def randomization_figure(results: dict[str, metrics.RandomizationResult], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for name, r in results.items():
        mean = torch.nanmean(r.correlations, dim=1).numpy()
        ax.plot(range(1, len(mean) + 1), mean, marker="o", label=name)
    names = next(iter(results.values())).layer_names
    ax.set_xticks(
        range(1, len(names) + 1), [f"+{n}" for n in names], rotation=30, ha="right", fontsize=7
    )
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("Spearman with original maps")
    ax.set_xlabel("layers re-initialised (cumulative, top first)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    model, test, accuracy = shapes_model(args.quick)
    data = test[: 4 if args.quick else 200]
    steps = 8 if args.quick else 32
    methods = explainers(steps)

    results = {
        name: scores(model, data, method(model, data.images)) for name, method in methods.items()
    }
    curves_figure(results, args.out / "deletion.png")
    sanity = data[: 4 if args.quick else 32]
    randomized = {
        name: randomisation(model, sanity.images, ordinary_target(method))
        for name, method in methods.items()
        if name != "random"
    }
    randomization_figure(randomized, args.out / "randomization.png")

    columns = [
        "deletion AUC",
        "insertion AUC",
        "pointing game",
        "average drop",
        "increase in conf.",
    ]
    lines = [f"TinyCNN held-out accuracy {accuracy:.3f}; {len(data)} images", ""]
    lines.append(
        f"{'method':<22}" + "".join(f"{c:>19}" for c in columns) + f"{'sanity (last step)':>20}"
    )
    for name, r in results.items():
        last = (
            float(torch.nanmean(randomized[name].correlations[-1]))
            if name in randomized
            else float("nan")
        )
        lines.append(f"{name:<22}" + "".join(f"{r[c]:>19.3f}" for c in columns) + f"{last:>20.3f}")
    lines += [
        "",
        "Spearman correlation with the original maps after re-initialising, cumulatively:",
    ]
    names = next(iter(randomized.values())).layer_names
    lines.append(f"{'method':<22}" + "".join(f"{n:>14}" for n in names))
    for name, r in randomized.items():
        lines.append(
            f"{name:<22}"
            + "".join(f"{float(v):>14.2f}" for v in torch.nanmean(r.correlations, dim=1))
        )
    report = args.out / "evaluation.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [args.out / "deletion.png", args.out / "randomization.png", report]


if __name__ == "__main__":
    main()
