"""`gradlens demo --quick`.

It trains, runs every CAM and attribution method (a CNN has no attention), writes the
figure and the table, and draws no progress bar into a stream that is not a terminal.
"""

from __future__ import annotations

import csv

import torch

import gradlens
from gradlens.cli import main
from gradlens.registry import ATTENTION_METHODS


def test_demo_quick_writes_its_outputs_and_grad_cam_points_at_the_objects(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    with (tmp_path / "metrics.csv").open() as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(gradlens.METHODS) - set(ATTENTION_METHODS)
    assert float(rows["gradcam"]["pointing_game"]) >= 0.9
    # the fully randomised model's Grad-CAM no longer matches the trained one
    assert float(rows["gradcam"]["sanity_spearman"]) < 0.5
    captured = capsys.readouterr()
    assert "gradcam" in captured.out
    # pytest's captured streams are no terminal: no training bar, no carriage returns
    assert "\r" not in captured.err + captured.out
