"""Array inputs of the figures: tensors or arrays, read as numpy."""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]


def as_numpy(x: Any) -> np.ndarray:
    """A tensor (detached, on the CPU, half precision widened to float32) or anything
    ``np.asarray`` reads, as a numpy array."""
    if isinstance(x, torch.Tensor):
        tensor = x.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(x)
