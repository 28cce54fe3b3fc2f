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

#: Cell values per group that :func:`restore_cells` estimates at a time. Its float work arrays (a few MiB) then stay
#: in cache and the allocator reuses them, where a whole batch's arrays are mapped afresh for every operation (page
#: faults cost more than the arithmetic); it also bounds the work memory whatever the batch.
_CHUNK_CELLS = 1 << 19

#: The noise variances that the estimates read, in units of the squared value range: one below the lower bound (a
#: release at so large an ε that its variance rounds to 0) is read as that bound, a standard deviation of 3e-5 of the
#: range (far below the rounding of a uint8 or float16 value); one above the upper bound, infinite (at so small an ε
#: that it overflows) or NaN is read as the upper bound: a cell of no information, which the estimates fill from its
#: neighbours. Between them the float32 pyramid stays finite: it pools up to 2^32 cells of an image into one, whose
#: variance (2^-62 at least) it squares and inverts.
VARIANCE_BOUNDS = (2.0**-30, 2.0**40)


def upsample(values: torch.Tensor, partition: GridPartition) -> torch.Tensor:
    """Bilinear interpolation of cell values ``[..., C, rows, cols]`` between the cell centres of ``partition``, flat
    beyond the outermost centres: ``[..., C, H, W]`` in ``values``' dtype (uint8 rounded).

    Reads: cell values and the public layout. ``b×b`` blocks use the exact centres of full cells (a cut-short border
    cell sits at the centre of its full block); floor/ceil grids use the centres of even cells. The interpolation
    runs on :func:`canvas_shape` and is cut to the image. uint8 interpolates in uint8 on the CPU (fast, rounded; two
    passes that write the planar image), anything else in float32 (float64 stays float64).
    """
    height, width = partition.image_shape
    size = canvas_shape(partition)
    flat = values.reshape(-1, *values.shape[-3:])
    if flat.shape[0] == 0:
        return values.new_empty((*values.shape[:-2], height, width))
    if flat.dtype == torch.uint8 and flat.device.type == "cpu":
        out = _upsample_uint8(flat, size)
    else:
        work = flat if flat.dtype == torch.float64 else flat.float()
        out = F.interpolate(work, size=size, mode="bilinear", align_corners=False)
        if values.dtype == torch.uint8:
            out = out.round_().clamp_(0, 255)
    return out[..., :height, :width].to(values.dtype).contiguous().reshape(*values.shape[:-2], height, width)


def canvas_shape(partition: GridPartition) -> tuple[int, int]:
    """The ``(height, width)`` that :func:`upsample` interpolates before it cuts out the image: ``rows·b × cols·b``
    for ``b×b`` blocks (a cut-short border cell sits at the centre of its full block), the image along an axis of
    one cell (flat whatever the size) and for any other grid. Reads the public layout."""
    b = partition.block_side
    return _canvas_side(partition.row_sizes, b), _canvas_side(partition.col_sizes, b)


def _canvas_side(sizes: tuple[int, ...], b: int | None) -> int:
    return len(sizes) * b if b is not None and len(sizes) > 1 else sum(sizes)


