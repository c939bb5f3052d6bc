"""Layer selection: listing layers, names, glob patterns, types, filters, and the default CAM layer.

Writes ``layer_selection.txt`` (the outputs ``docs/layers.md`` quotes).

Run: ``python examples/layer_selection.py [--quick] [--out DIR]``
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from _common import parse_args
from torch import nn

import gradlens


def listing(model: nn.Module, x: torch.Tensor) -> str:
    # --8<-- [start:layers]
    table = gradlens.layers(model, x[:1])  # one forward without tape on one sample
    print(table)  # name, type, output shape; marks the default CAM layer
    names = table.names()  # ['conv1', 'bn1', ..., 'fc']
    # --8<-- [end:layers]
    assert names[0] == "conv1"
    rows = str(table).splitlines()
    return "\n".join(rows[:6] + ["..."] + [r for r in rows if "default" in r] + ["..."] + rows[-3:])


def selections(model: nn.Module) -> dict[str, list[str]]:
    # --8<-- [start:select]
    select = gradlens.select_layers
    by_name = select(model, ["layer3.1.conv2", "layer4"])  # exact dotted names
    by_glob = select(model, "layer*.*.conv2")  # * stays within one segment
    any_depth = select(model, "**.relu")  # ** spans any number of segments
    by_type = select(model, nn.BatchNorm2d)  # every module of a type
    by_object = select(model, model.layer4[1])  # a module of the model
    by_filter = select(model, lambda name, m: isinstance(m, nn.Conv2d) and m.stride == (2, 2))
    mixed = select(model, ["layer4", nn.Linear])  # a list mixes kinds
    # --8<-- [end:select]
    return {
        "['layer3.1.conv2', 'layer4']": list(by_name),
        "'layer*.*.conv2'": list(by_glob),
        "'**.relu'": list(any_depth),
        "nn.BatchNorm2d (first 3)": list(by_type)[:3],
        "model.layer4[1]": list(by_object),
        "stride-2 convolutions": list(by_filter),
        "['layer4', nn.Linear]": list(mixed),
    }


def not_found(model: nn.Module) -> str:
    # --8<-- [start:not-found]
    try:
        gradlens.record(model, "layer4.2.conv1")  # resnet18's layer4 has blocks 0 and 1
    except gradlens.LayerNotFoundError as error:  # also a KeyError and a ValueError
        message = str(error)
    # ResNet has no layer named 'layer4.2.conv1'; did you mean 'layer4.1.conv1', ...?
    # --8<-- [end:not-found]
    return message


def default(model: nn.Module, x: torch.Tensor) -> str:
    # --8<-- [start:default]
    layer = gradlens.default_layer(model, x)  # 'layer4': the last 4-D output with H*W > 1
    # --8<-- [end:default]
    return layer


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(__doc__.splitlines()[0], argv)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    size = 64 if args.quick else 224
    x = torch.randn(2, 3, size, size)

    lines = [f"gradlens.layers(resnet18, x) at {size} x {size}, abridged:", listing(model, x), ""]
    lines += [f"{spec}: {names}" for spec, names in selections(model).items()]
    lines += [
        "",
        f"LayerNotFoundError: {not_found(model)}",
        f"default_layer: {default(model, x)!r}",
    ]
    report = args.out / "layer_selection.txt"
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return [report]


if __name__ == "__main__":
    main()
