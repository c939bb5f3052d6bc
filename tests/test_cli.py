"""The gradlens command line: layers, cam, extract, demo, bench; one-line errors with exit
status 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gradlens
from gradlens.cli import Preprocess, main
from gradlens.dataset import load_features
from gradlens.passes import differentiate
from gradlens.registry import INFO, METHODS, MethodInfo

USER_MODULE = """
import torch
from torch import nn


def build():
    return nn.Sequential()  # replaced below


class UserNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def build():
    return UserNet()


def build_other():
    return UserNet(classes=7)
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory with the user's model code (clinet.py), trained weights and images."""
    root = tmp_path_factory.mktemp("cli")
    (root / "clinet.py").write_text(USER_MODULE)
    sys.path.insert(0, str(root))
    import clinet

    torch.manual_seed(3)
    torch.save(clinet.build().state_dict(), root / "clinet.pt")
    torch.save(clinet.build_other().state_dict(), root / "other.pt")
    rng = np.random.default_rng(0)
    for name, size in [("img0.png", (20, 24)), ("scan.v2.png", (18, 18))]:  # a dot in the stem
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name)
    for label in ["cats", "dogs"]:
        (root / "data" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16 + i, 20, 3), dtype=np.uint8)).save(
                root / "data" / label / f"{i}.png"
            )
    (root / "flat").mkdir()  # image files without class sub-folders
    for name in ["b.png", "c.jpg", "a.png"]:
        Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)).save(
            root / "flat" / name
        )
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("clinet", None)


def trained_model(workdir: Path) -> torch.nn.Module:
    import clinet

    model = clinet.build().eval()
    model.load_state_dict(torch.load(workdir / "clinet.pt"))
    return model


def layer_map(model, x, target=None, *, layer="conv2"):
    """A CAM-like test method on the shared differentiate step: sum_c A_c * dS/dA_c."""
    step = differentiate(model, x, target, layers=[layer])
    return (step.activations[layer] * step.gradients[layer]).sum(1)


@pytest.fixture
def methods(monkeypatch):
    """The registry with the test method added (removed again after the test)."""
    monkeypatch.setitem(METHODS, "layermap", layer_map)
    monkeypatch.setitem(INFO, "layermap", MethodInfo("layermap", "cam", needs_layer=True))
    return METHODS


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("gradlens: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


# -- gradlens layers ------------------------------------------------------------------------------


def test_layers_prints_names_types_and_output_shapes(capsys):
    status, out, _ = run(capsys, "layers", "resnet18", "--input-size", 3, 64, 64)
    assert status == 0
    assert out.splitlines()[0].split() == ["name", "type", "output", "shape"]
    row = next(line for line in out.splitlines() if line.startswith("layer4 "))
    assert row.split()[:2] == ["layer4", "Sequential"] and "(1, 512, 2, 2)" in row
    assert "<- default CAM layer" in row


def test_layers_of_a_model_in_the_user_s_own_code(capsys, workdir):
    status, out, _ = run(capsys, "layers", "clinet:build", "--input-size", 3, 8, 8)
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "conv1",
        "relu",
        "conv2",
        "pool",
        "fc",
    ]


def test_an_unknown_model_is_a_one_line_error_with_suggestions(capsys):
    status, _, err = run(capsys, "layers", "resnet19")
    assert_one_line_error(status, err, "unknown model 'resnet19'", "did you mean 'resnet18'")


def test_user_code_that_cannot_be_imported_is_a_one_line_error(capsys, workdir):
    status, _, err = run(capsys, "layers", "clinet:nothing_here")
    assert_one_line_error(status, err, "has no attribute 'nothing_here'")


# -- gradlens cam ---------------------------------------------------------------------------------


def test_cam_writes_an_overlay_png_and_the_raw_map_for_each_image(
    capsys, workdir, methods, tmp_path
):
    images = [workdir / "img0.png", workdir / "scan.v2.png"]
    status, out, _ = run(
        capsys,
        "cam",
        *images,
        "--model",
        "clinet:build",
        "--weights",
        workdir / "clinet.pt",
        "--layer",
        "conv2",
        "--method",
        "layermap",
        "--target",
        1,
        "--image-size",
        16,
        "--out",
        tmp_path,
    )
    assert status == 0 and out.count("->") == 2
    preprocess = Preprocess.for_size(16)
    x = torch.stack([preprocess(Image.open(p)) for p in images])
    expected = layer_map(trained_model(workdir), x, 1, layer="conv2")
    for i, image in enumerate(images):
        np.testing.assert_allclose(
            np.load(tmp_path / f"{image.stem}_layermap.npy"), expected[i].numpy(), atol=1e-6
        )
        assert np.asarray(Image.open(tmp_path / f"{image.stem}_layermap.png")).shape == (16, 16, 3)


