"""The machinery the perturbation metrics share: features (the pixels of images, or the
real tokens of token ids), their ranking by attribution, the fill that replaces a removed
feature, and the batched evaluation of many perturbed copies through the model.

A metric describes its perturbed copies as *jobs*: job ``j`` is sample ``sample[j]`` with
the features ``removed[j]`` (a ``(J, F)`` bool mask over the sample's ``F`` features)
replaced. :meth:`Features.scores` runs the jobs through the model in chunks of
``batch_size`` under ``torch.inference_mode()`` and returns the target's score for each, in
float64. Masks are built per chunk (``mask(jobs)``), so memory stays bounded by
``batch_size`` whatever the number of jobs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.checks import check_inputs
from ..core.chunks import check_batch_size, chunks
from ..core.inputs import ModelInput
from ..core.output_selection import OutputSpec, select_output
from ..errors import TargetError, TokenInputError
from ..targets.language import config_token_id
from ..targets.scoring import Target
from ..text.inputs import TokenInput, TokenInputs
from ._common import _classes_of, _reduce_maps, _score
from ._explain import private_generator

__all__ = [
    "Features",
    "Fill",
    "ImageFill",
    "TokenFill",
    "features",
    "fill_images",
    "gaussian_blur",
    "ordered_curve",
    "pearson",
]

Fill = Literal["zero", "min", "blur", "mean"] | Tensor
"""The fills of :func:`gradlens.metrics.deletion` and :func:`gradlens.metrics.insertion`."""

ImageFill = Literal["zero", "min", "mean", "blur", "uniform"] | Tensor
"""How a removed pixel is filled: ``"zero"``, ``"min"`` (the sample's minimum over all its
values, Quantus' ``"black"``), ``"mean"`` (the sample's per-channel mean), ``"blur"``
(:func:`gradlens.metrics.gaussian_blur`, std a tenth of the image side), ``"uniform"``
(values drawn uniformly between the sample's minimum and maximum, anew for every
perturbed copy, from ``generator``) or a tensor broadcastable to the images."""

TokenFill = Literal["pad", "mask", "unk"] | int
"""The token that replaces a removed token: the model config's ``pad_token_id``,
``mask_token_id`` or ``unk_token_id``, or an explicit id."""

Score = Literal["probability", "logit"]
Jobs = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``jobs(part) -> (sample (J,), removed (J, F) bool)`` for the job indices ``part``."""


