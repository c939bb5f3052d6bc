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


def symmetric_limit(values: np.ndarray) -> float:
    """The largest absolute value, ignoring NaNs, as the colour limit ``[-limit, limit]``;
    1.0 when there is none (all zero, empty or NaN), so a blank panel stays drawable."""
    finite = np.abs(values[~np.isnan(values)]) if values.size else values
    return float(finite.max(initial=0.0)) or 1.0
