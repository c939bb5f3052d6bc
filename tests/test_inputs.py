"""gradlens._inputs.ModelInput: a method's input, read once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradlens._inputs import ModelInput, batch_size


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
