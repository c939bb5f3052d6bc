"""Layer selection by name, pattern, type, module and filter; layers() listings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradlens
from gradlens import LayerNotFoundError
from gradlens.core.outputs import replace_outputs
from gradlens.core.selection import attached_modules, named_modules, select_layers

from . import zoo
from .models import SharedNet


def test_exact_nested_names(resnet18):
    assert list(select_layers(resnet18, ["layer3.1.conv2", "layer1"])) == [
        "layer1",
        "layer3.1.conv2",
    ]


def test_glob_patterns_match_one_segment_per_star(resnet18):
    names = list(select_layers(resnet18, "layer*.*.conv2"))
    assert names == [f"layer{i}.{j}.conv2" for i in range(1, 5) for j in range(2)]
    assert "layer2.0.downsample.0" in select_layers(resnet18, "layer2.**.0")


def test_module_types_filters_modules_and_mixes(resnet18):
    convs = select_layers(resnet18, nn.Conv2d)
    assert len(convs) == 20 and all(isinstance(m, nn.Conv2d) for m in convs.values())
    by_filter = select_layers(
        resnet18, lambda name, m: name.endswith("bn2") and name.startswith("layer4")
    )
    assert list(by_filter) == ["layer4.0.bn2", "layer4.1.bn2"]
    mixed = select_layers(resnet18, ["fc", nn.AdaptiveAvgPool2d, resnet18.layer1[0]])
    assert list(mixed) == ["layer1.0", "avgpool", "fc"]


def test_unknown_name_error_suggests_close_names(resnet18):
    with pytest.raises(LayerNotFoundError) as info:
        select_layers(resnet18, "layer4.1.conv3")
    message = str(info.value)
    assert "'layer4.1.conv1'" in message and "'layer4.1.conv2'" in message
    assert not message.startswith('"')  # the plain message, not a KeyError repr


def test_layer_not_found_is_a_key_error_and_a_value_error(resnet18):
    for error in (KeyError, ValueError, gradlens.GradlensError):
        with pytest.raises(error):
            select_layers(resnet18, "head")


def test_patterns_types_and_filters_that_select_nothing_raise(resnet18):
    with pytest.raises(LayerNotFoundError, match="matches no layer"):
        select_layers(resnet18, "block*")
    with pytest.raises(LayerNotFoundError, match="types present are"):
        select_layers(resnet18, nn.LSTM)
    with pytest.raises(LayerNotFoundError, match="selected no layer"):
        select_layers(resnet18, lambda name, m: False)


def test_an_empty_selection_raises(resnet18):
    with pytest.raises(LayerNotFoundError, match="empty"):
        select_layers(resnet18, [])


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 4)), nn.Linear(4, 2)
    )


def test_attached_modules_are_selected_by_name_after_their_parent_subtree():
    model = _tiny()
    probe, other = nn.Identity(), nn.Identity()
    with attached_modules(model, {"1.probe": probe, "elsewhere": other}):
        assert list(named_modules(model)) == [
            "",
            "0",
            "1",
            "1.0",
            "1.1",
            "1.probe",
            "2",
            "elsewhere",
        ]
        assert select_layers(model, ["2", "1.probe"]) == {"1.probe": probe, "2": model[2]}
        assert list(select_layers(model, nn.Identity)) == ["1.probe", "elsewhere"]
    assert list(named_modules(model)) == ["", "0", "1", "1.0", "1.1", "2"]


def test_attaching_changes_nothing_on_the_model():
    model = _tiny()
    with attached_modules(model, {"1.probe": nn.Identity()}):
        assert [n for n, _ in model.named_modules()] == ["", "0", "1", "1.0", "1.1", "2"]
        assert not hasattr(model[1], "probe")


def test_an_attached_module_is_recorded_when_an_edit_calls_it():
    model, probe = _tiny(), nn.Identity()
    x = torch.randn(2, 3)
    with (
        attached_modules(model, {"1.probe": probe}),
        replace_outputs(model, {"1": lambda name, module, out: probe(out)}),
        gradlens.record(model, ["1", "1.probe"]) as rec,
    ):
        model(x)
    torch.testing.assert_close(rec["1.probe"], rec["1"])


def test_attached_names_leave_with_the_block_also_when_it_raises():
    model = _tiny()
    with (
        pytest.raises(RuntimeError, match="inside"),
        attached_modules(model, {"probe": nn.Identity()}),
    ):
        raise RuntimeError("inside")
    with pytest.raises(LayerNotFoundError, match="did you mean '0'|no layer named 'probe'"):
        select_layers(model, "probe")


def test_an_unknown_name_suggests_attached_names():
    model = _tiny()
    with attached_modules(model, {"1.probe": nn.Identity()}):
        with pytest.raises(LayerNotFoundError, match="did you mean '1.probe'"):
            select_layers(model, "1.prob")


def test_attaching_refuses_taken_names_and_non_modules():
    model = _tiny()
    with pytest.raises(ValueError, match="already names a module of Sequential"):
        with attached_modules(model, {"1.0": nn.Identity()}):
            pass
    with attached_modules(model, {"probe": nn.Identity()}):
        with pytest.raises(ValueError, match="attached under it already"):
            with attached_modules(model, {"probe": nn.Identity()}):
                pass
        assert "probe" in named_modules(model)  # the refused block removed nothing
    with pytest.raises(ValueError, match="empty name"):
        with attached_modules(model, {"": nn.Identity()}):
            pass
    with pytest.raises(TypeError, match="must be an nn.Module"):
        with attached_modules(model, {"probe": lambda x: x}):  # type: ignore[dict-item]
            pass


def test_layers_lists_names_and_types_without_running_the_model(resnet18):
    table = gradlens.layers(resnet18)
    assert table[0].name == "conv1" and table[0].type == "Conv2d" and table[0].output_shape is None
    assert len(table) == len(list(resnet18.named_modules())) - 1


def test_layers_with_an_input_gives_shapes_calls_and_the_default_cam_layer(resnet18):
    table = gradlens.layers(resnet18, torch.randn(1, 3, 64, 64))
    rows = {info.name: info for info in table}
    assert rows["layer2"].output_shape == (1, 128, 8, 8)
    assert rows["layer1.0.relu"].calls == 2  # a reused ReLU
    assert [info.name for info in table if info.default] == ["layer4"]
    assert "<- default CAM layer" in str(table)


def test_default_layer_picks_the_shortest_name_of_the_last_spatial_output():
    mobilenet = zoo.torchvision_cnn("mobilenet_v3_small")
    assert gradlens.default_layer(mobilenet, torch.randn(2, 3, 64, 64)) == "features"


def test_default_layer_fails_clearly_without_spatial_outputs():
    with pytest.raises(LayerNotFoundError, match="pass layer="):
        gradlens.default_layer(SharedNet(), torch.randn(2, 4))


def test_default_layer_of_a_vit_is_the_first_norm_of_its_last_block():
    # the input of the last attention (tests/test_default_layer.py has the other ViTs)
    layer = gradlens.default_layer(zoo.torchvision_vit(), torch.randn(1, 3, 32, 32))
    assert layer == "encoder.layers.encoder_layer_1.ln_1"


def test_default_layer_works_inside_inference_mode(resnet18):
    with torch.inference_mode():
        assert gradlens.default_layer(resnet18, torch.randn(1, 3, 64, 64)) == "layer4"


# -- TransformerLens hook names ------------------------------------------------------------


@pytest.fixture(scope="module")
def bridge() -> nn.Module:
    return zoo.transformer_bridge()


def test_a_bridge_alias_selects_its_module_under_the_alias(bridge):
    # TransformerLens' compatibility name for the residual stream before block 0
    hook_in = named_modules(bridge)["blocks.0.hook_in"]
    assert select_layers(bridge, "blocks.0.hook_resid_pre") == {"blocks.0.hook_resid_pre": hook_in}


def test_a_hook_name_listed_by_named_modules_under_another_path_is_found(bridge):
    # named_modules() lists the bridge's LayerNorm under blocks.0._original_component.ln1
    own = "blocks.0._original_component.ln1.hook_normalized"
    assert "blocks.0.ln1.hook_normalized" not in named_modules(bridge)
    selected = select_layers(bridge, "blocks.0.ln1.hook_normalized")
    assert selected == {"blocks.0.ln1.hook_normalized": named_modules(bridge)[own]}


def test_a_hook_name_comes_right_after_the_module_s_own_name(bridge):
    selected = select_layers(
        bridge, ["blocks.1.hook_out", "blocks.0.hook_resid_post", "blocks.0.hook_out"]
    )
    assert list(selected) == ["blocks.0.hook_out", "blocks.0.hook_resid_post", "blocks.1.hook_out"]
    assert selected["blocks.0.hook_out"] is selected["blocks.0.hook_resid_post"]


def test_glob_patterns_match_module_paths_only_not_hook_names(bridge):
    with pytest.raises(LayerNotFoundError, match="matches no layer"):
        select_layers(bridge, "blocks.*.hook_resid_pre")


def test_replace_outputs_edits_a_module_named_by_its_hook_name(bridge):
    ids = torch.tensor([[0, 5, 9, 3, 7]])

    def zero(name, module, out):
        return out * 0

    with replace_outputs(bridge, {"blocks.0.hook_resid_post": zero}):
        by_alias = bridge(ids)
    with replace_outputs(bridge, {"blocks.0.hook_out": zero}):
        by_path = bridge(ids)
    assert not torch.equal(by_alias, bridge(ids))
    torch.testing.assert_close(by_alias, by_path, rtol=0, atol=0)
