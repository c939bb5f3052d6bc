"""`gradlens demo --text --quick`: it trains the tiny text classifier, runs every per-token
attribution method, writes the figure and the table, and the gradient methods find the
triggers."""

from __future__ import annotations

import csv

import torch

from gradlens.cli import main
from gradlens.demos.text import text_methods


def test_text_methods_are_the_attributions_without_a_layer_of_their_own():
    names = text_methods()
    assert {"saliency", "input_x_gradient", "integrated_gradients", "occlusion"} <= set(names)
    assert "guided_gradcam" not in names and "gradcam" not in names


def test_demo_text_quick_writes_the_table_and_ig_and_ixg_find_the_triggers(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["demo", "--text", "--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "demo-text.png").stat().st_size > 10_000
    with (tmp_path / "metrics-text.csv").open() as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(text_methods())
    for name in ("integrated_gradients", "input_x_gradient"):
        assert float(rows[name]["localization"]) >= 0.9
        # deleting the top tokens costs more probability than keeping only them
        assert float(rows[name]["comprehensiveness"]) > float(rows[name]["sufficiency"])
        # the fully re-initialised model's scores no longer match the trained ones
        assert float(rows[name]["sanity_spearman"]) < 0.5
    captured = capsys.readouterr()
    assert "integrated_gradients" in captured.out and "metrics-text.csv" in captured.out
    assert "\r" not in captured.err + captured.out  # no progress bar off a terminal
