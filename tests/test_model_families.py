"""Hugging Face models, detectors and segmenters go through the ordinary methods: a
``ModelOutput`` is scored on its ``logits``, a ``BatchEncoding``-like mapping is passed as
``model(**x)``, a list of images is a batch (all small, random weights, built offline)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import gradlens
from gradlens import targets
from gradlens.errors import OutputSelectionError, TargetError

from . import zoo
from .contract_support import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_vit() -> torch.nn.Module:
    return zoo.hf_vit()


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    return zoo.hf_bert(vocab_size=40, max_positions=16, num_labels=2)


IMAGES = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
VIT_LAYER = "vit.layers.1.layernorm_before"


def test_a_hugging_face_classifier_needs_no_output_argument(hf_vit):
    plain = gradlens.gradcam(hf_vit, IMAGES, VIT_LAYER, target=1)
    named = gradlens.gradcam(hf_vit, IMAGES, VIT_LAYER, target=1, output="logits")
    assert plain.shape == (2, 32, 32)
    torch.testing.assert_close(plain, named)


def test_a_mapping_input_is_passed_by_keyword(hf_vit):
    by_position = gradlens.gradcam(hf_vit, IMAGES, VIT_LAYER, target=1)
    by_keyword = gradlens.gradcam(hf_vit, {"pixel_values": IMAGES}, VIT_LAYER, target=1)
    torch.testing.assert_close(by_keyword, by_position)


def test_an_input_attribution_of_a_mapping_comes_back_as_a_mapping(hf_vit):
    result = gradlens.saliency(hf_vit, {"pixel_values": IMAGES}, target=2)
    assert list(result) == ["pixel_values"]
    torch.testing.assert_close(result["pixel_values"], gradlens.saliency(hf_vit, IMAGES, target=2))


def test_token_ids_in_a_mapping_reach_the_embedding_layer(bert):
    encoding = {
        "input_ids": torch.tensor([[2, 5, 9, 3], [2, 7, 7, 3]]),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
    }
    result = gradlens.layer_gradient_x_activation(
        bert, encoding, "bert.embeddings.word_embeddings", target=1
    )
    assert result.shape == (2, 4, 32)
    with pytest.raises(TypeError, match="gradlens.token_attributions"):
        gradlens.saliency(bert, encoding, target=1)


def test_a_structured_output_without_logits_keeps_the_clear_error(hf_vit):
    backbone = hf_vit.vit  # returns hidden states, no logits
    with pytest.raises(OutputSelectionError, match="pass output="):
        gradlens.gradcam(backbone, IMAGES, "layers.1.layernorm_before", target=0)


# -- detectors: a list of images in, a list of dicts out -------------------------------------


@pytest.fixture(scope="module")
def fasterrcnn() -> torch.nn.Module:
    return detector("fasterrcnn")


def detector(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    small = {"min_size": 96, "max_size": 128, "weights": None, "weights_backbone": None}
    if kind == "fasterrcnn":
        model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            num_classes=5, box_score_thresh=0.0, **small
        )
    else:
        model = torchvision.models.detection.retinanet_resnet50_fpn(
            num_classes=5, score_thresh=0.0, **small
        )
    return model.eval()


@pytest.mark.parametrize(
    ("kind", "layer"),
    [("fasterrcnn", "backbone.body.16"), ("retinanet", "backbone.body.layer4")],
)
def test_gradcam_of_a_detector_explains_the_matched_detections(kind, layer, fasterrcnn):
    model = fasterrcnn if kind == "fasterrcnn" else detector(kind)
    images = [torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        found = model(images)
    references = targets.detection(
        [found[0]["boxes"][:2], found[1]["boxes"][:1]],
        [found[0]["labels"][:2], found[1]["labels"][:1]],
    )
    before = snapshot(model, images[0])
    maps = gradlens.gradcam(model, images, layer, target=references, normalize=False)
    assert maps.shape == (2, 96, 128)
    assert bool((maps.flatten(1).amax(1) > 0).all())
    assert_unchanged(before, snapshot(model, images[0]))


def test_a_detector_output_needs_a_detection_target(fasterrcnn):
    with pytest.raises(OutputSelectionError, match="list"):
        gradlens.gradcam(fasterrcnn, [torch.rand(3, 96, 128)], "backbone.body.16", target=0)


# -- segmenters: a dict out ---------------------------------------------------------------------


def test_segmentation_target_on_deeplabv3():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4
    ).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:32] = True
    maps = gradlens.gradcam(model, images, "classifier.0", target=targets.segmentation(1, mask))
    assert maps.shape == (2, 64, 64)
    with pytest.raises(TargetError, match="callable target"):
        gradlens.gradcam(model, images, "classifier.0", target=1, output="out")
