"""Restoration of a release under its public noise law: post-processing, so it costs no ε (SPEC §2, §5).

Every released cell value is the exact cell mean plus noise of a known variance (:meth:`NoisyGrid.noise_variance
<dp_pixel_torch.storage.NoisyGrid.noise_variance>`). The functions here read only what a release discloses: the
released cell values, those public variances and the public cell layout. None of them accepts an image that was not
released, so whatever they compute is post-processing of the release.

Methods (:data:`METHODS`):

* ``"fill"``: paint every cell with its value (the layer's own output).
* ``"smooth"``: bilinear interpolation between cell centres; a region-adaptive release is interpolated level by
  level, so that a coarse cell becomes a smooth ramp instead of a flat block.
* ``"denoise"``: an empirical-Bayes (Wiener) estimate of every cell mean, then a bilinear image whose mean over
  every cell is that estimate (:func:`consistent`). A precision-weighted
  pyramid (pull) predicts every cell from its neighbourhood at coarser scales; going back down (push), each cell's
  value is shrunk toward that prediction by ``τ²/(τ² + σ²)``, where σ² is the cell's public noise variance and τ² the
  local signal variance, estimated from the release (squared residuals minus the known noise, over 5×5 cells). Noisy
  cells in flat regions are pulled in, edges and texture above the noise are kept, and as σ² → 0 the estimate tends to
  the released values. A protected cell (huge σ²) takes its value from its neighbours in proportion to
  its variance: a smooth patch instead of saturated confetti. RGB is denoised in an orthonormal opponent colour basis,
  in which the noise stays independent with the same variance and the chroma, whose signal is weak, shrinks most.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .partitions import GridPartition, MultiLevelGrid

#: The restoration methods, from the flat block fill to the noise-aware estimate.
METHODS = ("fill", "smooth", "denoise")

#: Orthonormal opponent colour basis: luminance and two chroma axes. Orthonormal, so i.i.d. noise stays i.i.d.
_OPPONENT = torch.tensor(
    [
        [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
        [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
        [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)],
    ],
    dtype=torch.float64,
)


def upsample(values: torch.Tensor, partition: GridPartition) -> torch.Tensor:
    """Bilinear interpolation of cell values ``[..., C, rows, cols]`` between the cell centres of ``partition``, flat
    beyond the outermost centres: ``[..., C, H, W]`` in ``values``' dtype (uint8 rounded).

    Reads: cell values and the public layout. ``b×b`` blocks use the exact centres of full cells (a cut-short border
    cell sits at the centre of its full block); floor/ceil grids use the centres of even cells. uint8 interpolates in
    uint8 on the CPU (fast, rounded), anything else in float32 (float64 stays float64).
    """
    rows, cols = partition.shape
    height, width = partition.image_shape
    b = partition.block_side
    size = (rows * b, cols * b) if b is not None else (height, width)
    flat = values.reshape(-1, *values.shape[-3:])
    if flat.shape[0] == 0:
        return values.new_empty((*values.shape[:-2], height, width))
    work = flat
    if not (flat.dtype == torch.float64 or (flat.dtype == torch.uint8 and flat.device.type == "cpu")):
        work = flat.float()
    if work.dtype == torch.uint8 and flat.shape[1] in (3, 4):
        work = work.contiguous(memory_format=torch.channels_last)  # the vectorised uint8 kernel
    out = F.interpolate(work, size=size, mode="bilinear", align_corners=False)[..., :height, :width]
    if values.dtype == torch.uint8 and out.dtype != torch.uint8:
        out = out.round_().clamp_(0, 255)
    return out.to(values.dtype).contiguous().reshape(*values.shape[:-2], height, width)


def consistent(values: torch.Tensor, partition: GridPartition) -> torch.Tensor:
    """Coefficients whose :func:`upsample` has the cell means ``values [..., C, rows, cols]`` (float64): the
    bilinear image whose mean over every cell is that cell's value, so that no cell's mean is blurred into its
    neighbours' (up to the clipping of the coefficients to the value range, at the strongest edges). Reads: cell
    values and the public layout. Per axis, the cell means of the interpolated unit cells
    form a tridiagonal matrix ``K`` (about ``[1/8, 3/4, 1/8]``, inverted once per layout): the image of coefficients
    ``c`` has cell means ``K_rowsᵀ·c·K_cols``, so ``c = K_rows⁻ᵀ·values·K_cols⁻¹``."""
    b = partition.block_side
    rows = _inverse_cell_means(partition.row_sizes, b).to(values.device)
    cols = _inverse_cell_means(partition.col_sizes, b).to(values.device)
    return rows.T @ values @ cols


@functools.lru_cache(maxsize=64)
def _inverse_cell_means(sizes: tuple[int, ...], b: int | None) -> torch.Tensor:
    """``K⁻¹`` along one axis of cells of ``sizes`` (interpolated as :func:`upsample` does), where ``K[i, j]`` is
    the mean over cell ``j`` of the interpolated unit vector of cell ``i``."""
    n, length = len(sizes), sum(sizes)
    eye = torch.eye(n, dtype=torch.float64)[None, None]
    up = F.interpolate(eye, size=(n, n * b if b is not None else length), mode="bilinear", align_corners=False)
    running = F.pad(up[0, 0, :, :length].cumsum(1), (1, 0))
    width = torch.tensor(sizes)
    ends = width.cumsum(0)
    return torch.linalg.inv((running[:, ends] - running[:, ends - width]) / width.double())


def smooth_finest(grid: MultiLevelGrid, released: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Level-0 cell values of a smooth region-adaptive image: float64 ``[..., C, rows_0, cols_0]``.

    Reads: released cell values (dense per level ``[..., C, rows_l, cols_l]``, read where ``released[l]``) and the
    public layout. From the coarsest level down, a cell inside a released coarser cell takes the bilinear
    interpolation of the level above; every other cell takes its area-weighted mean of released values.
    """
    counts = [grid.partition(level).counts(values[0].device) for level in range(len(grid.levels))]
    finest = grid.finest_values(released, [v.double() for v in values])
    means = [s / n for s, n in zip(grid.coarsen(finest * counts[0]), counts)]
    covered, smooth = released[grid.top], means[grid.top]
    for level in range(grid.top - 1, -1, -1):
        step = grid.step(level + 1)
        smooth = upsample(smooth, step)
        covered = step.fill(covered)
        smooth = torch.where(covered.unsqueeze(-3), smooth, means[level])
        covered = covered | released[level]
    return smooth


