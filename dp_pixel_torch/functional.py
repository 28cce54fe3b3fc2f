"""Functional core: uniform DP pixelization as pure tensor functions (the paper's Algorithm 2, SPEC §2).

The data flows one way: image -> exact cell sums -> noisy cell values (the only thing that depends on the noise) ->
restored image. Everything after the noise is post-processing and costs no budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._validation import check_cells, check_generator, check_image, check_input
from .accounting import PrivacyGuarantee
from .noise import discrete_laplace_noise, laplace_noise, os_entropy_generator
from .partitions import GridPartition

#: Integer levels used by the discrete mechanism for float images: they are rounded to the 1/255 grid first.
LEVELS = 255


def noisy_cell_values(
    x: torch.Tensor,
    guarantee: PrivacyGuarantee,
    partition: GridPartition,
    value_range: tuple[float, float],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The released statistics: clipped noisy cell means ``[..., C, rows, cols]`` in ``x``'s dtype and range.

    ``x`` must already be validated. Each cell sum of each channel of each image gets its own noise draw with scale
    ``guarantee.noise_scale(C, R)``; the mean divides the noisy sum by the true cell area (``border="area"``) or by
    ``b²`` (``"zero_pad"``).
    """
    lo, hi = value_range
    channels = x.shape[-3]
    if x.dtype == torch.uint8:
        levels, span = x, float(LEVELS)
    elif guarantee.noise == "discrete":
        # Pre-processing, pixel by pixel: neighbours stay neighbours, so the sensitivity is unchanged.
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        levels = (work - lo).mul_(LEVELS / (hi - lo)).round_().clamp_(0, LEVELS).to(torch.uint8)
        span = float(LEVELS)
    else:
        levels, span = x, hi - lo
    # View-based reductions need plain strides; a no-op for contiguous input.
    sums = partition.cell_sums(levels.contiguous())
    counts = partition.counts(x.device)
    if levels.is_floating_point() and lo != 0.0:
        sums = sums - lo * counts  # sums of x - lo, so that padding and clipping refer to [0, R]
    scale = guarantee.noise_scale(channels, span)
    if guarantee.noise == "discrete":
        noisy = discrete_laplace_noise(sums.shape, scale, device=x.device, generator=generator).add_(sums)
    else:
        noisy = laplace_noise(sums.shape, scale, device=x.device, generator=generator).add_(sums)
    means = noisy.div_(counts if guarantee.border == "area" else guarantee.b**2).clamp_(0.0, span)
    if x.dtype == torch.uint8:
        return means.round_().to(torch.uint8)
    return means.mul_((hi - lo) / span).add_(lo).to(x.dtype)


@torch.no_grad()
def dp_pixelize(
    x: torch.Tensor,
    epsilon: float,
    b: int | None = None,
    m: int = 1,
    *,
    grid: Sequence[int] | None = None,
    noise: str = "discrete",
    border: str = "area",
    channel_rule: str = "joint",
    value_range: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    secure: bool = False,
) -> torch.Tensor:
    """Differentially private pixelization of ``x`` with ``b×b`` cells (or a ``grid=(rows, cols)`` of cells).

    Args:
        x: ``[..., C, H, W]`` uint8 (range 255) or float (range ``value_range``, default [0, 1]) on any device.
            Every leading index (image, frame) gets independent noise.
        epsilon: privacy budget per image: ε-DP for neighbours that differ in ``m`` pixels (all channels jointly
            unless ``channel_rule="per_channel"``).
        b: cell side in pixels (larger cells average more pixels, so less noise per pixel).
        m: pixels that may differ between neighbours; the sensitivity of the cell sums is ``C·R·m``.
        grid: ``(rows, cols)`` output grid instead of ``b``: non-overlapping cells of floor/ceil size.
        noise: ``"discrete"`` (integer sums + discrete Laplace, lattice output) or ``"laplace"`` (float64 continuous).
        border: ``"area"`` (divide the noisy sum by the true cell area) or ``"zero_pad"`` (by b², as in the paper).
        channel_rule: ``"joint"`` (ε covers all channels) or ``"per_channel"`` (ε per channel, C·ε in total).
        value_range: ``(lo, hi)`` of float data, R = hi - lo.
        generator: torch.Generator on ``x.device`` for reproducible noise; None uses torch's global RNG.
        secure: seed a fresh generator from OS entropy for this call; refuses ``generator``.

    Returns:
        A new tensor with ``x``'s shape, dtype, device (and channels-last layout if ``x`` has it); it never requires grad.
    """
    guarantee = PrivacyGuarantee(epsilon, m, b, None if grid is None else tuple(grid), channel_rule, noise, border, secure)
    x, bounds = check_input(x, value_range)
    check_generator(generator)
    if secure:
        if generator is not None:
            raise ValueError("secure=True draws its seed from OS entropy and refuses a generator")
        generator = os_entropy_generator(x.device)
    return pixelize_validated(x, guarantee, bounds, generator)


def pixelize_validated(
    x: torch.Tensor, guarantee: PrivacyGuarantee, value_range: tuple[float, float], generator: torch.Generator | None
) -> torch.Tensor:
    """:func:`dp_pixelize` on input that has already passed the checks."""
    if x.numel() == 0:
        return x.clone()
    if generator is not None and torch.device(generator.device).type != x.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the input is on {x.device}; "
            "pass a generator created on the input's device (or give the layer seed= instead)"
        )
    partition = GridPartition.for_cells(*x.shape[-2:], guarantee.b, guarantee.grid)
    out = partition.fill(noisy_cell_values(x, guarantee, partition, value_range, generator))
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@torch.no_grad()
def pixelize(x: torch.Tensor, b: int | None = None, *, grid: Sequence[int] | None = None) -> torch.Tensor:
    """Plain pixelization, **not private**: fill each cell with its exact mean (a baseline for comparisons).

    Same shapes, dtypes, cells and border handling (``"area"``) as :func:`dp_pixelize`, with no noise.
    """
    x = check_image(x).detach()
    b, grid = check_cells(b, grid)
    if x.numel() == 0:
        return x.clone()
    partition = GridPartition.for_cells(*x.shape[-2:], b, grid)
    means = partition.cell_sums(x.contiguous()).double() / partition.counts(x.device)
    return partition.fill(means.round_() if x.dtype == torch.uint8 else means).to(x.dtype)
