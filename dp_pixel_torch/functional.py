"""Functional core: uniform DP pixelization as pure tensor functions (the paper's Algorithm 2, SPEC §2).

The data flows one way: image -> exact cell sums -> noisy cell values (the only thing that depends on the noise) ->
restored image. Everything after the noise is post-processing and costs no budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._validation import check_cells, check_generator_device, check_image, check_input
from .accounting import PrivacyGuarantee
from .noise import KeyStream, Randomness, check_randomness, discrete_laplace_noise, laplace_noise
from .partitions import GridPartition, MultiLevelGrid, cell_contrast

#: Integer levels used by the discrete mechanism for float images: they are rounded to the 1/255 grid first.
LEVELS = 255


def cell_levels(x: torch.Tensor, guarantee: PrivacyGuarantee, value_range: tuple[float, float]):
    """Pre-processing, pixel by pixel: the values the cell sums run over, and their range R.

    uint8 stays as is (R = 255). Floats go to the 1/255 lattice for discrete noise (R = 255), or stay floats
    (R = hi - lo). A per-pixel map keeps neighbours neighbours, so the sensitivity is unchanged.
    """
    lo, hi = value_range
    if x.dtype == torch.uint8:
        return x.contiguous(), float(LEVELS)
    if guarantee.noise == "discrete":
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return (work - lo).mul_(LEVELS / (hi - lo)).round_().clamp_(0, LEVELS).to(torch.uint8), float(LEVELS)
    return x.contiguous(), hi - lo


def noisy_values(
    sums: torch.Tensor,
    partition: GridPartition,
    cell_side: int | None,
    guarantee: PrivacyGuarantee,
    span: float,
    dtype: torch.dtype,
    value_range: tuple[float, float],
    generator: Randomness,
) -> torch.Tensor:
    """Noise the cell sums ``[..., C, rows, cols]`` of ``partition`` and return clipped means in ``dtype``'s range.

    Each sum gets its own draw of scale ``guarantee.noise_scale(C, R)``. The mean divides by the true cell area
    (``border="area"``) or by ``cell_side²`` (``"zero_pad"``). Everything after the noise is post-processing.
    """
    lo, hi = value_range
    if sums.numel() == 0:
        return torch.empty(sums.shape, dtype=dtype, device=sums.device)
    counts = partition.counts(sums.device)
    if sums.is_floating_point() and lo != 0.0:
        sums = sums - lo * counts  # sums of x - lo, so that padding and clipping refer to [0, R]
    scale = guarantee.noise_scale(sums.shape[-3], span)
    sample = discrete_laplace_noise if guarantee.noise == "discrete" else laplace_noise
    noisy = sample(sums.shape, scale, device=sums.device, generator=generator).add_(sums)
    means = noisy.div_(counts if guarantee.border == "area" else cell_side**2).clamp_(0.0, span)
    if dtype == torch.uint8:
        return means.round_().to(torch.uint8)
    return means.mul_((hi - lo) / span).add_(lo).to(dtype)


def noisy_cell_values(
    x: torch.Tensor,
    guarantee: PrivacyGuarantee,
    partition: GridPartition,
    value_range: tuple[float, float],
    generator: Randomness,
) -> torch.Tensor:
    """The released statistics of a uniform grid: clipped noisy cell means ``[..., C, rows, cols]`` in ``x``'s dtype.

    ``x`` must already be validated.
    """
    levels, span = cell_levels(x, guarantee, value_range)
    return noisy_values(
        partition.cell_sums(levels), partition, guarantee.b, guarantee, span, x.dtype, value_range, generator
    )


def adaptive_cell_values(
    sums: list[torch.Tensor],
    grid: MultiLevelGrid,
    guarantee: PrivacyGuarantee,
    span: float,
    dtype: torch.dtype,
    value_range: tuple[float, float],
    generator: Randomness,
) -> list[torch.Tensor]:
    """Noisy cell means at every level of ``grid`` from its exact sums (:meth:`MultiLevelGrid.cell_sums` of
    :func:`cell_levels`), ``[..., C, rows_l, cols_l]`` in ``dtype``.

    Every cell sum of every level gets the same noise scale (local noise scaling); only the cells the partition
    releases are ever output, and every pixel lies in exactly one of them, so the release is ε-DP for any partition
    that does not depend on the private image.
    """
    return [
        noisy_values(s, grid.partition(level), grid.levels[level], guarantee, span, dtype, value_range, generator)
        for level, s in enumerate(sums)
    ]


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
    generator: torch.Generator | KeyStream | None = None,
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
        generator: a :class:`~dp_pixel_torch.noise.KeyStream` or a torch.Generator on ``x.device`` for reproducible
            noise; None keys a ChaCha20 stream from 256 bits of OS entropy for this call.
        secure: key this call's ChaCha20 stream from OS entropy, and refuse ``generator`` (and continuous noise).

    Returns:
        A new tensor with ``x``'s shape, dtype, device (and channels-last layout if ``x`` has it); never requires grad.
    """
    guarantee = PrivacyGuarantee(
        epsilon, m, b, None if grid is None else tuple(grid), channel_rule, noise, border, secure
    )
    x, bounds = check_input(x, value_range)
    check_randomness(generator)
    if secure and generator is not None:
        raise ValueError("secure=True keys its stream from OS entropy and refuses a generator")
    return pixelize_validated(x, guarantee, bounds, KeyStream.from_os_entropy() if generator is None else generator)