def test_cam_with_the_registered_gradcam(capsys, workdir, tmp_path):
    status, _, _ = run(
        capsys,
        "cam",
        workdir / "img0.png",
        "--model",
        "resnet18",
        "--num-classes",
        5,
        "--layer",
        "layer4",
        "--image-size",
        32,
        "--out",
        tmp_path,
    )
    assert status == 0
    assert np.load(tmp_path / "img0_gradcam.npy").shape == (32, 32)


def cam_args(tmp_path: Path, workdir: Path, *extra) -> list:
    """A small Grad-CAM of a torchvision model."""
    return [
        "cam",
        workdir / "img0.png",
        "--model",
        "resnet18",
        "--num-classes",
        5,
        "--image-size",
        32,
        "--out",
        tmp_path,
        *extra,
    ]


def test_a_torchvision_model_without_weights_gets_a_note_on_stderr(capsys, workdir, tmp_path):
    status, out, err = run(capsys, *cam_args(tmp_path, workdir))
    assert status == 0 and out.count("->") == 1
    assert err.count("\n") == 1 and err.startswith("gradlens: note: resnet18 has random weights")
    assert "--weights FILE" in err and "--weights ResNet18_Weights.DEFAULT" in err


def test_no_note_with_weights_none_given_or_a_model_of_your_own(capsys, workdir, tmp_path):
    assert run(capsys, *cam_args(tmp_path, workdir, "--weights", "none"))[2] == ""
    own = ["cam", workdir / "img0.png", "--model", "clinet:build", "--out", tmp_path]
    assert run(capsys, *own, "--image-size", 16)[2] == ""


def test_cam_with_an_unknown_layer_suggests_the_closest(capsys, workdir, methods, tmp_path):
    status, _, err = run(
        capsys,
        "cam",
        workdir / "img0.png",
        "--model",
        "clinet:build",
        "--layer",
        "conv3",
        "--method",
        "layermap",
        "--out",
        tmp_path,
    )
    assert_one_line_error(status, err, "no layer named 'conv3'", "did you mean", "'conv2'")


def test_cam_with_a_missing_image(capsys, workdir, methods, tmp_path):
    status, _, err = run(
        capsys, "cam", tmp_path / "nope.png", "--model", "clinet:build", "--out", tmp_path
    )
    assert_one_line_error(status, err, "no such image", "nope.png")


def test_cam_with_an_unknown_method_lists_the_registered_ones(capsys, workdir, methods, tmp_path):
    status, _, err = run(
        capsys,
        "cam",
        workdir / "img0.png",
        "--model",
        "clinet:build",
        "--method",
        "layermapp",
        "--out",
        tmp_path,
    )
    assert_one_line_error(
        status, err, "unknown method 'layermapp'", "did you mean 'layermap'", "Registered:"
    )