def wiener_pyramid(y: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Empirical-Bayes estimates of the means behind noisy cell values ``y [N, rows, cols]`` (floating) observed with
    independent noise of known ``variance`` (broadcastable to ``y``): a precision-weighted pull-push pyramid.

    Reads: the values and their public variances. Pull: 2×2 precision-weighted means up to one cell. Push: each
    level's cells are predicted by bilinear interpolation of the level above (prediction variance ``v_m``), the local
    signal variance is ``τ² = max(0, mean over 5×5 of (y - m)² - σ² - v_m)`` weighted by ``1/(σ² + v_m)²`` (so that
    cells of huge variance do not swamp it), and the estimate is ``m + (τ² + v_m)/(τ² + v_m + σ²)·(y - m)``.
    """
    variance = variance.expand_as(y)
    pyramid = [(y, variance)]
    while max(pyramid[-1][0].shape[-2:]) > 1:
        y_, v_ = pyramid[-1]
        precision = _pool_sum(1.0 / v_)
        pyramid.append((_pool_sum(y_ / v_) / precision, 1.0 / precision))
    estimate, spread = pyramid[-1]
    for y_, v_ in reversed(pyramid[:-1]):
        halves = GridPartition.blocks(*y_.shape[-2:], 2)
        m = upsample(estimate.unsqueeze(1), halves).squeeze(1)
        v_m = upsample(spread.unsqueeze(1), halves).squeeze(1)
        weight = 1.0 / (v_ + v_m).square()
        excess = weight * ((y_ - m).square() - v_ - v_m)
        tau2 = (_local_mean(excess) / _local_mean(weight)).clamp_(min=0.0)
        prior = tau2 + v_m
        estimate = m + prior / (prior + v_) * (y_ - m)
        spread = prior * v_ / (prior + v_)
    return estimate


def _pool_sum(cells: torch.Tensor) -> torch.Tensor:
    """Sums over 2×2 blocks of ``[N, rows, cols]`` (the last block cut short when a side is odd)."""
    cells = F.pad(cells, (0, cells.shape[-1] % 2, 0, cells.shape[-2] % 2))
    return cells.unflatten(-1, (-1, 2)).unflatten(-3, (-1, 2)).sum((-1, -3))


def _local_mean(cells: torch.Tensor) -> torch.Tensor:
    """Means over the 5×5 cells around every cell of ``[N, rows, cols]`` (fewer at the borders)."""
    return F.avg_pool2d(cells.unsqueeze(1), 5, stride=1, padding=2, count_include_pad=False).squeeze(1)


def denoise_cells(values: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Wiener estimates of cell means: ``values [..., C, rows, cols]`` float64 and their public noise ``variance``
    (broadcastable, the same for every channel of a cell) -> float64 ``[..., C, rows, cols]``.

    Reads: released values and their public variances. Three channels are taken to RGB's opponent basis and back.
    """
    channels = values.shape[-3]
    rgb = channels == 3
    if rgb:
        values = torch.einsum("ij,...jhw->...ihw", _OPPONENT.to(values.device), values)
    variance = variance.expand_as(values).float()  # float32: 2x faster, far below the noise in precision
    flat = wiener_pyramid(values.float().reshape(-1, *values.shape[-2:]), variance.reshape(-1, *values.shape[-2:]))
    estimate = flat.double().reshape(values.shape)
    if rgb:
        estimate = torch.einsum("ji,...jhw->...ihw", _OPPONENT.to(values.device), estimate)
    return estimate


def denoise_adaptive(
    grid: MultiLevelGrid, released: list[torch.Tensor], values: list[torch.Tensor], variances: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Wiener estimates of the released cells of a region-adaptive release, dense per level like ``values``.

    Reads: released values, their public variances and the public layout. On the level-0 grid, each level-0 cell of a
    released cell of ``k`` level-0 cells observes that cell's value with ``k`` times its variance (together they
    carry the cell's information once); the estimates are then averaged back over every released cell.
    """
    device = values[0].device
    ones = torch.ones(grid.partition(0).shape, dtype=torch.float64, device=device)
    sizes = [k.unsqueeze(0) for k in grid.coarsen(ones)]  # level-0 cells per cell of each level
    spread = grid.finest_values(released, [v * k for v, k in zip(variances, sizes)])
    estimate = denoise_cells(grid.finest_values(released, values), spread)
    counts = [grid.partition(level).counts(device) for level in range(len(grid.levels))]
    return [s / n for s, n in zip(grid.coarsen(estimate * counts[0]), counts)]


def restore_cells(
    layout: GridPartition | MultiLevelGrid,
    released: list[torch.Tensor] | None,
    values: list[torch.Tensor],
    variances: list[torch.Tensor],
    method: str,
    dtype: torch.dtype,
    value_range: tuple[float, float],
) -> torch.Tensor:
    """Restored images ``[..., C, H, W]`` in ``dtype`` by ``"smooth"`` or ``"denoise"`` (see the module).

    Reads only the release: ``values``, float64 cell values in image units, dense per level ``[..., C, rows_l,
    cols_l]`` (one level for a uniform ``GridPartition``); ``variances``, their public noise variances, broadcastable
    to them (see :meth:`~dp_pixel_torch.storage.NoisyGrid.noise_variance`); the public ``layout`` and, for a
    :class:`~dp_pixel_torch.MultiLevelGrid`, the ``released`` cells of every level; the output ``dtype`` and ``value_range``.
    """
    if method not in ("smooth", "denoise"):
        raise ValueError(f"restore_cells restores by 'smooth' or 'denoise', got {method!r} (fill: layout.fill)")
    if isinstance(layout, GridPartition):
        cells = denoise_cells(values[0], variances[0]) if method == "denoise" else values[0]
        partition = layout
    else:
        if method == "denoise":
            values = denoise_adaptive(layout, released, values, variances)
        cells, partition = smooth_finest(layout, released, values), layout.partition(0)
    if method == "denoise":
        cells = consistent(cells, partition)
    lo, hi = value_range
    cells = cells.clamp(lo, hi)
    if dtype == torch.uint8:
        cells = cells.round_().to(torch.uint8)
    elif dtype != torch.float64:
        cells = cells.float()
    return upsample(cells, partition).to(dtype)