def pixelize_validated(
    x: torch.Tensor, guarantee: PrivacyGuarantee, value_range: tuple[float, float], generator: Randomness
) -> torch.Tensor:
    """:func:`dp_pixelize` on input that has already passed the checks."""
    if x.numel() == 0:
        return x.clone()
    check_generator_device(generator, x.device)
    partition = GridPartition.for_cells(*x.shape[-2:], guarantee.b, guarantee.grid)
    return like_layout(partition.fill(noisy_cell_values(x, guarantee, partition, value_range, generator)), x)


def like_layout(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out`` in channels-last memory format when ``x`` is a channels-last 4-D tensor."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


@torch.no_grad()
def pixelize(x: torch.Tensor, b: int | None = None, *, grid: Sequence[int] | None = None) -> torch.Tensor:
    """Plain pixelization, **not private**: fill each cell with its exact mean (a baseline for comparisons).

    Same shapes, dtypes, cells and border handling (``"area"``) as :func:`dp_pixelize`, with no noise.
    """
    x = check_image(x).detach()
    b, grid, _ = check_cells(b, grid)
    if x.numel() == 0:
        return x.clone()
    partition = GridPartition.for_cells(*x.shape[-2:], b, grid)
    means = partition.cell_sums(x.contiguous()).double() / partition.counts(x.device)
    return partition.fill(means.round_() if x.dtype == torch.uint8 else means).to(x.dtype)


def complexity_scores(
    finest_sums: torch.Tensor,
    grid: MultiLevelGrid,
    span: float,
    *,
    m: int = 1,
    partition_epsilon: float | None = None,
    noise: str = "discrete",
    generator: Randomness = None,
) -> list[torch.Tensor]:
    """Per-cell complexity at levels 1..L: the mean absolute difference between neighbouring level-0 cell means
    inside the cell, per channel, as a fraction of the range R.

    It is computed from the exact level-0 sums ``[..., C, rows_0, cols_0]`` (see
    :func:`~dp_pixel_torch.partitions.cell_contrast`). With ``partition_epsilon`` these are private statistics: each
    level's integer score vector (L1 sensitivity ``4·C·R·b_0²·m``) gets noise of scale
    ``L·4·C·R·b_0²·m/partition_epsilon``, so the L levels together cost ``partition_epsilon``. Without it (scores of
    a previous release, which is public) no noise is added.
    """
    channels = finest_sums.shape[-3]
    finest = grid.partition(0)
    n_max = grid.levels[0] ** 2
    scores = []
    for level, s in enumerate(grid.coarsen(cell_contrast(finest_sums, finest.counts()))[1:], start=1):
        s = s.double()
        if partition_epsilon is not None:
            scale = grid.top * 4 * channels * span * n_max * m / partition_epsilon
            sample = discrete_laplace_noise if noise == "discrete" else laplace_noise
            s = sample(s.shape, scale, device=s.device, generator=generator).add_(s)
        # A level-l cell holds about 2·n_c/b_0² pairs, each n_f·n_g ≈ b_0⁴ times a difference of means.
        scores.append(s / (2 * grid.partition(level).counts(s.device) * n_max * channels * span))
    return scores
