"""Noisy linear imputation (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022), the fill of :func:`gradlens.metrics.road`."""

from __future__ import annotations

from collections.abc import Callable

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
        above_below = p[..., :-2, :] + p[..., 2:, :]  # shared by the direct and diagonal sums
        direct = above_below[..., 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
        diagonal = above_below[..., :-2] + above_below[..., 2:]
        return direct / 6 + diagonal / 12

    total = neighbours(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device))

    def matvec(v: Tensor, unknown: Tensor) -> Tensor:  # v is 0 on the kept pixels
        return unknown * (total * v - neighbours(v))

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
    # the guess, residuals and directions are 0 on the kept pixels, so matvec skips the mask
    return _conjugate_gradients(matvec, b, unknown, guess, tolerance, h * w + 1)


def _conjugate_gradients(
    matvec: Callable[[Tensor, Tensor], Tensor],
    b: Tensor,
    unknown: Tensor,
    guess: Tensor,
    tolerance: float,
    iterations: int,
) -> Tensor:
    """Conjugate gradients on every ``(image, channel)`` system of ``matvec(v, unknown) = b``
    at once. A system leaves the iteration once its residual's norm is below ``tolerance``
    times its right-hand side's (checked every 8 steps): the rows still iterating are
    compacted, so easy systems (few removed pixels) do not pay for the hardest one."""
    n, c, h, w = b.shape
    rows = n * c
    out = guess.reshape(rows, 1, h, w).clone()
    b = b.reshape(rows, 1, h, w)
    unknown = unknown.expand(n, c, h, w).reshape(rows, 1, h, w)
    solution = out.clone()
    active = torch.arange(rows, device=b.device)
    residual = b - matvec(solution, unknown)
    direction = residual.clone()
    rs = _dot(residual, residual)
    limit = (tolerance**2) * b.square().sum(dim=(2, 3), keepdim=True).clamp(min=1e-300)
    for iteration in range(iterations):
        if iteration % 8 == 0:
            done = (rs <= limit).view(-1)
            if bool(done.any()):
                out[active[done]] = solution[done]
                keep = ~done
                if not bool(keep.any()):
                    return out.view(n, c, h, w)
                active, solution, residual, direction = (
                    active[keep],
                    solution[keep],
                    residual[keep],
                    direction[keep],
                )
                rs, limit, unknown = rs[keep], limit[keep], unknown[keep]
        product = matvec(direction, unknown)
        curvature = _dot(direction, product)
        alpha = torch.where(curvature > 0, rs / torch.where(curvature > 0, curvature, 1), 0)
        solution = solution.addcmul_(alpha, direction)
        residual = residual.addcmul_(alpha, product, value=-1)
        rs_new = _dot(residual, residual)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, 1), 0)
        direction = direction.mul_(beta).add_(residual)
        rs = rs_new
    out[active] = solution
    return out.view(n, c, h, w)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``(R, 1, 1, 1)``: the dot product of each row of ``(R, 1, H, W)`` tensors."""
    return (a * b).sum(dim=(2, 3), keepdim=True)


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
