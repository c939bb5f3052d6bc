"""Noisy linear imputation (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022), the fill of :func:`gradlens.metrics.road`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._explain import private_generator

__all__ = ["noisy_linear_imputation"]


def _solve(x: Tensor, unknown: Tensor, tolerance: float) -> Tensor:
    """The imputed values ``(N, C, H, W)`` (0 on the kept pixels): conjugate gradients,
    started from the solution of the same problem on a grid half the size (nested
    iteration: the coarse grids remove the smooth part of the error, which plain conjugate
    gradients are slowest at)."""
    n, c, h, w = x.shape

    def neighbours(v: Tensor) -> Tensor:  # sum_j w_ij v_j over the neighbours in the image
        p = F.pad(v, (1, 1, 1, 1))
        direct = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
        diagonal = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
        return direct / 6 + diagonal / 12

    total = neighbours(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device))

    def matvec(v: Tensor) -> Tensor:
        return unknown * (total * v - neighbours(unknown * v))

    b = unknown * neighbours((1 - unknown) * x)
    guess = torch.zeros_like(x)
    if min(h, w) >= 16 and bool(unknown.any()):
        known = 1 - unknown
        weight = F.avg_pool2d(known, 2, ceil_mode=True)
        coarse_x = F.avg_pool2d(known * x, 2, ceil_mode=True) / weight.clamp(min=1e-12)
        coarse = _solve(coarse_x, (weight == 0).double(), tolerance)
        coarse = torch.where(weight == 0, coarse, coarse_x)
        fine = F.interpolate(
            coarse, size=(2 * coarse.shape[-2], 2 * coarse.shape[-1]), mode="bilinear"
        )
        guess = unknown * fine[..., :h, :w]
    solution = guess
    residual = b - matvec(guess)
    direction = residual.clone()
    rs = residual.square().sum(dim=(2, 3), keepdim=True)
    limit = (tolerance**2) * b.square().sum(dim=(2, 3), keepdim=True).clamp(min=1e-300)
    for iteration in range(h * w + 1):
        if iteration % 8 == 0 and bool((rs <= limit).all()):
            break
        product = matvec(direction)
        curvature = (direction * product).sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(curvature > 0, rs / torch.where(curvature > 0, curvature, 1), 0)
        solution = solution + alpha * direction
        residual = residual - alpha * product
        rs_new = residual.square().sum(dim=(2, 3), keepdim=True)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, 1), 0)
        direction = residual + beta * direction
        rs = rs_new
    return solution


def noisy_linear_imputation(
    images: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-10,
) -> Tensor:
    """Fill the removed pixels of each image so that each equals the weighted mean of its
    neighbours, plus Gaussian noise.

    For every removed pixel ``i`` of every channel, with ``N(i)`` its neighbours inside the
    image and ``w`` the weights 1/6 (direct) and 1/12 (diagonal)::

        sum_{j in N(i)} w_ij * v_i  -  sum_{j in N(i), removed} w_ij * v_j
            = sum_{j in N(i), kept} w_ij * x_j

    a sparse symmetric positive-definite system (a weighted graph Laplacian with the kept
    pixels as boundary), solved for all images and channels at once by conjugate
    gradients in float64 (started from the same problem solved on a grid half the size, and
    so on down: nested iteration); then ``noise * N(0, 1)`` (from ``generator``) is added to the
    imputed values. When every pixel is removed there is no boundary and the solution is
    0 (plus the noise).

    Args:
        images: ``(N, C, H, W)``.
        removed: ``(N, H, W)`` bool, the pixels to impute (all channels).
        noise: the noise's standard deviation.
        generator: draws the noise (default: a new generator seeded with 0).
        tolerance: the conjugate gradients stop when every residual's norm is below
            ``tolerance`` times its right-hand side's norm.

    Returns:
        ``(N, C, H, W)`` in the images' dtype: the kept pixels unchanged, the removed ones
        imputed.
    """
    x = images.double()
    n, c, h, w = x.shape
    unknown = removed.to(x.device).view(n, 1, h, w).double()
    solution = _solve(x, unknown, tolerance)
    if noise:
        drawn = torch.randn(x.shape, generator=private_generator(generator), dtype=x.dtype)
        solution = solution + noise * drawn.to(x.device) * unknown
    return torch.where(unknown.bool(), solution, x).to(images.dtype)