def _upsample_uint8(cells: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:func:`upsample` of uint8 ``[N, C, rows, cols]`` on the CPU: ``[N, C, *size]`` by the vectorised uint8 kernel,
    which wants 3 or 4 channels last. As that kernel does, in two passes: along the rows (a small image, made
    planar), then along the columns with every row read as pixels of 4 (or 3) channels, so that the channels-last
    output is already the contiguous image (the same values as one pass, without a transposing copy). A width that
    neither 4 nor 3 divides takes one pass (channels last when C is 3 or 4)."""
    n, channels, rows, _ = cells.shape
    height, width = size
    group = next((g for g in (4, 3) if width % g == 0), None)
    if group is None:
        work = cells.contiguous(memory_format=torch.channels_last) if channels in (3, 4) else cells
        return F.interpolate(work, size=size, mode="bilinear", align_corners=False)
    if channels in (3, 4):
        cells = cells.contiguous(memory_format=torch.channels_last)
    wide = F.interpolate(cells, size=(rows, width), mode="bilinear", align_corners=False).contiguous()
    pixels = wide.view(n * channels, rows, width // group, group).permute(0, 3, 1, 2)  # channels last
    tall = F.interpolate(pixels, size=(height, width // group), mode="bilinear", align_corners=False)
    return tall.permute(0, 2, 3, 1).reshape(n, channels, height, width)


def consistent(values: torch.Tensor, partition: GridPartition) -> torch.Tensor:
    """Coefficients whose :func:`upsample` has the cell means ``values [..., C, rows, cols]`` (floating, kept): the
    bilinear image whose mean over every cell is that cell's value, so that no cell's mean is blurred into its
    neighbours' (up to the clipping of the coefficients to the value range, at the strongest edges). Reads: cell
    values and the public layout. Per axis, the cell means of the interpolated unit cells form a tridiagonal matrix
    ``M`` (about ``[1/8, 3/4, 1/8]``; a unit cell's interpolation reaches its neighbours' centres and no further): the
    image of coefficients ``c`` has cell means ``M_rows·c·M_colsᵀ``, so ``c`` solves ``M`` along the rows, then along
    the columns (LU factors once per layout, then recurrences of log2 n vectorised steps: memory and time in
    proportion to the cells, never an ``n×n`` matrix). An axis of a ``grid`` of cells under 2 pixels on average can
    have interpolation centres so far off their cells that ``M`` is nearly singular (its LU factors grow); it is left
    as it is: plain interpolation, whose cell means are close to the values but not kept exactly."""
    b = partition.block_side
    return _solve_cell_means(_solve_cell_means(values, partition.row_sizes, b, -2), partition.col_sizes, b, -1)


def _solve_cell_means(values: torch.Tensor, sizes: tuple[int, ...], b: int | None, dim: int) -> torch.Tensor:
    """``M⁻¹`` (see :func:`consistent`) of the axis of cells of ``sizes`` applied along ``dim`` of ``values`` (the
    values themselves where the factors would grow)."""
    factors = _cell_mean_factors(sizes, b)
    if factors is None:
        return values
    lower, inverse, upper = factors
    forward = _recurrence(values, lower, dim, reverse=False)  # L·z = values
    return _recurrence(forward.mul_(inverse.to(forward).view(-1, *(1,) * (-1 - dim))), upper, dim, reverse=True)


@functools.lru_cache(maxsize=16)
def _cell_mean_factors(sizes: tuple[int, ...], b: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The LU factors of ``M`` along one axis of cells of ``sizes`` (interpolated as :func:`upsample` does), where
    ``M[j, i]`` is the mean over cell ``j`` of the interpolated unit vector of cell ``i``, as the coefficients of
    :func:`_recurrence`: float64 ``[n]`` ``(-l, 1/u, -c/u)`` for ``M = L·U`` (``l``: the subdiagonal of ``L``; ``u``:
    the pivots; ``c``: the superdiagonal of ``M``), without pivoting. None where a factor would pass 1 in magnitude
    (never for ``b×b`` blocks): the recurrences could then grow without bound. The three diagonals are the cell
    means of three interpolated combs (every third unit vector: one of any three neighbours), in memory in
    proportion to the axis."""
    n, length = len(sizes), sum(sizes)
    combs = (torch.arange(n) % 3 == torch.arange(3)[:, None]).double()
    up = F.interpolate(combs[None, :, None], size=(1, _canvas_side(sizes, b)), mode="bilinear", align_corners=False)
    widths = torch.tensor(sizes)
    cells = torch.repeat_interleave(torch.arange(n), widths)
    means = torch.zeros(3, n, dtype=torch.float64).index_add_(1, cells, up[0, :, 0, :length]) / widths
    j = torch.arange(n)
    sub, diag, sup = (means[(j + k) % 3, j].tolist() for k in (-1, 0, 1))
    lower, pivots = [0.0] * n, [diag[0]] * n
    for i in range(n):
        if i:
            lower[i] = sub[i] / pivots[i - 1]
            pivots[i] = diag[i] - lower[i] * sup[i - 1]
        if abs(lower[i]) > 1 or abs(sup[i]) > abs(pivots[i]) or pivots[i] == 0:
            return None
    lower, pivots, sup = (torch.tensor(t, dtype=torch.float64) for t in (lower, pivots, sup))
    return -lower, pivots.reciprocal(), -sup / pivots


def _recurrence(y: torch.Tensor, a: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """``x`` with ``x_j = y_j + a_j·x_{j-1}`` along ``dim`` of ``y`` (``x_{j+1}`` when ``reverse``), ``a``: float64
    ``[n]`` on the CPU, its first (last) entry unused, ``|a| <= 1``. Recursive doubling: step ``s`` adds
    ``A_j·x_{j∓s}`` to every ``x_j`` at once (``A``: products of ``s`` coefficients) and doubles the reach; it stops
    once the products left are 0 in ``y``'s dtype (they never grow), so the result is that of the sequential
    recurrence up to rounding."""
    n = y.shape[dim]
    a = a.flip(0) if reverse else a  # in the order of the recurrence
    a = torch.cat([a.new_zeros(1), a[1:]])
    x, shift = y.clone(), 1
    while shift < n:
        step = a[shift:].to(y.dtype)
        if not step.any():
            break
        target, source = (0, shift) if reverse else (shift, 0)
        step = (step.flip(0) if reverse else step).to(y.device).view(-1, *(1,) * (-1 - dim))
        x.narrow(dim, target, n - shift).add_(x.narrow(dim, source, n - shift) * step)
        a = torch.cat([a.new_zeros(shift), a[shift:] * a[:-shift]])
        shift *= 2
    return x


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
    """Empirical-Bayes estimates of the means behind noisy cell values ``y [..., rows, cols]`` (floating) observed with
    independent noise of known ``variance`` (broadcastable to ``y``): a precision-weighted pull-push pyramid.

    Reads: the values and their public variances. Pull: 2×2 precision-weighted means up to one cell. Push: each
    level's cells are predicted by bilinear interpolation of the level above (prediction variance ``v_m``), the local
    signal variance is ``τ² = max(0, mean over 5×5 of (y - m)² - σ² - v_m)`` weighted by ``1/(σ² + v_m)²`` (so that
    cells of huge variance do not swamp it), and the estimate is ``m + (τ² + v_m)/(τ² + v_m + σ²)·(y - m)``.
    A variance that is the same along a leading dimension (broadcast) is pulled once for all of it.
    """
    variance = variance.expand(torch.broadcast_shapes(variance.shape, y.shape[-2:]))
    pyramid = [(y, variance)]
    while max(pyramid[-1][0].shape[-2:]) > 1:
        y_, v_ = pyramid[-1]
        precision = _pool_sum(v_.reciprocal())
        pyramid.append((_pool_sum(y_ / v_).div_(precision), precision.reciprocal_()))
    estimate, spread = pyramid[-1]
    state = torch.stack([estimate, spread.expand_as(estimate)])  # estimates and their variances, doubled together
    for y_, v_ in reversed(pyramid[:-1]):
        m, v_m = _double(state, y_.shape[-2:])
        d = y_ - m
        s = v_ + v_m
        terms = torch.empty((2, *d.shape), dtype=d.dtype, device=d.device)  # box-summed together
        weight = torch.reciprocal(s, out=terms[1]).square_()
        torch.addcmul(s, d, d, value=-1.0, out=terms[0]).mul_(weight)  # minus the weighted excess of the residual
        excess, weights = _box_sums(terms)
        prior = v_m - excess.div_(weights).clamp_(max=0.0)  # τ² + v_m (the box sizes cancel)
        gain = prior.div_(prior + v_)
        state = torch.empty_like(terms)
        torch.addcmul(m, gain, d, out=state[0])
        torch.mul(gain, v_, out=state[1])
    return state[0]


def _double(cells: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Bilinear interpolation (half-pixel centres, flat beyond the outermost) of ``[..., rows, cols]`` onto the grid
    of ``shape`` whose 2×2 blocks they are: each new cell lies a quarter of a cell from its own, so takes 3/4 of it
    and 1/4 of the next one on that side (lerps, far faster than an interpolation call on the CPU)."""
    for dim, length in ((-2, shape[0]), (-1, shape[1])):
        padded = torch.cat([cells.narrow(dim, 0, 1), cells, cells.narrow(dim, -1, 1)], dim)
        n = cells.shape[dim]
        out = cells.new_empty((*cells.shape[:dim], 2 * n, *cells.shape[dim:][1:]))
        own = padded.narrow(dim, 1, n)
        torch.lerp(own, padded.narrow(dim, 0, n), 0.25, out=out.unflatten(dim, (n, 2)).select(dim, 0))
        torch.lerp(own, padded.narrow(dim, 2, n), 0.25, out=out.unflatten(dim, (n, 2)).select(dim, 1))
        cells = out.narrow(dim, 0, length)
    return cells


def _pool_sum(cells: torch.Tensor) -> torch.Tensor:
    """Sums over 2×2 blocks of ``[..., rows, cols]`` (the last block cut short when a side is odd)."""
    if cells.shape[-2] % 2 or cells.shape[-1] % 2:
        cells = F.pad(cells, (0, cells.shape[-1] % 2, 0, cells.shape[-2] % 2))
    rows = cells[..., 0::2, :] + cells[..., 1::2, :]
    return rows[..., 0::2] + rows[..., 1::2]


def _box_sums(cells: torch.Tensor) -> torch.Tensor:
    """Sums over the 5×5 cells around every cell of ``[..., rows, cols]`` (zeros beyond the borders), by shifted
    adds: 1, 2, 4 then 5 rows, and the same along the columns (far faster than an average pool on the CPU)."""
    padded = F.pad(cells, (2, 2, 2, 2))
    pairs = padded[..., 1:, :] + padded[..., :-1, :]
    rows = (pairs[..., 2:, :] + pairs[..., :-2, :])[..., :-1, :].add_(padded[..., 4:, :])
    pairs = rows[..., 1:] + rows[..., :-1]
    return (pairs[..., 2:] + pairs[..., :-2])[..., :-1].add_(rows[..., 4:])


def readable_variance(variance: torch.Tensor) -> torch.Tensor:
    """Noise variances in units of the squared value range as the estimates read them: clamped to
    :data:`VARIANCE_BOUNDS`, NaN read as the upper bound (a cell of no information). Reads public variances."""
    low, high = VARIANCE_BOUNDS
    return variance.nan_to_num(nan=high).clamp(low, high)


def denoise_cells(values: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Wiener estimates of cell means: ``values [..., C, rows, cols]`` (floating, in units of the value range, or
    grey levels) and their public noise ``variance`` (broadcastable, the same for every channel of a cell, in the
    square of those units; read by :func:`readable_variance`) -> ``[..., C, rows, cols]`` in ``values``' dtype.

    Reads: released values and their public variances. Three channels are taken to RGB's opponent basis and back.
    Computed in float32 (twice as fast as float64, its rounding far below the noise).
    """
    rgb = values.shape[-3] == 3
    cells = _mix(_OPPONENT, values.float()) if rgb else values.float()
    estimate = wiener_pyramid(cells, readable_variance(variance).float())  # stays broadcast: pulled once per cell
    return (_mix(_OPPONENT.T, estimate) if rgb else estimate).to(values.dtype)


def _mix(matrix: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``matrix [C', C]`` applied to the channels of ``cells [..., C, rows, cols]``: ``[..., C', rows, cols]``."""
    mixed = torch.matmul(matrix.to(cells), cells.flatten(-2))
    return mixed.unflatten(-1, cells.shape[-2:])


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

    Reads only the release: ``values``, float64 cell values in units of the value range (``(v - lo)/(hi - lo)``),
    dense per level ``[..., C, rows_l, cols_l]`` (one level for a uniform ``GridPartition``); ``variances``, their
    public noise variances in units of its square, broadcastable to them (see
    :meth:`~dp_pixel_torch.storage.NoisyGrid.noise_variance`; read by :func:`readable_variance`, so an infinite one is
    a cell of no information); the public ``layout`` and, for a :class:`~dp_pixel_torch.MultiLevelGrid`, the
    ``released`` cells of every level; the output ``dtype`` and ``value_range``. Cell estimates are made a few images
    at a time (about 0.5 M cell values), each image on its own, in units of the range (so that neither a huge range
    nor a huge variance overflows), then brought back by :func:`in_range`.
    """
    if method not in ("smooth", "denoise"):
        raise ValueError(f"restore_cells restores by 'smooth' or 'denoise', got {method!r} (fill: layout.fill)")
    partition = layout if isinstance(layout, GridPartition) else layout.partition(0)
    lead, channels = values[0].shape[:-3], values[0].shape[-3]
    work = torch.float64 if dtype == torch.float64 else torch.uint8 if dtype == torch.uint8 else torch.float32
    cells = torch.empty((*lead, channels, *partition.shape), dtype=work, device=values[0].device)
    flat = cells.view(-1, *cells.shape[-3:])
    values = [v.reshape(-1, *v.shape[-3:]) for v in values]
    variances = [v.expand(*lead, *v.shape[-3:]).reshape(-1, *v.shape[-3:]) for v in variances]
    if released is not None:
        released = [r.expand(*lead, *r.shape[-2:]).reshape(-1, *r.shape[-2:]) for r in released]
    groups = max(1, -(-flat.numel() // _CHUNK_CELLS))
    step = max(1, -(-flat.shape[0] // groups))  # groups of even size
    for start in range(0, flat.shape[0], step):
        part = slice(start, start + step)
        chunk = None if released is None else [r[part] for r in released]
        estimate = _restored_cells(layout, chunk, [v[part] for v in values], [v[part] for v in variances], method)
        flat[part] = in_range(estimate, value_range, work)
    return upsample(cells, partition).to(dtype)


def in_range(unit: torch.Tensor, value_range: tuple[float, float], dtype: torch.dtype) -> torch.Tensor:
    """Values in units of the value range back in its units: ``lo + unit·(hi - lo)`` computed in float64, clipped to
    ``[lo, hi]``, rounded for integer ``dtype``, in ``dtype``. Reads: the values and the public range."""
    lo, hi = value_range
    out = unit.to(torch.float64).mul(hi - lo).add_(lo).clamp_(lo, hi)
    return (out if dtype.is_floating_point else out.round_()).to(dtype)


def _restored_cells(
    layout: GridPartition | MultiLevelGrid,
    released: list[torch.Tensor] | None,
    values: list[torch.Tensor],
    variances: list[torch.Tensor],
    method: str,
) -> torch.Tensor:
    """The level-0 coefficients of :func:`restore_cells`' images, ``[N, C, rows_0, cols_0]`` (unclipped): float64,
    float32 for a uniform denoise (computed in float32 anyway)."""
    if isinstance(layout, GridPartition):
        if method == "smooth":
            return values[0]
        return consistent(denoise_cells(values[0].float(), variances[0]), layout)
    if method == "denoise":
        values = denoise_adaptive(layout, released, values, variances)
    cells = smooth_finest(layout, released, values)
    return consistent(cells, layout.partition(0)) if method == "denoise" else cells