def test_weights_that_cannot_be_downloaded_are_a_one_line_error(capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    status, _, err = run(
        capsys, "layers", "resnet18", "--weights", "ResNet18_Weights.IMAGENET1K_V1"
    )
    assert_one_line_error(
        status,
        err,
        "could not download the weights ResNet18_Weights.IMAGENET1K_V1",
        "--weights PATH",
    )


def test_weights_for_another_model_are_a_one_line_error(capsys, workdir):
    status, _, err = run(capsys, "layers", "clinet:build", "--weights", workdir / "other.pt")
    assert_one_line_error(status, err, "do not fit UserNet", "size mismatch")


def test_a_missing_weights_file_is_a_one_line_error(capsys, workdir):
    status, _, err = run(capsys, "layers", "clinet:build", "--weights", workdir / "missing.pt")
    assert_one_line_error(status, err, "no such weights file")


# -- gradlens extract -----------------------------------------------------------------------------


def extract_args(workdir: Path, out: Path, *extra) -> list:
    return [
        "extract",
        "--model",
        "clinet:build",
        "--weights",
        workdir / "clinet.pt",
        "--data",
        workdir / "data",
        "--layers",
        "conv2",
        "fc",
        "--image-size",
        16,
        "--batch-size",
        4,
        "--out",
        out,
        *extra,
    ]


def test_extract_writes_the_features_of_an_image_folder(capsys, workdir, tmp_path):
    status, out, err = run(capsys, *extract_args(workdir, tmp_path))
    assert status == 0 and err == ""  # no progress bar: stderr is not a terminal here
    assert f"fc: 6x4 float32 -> {tmp_path / 'fc.npy'}" in out
    arrays, manifest = load_features(tmp_path)
    preprocess = Preprocess.for_size(16)
    files = sorted((workdir / "data").glob("*/*.png"))
    x = torch.stack([preprocess(Image.open(p)) for p in files])
    expected = gradlens.extract(trained_model(workdir), x, ["conv2", "fc"])
    for name in ["conv2", "fc"]:
        np.testing.assert_allclose(arrays[name], expected[name].numpy(), atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), [0, 0, 0, 1, 1, 1])
    assert (tmp_path / "classes.txt").read_text() == "cats\ndogs\n"
    assert manifest.sample_names is None


def test_extract_from_a_folder_of_image_files_lists_them_in_the_manifest(capsys, workdir, tmp_path):
    args = extract_args(workdir, tmp_path)
    args[args.index("--data") + 1] = workdir / "flat"
    status, out, _ = run(capsys, *args)
    assert status == 0 and f"fc: 3x4 float32 -> {tmp_path / 'fc.npy'}" in out
    arrays, manifest = load_features(tmp_path)
    assert manifest.sample_names == ["a.png", "b.png", "c.jpg"]  # sorted
    preprocess = Preprocess.for_size(16)
    x = torch.stack([preprocess(Image.open(workdir / "flat" / n)) for n in manifest.sample_names])
    expected = gradlens.extract(trained_model(workdir), x, ["fc"])["fc"]
    np.testing.assert_allclose(arrays["fc"], expected.numpy(), atol=1e-5)
    assert not (tmp_path / "labels.npy").exists() and not (tmp_path / "classes.txt").exists()


def test_extract_refuses_a_folder_of_both_layouts(capsys, workdir, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(workdir / "data", mixed)
    shutil.copy(workdir / "img0.png", mixed)
    args = extract_args(workdir, tmp_path / "out")
    args[args.index("--data") + 1] = mixed
    assert_one_line_error(*run(capsys, *args)[::2], "holds image files and sub-folders", "cats")


def test_extract_with_spatial_pooling_and_float16(capsys, workdir, tmp_path):
    status, _, _ = run(
        capsys, *extract_args(workdir, tmp_path, "--pool", "avg", "--dtype", "float16")
    )
    arrays, _ = load_features(tmp_path)
    assert status == 0 and arrays["conv2"].shape == (6, 6) and arrays["conv2"].dtype == np.float16


def test_extract_refuses_to_mix_two_models_in_one_directory(capsys, workdir, tmp_path):
    assert run(capsys, *extract_args(workdir, tmp_path))[0] == 0
    args = extract_args(workdir, tmp_path)
    args[args.index("--weights") + 1] = "none"
    status, _, err = run(capsys, *args)
    assert_one_line_error(status, err, "fingerprint", "overwrite=True")


def test_extract_from_a_missing_folder(capsys, workdir, tmp_path):
    args = extract_args(workdir, tmp_path)
    args[args.index("--data") + 1] = tmp_path / "nowhere"
    assert_one_line_error(*run(capsys, *args)[::2], "no such data folder")


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="needs torchrun")
def test_extract_under_torchrun_gives_the_single_process_files(capsys, workdir, tmp_path):
    assert run(capsys, *extract_args(workdir, tmp_path / "one"))[0] == 0
    command = ["torchrun", "--standalone", "--nproc_per_node=2", "--no-python", "gradlens"]
    command += [str(a) for a in extract_args(workdir, tmp_path / "two")]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, _ = load_features(tmp_path / "one")
    two, _ = load_features(tmp_path / "two")
    for name in one:
        np.testing.assert_allclose(two[name], one[name], atol=1e-6, rtol=0)


# -- gradlens demo, help, the console script --------------------------------------------------


