"""Small hand-written models for tests.

In-place residual blocks, a shared module, an LSTM, structured outputs. The tiny versions of
real architectures (torchvision, timm, Hugging Face) are in tests/zoo.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn, ``out += identity``, relu -- with or without in-place operations."""

    def __init__(self, channels: int, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=inplace)  # reused twice, as in torchvision
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.inplace:
            out += x
        else:
            out = out + x
        return self.relu(out)


class ResidualNet(nn.Module):
    def __init__(self, inplace: bool = True, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace))
        self.block1 = ResidualBlock(8, inplace)
        self.block2 = ResidualBlock(8, inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def residual_pair(seed: int = 0) -> tuple[ResidualNet, ResidualNet]:
    """The same weights with and without in-place operations (both in eval mode)."""
    torch.manual_seed(seed)
    inplace = ResidualNet(inplace=True)
    plain = ResidualNet(inplace=False)
    plain.load_state_dict(inplace.state_dict())
    for m in (inplace, plain):
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):  # non-trivial statistics
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 1.5)
        m.eval()
    plain.load_state_dict(inplace.state_dict())
    return inplace, plain


class SharedNet(nn.Module):
    """One linear layer applied three times in a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.tanh(self.shared(x))
        return self.head(x)


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=3, hidden_size=5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, c) = self.lstm(x)
        return self.head(out[:, -1])


@dataclass
class Output:
    logits: torch.Tensor
    features: torch.Tensor


class DictBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> dict:
        y = self.lin(x)
        return {"y": y, "double": 2 * y, "note": "not a tensor"}


class StructuredNet(nn.Module):
    """Returns a dataclass; an inner block returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.block = DictBlock()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> Output:
        parts = self.block(x)
        return Output(logits=self.head(parts["y"] + parts["double"]), features=parts["y"])
