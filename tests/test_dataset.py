"""extract_dataset / attribute_dataset / load_features: streaming to .npy, manifest, resume."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
)

import gradlens
from gradlens.dataset import attribute_dataset, extract_dataset, load_features
from gradlens.errors import ManifestMismatchError
from gradlens.passes import differentiate
from gradlens.registry import METHODS
from gradlens.targets import segmentation

from .contract_support import assert_unchanged, snapshot

ROOT = Path(__file__).resolve().parents[1]
N, BATCH = 37, 4  # 10 batches, the last one of a single sample


class TinyNet(nn.Module):
    """conv-relu-conv-pool-fc that counts how often its forward() starts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        x = self.conv2(self.relu(self.conv1(x)))
        return self.fc(self.pool(x).flatten(1))


def make_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


def make_data(n: int = N) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


def loader(dataset: Dataset | None = None, **options) -> DataLoader:
    return DataLoader(make_data() if dataset is None else dataset, batch_size=BATCH, **options)


def per_batch_reference(model: nn.Module, layers: list[str], **options) -> dict[str, np.ndarray]:
    """What the hand-written loop gives: gradlens.extract on the same batches, concatenated."""
    parts = [gradlens.extract(model, x, layers, **options) for x, _ in loader()]
    return {name: torch.cat([p[name] for p in parts]).numpy() for name in layers}


def file_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.npy"))}


@pytest.fixture
def model() -> TinyNet:
    return make_model()


# -- writing features -----------------------------------------------------------------------


def test_each_layer_is_written_to_an_npy_file_of_its_full_shape(model, tmp_path):
    extract_dataset(model, loader(), ["conv1", "conv2"], tmp_path, progress=False)
    assert np.load(tmp_path / "conv1.npy").shape == (N, 4, 8, 8)
    assert np.load(tmp_path / "conv2.npy").shape == (N, 6, 4, 4)


def test_rows_equal_extract_on_the_same_batches(model, tmp_path):
    extract_dataset(model, loader(), ["conv1", "fc"], tmp_path, progress=False)
    arrays, _ = load_features(tmp_path)
    expected = per_batch_reference(model, ["conv1", "fc"])
    for name in ["conv1", "fc"]:
        np.testing.assert_array_equal(arrays[name], expected[name])


def test_the_manifest_records_what_was_computed(model, tmp_path):
    returned = extract_dataset(model, loader(), "conv*", tmp_path, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["kind"] == "features"
    assert manifest["layers"] == ["conv1", "conv2"]  # the pattern, resolved
    assert manifest["shapes"] == {"conv1": [N, 4, 8, 8], "conv2": [N, 6, 4, 4]}
    assert manifest["dtype"] == "float32"
    assert manifest["n_samples"] == manifest["dataset_size"] == N
    assert manifest["model_class"].endswith("test_dataset.TinyNet")
    assert manifest["gradlens_version"] == gradlens.__version__
    assert manifest["completed"] == [[0, N]] and manifest["complete"] is True
    assert returned.fingerprint == manifest["fingerprint"]
    assert not (tmp_path / ".gradlens-progress").exists()


def test_load_features_gives_read_only_memory_maps_and_the_manifest(model, tmp_path):
    extract_dataset(model, loader(), ["conv2", "conv1"], tmp_path, progress=False)
    arrays, manifest = load_features(tmp_path)
    assert list(arrays) == ["conv1", "conv2"] == manifest.layers  # model order
    assert isinstance(arrays["conv1"], np.memmap) and arrays["conv1"].mode == "r"
    with pytest.raises(ValueError):
        arrays["conv1"][0] = 0
    assert manifest.complete and manifest.rows_done == N


def test_reduce_and_float16_storage(model, tmp_path):
    pooled = extract_dataset(
        model,
        loader(),
        ["conv2"],
        tmp_path,
        reduce=lambda t: t.mean((2, 3)),
        dtype=torch.float16,
        progress=False,
    )
    arrays, _ = load_features(tmp_path)
    expected = per_batch_reference(model, ["conv2"])["conv2"].mean((2, 3))
    assert pooled.shapes == {"conv2": [N, 6]} and arrays["conv2"].dtype == np.float16
    np.testing.assert_allclose(arrays["conv2"], expected, atol=1e-3)


def test_an_unsupported_storage_dtype_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="bfloat16"):
        extract_dataset(model, loader(), ["conv1"], tmp_path, dtype=torch.bfloat16, progress=False)


