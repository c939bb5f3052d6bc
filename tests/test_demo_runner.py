"""The skeleton the three demos share (`gradlens.demos.runner`): output folder, training,
each method scored in order, figure, CSV, printed table."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pytest
from torch import nn

from gradlens.demos.runner import Plan, print_table, run, timed, write_table


@dataclass
class Row:
    method: str
    pointing_game: float
    ms_per_image: float


def plan_of(events: list[str]):
    def plan(trained):
        events.append(f"plan (accuracy {trained.accuracy})")

        def score(name: str, hits: float):
            events.append(f"score {name}")
            return Row(name, hits, 2.0), name.upper()

        def draw(shown):
            events.append(f"draw {shown}")
            return plt.figure(figsize=(1, 1))

        return Plan(
            intro="two methods",
            methods={"a": lambda: score("a", 0.5), "b": lambda: score("b", 1.0)},
            draw=draw,
        )

    return plan


def test_run_makes_the_folder_trains_scores_each_method_in_order_and_writes_both_files(
    tmp_path, capsys
):
    events: list[str] = []
    model = nn.Linear(2, 2)

    def train():
        events.append("train")
        return model, "held-out data", 0.75

    out = tmp_path / "new" / "folder"
    report = run(out, train=train, plan=plan_of(events), figure_name="f.png", table_name="t.csv")

    assert events == [
        "train",
        "plan (accuracy 0.75)",
        "score a",
        "score b",
        "draw {'a': 'A', 'b': 'B'}",
    ]
    assert report.trained.model is model and report.trained.test == "held-out data"
    assert report.trained.accuracy == 0.75 and report.trained.seconds >= 0
    assert report.rows == [Row("a", 0.5, 2.0), Row("b", 1.0, 2.0)]
    assert report.figure == out / "f.png" and report.figure.stat().st_size > 0
    assert report.table == out / "t.csv"
    assert report.table.read_text().splitlines() == [
        "method,pointing_game,ms_per_image",
        "a,0.5000,2.0000",
        "b,1.0000,2.0000",
    ]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "two methods"
    assert printed[-1] == f"wrote {out / 'f.png'} and {out / 't.csv'}"


def test_a_folder_that_cannot_be_made_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")

    def train():
        raise AssertionError("trained although the output folder cannot be made")

    with pytest.raises(OSError):
        run(blocker / "out", train=train, plan=plan_of([]), figure_name="f", table_name="t")


def test_timed_returns_the_result_and_the_milliseconds_per_sample(monkeypatch):
    clock = iter([10.0, 10.5])  # 0.5 s for 4 samples
    monkeypatch.setattr("gradlens.demos.runner.perf_counter", lambda: next(clock))
    assert timed(lambda: "maps", 4) == ("maps", 125.0)


def test_the_printed_table_aligns_each_score_with_its_heading(capsys):
    print_table([Row("gradcam", 0.96, 1.25), Row("a_long_method_name_here", 0.5, 10.0)])
    assert capsys.readouterr().out.splitlines() == [
        "method                    pointing   ms/img",
        "-------------------------------------------",
        "gradcam                       0.96      1.2",
        "a_long_method_name_here       0.50     10.0",
    ]


def test_the_csv_has_the_field_names_as_header_and_four_decimals(tmp_path):
    path = write_table(tmp_path / "t.csv", [Row("saliency", 1 / 3, 12.0)])
    with path.open() as f:
        assert list(csv.reader(f)) == [
            ["method", "pointing_game", "ms_per_image"],
            ["saliency", "0.3333", "12.0000"],
        ]
