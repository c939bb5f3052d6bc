"""gradlens.core.inputs.ModelInput: a method's input, read once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradlens.core.inputs import ModelInput, batch_size


class ImageAndIds(nn.Module):
    def forward(self, image: torch.Tensor, ids: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return image.mean((1, 2, 3)) * scale + ids.sum(1)


IMAGE = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
IDS = torch.tensor([[1, 2], [3, 4]])


def test_a_tensor_input_is_one_positional_argument():
    inputs = ModelInput.parse(IMAGE)
    assert inputs.args == (IMAGE,) and inputs.kwargs == {}
    assert (inputs.batch_size, inputs.image_size, inputs.device) == (2, (4, 5), IMAGE.device)
    assert inputs.x is IMAGE and inputs.image_position == 0
    assert inputs.rebuild(["result"]) == "result"


def test_a_tuple_input_and_keywords():
    mask = torch.ones(2, 7)
    inputs = ModelInput.parse((IDS, IMAGE), {"mask": mask})
    assert inputs.args == (IDS, IMAGE) and inputs.kwargs == {"mask": mask}
    assert inputs.batch_size == 2 and inputs.image_size == (4, 5) and inputs.image_position == 1
    assert inputs.rebuild(["a", None]) == ("a", None)
    assert inputs.x == (IDS, IMAGE)


def test_the_batch_size_comes_from_keyword_tensors_when_no_positional_one_has_it():
    assert ModelInput.parse((3.0,), {"ids": IDS}).batch_size == 2
    assert batch_size((3.0,), {"ids": IDS}) == 2
    with pytest.raises(TypeError, match="no tensor"):
        ModelInput.parse((3.0, "text"))


def test_inference_tensors_become_ordinary_copies():
    with torch.inference_mode():
        made = IMAGE * 1
    inputs = ModelInput.parse(made, {"extra": made})
    assert not inputs.args[0].is_inference() and not inputs.kwargs["extra"].is_inference()
    torch.testing.assert_close(inputs.args[0], IMAGE)


def test_tile_repeats_batch_tensors_copy_major_and_nothing_else():
    shared = torch.ones(5)  # dim 0 is not the batch: passed as it is
    tiled = ModelInput.parse((IMAGE, IDS), {"shared": shared, "scale": 2.0}).tile(3)
    assert tiled.batch_size == 6
    assert torch.equal(tiled.args[1], IDS.repeat(3, 1))
    assert torch.equal(tiled.args[0][4:], IMAGE)  # copy 2 of both samples
    assert tiled.kwargs["shared"] is shared and tiled.kwargs["scale"] == 2.0


def test_take_selects_samples_of_every_batch_tensor():
    taken = ModelInput.parse((IMAGE, IDS), {"ids2": IDS}).take(torch.tensor([1, 1, 0]))
    assert taken.batch_size == 3
    assert torch.equal(taken.args[1], IDS[[1, 1, 0]])
    assert torch.equal(taken.kwargs["ids2"], IDS[[1, 1, 0]])


def test_with_args_replaces_positions_and_call_runs_the_model():
    inputs = ModelInput.parse((IMAGE, IDS), {"scale": 0.0})
    replaced = inputs.with_args({1: torch.zeros_like(IDS)})
    assert torch.equal(replaced.call(ImageAndIds()), torch.zeros(2))
    assert torch.equal(inputs.call(ImageAndIds()), IDS.sum(1).float())


def test_a_parsed_input_is_passed_through_but_takes_no_second_keywords():
    inputs = ModelInput.parse(IMAGE)
    assert ModelInput.parse(inputs) is inputs
    with pytest.raises(TypeError, match="forward_kwargs"):
        ModelInput.parse(inputs, {"scale": 2.0})


# -- mappings (model(**x)) and lists of images (torchvision detectors) -----------------------


class Named(nn.Module):
    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return pixel_values.mean((1, 2, 3)) + input_ids.sum(1)


def test_a_mapping_input_holds_the_user_inputs_and_is_passed_by_keyword():
    inputs = ModelInput.parse({"pixel_values": IMAGE, "input_ids": IDS})
    assert inputs.args == (IMAGE, IDS) and inputs.keys == ("pixel_values", "input_ids")
    assert inputs.bind() == ((), {"pixel_values": IMAGE, "input_ids": IDS})
    assert (inputs.batch_size, inputs.image_size, inputs.image_position) == (2, (4, 5), 0)
    assert inputs.rebuild(["a", None]) == {"pixel_values": "a", "input_ids": None}
    torch.testing.assert_close(inputs.call(Named()), Named()(IMAGE, IDS))


def test_a_mapping_input_is_tiled_and_indexed_like_a_tuple():
    inputs = ModelInput.parse({"input_ids": IDS}, {"scale": 2.0})
    tiled = inputs.tile(2)
    assert tiled.bind() == ((), {"input_ids": tiled.args[0], "scale": 2.0})
    assert tiled.args[0].tolist() == [[1, 2], [3, 4], [1, 2], [3, 4]]
    assert inputs.take(torch.tensor([1])).args[0].tolist() == [[3, 4]]


def test_a_key_in_both_the_mapping_and_forward_kwargs_is_refused():
    with pytest.raises(TypeError, match="input_ids given both"):
        ModelInput.parse({"input_ids": IDS}, {"input_ids": IDS})


def test_a_list_of_images_is_one_argument_with_one_sample_per_image():
    images = [torch.zeros(3, 8, 6), torch.ones(3, 8, 6), torch.full((3, 8, 6), 2.0)]
    inputs = ModelInput.parse(images)
    assert len(inputs.args) == 1 and all(a is b for a, b in zip(inputs.x, images, strict=True))
    assert (inputs.batch_size, inputs.image_size) == (3, (8, 6))
    assert batch_size(images) == 3
    assert [float(i[0, 0, 0]) for i in inputs.take(torch.tensor([2, 0])).args[0]] == [2.0, 0.0]
    assert len(inputs.tile(2).args[0]) == 6 and inputs.tile(2).batch_size == 6


def test_images_of_different_sizes_have_no_common_image_size():
    inputs = ModelInput.parse([torch.zeros(3, 8, 6), torch.zeros(3, 4, 4)])
    assert inputs.batch_size == 2 and inputs.image_size is None