def test_input_fn_picks_the_model_input_from_dict_batches(model, tmp_path):
    images = make_data().tensors[0]
    batches = [{"pixels": images[i : i + 5]} for i in range(0, N, 5)]
    extract_dataset(
        model,
        batches,
        ["fc"],
        tmp_path,
        input_fn=lambda b: b["pixels"],
        n_samples=N,
        progress=False,
    )
    np.testing.assert_allclose(
        load_features(tmp_path)[0]["fc"], model(images).detach().numpy(), atol=1e-6
    )


def test_a_loader_of_plain_tensor_batches_is_its_own_input(model, tmp_path):
    images = make_data().tensors[0]
    extract_dataset(model, DataLoader(images, batch_size=BATCH), ["fc"], tmp_path, progress=False)
    np.testing.assert_allclose(
        load_features(tmp_path)[0]["fc"], model(images).detach().numpy(), atol=1e-6
    )


def test_an_iterable_of_batches_with_n_samples_gives_the_loader_result(model, tmp_path):
    batches = (batch for batch in loader())  # a generator: no len, read once
    extract_dataset(model, batches, ["conv2"], tmp_path / "it", n_samples=N, progress=False)
    extract_dataset(model, loader(), ["conv2"], tmp_path / "dl", progress=False)
    assert file_bytes(tmp_path / "it") == file_bytes(tmp_path / "dl")


def test_an_iterable_needs_the_right_n_samples(model, tmp_path):
    with pytest.raises(ValueError, match="n_samples is required"):
        extract_dataset(model, list(loader()), ["fc"], tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="yielded 37 samples, but n_samples=40"):
        extract_dataset(model, list(loader()), ["fc"], tmp_path / "b", n_samples=40, progress=False)
    with pytest.raises(ValueError, match="more than"):
        extract_dataset(model, list(loader()), ["fc"], tmp_path / "c", n_samples=30, progress=False)


def test_a_shuffling_loader_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="shuffle=False"):
        extract_dataset(model, loader(shuffle=True), ["fc"], tmp_path, progress=False)


def test_loaders_that_reorder_or_drop_samples_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="in order"):
        extract_dataset(
            model, loader(sampler=SubsetRandomSampler(range(N))), ["fc"], tmp_path, progress=False
        )
    shuffled = DataLoader(
        make_data(), batch_sampler=BatchSampler(RandomSampler(range(N)), BATCH, False)
    )
    with pytest.raises(ValueError, match="shuffle=False"):
        extract_dataset(model, shuffled, ["fc"], tmp_path, progress=False)
    with pytest.raises(ValueError, match="drop_last"):
        extract_dataset(model, loader(drop_last=True), ["fc"], tmp_path, progress=False)


def test_a_sequential_batch_sampler_is_accepted(model, tmp_path):
    batches = DataLoader(
        make_data(), batch_sampler=BatchSampler(SequentialSampler(range(N)), BATCH, False)
    )
    extract_dataset(model, batches, ["conv1"], tmp_path, progress=False)
    np.testing.assert_array_equal(
        load_features(tmp_path)[0]["conv1"], per_batch_reference(model, ["conv1"])["conv1"]
    )


def test_an_unknown_layer_names_the_closest_ones(model, tmp_path):
    with pytest.raises(gradlens.LayerNotFoundError, match="did you mean 'conv1'"):
        extract_dataset(model, loader(), ["conv11"], tmp_path, progress=False)


def test_a_structured_layer_output_needs_select(tmp_path):
    lstm = nn.LSTM(4, 5, batch_first=True)
    batches = [torch.randn(2, 3, 4)]

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = lstm

        def forward(self, x):
            return self.lstm(x)[0]

    with pytest.raises(ValueError, match="select="):
        extract_dataset(
            Wrapper().eval(), batches, ["lstm"], tmp_path / "a", n_samples=2, progress=False
        )
    extract_dataset(
        Wrapper().eval(), batches, ["lstm"], tmp_path / "b", n_samples=2, select=0, progress=False
    )
    assert load_features(tmp_path / "b")[0]["lstm"].shape == (2, 3, 5)


def test_the_model_is_left_as_it_was(model, tmp_path):
    before = snapshot(model)
    extract_dataset(model, loader(), ["conv1", "fc"], tmp_path, progress=False)
    assert_unchanged(before, snapshot(model))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_inputs_follow_the_model_to_the_gpu(tmp_path):
    extract_dataset(make_model(), loader(), ["conv2"], tmp_path / "cpu", progress=False)
    extract_dataset(make_model().cuda(), loader(), ["conv2"], tmp_path / "gpu", progress=False)
    np.testing.assert_allclose(
        load_features(tmp_path / "gpu")[0]["conv2"],
        load_features(tmp_path / "cpu")[0]["conv2"],
        atol=1e-4,
    )


