"""gradlens.bench: the methods each task runs (from the registry only), the leaderboard's
files and ranking, reproducibility, and clear errors before any training."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from gradlens import bench
from gradlens.bench import tasks as bench_tasks
from gradlens.bench.methods import plan
from gradlens.bench.scoring import BenchRow
from gradlens.bench.suites import IMAGE_SUITE, TEXT_SUITE, Metric, suite
from gradlens.bench.writers import columns, normalised, ranked, write_csv, write_markdown
from gradlens.demos.training import Recipe
from gradlens.registry import ATTRIBUTION_METHODS, CAM_METHODS, INFO, METHODS, MethodInfo

ALL = ["shapes-cnn", "shapes-vit", "text"]


# -- the plan ------------------------------------------------------------------------------------


def test_the_cnn_task_runs_every_method_but_the_attention_ones():
    expected = [name for name, info in INFO.items() if info.kind != "attention"]
    assert plan(["shapes-cnn"])["shapes-cnn"] == expected


def test_the_vit_task_runs_attention_cams_and_the_attributions_for_transformers():
    chosen = plan(["shapes-vit"])["shapes-vit"]
    for name, info in INFO.items():
        expected = info.transformers  # every kind: attention, CAMs, attributions
        assert (name in chosen) == expected, name
    assert "attention_rollout" in chosen and "gradcam" in chosen and "saliency" in chosen
    assert "lrp_epsilon" not in chosen  # registered with transformers=False


def test_the_text_task_runs_the_layer_free_attributions_for_transformers():
    expected = [
        name
        for name, info in INFO.items()
        if info.kind == "attribution" and not info.needs_layer and info.transformers
    ]
    assert plan(["text"])["text"] == expected
    assert "guided_gradcam" not in expected and "gradcam" not in expected


def test_a_method_registered_later_joins_the_plan_with_no_bench_change(monkeypatch):
    def doubled(model, x, target=None):
        return x * 2

    monkeypatch.setitem(METHODS, "doubled", doubled)
    monkeypatch.setitem(ATTRIBUTION_METHODS, "doubled", doubled)
    monkeypatch.setitem(INFO, "doubled", MethodInfo("doubled", "attribution"))
    monkeypatch.setitem(METHODS, "cnn_only_cam", doubled)
    monkeypatch.setitem(CAM_METHODS, "cnn_only_cam", doubled)
    monkeypatch.setitem(
        INFO,
        "cnn_only_cam",
        MethodInfo("cnn_only_cam", "cam", needs_layer=True, transformers=False),
    )
    chosen = plan(ALL)
    assert all("doubled" in chosen[task] for task in ALL)
    assert "cnn_only_cam" in chosen["shapes-cnn"]
    assert "cnn_only_cam" not in chosen["shapes-vit"] and "cnn_only_cam" not in chosen["text"]


def test_methods_narrow_the_plan_to_the_tasks_where_each_applies():
    chosen = plan(ALL, ["attention_rollout", "saliency", "gradcam"])
    assert chosen == {
        "shapes-cnn": ["gradcam", "saliency"],
        "shapes-vit": ["gradcam", "attention_rollout", "saliency"],
        "text": ["saliency"],
    }


# -- clear errors, before any training -----------------------------------------------------------


def test_an_unknown_task_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'shapes-vgg'.*shapes-cnn, shapes-vit, text"):
        bench.run(["shapes-vgg"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unknown_method_suggests_and_lists_the_registered_ones(tmp_path):
    with pytest.raises(
        ValueError, match="unknown method 'gradcm'; did you mean 'gradcam'.*saliency"
    ):
        bench.run(["text"], ["gradcm"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_method_that_applies_to_none_of_the_tasks_is_refused():
    with pytest.raises(ValueError, match="'attention_rollout' applies to none of the tasks text"):
        plan(["text"], ["attention_rollout"])


# -- the suites ----------------------------------------------------------------------------------


def test_each_image_metric_family_is_there_and_text_has_no_pixel_metric():
    assert {m.family for m in IMAGE_SUITE} == {
        "localisation",
        "faithfulness",
        "randomisation",
        "robustness",
        "complexity",
    }
    text = {m.name for m in TEXT_SUITE}
    assert {"token_localization", "comprehensiveness", "soft_sufficiency", "mprt"} <= text
    assert not text & {"road", "region_perturbation", "max_sensitivity", "sparseness", "auc"}


def test_the_quick_suite_leaves_out_road_only():
    full, quick = suite("image"), suite("image", quick=True)
    assert [m.name for m in full if m not in quick] == ["road"]


# -- the writers ---------------------------------------------------------------------------------

UP = Metric("up", "localisation", True, lambda c, a: a)
DOWN = Metric("down", "faithfulness", False, lambda c, a: a)


def rows() -> list[BenchRow]:
    return [
        BenchRow("t", "a", {"up": 0.5, "down": 0.2}, 0.01),
        BenchRow("t", "b", {"up": 0.9, "down": 0.4}, 0.02),
        BenchRow("t", "c", {"up": 0.1, "down": 0.1}, 0.03),
        BenchRow("t", "d", {"up": math.nan, "down": math.nan}, math.nan, "no ReLU"),
    ]


def test_methods_are_ranked_by_their_mean_rank_in_each_metric_s_direction():
    # up: b 1, a 2, c 3; down: c 1, a 2, b 3 -> a 2, b 2, c 2: ties by name
    assert [(row.method, rank) for row, rank in ranked(rows(), [UP, DOWN])] == [
        ("a", 2.0),
        ("b", 2.0),
        ("c", 2.0),
    ]
    assert [row.method for row, _ in ranked(rows(), [UP])] == ["b", "a", "c"]


def test_the_csv_has_task_method_each_metric_and_the_time(tmp_path):
    header = columns([[UP, DOWN], [DOWN, Metric("other", "faithfulness", True, UP.compute)]])
    assert header == ["task", "method", "up", "down", "other", "seconds_per_sample"]
    path = write_csv(tmp_path / "leaderboard.csv", rows(), header)
    lines = list(csv.reader(path.open()))
    assert lines[0] == header
    assert lines[1] == ["t", "a", "0.5000", "0.2000", "", "0.0100"]
    assert lines[4] == ["t", "d", "nan", "nan", "", "nan"]


def test_the_markdown_bolds_the_best_value_of_each_column_and_lists_what_did_not_run(tmp_path):
    path = write_markdown(tmp_path / "leaderboard.md", [("t", "heading", [UP, DOWN], rows())])
    text = path.read_text()
    assert "| # | method | mean rank | up ↑ | down ↓ | s/sample |" in text
    assert "| 2 | b | 2.00 | **0.9000** | 0.4000 | 0.0200 |" in text
    assert "| 3 | c | 2.00 | 0.1000 | **0.1000** | 0.0300 |" in text
    assert "- `d`: no ReLU" in text


def test_the_heat_map_normalises_each_metric_with_one_the_best():
    assert normalised([0.5, 0.9, 0.1, math.nan], True)[:3] == pytest.approx([0.5, 1.0, 0.0])
    assert normalised([0.2, 0.4, 0.1], False) == pytest.approx([2 / 3, 0.0, 1.0])
    assert math.isnan(normalised([0.5, math.nan], True)[1])
    assert normalised([0.3, 0.3], False) == [1.0, 1.0]


# -- a run ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny(monkeypatch):
    """Quick runs with a few dozen training samples (seconds, not a verdict)."""
    recipe = Recipe(n_train=48, n_test=8, epochs=1, batch_size=16, lr=3e-3)
    monkeypatch.setattr(bench_tasks, "QUICK_RECIPES", dict.fromkeys(ALL, recipe))
    monkeypatch.setitem(bench_tasks.SAMPLES, True, 2)


def table(path):
    """The CSV without its seconds_per_sample column."""
    return [line[:-1] for line in csv.reader(path.open())]


def test_the_same_seed_writes_the_same_tables_but_for_the_time(tiny, tmp_path):
    chosen = ["gradcam", "saliency"]
    first = bench.run(
        ["shapes-vit", "text"], chosen, out=tmp_path / "a", quick=True, progress=False
    )
    second = bench.run(
        ["shapes-vit", "text"], chosen, out=tmp_path / "b", quick=True, progress=False
    )
    assert table(first.csv) == table(second.csv)
    assert first.markdown.read_text().count("**") > 0 and first.figure.stat().st_size > 0
    assert [(row.task, row.method) for row in first.rows] == [
        ("shapes-vit", "gradcam"),
        ("shapes-vit", "saliency"),
        ("text", "saliency"),
    ]


def test_a_method_that_refuses_the_model_is_a_row_of_nan_with_the_reason(tiny, tmp_path):
    result = bench.run(
        ["shapes-vit"], ["guided_backprop", "gradcam"], out=tmp_path, quick=True, progress=False
    )
    refused = next(row for row in result.rows if row.method == "guided_backprop")
    assert "nn.ReLU" in refused.note and all(math.isnan(v) for v in refused.scores.values())
    assert "Did not run:" in result.markdown.read_text()
    scored = next(row for row in result.rows if row.method == "gradcam")
    assert scored.note == "" and 0 <= scored.scores["pointing_game"] <= 1


def test_a_run_leaves_the_global_random_state_alone_and_draws_no_bar_off_a_terminal(
    tiny, tmp_path, capsys
):
    before = torch.random.get_rng_state()
    bench.run(["text"], ["saliency"], out=tmp_path, quick=True, progress=True)
    assert torch.equal(torch.random.get_rng_state(), before)
    captured = capsys.readouterr()
    assert captured.err == ""  # pytest's captured stderr is not a terminal
    assert "text: held-out accuracy" in captured.out