def _check_score(score: str, allowed: tuple[str, ...] = ("probability", "logit")) -> None:
    if score not in allowed:
        raise ValueError(f"score must be one of {', '.join(map(repr, allowed))}, got {score!r}")


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """``value`` as an int, checked to be at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@dataclasses.dataclass(eq=False)
class Features:
    """The features of one batch and how to perturb them.

    Attributes:
        model: the model the perturbed inputs run through.
        values: ``(B, F)`` float64 attributions of the features (``0`` on padding).
        real: ``(B, F)`` bool, the features that exist (padding tokens are not features).
        counts: ``(B,)`` int64, the number of real features per sample.
        classes: ``(B,)`` the class explained for each sample.
        tokens: whether the features are tokens (else pixels).
        output: picks the logits out of a structured output.
        batch_size: perturbed inputs per forward.
        height, width: the image size (pixels only).
        images: ``(B, C, H, W)`` the clean images (pixels only).
        baseline: ``(B, C, H, W)`` the fill of a removed pixel; ``None`` for a random fill.
        fill: the ``fill`` option as given (or its default).
        token_input: the parsed token input (tokens only).
        replacement: the id that replaces a removed token (tokens only).
        seed: the seed of a random fill's per-job draws.
        perturb: ``perturb(sample, removed (J, H, W), job index) -> images``, in place of
            the fill (ROAD's imputation, infidelity's perturbations).
    """

    model: nn.Module
    values: Tensor
    real: Tensor
    counts: Tensor
    classes: Tensor
    tokens: bool
    output: OutputSpec
    batch_size: int
    height: int = 0
    width: int = 0
    images: Tensor | None = None
    baseline: Tensor | None = None
    fill: Any = None
    token_input: TokenInput | None = None
    replacement: int = 0
    seed: int = 0
    perturb: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None

    @property
    def batch(self) -> int:
        return int(self.values.shape[0])

    @property
    def size(self) -> int:
        """``F``, the features per sample (padding included)."""
        return int(self.values.shape[1])

    @property
    def device(self) -> torch.device:
        return self.values.device

    def rank(self, descending: bool = True) -> Tensor:
        """``(B, F)`` int64: each feature's position in the order of its attribution
        (largest first when ``descending``, smallest first otherwise; ties keep the
        features' order). Padding comes after every real feature."""
        keys = self.values if descending else -self.values
        keys = keys.masked_fill(~self.real, -math.inf)
        order = torch.argsort(keys, dim=1, descending=True, stable=True)
        positions = torch.arange(self.size, device=self.device).expand_as(order)
        return torch.empty_like(order).scatter_(1, order, positions)

    def step_counts(self, steps: int) -> Tensor:
        """``(B, steps + 1)`` int64: ``round(k * n_b / steps)`` for ``k = 0..steps``, the
        number of features removed after step ``k`` of a sample with ``n_b`` features."""
        k = torch.arange(steps + 1, device=self.device, dtype=torch.float64)
        return torch.round(k[None] * self.counts[:, None].double() / steps).long()

    def scores(
        self,
        n_jobs: int,
        jobs: Jobs,
        score: str,
    ) -> Tensor:
        """``(n_jobs,)`` float64: the target's score on every perturbed copy."""
        out = torch.empty(n_jobs, dtype=torch.float64, device=self.device)
        for part in chunks(n_jobs, self.batch_size):
            index = torch.arange(part.start, part.stop, device=self.device)
            sample, removed = jobs(index)
            logits = self._forward(sample, removed, index)
            out[part] = _score_of(logits, self.classes[sample], score)
        return out

    def _forward(self, sample: Tensor, removed: Tensor, index: Tensor) -> Tensor:
        if self.tokens:
            assert self.token_input is not None
            ids = self.token_input.ids.to(self.device)[sample]
            ids = ids.masked_fill(removed & self.real[sample], self.replacement)
            rows = self.token_input.model_input.take(sample.cpu())
            args, kwargs = rows.with_args({self.token_input.ids_position: ids}).bind()
            return select_output(self.model(*args, **kwargs), self.output)
        assert self.images is not None
        if self.perturb is not None:
            x = self.perturb(sample, removed.view(-1, self.height, self.width), index)
            return select_output(self.model(x), self.output)
        x = self.images[sample]
        fill = self._fill(sample, index)
        chosen = removed.view(-1, 1, self.height, self.width)
        return select_output(self.model(torch.where(chosen, fill, x)), self.output)

    def _fill(self, sample: Tensor, index: Tensor) -> Tensor:
        assert self.images is not None
        if self.baseline is not None:
            return self.baseline[sample]
        # "uniform": each job draws from its own generator, seeded from ``seed`` and the job's
        # index, so the draws do not depend on how the jobs are split into forwards.
        x = self.images[sample]
        low = x.flatten(1).amin(1).view(-1, 1, 1, 1)
        high = x.flatten(1).amax(1).view(-1, 1, 1, 1)
        u = per_job_draws(self.seed, index, x.shape[1:], torch.rand).to(x.device, x.dtype)
        return low + (high - low) * u

    def clean_scores(self, score: str) -> Tensor:
        """``(B,)`` float64: the target's score on the unperturbed inputs."""
        none = torch.zeros(self.batch, self.size, dtype=torch.bool, device=self.device)
        return self.scores(self.batch, lambda part: (part, none[part]), score)

    def groups(self, steps: int, descending: bool) -> tuple[Tensor, Tensor]:
        """``(group (B, F), sums (B, S))``: each feature's group when the ranking is cut
        into ``S`` consecutive groups (group ``k`` holds the ranks ``round(k n / S) ..
        round((k + 1) n / S) - 1``; padding gets ``S``, no group), and each group's
        attribution."""
        rank = self.rank(descending=descending)
        bounds = self.step_counts(steps)[:, 1:].contiguous()
        group = torch.searchsorted(bounds, rank.contiguous(), right=True)
        group = group.masked_fill(~self.real, steps)
        sums = torch.zeros(self.batch, steps + 1, dtype=torch.float64, device=self.device)
        sums.scatter_add_(1, group, self.values)
        return group, sums[:, :steps]


def per_job_draws(
    seed: int, index: Tensor, shape: tuple[int, ...] | torch.Size, draw: Callable[..., Tensor]
) -> Tensor:
    """``(J, *shape)`` float64 random values, job ``j``'s from its own generator seeded by
    ``seed`` and ``j``: the draws do not depend on how the jobs are split into forwards."""
    values = []
    for job in index.tolist():
        g = torch.Generator().manual_seed((seed + 7919 * job) % (2**63))
        values.append(draw(tuple(shape), generator=g, dtype=torch.float64))
    return torch.stack(values)


def _score_of(logits: Tensor, classes: Tensor, score: str) -> Tensor:
    if logits.ndim != 2:
        raise TargetError(
            f"this metric needs logits of shape (B, num_classes), got {tuple(logits.shape)}"
        )
    if score == "accuracy":
        return (logits.argmax(dim=1) == classes.to(logits.device)).double()
    return _score(logits, classes, score)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Blur ``(B, C, H, W)`` images with a separable Gaussian of std ``sigma`` pixels.

    The kernel spans ``+-3 sigma``; borders are padded by repeating the edge pixels, so
    the output has the input's shape. ``sigma <= 0`` returns the images unchanged.
    """
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def fill_images(images: Tensor, fill: Fill, blur_sigma: float | None) -> Tensor:
    """The image a removed pixel takes its values from, ``(B, C, H, W)``."""
    if isinstance(fill, Tensor):
        try:
            return fill.to(images.device, images.dtype).expand_as(images)
        except RuntimeError as exc:
            raise ValueError(
                f"a fill tensor must broadcast to the images' shape {tuple(images.shape)}, "
                f"got {tuple(fill.shape)}"
            ) from exc
    if fill == "zero":
        return torch.zeros_like(images)
    if fill == "min":  # Quantus' "black": the sample's smallest value, in every channel
        return images.flatten(1).amin(1).view(-1, 1, 1, 1).expand_as(images)
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if fill == "blur":
        sigma = 0.1 * max(images.shape[-2:]) if blur_sigma is None else blur_sigma
        return gaussian_blur(images, sigma)
    raise ValueError(f'fill must be "zero", "min", "blur", "mean" or a tensor, got {fill!r}')


def is_tokens(inputs: Any) -> bool:
    """Whether ``inputs`` are token ids ``(B, T)`` (an integer tensor) or a mapping."""
    if isinstance(inputs, Mapping):
        return True
    return isinstance(inputs, Tensor) and inputs.ndim == 2 and not inputs.is_floating_point()


def not_for_tokens(inputs: Any, name: str, why: str) -> None:
    """Raise :class:`TokenInputError` where ``inputs`` are tokens."""
    if is_tokens(inputs):
        raise TokenInputError(f"{name} does not apply to token inputs: {why}")


def features(
    model: nn.Module,
    inputs: Tensor | TokenInputs,
    attributions: Tensor,
    target: Target,
    *,
    fill: ImageFill | TokenFill | None,
    batch_size: int,
    output: OutputSpec,
    generator: torch.Generator | None = None,
    blur_sigma: float | None = None,
) -> Features:
    """Parse the inputs, the attributions and the target once (call inside
    :func:`~gradlens.metrics._common._untouched`).

    Images ``(B, C, H, W)`` have ``H * W`` pixel features; their attributions are reduced
    to ``(B, H, W)`` and resized (:func:`gradlens.maps.to_2d`, :func:`gradlens.maps.resize`).
    Token ids ``(B, T)`` (or a mapping with ``"input_ids"``) have ``T`` token features, of
    which the padding (``attention_mask == 0``) is never perturbed; their attributions are
    ``(B, T)``.
    """
    batch_size = int(check_batch_size(batch_size) or 1)
    if not isinstance(attributions, Tensor):
        attributions = torch.as_tensor(attributions)
    if is_tokens(inputs):
        return _token_features(model, inputs, attributions, target, fill, batch_size, output)
    check_inputs({"images": inputs})
    if not isinstance(inputs, Tensor) or inputs.ndim != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"images must have shape (B, C, H, W), got {shape}")
    images = inputs.detach()
    if attributions.ndim not in (3, 4):
        raise ValueError(
            "attributions must be (B, H, W) maps or shaped like the images (B, C, H, W), got "
            f"{tuple(attributions.shape)}"
        )
    maps = _reduce_maps(attributions, tuple(images.shape[-2:]))
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"{maps.shape[0]} attribution maps for {images.shape[0]} images")
    batch, _, height, width = images.shape
    fill = "min" if fill is None else fill
    uniform = isinstance(fill, str) and fill == "uniform"
    baseline = None if uniform else _image_fill(images, fill, blur_sigma)
    classes = _classes_of(model, ModelInput.parse(images), target, output, batch_size)
    values = maps.double()
    return Features(
        model=model,
        values=values.reshape(batch, -1).to(images.device),
        real=torch.ones(batch, height * width, dtype=torch.bool, device=images.device),
        counts=torch.full((batch,), height * width, device=images.device),
        classes=classes.to(images.device),
        tokens=False,
        output=output,
        batch_size=batch_size,
        height=height,
        width=width,
        images=images,
        baseline=baseline,
        fill=fill,
        seed=seed_from(generator) if baseline is None else 0,
    )


def _image_fill(images: Tensor, fill: Any, blur_sigma: float | None) -> Tensor:
    if isinstance(fill, str) and fill in ("pad", "mask", "unk") or isinstance(fill, int):
        raise ValueError(f"fill={fill!r} is a token replacement; images take an image fill")
    return fill_images(images, fill, blur_sigma)


def _token_features(
    model: nn.Module,
    inputs: TokenInputs,
    attributions: Tensor,
    target: Target,
    fill: Any,
    batch_size: int,
    output: OutputSpec,
) -> Features:
    tokens = TokenInput.parse(inputs)
    ids = tokens.ids
    if tuple(attributions.shape) != tuple(ids.shape):
        raise ValueError(
            f"token attributions must have the token ids' shape {tuple(ids.shape)} (B, T), got "
            f"{tuple(attributions.shape)}"
        )
    fill = "mask" if fill is None else fill
    if isinstance(fill, int) and not isinstance(fill, bool):
        replacement = int(fill)
    elif isinstance(fill, str) and fill in ("pad", "mask", "unk"):
        replacement = int(config_token_id(model, fill, argument="fill"))
    else:
        raise ValueError(f'token inputs take fill="pad", "mask", "unk" or a token id, got {fill!r}')
    real = tokens.real.to(ids.device)
    classes = _classes_of(model, tokens.model_input, target, output, batch_size)
    values = attributions.detach().double().to(ids.device).masked_fill(~real, 0.0)
    return Features(
        model=model,
        values=values,
        real=real,
        counts=real.sum(dim=1),
        classes=classes.to(ids.device),
        tokens=True,
        output=output,
        batch_size=batch_size,
        token_input=tokens,
        replacement=replacement,
        fill=fill,
    )


def ordered_curve(
    feats: Features, steps: int, score: str, *, descending: bool, insert: bool
) -> Tensor:
    """``(B, steps + 1)`` float64: the scores along a cumulative curve. Step ``k`` takes the
    first ``round(k n / S)`` features of the ranking (largest attribution first when
    ``descending``) and removes them from the input (``insert=False``: deletion, pixel
    flipping) or puts them back into the all-filled input (``insert=True``: insertion,
    Arya's monotonicity)."""
    rank = feats.rank(descending=descending)
    counts = feats.step_counts(steps)
    per = steps + 1

    def jobs(part: Tensor) -> tuple[Tensor, Tensor]:
        sample, step = part // per, part % per
        chosen = rank[sample] < counts[sample, step][:, None]
        return sample, (~chosen if insert else chosen)

    return feats.scores(feats.batch * per, jobs, score).view(feats.batch, per)


def seed_from(generator: torch.Generator | None) -> int:
    """One int drawn from ``generator`` (``None``: a new generator seeded with 0; the global
    generator is never drawn from)."""
    return int(torch.randint(0, 2**62, (1,), generator=private_generator(generator)).item())


def random_subsets(
    feats: Features, size: int, runs: int, generator: torch.Generator | None
) -> Tensor:
    """``(B, runs, size)`` int64: random subsets of each sample's real features, drawn
    without replacement from ``generator``."""
    if int(feats.counts.min()) < size:
        raise ValueError(
            f"the subset size {size} is larger than a sample's {int(feats.counts.min())} features"
        )
    keys = torch.rand(
        feats.batch, runs, feats.size, generator=private_generator(generator), dtype=torch.float64
    )
    keys = keys.to(feats.device).masked_fill(~feats.real[:, None], math.inf)
    return torch.topk(keys, size, dim=2, largest=False).indices


def check_subsets(feats: Features, subsets: Tensor) -> Tensor:
    """Explicit subsets ``(B, R, n)`` of feature indices, checked."""
    subsets = torch.as_tensor(subsets).to(feats.device)
    if subsets.ndim != 3 or subsets.shape[0] != feats.batch or subsets.is_floating_point():
        raise ValueError(
            f"subsets must be a (B, runs, n) integer tensor of feature indices with B = "
            f"{feats.batch}, got {tuple(subsets.shape)}"
        )
    if bool(((subsets < 0) | (subsets >= feats.size)).any()):
        raise ValueError(f"subset indices must be in [0, {feats.size})")
    return subsets.long()


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation of ``(B, N)`` tensors, ``(B,)`` float64; NaN where a row
    is constant (the correlation is undefined)."""
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    denominator = (a.square().sum(1) * b.square().sum(1)).sqrt()
    return (a * b).sum(1) / denominator


def region_grid(height: int, width: int, patch: int, device: torch.device) -> Tensor:
    """``(H * W,)`` int64: the index of the ``patch x patch`` square (row-major over a grid
    starting at the top-left corner; the last row and column may be narrower) of each
    pixel."""
    rows = torch.arange(height, device=device) // patch
    cols = torch.arange(width, device=device) // patch
    per_row = -(-width // patch)
    return (rows[:, None] * per_row + cols[None, :]).reshape(-1)