def test_demo_help_does_not_import_the_demo(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradlens.demos.image", None)  # importing it would now fail
    status, out, _ = run(capsys, "demo", "--help")
    assert status == 0 and "--quick" in out


def test_demo_runs_gradlens_demo_run_demo(capsys, monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("gradlens.demos.image")
    fake.run_demo = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "gradlens.demos.image", fake)
    assert run(capsys, "demo", "--out", tmp_path, "--seed", 3, "--quick")[0] == 0
    assert calls == [{"out": str(tmp_path), "seed": 3, "quick": True, "progress": True}]


def test_demo_vit_runs_gradlens_vit_demo_run_vit_demo_and_not_the_cnn_demo(
    capsys, monkeypatch, tmp_path
):
    calls = []
    fake = types.ModuleType("gradlens.demos.vit")
    fake.run_vit_demo = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "gradlens.demos.vit", fake)
    monkeypatch.setitem(sys.modules, "gradlens.demos.image", None)  # importing it would now fail
    assert run(capsys, "demo", "--vit", "--out", tmp_path)[0] == 0
    assert calls == [{"out": str(tmp_path), "seed": 0, "quick": False, "progress": True}]


@pytest.mark.parametrize("command", ["layers", "cam", "extract", "demo", "bench"])
def test_every_subcommand_has_help_with_examples(capsys, command):
    status, out, _ = run(capsys, command, "--help")
    assert status == 0 and "examples:" in out and f"gradlens {command}" in out


def test_a_usage_error_exits_with_status_2(capsys):
    status, _, err = run(capsys, "cam", "--model", "resnet18")
    assert status == 2 and "required" in err


def test_the_installed_console_script(tmp_path):
    script = shutil.which("gradlens")
    if script is None:
        pytest.skip("the gradlens console script is not installed")
    done = subprocess.run(
        [script, "layers", "resnet19"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(
        "gradlens: error: unknown model"
    )


def test_demo_text_runs_gradlens_text_demo_run_text_demo(capsys, monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("gradlens.demos.text")
    fake.run_text_demo = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "gradlens.demos.text", fake)
    assert run(capsys, "demo", "--text", "--out", tmp_path, "--seed", 3)[0] == 0
    assert calls == [{"out": str(tmp_path), "seed": 3, "quick": False, "progress": True}]


# -- gradlens bench -------------------------------------------------------------------------------


def test_bench_runs_gradlens_bench_run_with_the_listed_tasks_and_methods(
    capsys, monkeypatch, tmp_path
):
    import gradlens.bench.api

    calls = []
    monkeypatch.setattr(
        gradlens.bench.api, "run", lambda *args, **kwargs: calls.append((args, kwargs))
    )
    argv = ["bench", "--tasks", "text, shapes-cnn", "--methods", "saliency,gradcam"]
    assert run(capsys, *argv, "--out", tmp_path, "--seed", 2, "--quick")[0] == 0
    assert calls == [
        (
            (["text", "shapes-cnn"], ["saliency", "gradcam"]),
            {"out": str(tmp_path), "quick": True, "seed": 2, "progress": True},
        )
    ]


def test_bench_defaults_to_every_task_and_method(capsys, monkeypatch):
    import gradlens.bench.api

    calls = []
    monkeypatch.setattr(
        gradlens.bench.api, "run", lambda *args, **kwargs: calls.append((args, kwargs))
    )
    assert run(capsys, "bench")[0] == 0
    assert calls[0][0] == (["shapes-cnn", "shapes-vit", "text"], None)
    assert calls[0][1]["out"] == "gradlens-bench" and calls[0][1]["quick"] is False


def test_bench_with_an_unknown_task_lists_the_valid_ones_before_training(capsys, tmp_path):
    status, _, err = run(capsys, "bench", "--tasks", "shapes", "--out", tmp_path / "out")
    assert_one_line_error(status, err, "unknown task 'shapes'", "shapes-cnn, shapes-vit, text")
    assert not (tmp_path / "out").exists()


def test_bench_with_an_unknown_method_lists_the_registered_ones(capsys, tmp_path):
    status, _, err = run(capsys, "bench", "--methods", "gradcm", "--out", tmp_path / "out")
    assert_one_line_error(status, err, "unknown method 'gradcm'", "did you mean 'gradcam'")
    assert "integrated_gradients" in err and not (tmp_path / "out").exists()