def test_a_train_mode_model_gives_a_warning(model, tmp_path):
    with pytest.warns(UserWarning, match="train mode"):
        extract_dataset(model.train(), loader(), ["fc"], tmp_path, progress=False)


def test_on_a_terminal_the_progress_bar_shows_samples_per_second(
    model, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    extract_dataset(model, loader(), ["fc"], tmp_path / "a")
    assert "samples/s" in capsys.readouterr().err
    extract_dataset(model, loader(), ["fc"], tmp_path / "b", progress=False)
    assert capsys.readouterr().err == ""


def test_no_progress_bar_when_stderr_is_not_a_terminal(model, tmp_path, capsys):
    assert not sys.stderr.isatty()  # captured, as in a log file
    extract_dataset(model, loader(), ["fc"], tmp_path)
    assert capsys.readouterr().err == ""


# -- re-running, resuming, refusing -----------------------------------------------------------


def test_rerunning_a_completed_extraction_runs_no_forward_pass(model, tmp_path):
    first = extract_dataset(model, loader(), ["conv1"], tmp_path, progress=False)
    assert model.forward_calls == 10
    again = extract_dataset(model, loader(), ["conv1"], tmp_path, progress=False)
    assert model.forward_calls == 10
    assert again == first


def test_another_model_is_refused_unless_overwrite(model, tmp_path):
    extract_dataset(model, loader(), ["conv1"], tmp_path, progress=False)
    other = make_model(seed=1)
    with pytest.raises(ManifestMismatchError, match="fingerprint.*overwrite=True"):
        extract_dataset(other, loader(), ["conv1"], tmp_path, progress=False)
    extract_dataset(other, loader(), ["conv1"], tmp_path, overwrite=True, progress=False)
    assert other.forward_calls == 10
    np.testing.assert_array_equal(
        load_features(tmp_path)[0]["conv1"], per_batch_reference(other, ["conv1"])["conv1"]
    )


def test_other_layers_are_refused_unless_overwrite(model, tmp_path):
    extract_dataset(model, loader(), ["conv1"], tmp_path, progress=False)
    with pytest.raises(
        ManifestMismatchError, match=r"layers: \['conv1'\] here, \['conv2'\] requested"
    ):
        extract_dataset(model, loader(), ["conv2"], tmp_path, progress=False)
    extract_dataset(model, loader(), ["conv2"], tmp_path, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["conv2.npy"]  # the old file is gone


def test_an_npy_file_not_written_by_gradlens_is_never_overwritten(model, tmp_path):
    np.save(tmp_path / "conv1.npy", np.arange(3))
    with pytest.raises(FileExistsError, match="conv1.npy"):
        extract_dataset(model, loader(), ["conv1"], tmp_path, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "conv1.npy"), np.arange(3))


def interrupted(batches, after: int):
    """The batches, with a KeyboardInterrupt instead of batch number ``after``."""
    for i, batch in enumerate(batches):
        if i == after:
            raise KeyboardInterrupt
        yield batch


def test_an_interrupted_run_resumes_where_it_stopped(model, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        extract_dataset(
            model,
            interrupted(loader(), 6),
            ["conv2"],
            tmp_path,
            n_samples=N,
            flush_every=2,
            progress=False,
        )
    _, partial = load_features(tmp_path, allow_partial=True)
    assert (
        partial.completed == [[0, 24]] and not partial.complete
    )  # 6 batches, recorded after each 2
    model.forward_calls = 0
    extract_dataset(model, loader(), ["conv2"], tmp_path, n_samples=N, progress=False)
    assert model.forward_calls == 4  # batches 7..10
    np.testing.assert_array_equal(
        load_features(tmp_path)[0]["conv2"], per_batch_reference(model, ["conv2"])["conv2"]
    )


def test_an_incomplete_extraction_cannot_be_loaded_by_accident(model, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        extract_dataset(
            model,
            interrupted(loader(), 3),
            ["fc"],
            tmp_path,
            n_samples=N,
            flush_every=1,
            progress=False,
        )
    with pytest.raises(ValueError, match="not complete .12 of 37 rows.*run the same call again"):
        load_features(tmp_path)


KILLED_JOB = """
import sys, time
import torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[3]))
from tests.test_dataset import loader, make_model
from gradlens.dataset import extract_dataset

def slow_input(batch):
    time.sleep(0.25)
    return batch[0]

extract_dataset(make_model(), loader(), ["conv1", "conv2", "fc"], sys.argv[2], input_fn=slow_input,
                flush_every=1, progress=False)
"""


def test_a_killed_run_resumes_and_gives_files_identical_to_an_uninterrupted_run(model, tmp_path):
    out = tmp_path / "killed"
    job = subprocess.Popen(
        [sys.executable, "-c", KILLED_JOB, str(ROOT), str(out), str(torch.get_num_threads())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        done = 0
        while done < 3 * BATCH:  # wait until three batches are on disk
            assert job.poll() is None, job.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the extraction did not start"
            try:
                done = load_features(out, allow_partial=True)[1].rows_done
            except (FileNotFoundError, ValueError, EOFError):
                pass  # the manifest or the .npy files are not (completely) created yet
            time.sleep(0.01)
        job.send_signal(signal.SIGKILL)
    finally:
        job.kill()
        job.wait()
        job.stderr.close()
    rows_before = load_features(out, allow_partial=True)[1].rows_done
    assert 3 * BATCH <= rows_before < N

    extract_dataset(model, loader(), ["conv1", "conv2", "fc"], out, progress=False)
    assert model.forward_calls == (N - rows_before + BATCH - 1) // BATCH  # only the missing batches
    extract_dataset(
        make_model(), loader(), ["conv1", "conv2", "fc"], tmp_path / "whole", progress=False
    )
    assert file_bytes(out) == file_bytes(tmp_path / "whole")
    assert load_features(out)[1].complete


# -- attribution maps -------------------------------------------------------------------------


def activation_x_gradient(model, x, target=None, *, layer="conv2"):
    """A small CAM-like method on the shared differentiate step: sum_c A_c * dS/dA_c."""
    step = differentiate(model, x, target, layers=[layer])
    return (step.activations[layer] * step.gradients[layer]).sum(1)


def test_attribute_dataset_writes_the_maps_of_a_method(model, tmp_path):
    manifest = attribute_dataset(
        activation_x_gradient, model, loader(), tmp_path, target=2, progress=False
    )
    maps, _ = load_features(tmp_path)
    expected = torch.cat([activation_x_gradient(model, x, 2) for x, _ in loader()])
    assert manifest.kind == "attributions" and manifest.layers == ["activation_x_gradient"]
    assert maps["activation_x_gradient"].shape == (N, 4, 4)
    np.testing.assert_array_equal(maps["activation_x_gradient"], expected.numpy())


def test_method_options_are_passed_and_recorded(model, tmp_path):
    manifest = attribute_dataset(
        activation_x_gradient, model, loader(), tmp_path, layer="conv1", progress=False
    )
    assert manifest.shapes["activation_x_gradient"] == [N, 8, 8]
    assert manifest.options["method_options"] == {"layer": "conv1"}


def test_target_label_explains_each_sample_s_own_label(model, tmp_path):
    labels = make_data().tensors[1]
    attribute_dataset(
        activation_x_gradient, model, loader(), tmp_path / "label", target="label", progress=False
    )
    attribute_dataset(
        activation_x_gradient, model, loader(), tmp_path / "given", target=labels, progress=False
    )
    expected = torch.cat([activation_x_gradient(model, x, y) for x, y in loader()])
    for out in ["label", "given"]:
        np.testing.assert_array_equal(
            load_features(tmp_path / out)[0]["activation_x_gradient"], expected.numpy()
        )


def test_a_per_sample_target_needs_one_entry_per_sample(model, tmp_path):
    with pytest.raises(ValueError, match="one entry per dataset sample"):
        attribute_dataset(
            activation_x_gradient, model, loader(), tmp_path, target=[0, 1], progress=False
        )


def test_another_target_is_another_call(model, tmp_path):
    attribute_dataset(activation_x_gradient, model, loader(), tmp_path, target=1, progress=False)
    with pytest.raises(ValueError, match="target"):
        attribute_dataset(
            activation_x_gradient, model, loader(), tmp_path, target=2, progress=False
        )


def test_an_unknown_method_name_lists_the_registered_ones(model, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'gradkam'; did you mean 'gradcam'"):
        attribute_dataset("gradkam", model, loader(), tmp_path, progress=False)


def test_registered_gradcam_by_name(model, tmp_path):
    gradcam = METHODS["gradcam"]
    attribute_dataset("gradcam", model, loader(), tmp_path, layer="conv2", progress=False)
    expected = torch.cat([gradcam(model, x, layer="conv2") for x, _ in loader()])
    np.testing.assert_allclose(load_features(tmp_path)[0]["gradcam"], expected.numpy(), atol=1e-6)


def test_sample_names_are_stored_in_the_manifest(model, tmp_path):
    names = [f"image{i:02}.png" for i in range(N)]
    manifest = extract_dataset(
        model, loader(), ["fc"], tmp_path, sample_names=names, progress=False
    )
    assert manifest.sample_names == names == load_features(tmp_path)[1].sample_names
    with pytest.raises(ValueError, match="sample_names has 3 names for a dataset of 37"):
        extract_dataset(
            model, loader(), ["fc"], tmp_path / "b", sample_names=names[:3], progress=False
        )


# -- the same call, or another one: options that are functions -------------------------------


def seg_model() -> nn.Module:
    """A segmentation-like model: (B, 3, 8, 8) -> (B, 6, 8, 8) logits."""
    torch.manual_seed(0)
    return nn.Conv2d(3, 6, 1).eval()


def mean_pool():
    """A new lambda object each call, from the same source."""
    return lambda t: t.mean((2, 3))


class Scale:
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1) * self.factor


def test_targets_made_by_one_factory_with_other_arguments_are_other_calls(tmp_path):
    model = seg_model()
    attribute_dataset("saliency", model, loader(), tmp_path, target=segmentation(3), progress=False)
    with pytest.raises(ManifestMismatchError, match="target"):
        attribute_dataset(
            "saliency", model, loader(), tmp_path, target=segmentation(5), progress=False
        )


def test_two_different_lambdas_are_two_calls(model, tmp_path):
    extract_dataset(model, loader(), ["conv2"], tmp_path, reduce=lambda t: t.mean((2, 3)))
    with pytest.raises(ManifestMismatchError, match="reduce"):
        extract_dataset(model, loader(), ["conv2"], tmp_path, reduce=lambda t: t.amax((2, 3)))


def test_two_partials_with_other_keywords_are_two_calls(model, tmp_path):
    extract_dataset(
        model, loader(), ["conv2"], tmp_path, reduce=functools.partial(torch.mean, dim=2)
    )
    with pytest.raises(ManifestMismatchError, match="reduce"):
        extract_dataset(
            model, loader(), ["conv2"], tmp_path, reduce=functools.partial(torch.mean, dim=3)
        )


def test_methods_bound_to_objects_with_other_attributes_are_two_calls(model, tmp_path):
    extract_dataset(model, loader(), ["fc"], tmp_path, reduce=Scale(2.0).apply, progress=False)
    with pytest.raises(ManifestMismatchError, match="reduce"):
        extract_dataset(model, loader(), ["fc"], tmp_path, reduce=Scale(3.0).apply, progress=False)


def test_the_same_callable_or_an_equal_one_made_again_resumes(model, tmp_path):
    target = segmentation(3)
    seg = seg_model()
    first = attribute_dataset("saliency", seg, loader(), tmp_path / "a", target=target)
    assert attribute_dataset("saliency", seg, loader(), tmp_path / "a", target=target) == first
    again = attribute_dataset("saliency", seg, loader(), tmp_path / "a", target=segmentation(3))
    assert again == first

    with pytest.raises(KeyboardInterrupt):
        extract_dataset(
            model,
            interrupted(loader(), 6),
            ["conv2"],
            tmp_path / "b",
            reduce=mean_pool(),
            n_samples=N,
            flush_every=2,
        )
    model.forward_calls = 0
    extract_dataset(model, loader(), ["conv2"], tmp_path / "b", reduce=mean_pool())
    assert model.forward_calls == 4  # resumed: batches 7..10


def test_an_option_that_cannot_be_identified_refuses_to_resume(model, tmp_path):
    lock = threading.Lock()  # a closure cell with no stable description

    def pool(t):
        with lock:
            return t.mean((2, 3))

    manifest = extract_dataset(model, loader(), ["conv2"], tmp_path, reduce=pool)
    assert "unidentifiable" in manifest.options["reduce"]
    with pytest.raises(ManifestMismatchError, match="reduce: .*lock.*overwrite=True"):
        extract_dataset(model, loader(), ["conv2"], tmp_path, reduce=pool)
    model.forward_calls = 0
    extract_dataset(model, loader(), ["conv2"], tmp_path, reduce=pool, overwrite=True)
    assert model.forward_calls == 10


def test_no_file_is_left_open(model, tmp_path):
    if not Path("/proc/self/fd").exists():
        pytest.skip("needs /proc")
    before = len(os.listdir("/proc/self/fd"))
    extract_dataset(model, loader(), ["conv1", "conv2"], tmp_path, progress=False)
    load_features(tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before
