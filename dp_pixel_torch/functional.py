"""Functional core: uniform (the paper's Algorithm 2, SPEC §2) and region-adaptive (SPEC §3) DP pixelization as pure
tensor functions; the layers of :mod:`.mechanisms` are thin shells over them.

The data flows one way: image -> exact cell sums -> noisy cell values (the only thing that depends on the noise) ->
restored image. Everything after the noise is post-processing and costs no budget. ``backend`` picks the compiled
passes of :mod:`.kernels` or the eager ones; both give the same output from the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import kernels
from ._validation import check_cells, check_choice, check_generator_device, check_image, check_input
from .accounting import PrivacyGuarantee
from .kernels import Compiled, check_backend, choose
from .noise import (
    KeyStream,
    Randomness,
    check_call_randomness,
    discrete_laplace_from_words,
    discrete_laplace_noise,
    half_one_plus_a,
    laplace_from_words,
    laplace_noise,
    noise_words,
)
from .partitions import GridPartition, MultiLevelGrid, cell_contrast, region_cells, split_where

#: Integer levels used by the discrete mechanism for float images: they are rounded to the 1/255 grid first.
LEVELS = 255
#: Noise words per piece of a CPU cell pass (8 MiB): below glibc's mmap threshold, so the buffer is reused.
_CHUNK_WORDS = 1 << 20
#: Cell passes over fewer cells run eagerly even on the compiled path: a compiled call's fixed cost (about 0.4 ms of
#: guards and dispatch on the CPU) exceeds their work. The coarse levels of an adaptive grid are such passes.
_COMPILED_MIN_CELLS = 1 << 16


def cell_levels(x: torch.Tensor, guarantee: PrivacyGuarantee, value_range: tuple[float, float]):
    """Pre-processing, pixel by pixel: the values the cell sums run over, and their range R.

    uint8 stays as is (R = 255). Floats go to the 1/255 lattice for discrete noise (R = 255), or stay floats
    (R = hi - lo). A per-pixel map keeps neighbours neighbours, so the sensitivity is unchanged.
    """
    lo, hi = value_range
    span = level_span(x.dtype, guarantee.noise, value_range)
    if x.dtype == torch.uint8:
        return x.contiguous(), span
    if guarantee.noise == "discrete":
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return (work - lo).mul_(LEVELS / (hi - lo)).round_().clamp_(0, LEVELS).to(torch.uint8), span
    return x.contiguous(), span


def level_span(dtype: torch.dtype, noise: str, value_range: tuple[float, float]) -> float:
    """The range R of the values the cell sums run over (public): 255 levels for uint8 images and for discrete noise
    on floats, else ``hi - lo``."""
    lo, hi = value_range
    return float(LEVELS) if dtype == torch.uint8 or noise == "discrete" else hi - lo


def noisy_values(
    sums: torch.Tensor,
    partition: GridPartition,
    cell_side: int | None,
    guarantee: PrivacyGuarantee,
    span: float,
    dtype: torch.dtype,
    value_range: tuple[float, float],
    generator: Randomness,
    compiled: bool = False,
    m: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise the cell sums ``[..., C, rows, cols]`` of ``partition`` and return clipped means in ``dtype``'s range.

    Each sum gets its own draw of scale ``guarantee.noise_scale(C, R, m)``, from one word of ``generator``'s next
    call (:func:`~dp_pixel_torch.noise.noise_words`); ``m`` defaults to the guarantee's, and may be one pixel count
    per image ``[...]`` (the protected cells' ``m_r``). The mean divides by the true cell area (``border="area"``) or
    by ``cell_side²`` (``"zero_pad"``). Everything after the noise is post-processing. ``compiled`` runs the cell pass
    (noise, mean, clip, conversion) as one compiled kernel: the same function, the same words, the same output.
    """
    lo, hi = value_range
    if sums.numel() == 0:
        return torch.empty(sums.shape, dtype=dtype, device=sums.device)
    counts = partition.counts(sums.device)
    if sums.is_floating_point() and lo != 0.0:
        sums = sums - lo * counts  # sums of x - lo, so that padding and clipping refer to [0, R]
    shape = tuple(sums.shape)
    per_image = isinstance(m, torch.Tensor)
    scale = guarantee.noise_scale(shape[-3], span, None if per_image else m)
    divisor = counts.double() if guarantee.border == "area" else torch.tensor(float(cell_side**2), dtype=torch.float64)
    discrete = guarantee.noise == "discrete"
    constants = torch.tensor(
        [scale, half_one_plus_a(scale) if discrete else 0.0, span, (hi - lo) / span, lo], dtype=torch.float64
    )
    cell_pass = compiled_noisy_means if compiled and sums.numel() >= _COMPILED_MIN_CELLS else noisy_means
    divisor, constants = divisor.to(sums.device), constants.to(sums.device)
    rows = sums.reshape(-1, *shape[-2:])  # one row per image and channel
    scales = None
    if per_image:  # (scale, (1+a)/2) of every row: [2, rows, 1, 1]
        row_scale = (guarantee.noise_scale(shape[-3], span, 1) * m.double().to(sums.device)).reshape(-1, 1, 1, 1)
        row_scale = row_scale.expand(-1, shape[-3], 1, 1).reshape(-1, 1, 1)
        scales = torch.stack([row_scale, (1.0 + torch.exp(-1.0 / row_scale)) / 2.0])
    per_row = shape[-2] * shape[-1]
    step = max(1, _CHUNK_WORDS // per_row)
    if isinstance(generator, torch.Generator) or sums.device.type != "cpu" or step >= len(rows):
        words = noise_words(rows.shape, sums.device, generator)
        return cell_pass(rows, words, divisor, constants, discrete, dtype, scales).reshape(shape)
    # On the CPU the keystream is written in pieces of a few MiB, each consumed at once by the cell pass: the same
    # words as one piece (KeyStream.words_at), without faulting in a fresh buffer of 8 bytes per cell.
    stream = generator or KeyStream.from_os_entropy()
    call = stream.reserve(len(rows) * per_row)
    out = torch.empty(rows.shape, dtype=dtype)
    for first in range(0, len(rows), step):
        stop = min(first + step, len(rows))
        words = stream.words_at(call, first * per_row, (stop - first) * per_row).view(stop - first, *shape[-2:])
        piece = None if scales is None else scales[:, first:stop]
        out[first:stop] = cell_pass(rows[first:stop], words, divisor, constants, discrete, dtype, piece)
    return out.reshape(shape)


def noisy_means(
    sums: torch.Tensor,
    words: torch.Tensor,
    divisor: torch.Tensor,
    constants: torch.Tensor,
    discrete: bool,
    dtype: torch.dtype,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """The cell pass: noise from ``words`` added to ``sums``, divided by ``divisor``, clipped to ``[0, span]`` and
    mapped to ``dtype`` (rounded for uint8, else onto ``[lo, hi]``); ``constants`` holds ``(scale, (1+a)/2, span,
    (hi-lo)/span, lo)`` as float64, so that new budgets do not recompile the fused version. ``scales`` (float64
    ``[2, rows, 1, 1]``) replaces the first two with one pair per row of ``sums [rows, h, w]``."""
    scale, half_one_plus, span, to_range, lo = constants.unbind()
    if scales is not None:
        scale, half_one_plus = scales.unbind()
    if discrete:
        noise = discrete_laplace_from_words(words, scale, half_one_plus)
    else:
        noise = laplace_from_words(words, scale)
    means = noise.add_(sums).div_(divisor).clamp_(min=0.0).minimum(span)
    if dtype == torch.uint8:
        return means.round_().to(torch.uint8)
    return means.mul_(to_range).add_(lo).to(dtype)


compiled_noisy_means = Compiled(noisy_means)


def noisy_cell_values(
    x: torch.Tensor,
    guarantee: PrivacyGuarantee,
    partition: GridPartition,
    value_range: tuple[float, float],
    generator: Randomness,
    compiled: bool = False,
) -> torch.Tensor:
    """The released statistics of a uniform grid: clipped noisy cell means ``[..., C, rows, cols]`` in ``x``'s dtype.

    ``x`` must already be validated; ``compiled`` takes the fused passes (:mod:`.kernels`).
    """
    levels, span = cell_levels(x, guarantee, value_range)
    sums = kernels.cell_sums(partition, levels, compiled)
    return noisy_values(sums, partition, guarantee.b, guarantee, span, x.dtype, value_range, generator, compiled)


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
    backend: str = "auto",
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
        backend: ``"auto"``, ``"compiled"`` or ``"eager"`` (see :mod:`dp_pixel_torch.kernels`); no effect on the output.

    Returns:
        A new tensor with ``x``'s shape, dtype, device (and channels-last layout if ``x`` has it); never requires grad.
    """
    guarantee = PrivacyGuarantee(
        epsilon, m, b, None if grid is None else tuple(grid), channel_rule, noise, border, secure
    )
    x, bounds = check_input(x, value_range)
    generator = _call_randomness(generator, secure)
    if x.numel() == 0:
        return x.clone()
    check_generator_device(generator, x.device)
    with choose(check_backend(backend), x, guarantee) as compiled:
        released = uniform_release(x, guarantee, bounds, generator, compiled)
    return like_layout(released, x)


def uniform_release(
    x: torch.Tensor,
    guarantee: PrivacyGuarantee,
    value_range: tuple[float, float],
    generator: KeyStream | torch.Generator,
    compiled: bool,
) -> torch.Tensor:
    """The released image of validated ``x`` under a uniform ``guarantee``: one Triton launch where
    :func:`~dp_pixel_torch.kernels.fused_applies` (CUDA, uint8, discrete noise, a KeyStream), else the cell values
    and the fill. Both draw the same words, so they release the same image."""
    if kernels.fused_applies(x, guarantee.b, guarantee.noise, generator, compiled):
        scale = guarantee.noise_scale(x.shape[-3], float(LEVELS))
        released = kernels.fused_dp_pixelize(x, guarantee.b, scale, guarantee.border == "area", generator)
        if released is not None:
            return released
    partition = GridPartition.for_cells(*x.shape[-2:], guarantee.b, guarantee.grid)
    return kernels.fill(
        partition, noisy_cell_values(x, guarantee, partition, value_range, generator, compiled), compiled
    )


def _call_randomness(generator: Randomness, secure: bool) -> KeyStream | torch.Generator:
    check_call_randomness(generator)  # a torch generator in a DataLoader worker is refused
    if secure and generator is not None:
        raise ValueError("secure=True keys its stream from OS entropy and refuses a generator")
    return KeyStream.from_os_entropy() if generator is None else generator


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


#: Where the cells of a region-adaptive release come from (SPEC §3).
REGION_SOURCES = ("mask", "complexity", "previous")


def adaptive_cell_values(
    x: torch.Tensor,
    guarantee: PrivacyGuarantee,
    value_range: tuple[float, float],
    generator: Randomness,
    split: list[torch.Tensor] | None = None,
    *,
    split_threshold: float | None = None,
    split_fraction: float | None = None,
    compiled: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The released statistics of a region-adaptive grid: ``(values, split)``.

    ``values[l]``: noisy cell means ``[..., C, rows_l, cols_l]`` in ``x``'s dtype at every level of
    ``guarantee.levels``; ``split[l-1]``: bool ``[..., rows_l, cols_l]`` for levels 1..L. Give ``split`` when the
    partition is public (:func:`region_split`, :func:`previous_split`); without it the partition comes from private
    complexity scores paid with ``guarantee.partition_epsilon`` and cut by ``split_threshold`` or ``split_fraction``.

    Every released cell sum gets the noise scale ``C·R·m/ε`` (local noise scaling); only the cells the partition
    releases are output, and every pixel lies in exactly one of them, so the values are ε-DP for any partition that
    does not depend on the private image (SPEC §3). ``x`` must already be validated.
    """
    grid = MultiLevelGrid(*x.shape[-2:], guarantee.levels)
    levels, span = cell_levels(x, guarantee, value_range)
    sums = grid.coarsen(kernels.cell_sums(grid.partition(0), levels, compiled))
    if split is None:
        scores = complexity_scores(
            sums[0],
            grid,
            span,
            m=guarantee.m,
            partition_epsilon=guarantee.partition_epsilon,
            noise=guarantee.noise,
            generator=generator,
        )
        split = split_where(scores, split_threshold, split_fraction)
    lead = tuple(x.shape[:-3])
    split = [s.expand(*lead, *s.shape[-2:]) for s in split]
    values = [
        noisy_values(
            s,
            grid.partition(level),
            grid.levels[level],
            guarantee,
            span,
            x.dtype,
            value_range,
            generator,
            compiled,
            protected_m(grid, guarantee, split) if guarantee.protect and level == grid.top else None,
        )
        for level, s in enumerate(sums)
    ]
    return values, split


def protected_m(grid: MultiLevelGrid, guarantee: PrivacyGuarantee, split: list[torch.Tensor]) -> int | torch.Tensor:
    """``m_r`` of the protected cells of a ``protect`` release, the cells of the coarsest level it does not split:
    ``guarantee.protect_m``, or (None) the pixel count of each image's protected cells, at least ``m``: ``[...]``.

    Proof sketch (SPEC §3): a protected cell's sum has sensitivity ``C·R·k_c`` for ``k_c`` changed pixels in it, and
    noise ``C·R·m_r/ε``; a change of at most ``m_r`` pixels inside the protected cells costs ``Σ k_c·ε/m_r <= ε``,
    and since ``m_r >= m`` the ``m``-pixel relation still holds everywhere."""
    if guarantee.protect_m is not None:
        return guarantee.protect_m
    protected = ~split[-1]
    pixels = (protected.long() * grid.partition(grid.top).counts(protected.device)).sum((-2, -1))
    return pixels.clamp_(min=guarantee.m)


def region_split(
    grid: MultiLevelGrid,
    mask: torch.Tensor | None,
    boxes: torch.Tensor | None,
    lead: tuple[int, ...],
    device: torch.device,
) -> list[torch.Tensor]:
    """Split maps (levels 1..L) of a public region: every cell that touches ``mask``/``boxes`` is split down to
    level 0 (see :func:`~dp_pixel_torch.partitions.region_cells`)."""
    touched = region_cells(grid.partition(0), mask, boxes, lead).to(device)
    return [s > 0 for s in grid.coarsen(touched.to(torch.int32))[1:]]


def protect_split(
    grid: MultiLevelGrid,
    mask: torch.Tensor | None,
    boxes: torch.Tensor | None,
    lead: tuple[int, ...],
    device: torch.device,
) -> list[torch.Tensor]:
    """Split maps (levels 1..L) of protected regions: a coarsest-level cell that touches ``mask``/``boxes`` is kept
    whole (it is protected), every other cell is split down to level 0. The map is public; nothing reads pixels."""
    protected = region_cells(grid.partition(grid.top), mask, boxes, lead).to(device)
    split = []
    for level in range(grid.top, 0, -1):
        split.append(~protected)
        protected = grid.step(level).fill(protected)
    return split[::-1]


def previous_split(
    previous: torch.Tensor | None,
    grid: MultiLevelGrid,
    guarantee: PrivacyGuarantee,
    value_range: tuple[float, float],
    split_threshold: float | None,
    split_fraction: float | None,
    device: torch.device,
) -> list[torch.Tensor]:
    """Split maps (levels 1..L) from the released level-0 cell values ``previous [..., C, rows_0, cols_0]`` of the
    previous frame: the complexity scores of a release, with no noise (post-processing). None: coarse cells only."""
    if previous is None:
        shapes = [grid.partition(level).shape for level in range(1, len(grid.levels))]
        return [torch.zeros(shape, dtype=torch.bool, device=device) for shape in shapes]
    levels, span = cell_levels(previous, guarantee, value_range)  # released level-0 means, as levels
    counts = grid.partition(0).counts(device)
    sums = levels * counts if levels.is_floating_point() else levels.long() * counts
    return split_where(complexity_scores(sums, grid, span), split_threshold, split_fraction)


def public_split(
    region: str,
    grid: MultiLevelGrid,
    guarantee: PrivacyGuarantee,
    value_range: tuple[float, float],
    lead: tuple[int, ...],
    device: torch.device,
    *,
    mask: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    split_threshold: float | None = None,
    split_fraction: float | None = None,
) -> list[torch.Tensor] | None:
    """The split maps of a partition that costs no budget: ``region="mask"`` (:func:`region_split` of ``mask``/
    ``boxes``, or :func:`protect_split` when ``guarantee.protect``) or ``"previous"`` (:func:`previous_split` of the
    previous release's level-0 values ``previous``); None for ``"complexity"``, whose partition is drawn from noisy
    scores with the values."""
    if region != "mask" and (mask is not None or boxes is not None):
        raise ValueError(f"mask/boxes are only used with region='mask', not region={region!r}")
    if region == "mask":
        return (protect_split if guarantee.protect else region_split)(grid, mask, boxes, lead, device)
    if region == "previous":
        return previous_split(previous, grid, guarantee, value_range, split_threshold, split_fraction, device)
    return None


def released_finest(grid: MultiLevelGrid, released: torch.Tensor) -> torch.Tensor:
    """The level-0 cell values of a released frame ``[..., C, H, W]``: each level-0 cell lies inside one released
    cell, whose value fills it, so its exact mean is that value."""
    finest = grid.partition(0)
    means = finest.cell_sums(released.contiguous()).double() / finest.counts(released.device)
    return means.round_().to(released.dtype) if released.dtype == torch.uint8 else means.to(released.dtype)


def restore_adaptive(
    grid: MultiLevelGrid, values: list[torch.Tensor], split: list[torch.Tensor], compiled: bool = False
) -> torch.Tensor:
    """Paint every pixel with the value of the released cell that holds it: ``[..., C, H, W]``."""
    return kernels.fill(grid.partition(0), grid.finest_values(grid.released(split), values), compiled)


def check_split_rule(
    region: str, partition_epsilon: float | None, split_threshold: float | None, split_fraction: float | None
) -> tuple[float | None, float | None]:
    """The split rule of ``region``: ``(threshold, fraction)``, the fraction 0.25 by default."""
    check_choice(region, "region", REGION_SOURCES)
    if region == "mask":
        if split_threshold is not None or split_fraction is not None:
            raise ValueError("split_threshold/split_fraction apply to region='complexity' or 'previous', not 'mask'")
        return None, None
    if split_threshold is not None and split_fraction is not None:
        raise ValueError("give at most one of split_threshold and split_fraction")
    if split_threshold is None and split_fraction is None:
        split_fraction = 0.25
    if split_fraction is not None and not 0.0 < float(split_fraction) < 1.0:
        raise ValueError(f"split_fraction must lie in (0, 1), got {split_fraction!r}")
    if split_threshold is not None and not float(split_threshold) >= 0.0:
        raise ValueError(f"split_threshold must be >= 0 (a fraction of the value range), got {split_threshold!r}")
    if region == "complexity" and partition_epsilon is None:
        raise ValueError("region='complexity' reads the private image: give partition_epsilon > 0 for its scores")
    return split_threshold, split_fraction


def adaptive_guarantee(
    epsilon: float,
    m: int,
    levels: Sequence[int],
    region: str,
    partition_epsilon: float | None,
    noise: str,
    border: str,
    channel_rule: str,
    secure: bool,
    protect: bool = False,
    protect_m: int | None = None,
    region_from: str = "public",
) -> PrivacyGuarantee:
    """The guarantee of a region-adaptive release (``partition_epsilon`` is spent by ``region="complexity"`` only)."""
    return PrivacyGuarantee(
        epsilon,
        m,
        None,
        None,
        channel_rule,
        noise,
        border,
        secure,
        levels=tuple(levels),
        partition=region,
        partition_epsilon=0.0 if partition_epsilon is None else partition_epsilon,
        protect=protect,
        protect_m=protect_m,
        region_from=region_from,
    )


@torch.no_grad()
def dp_pixelize_adaptive(
    x: torch.Tensor,
    epsilon: float,
    m: int = 1,
    *,
    levels: Sequence[int] = (8, 16, 32),
    region: str = "mask",
    mask: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    partition_epsilon: float | None = None,
    split_threshold: float | None = None,
    split_fraction: float | None = None,
    protect: bool = False,
    protect_m: int | None = None,
    region_from: str = "public",
    noise: str = "discrete",
    border: str = "area",
    channel_rule: str = "joint",
    value_range: Sequence[float] | None = None,
    generator: torch.Generator | KeyStream | None = None,
    secure: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Region-adaptive DP pixelization of ``x [..., C, H, W]``: fine cells where the partition splits, coarse cells
    elsewhere, on the aligned grid ``levels = (b_0 < … < b_L)`` (SPEC §3). Returns the same as :func:`dp_pixelize`.

    Args:
        region: ``"mask"``: split the cells that touch the public ``mask`` (``[H, W]`` for every image,
            ``[..., H, W]`` one per image, ``[..., K, H, W]`` K instances per image) or XYXY pixel ``boxes [K, 4]``
            (or ``tv_tensors.BoundingBoxes``); no budget. ``"complexity"``: private complexity scores paid with
            ``partition_epsilon`` (total ε = ``partition_epsilon + epsilon``). ``"previous"``: the scores of
            ``previous``, the previous *released* frame (same shape and dtype as ``x``; None: coarse cells only; no
            budget). It is taken as public: a raw frame here would choose the cells from private pixels for free.
        split_threshold / split_fraction: for ``"complexity"`` and ``"previous"``: split a cell whose score exceeds
            the threshold (a fraction of R), or the top fraction of each image's cells per level (default 0.25).
        protect: ``mask``/``boxes`` mark regions to *protect* (faces, people): the coarsest cells that meet them are
            released whole with noise ``C·R·protect_m/epsilon``, every other cell at ``levels[0]`` with
            ``C·R·m/epsilon``. ε-DP for ``m`` pixels anywhere and for ``protect_m`` pixels inside the regions.
        protect_m: ``m_r >= m``, the pixels hidden inside the protected cells; None: all of them.
        region_from: ``"public"`` or ``"detector"`` (the map was found in the private image: the guarantee holds
            conditional on the disclosed positions, and says so) or ``"public+detector"`` (a public zone the
            detectors never saw, plus detections: see :class:`~dp_pixel_torch.PrivacyGuarantee`).

    Other arguments as :func:`dp_pixelize`; every other released cell sum gets noise of scale ``C·R·m/epsilon``.
    """
    split_threshold, split_fraction = check_split_rule(region, partition_epsilon, split_threshold, split_fraction)
    guarantee = adaptive_guarantee(
        epsilon,
        m,
        levels,
        region,
        partition_epsilon,
        noise,
        border,
        channel_rule,
        secure,
        protect,
        protect_m,
        region_from,
    )
    x, bounds = check_input(x, value_range)
    generator = _call_randomness(generator, secure)
    if region != "previous" and previous is not None:
        raise ValueError(f"previous is only used with region='previous', not region={region!r}")
    if x.numel() == 0:
        return x.clone()
    check_generator_device(generator, x.device)
    backend = check_backend(backend)
    grid = MultiLevelGrid(*x.shape[-2:], guarantee.levels)
    if previous is not None:
        previous = check_input(previous, value_range, "previous")[0]
        if previous.shape != x.shape or previous.dtype != x.dtype:
            raise ValueError(
                f"previous must be a released frame of x's shape {tuple(x.shape)} and dtype {x.dtype}, "
                f"got {tuple(previous.shape)} {previous.dtype}"
            )
        previous = released_finest(grid, previous.to(x.device))
    split = public_split(
        region,
        grid,
        guarantee,
        bounds,
        tuple(x.shape[:-3]),
        x.device,
        mask=mask,
        boxes=boxes,
        previous=previous,
        split_threshold=split_threshold,
        split_fraction=split_fraction,
    )
    with choose(backend, x, (guarantee, region)) as compiled:
        values, split = adaptive_cell_values(
            x,
            guarantee,
            bounds,
            generator,
            split,
            split_threshold=split_threshold,
            split_fraction=split_fraction,
            compiled=compiled,
        )
        released = restore_adaptive(grid, values, split, compiled)
    return like_layout(released, x)
