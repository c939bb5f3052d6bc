"""gradlens.demos.shapes: the shapes benchmark is deterministic and honest about its ground
truth."""

from __future__ import annotations

import math

import pytest
import torch

from gradlens.demos.shapes import ShapesDataset, make_shapes


@pytest.fixture(scope="module")
def data():
    return make_shapes(300, seed=7)


def class_colour_margin(images: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)``: the largest channel minus the second largest, per pixel."""
    top2 = images.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def test_same_seed_gives_the_same_data_and_another_seed_does_not():
    a, b, c = make_shapes(20, seed=1), make_shapes(20, seed=1), make_shapes(20, seed=2)
    for field in ("images", "labels", "masks", "boxes"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.images, c.images)


def test_shapes_dtypes_and_value_range(data):
    assert data.images.shape == (300, 3, 64, 64) and data.images.dtype == torch.float32
    assert data.labels.shape == (300,) and data.labels.dtype == torch.int64
    assert data.masks.shape == (300, 64, 64) and data.masks.dtype == torch.bool
    assert data.boxes.shape == (300, 4) and data.boxes.dtype == torch.int64
    assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
    assert len(data) == 300


def test_nine_classes_are_colour_times_shape():
    names = make_shapes(1).class_names
    assert names == (
        "red circle", "green circle", "blue circle",
        "red square", "green square", "blue square",
        "red triangle", "green triangle", "blue triangle",
    )  # fmt: skip
    assert make_shapes(1, shapes=["square"], colours=["blue", "red"]).class_names == (
        "blue square",
        "red square",
    )


def test_labels_are_balanced(data):
    counts = torch.bincount(data.labels, minlength=9)
    assert counts.min() >= 300 // 9 and counts.max() <= 300 // 9 + 1


def test_boxes_are_the_tight_end_exclusive_boxes_of_the_masks(data):
    for mask, (x0, y0, x1, y1) in zip(data.masks, data.boxes.tolist()):
        inside = torch.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not (mask & ~inside).any()  # the mask lies inside its box
        assert mask[y0].any() and mask[y1 - 1].any()  # ... which touches it on all sides
        assert mask[:, x0].any() and mask[:, x1 - 1].any()


def test_objects_are_13_to_27_pixels_wide(data):
    side = (data.boxes[:, 2:] - data.boxes[:, :2]).float()
    assert side.min() >= 12 and side.max() <= 28


def test_object_pixels_have_the_class_colour(data):
    colour = data.labels % 3  # red, green, blue: the dominant channel
    dominant = data.images.argmax(dim=1)
    for i in range(len(data)):
        assert (dominant[i][data.masks[i]] == colour[i]).all()


def test_only_object_pixels_have_a_class_colour(data):
    # One channel above both others by 0.3 or more: true on the object, false on the
    # background and on the (grey, yellow, cyan, magenta) distractors.
    assert torch.equal(class_colour_margin(data.images) >= 0.3, data.masks)


def test_the_mask_has_the_class_shape(data):
    # The share of its box the object fills: square 1, circle pi / 4, triangle 1 / 2.
    side = (data.boxes[:, 2:] - data.boxes[:, :2]).prod(1).float()
    fill = data.masks.flatten(1).sum(1) / side
    shape = data.labels // 3
    assert ((fill[shape == 0] - math.pi / 4).abs() < 0.1).all()
    assert (fill[shape == 1] == 1).all()
    assert ((fill[shape == 2] - 0.5).abs() < 0.12).all()


def test_images_have_distractors(data):
    # Pixels far from the background grey and outside the object: the distractors.
    saturated = (class_colour_margin(data.images) < 0.3) & (
        data.images.amax(1) - data.images.amin(1) > 0.5
    )
    assert saturated.flatten(1).any(1).float().mean() > 0.3  # yellow, cyan or magenta ones


def test_dataset_wrapper_yields_image_label_pairs(data):
    dataset = ShapesDataset(data)
    image, label = dataset[3]
    assert len(dataset) == 300
    assert torch.equal(image, data.images[3]) and int(label) == int(data.labels[3])
