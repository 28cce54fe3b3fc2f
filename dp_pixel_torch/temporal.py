"""Temporal restoration and noise-aware change detection of video releases: post-processing, no ε (SPEC §2, §6).

Every frame of a released video is the exact cell means plus fresh noise of a public variance
(:meth:`NoisyGrid.noise_variance <dp_pixel_torch.storage.NoisyGrid.noise_variance>`). Static background is the
same mean frame after frame, so averaging releases over time converges to it; a cell that changes moves beyond
what the noise explains. Everything here reads only releases (:meth:`NoisyGrid.finest_cells
<dp_pixel_torch.storage.NoisyGrid.finest_cells>`: values, public variances, the public protected cells) and public
parameters, one frame after the other; none of it accepts an original frame.

* :class:`TemporalRestorer`: a Kalman filter per cell and channel (:func:`kalman_step`): process noise ``drift²``
  per frame, measurement noise the public variance, and a reset to the new release where the innovation is beyond
  the noise (tests of false-reset rate ``reset_rate`` per cell and per 32-px block). The filtered cells and their posterior variances are drawn as pixels by ``fill``, ``smooth`` or
  ``denoise`` (:func:`~dp_pixel_torch.restoration.restore_cells`, the spatial estimate on top of the temporal one).
* :class:`ChangeDetector`: per block of ``cell×cell`` pixels, the sum of squared standardized deviations of the
  mean of the last ``window`` releases from a background estimated from earlier releases only, against the upper
  ``false_alarm`` quantile of its distribution on a static scene (:func:`null_quantile`). Cells of a protected
  region are disclosed by the release: their blocks count as occupied, their noise is not read.
* :func:`release_foreground`: OpenCV's MOG2 background subtractor, the crowd task's reading of original frames, run
  on the release's finest cells after the noise is brought down (a centred mean over ``window`` releases, then the
  spatial :func:`~dp_pixel_torch.restoration.denoise_cells`), with the noise left over added to MOG2's variance
  bounds. It has no stated false-alarm rate, but it reads occupancy the way MOG2 reads the originals (PETS2009:
  ``benchmarks/bench_temporal.py``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from .partitions import GridPartition
from .restoration import METHODS, denoise_cells, in_range, readable_variance, restore_cells

#: Cumulants of Laplace noise of variance ``r``: ``κ4 = LAPLACE_EXCESS·r²`` and ``κ6 = LAPLACE_SIXTH·r³`` (continuous;
#: the discrete Laplace of the cell sums tends to them at large scales).
LAPLACE_EXCESS = 3.0
LAPLACE_SIXTH = 30.0


def null_quantile(count: torch.Tensor, excess: torch.Tensor, sixth: torch.Tensor, alpha: float) -> torch.Tensor:
    """Upper ``alpha`` quantile of ``Σ z²`` over ``count`` independent, symmetric, standardized values whose fourth
    and sixth cumulants sum to ``excess`` and ``sixth`` (float tensors of one shape).

    ``Σ z²`` has mean ``count``, variance ``2·count + excess`` and third cumulant ``8·count + 12·excess + sixth``;
    the quantile is that of the shifted gamma law with these three cumulants (Wilson–Hilferty cube root for the
    gamma). Gaussian values (``excess = sixth = 0``) give the χ² law exactly; Laplace's heavier tail raises the third
    cumulant, which a gamma of two matched moments misses. Reads public quantities only."""
    k2 = 2 * count + excess
    k3 = 8 * count + 12 * excess + sixth
    shape, scale = 4 * k2**3 / k3.square(), k3 / (2 * k2)
    z = math.sqrt(2) * torch.erfinv(torch.tensor(1 - 2 * alpha, dtype=torch.float64)).item()
    h = 1 / (9 * shape)
    return count - shape * scale + shape * scale * (1 - h + z * h.sqrt()).clamp(min=0) ** 3


def kalman_step(
    mean: torch.Tensor,
    var: torch.Tensor,
    y: torch.Tensor,
    r: torch.Tensor,
    q: float,
    reset_rate: float,
    blocks: tuple[torch.Tensor, tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame of a Kalman filter per cell: ``(mean, var, reset)``.

    ``mean`` float64 ``[C, rows, cols]`` and ``var`` ``[1, rows, cols]``: the state; ``y`` ``[C, rows, cols]`` and
    ``r`` ``[1, rows, cols]``: the released values and their public variances; ``q``: the process noise variance per
    frame. The state resets to the release (``var = r``) where the innovation ``Σ (y - mean)²/(var + q + r)``, over
    the cell's channels, or over the block of ``blocks`` (:func:`_block_index`) that holds the cell, passes
    :func:`null_quantile` at ``reset_rate``. ``reset``: bool ``[rows, cols]``. Reads released values and public
    variances."""
    prior = var + q
    total = prior + r
    innovation = y - mean
    channels = torch.full_like(r[0], y.shape[0])
    share = r[0] / total[0]
    excess, sixth = channels * LAPLACE_EXCESS * share.square(), channels * LAPLACE_SIXTH * share**3
    stat = (innovation.square() / total).sum(0)
    reset = stat > null_quantile(channels, excess, sixth, reset_rate)
    if blocks is not None:
        index, shape = blocks
        sums = [_block_sum(x, index, shape) for x in (channels, excess, sixth)]
        reset |= (_block_sum(stat, index, shape) > null_quantile(*sums, reset_rate)).flatten()[index]
    gain = prior / total
    mean = torch.where(reset, y, mean + gain * innovation)
    return mean, torch.where(reset, r, gain * r), reset


class ChangeDetector:
    """Noise-aware occupancy of a video release: which blocks of ``cell×cell`` pixels differ from the background.

    Feed it the releases in order (:meth:`update`). ``false_alarm``: the probability that a block of a static scene
    is declared occupied in one frame once the background has settled (moment-matched, :func:`null_quantile`; the
    clipping of released values to the value range only lowers it). ``scene``: the standard deviation of the natural
    change of a static cell from frame to frame (flicker, compression, sway), as a fraction of the value range, added
    to the noise so that it is not taken for occupancy. ``window``: releases averaged before the test. ``drift``:
    standard deviation of the background's slow change per frame, as a fraction of the value range. With ``scene =
    drift = 0`` the stated rate holds for an exactly static scene; positive values only lower it there.
    ``learning``: the gain with which a cell of an occupied block still joins the background (so that a scene change
    is learnt, like MOG2's history of ``1/learning`` frames). Reads releases and public parameters only.
    """

    def __init__(
        self,
        cell: int = 32,
        false_alarm: float = 0.01,
        *,
        scene: float = 10 / 255,
        window: int = 2,
        drift: float = 1 / 255,
        learning: float = 0.02,
    ):
        if not 0 < false_alarm < 0.5:
            raise ValueError(f"false_alarm must lie in (0, 0.5), got {false_alarm!r}")
        self.cell, self.false_alarm, self.scene, self.window = cell, false_alarm, scene, window
        self.drift, self.learning = drift, learning
        self.reset()

    def reset(self) -> None:
        """Forget the background and the window (a new scene)."""
        self._recent: deque = deque()
        self._background = self._spread = self._blocks = None

    def update(
        self,
        values: torch.Tensor,
        variances: torch.Tensor,
        protected: torch.Tensor,
        partition: GridPartition,
        value_range: tuple[float, float],
    ) -> torch.Tensor:
        """The occupied blocks of one frame: bool ``[ceil(H/cell), ceil(W/cell)]``.

        ``values`` float64 ``[C, rows, cols]``, ``variances`` ``[1, rows, cols]`` and ``protected`` bool ``[rows,
        cols]``: one frame of :meth:`NoisyGrid.finest_cells <dp_pixel_torch.storage.NoisyGrid.finest_cells>` on
        the cells of ``partition``. Until a background exists (the first ``window`` frames) only protected blocks
        are occupied."""
        if self._blocks is None:
            self._blocks = _block_index(partition, self.cell, values.device)
        index, shape = self._blocks
        span = value_range[1] - value_range[0]
        q = (self.drift * span) ** 2
        self._recent.append((values, variances, protected))
        if len(self._recent) > self.window:
            self._learn(*self._recent.popleft(), q)
        shown = torch.stack([p for _, _, p in self._recent]).any(0)
        occupied = _block_sum(shown.double(), index, shape) > 0
        if self._background is None:
            return occupied
        k = len(self._recent)
        mean = sum(v for v, _, _ in self._recent) / k
        noise = sum(r for _, r, _ in self._recent) / k**2
        total = noise + self._spread + q + (self.scene * span) ** 2
        # cumulants of one standardized value: the mean of k Laplace noises of variances r has κ4 = 3·Σr²/k⁴ and
        # κ6 = 30·Σr³/k⁶; the background's error (an average of many releases) and the scene are taken as Gaussian
        excess = LAPLACE_EXCESS * sum(r.square() for _, r, _ in self._recent) / (k**4 * total.square())
        sixth = LAPLACE_SIXTH * sum(r**3 for _, r, _ in self._recent) / (k**6 * total**3)
        read = (~shown).double()
        channels = values.shape[0]
        stat = _block_sum(read * ((mean - self._background).square() / total).sum(0), index, shape)
        count = _block_sum(read * channels, index, shape)
        excess, sixth = (_block_sum(read * channels * x[0], index, shape) for x in (excess, sixth))
        tested = count > 0
        threshold = null_quantile(count.clamp(min=1), excess, sixth, self.false_alarm)
        self._occupied = occupied | (tested & (stat > threshold))
        return self._occupied

    def _learn(self, values: torch.Tensor, variances: torch.Tensor, protected: torch.Tensor, q: float) -> None:
        """Join the release that leaves the window to the background: a Kalman update where its block was free at
        the last test, the gain ``learning`` where it was occupied (protected cells are never read)."""
        if self._background is None:
            self._background, self._spread = values.clone(), variances.clone()
            self._occupied = torch.zeros(self._blocks[1], dtype=torch.bool, device=values.device)
            return
        index, _ = self._blocks
        busy = self._occupied.flatten()[index]
        prior = self._spread + q
        gain = torch.where(busy, self.learning, prior[0] / (prior[0] + variances[0]))
        gain = torch.where(protected, 0.0, gain)
        self._background += gain * (values - self._background)
        self._spread = (1 - gain).square() * prior + gain.square() * variances


def _block_index(partition: GridPartition, cell: int, device) -> tuple[torch.Tensor, tuple[int, int]]:
    """The block of ``cell×cell`` pixels that holds the centre of each cell of ``partition``: long ``[rows, cols]``
    (row-major block numbers) and the blocks' grid shape."""
    height, width = partition.image_shape
    shape = (-(-height // cell), -(-width // cell))

    def centres(sizes):
        ends = torch.tensor(sizes).cumsum(0)
        return torch.div(2 * ends - torch.tensor(sizes), 2 * cell, rounding_mode="floor")

    rows, cols = centres(partition.row_sizes), centres(partition.col_sizes)
    return (rows[:, None] * shape[1] + cols[None, :]).to(device), shape


def _block_sum(x: torch.Tensor, index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Sums of a per-cell map ``[rows, cols]`` over the blocks of :func:`_block_index`: float64 ``shape``."""
    out = torch.zeros(shape[0] * shape[1], dtype=torch.float64, device=x.device)
    return out.index_add_(0, index.flatten(), x.expand_as(index).flatten().double()).reshape(shape)


class TemporalRestorer:
    """Restores the frames of a video release one release after the other (post-processing, no ε).

    ``method`` draws the filtered cells as pixels (``"fill"``, ``"smooth"`` or ``"denoise"``, see
    :mod:`~dp_pixel_torch.restoration`); ``drift``: standard deviation of a static cell's change per frame, as a
    fraction of the value range; ``reset_rate``: the false-reset rate of the innovation tests, per cell and per
    block of ``cell×cell`` pixels (None: per cell only). Reads releases and public parameters only.
    """

    def __init__(
        self, method: str = "denoise", drift: float = 1 / 255, reset_rate: float = 1e-3, cell: int | None = 32
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method, self.drift, self.reset_rate, self.cell = method, drift, reset_rate, cell
        self.reset()

    def reset(self) -> None:
        """Forget the state (a new scene)."""
        self._mean = self._var = self._blocks = None

    def __call__(self, grid) -> torch.Tensor:
        """The restored frames of one release (a :class:`~dp_pixel_torch.NoisyGrid` of ``[C, H, W]`` or ``[T, C,
        H, W]`` frames, in stream order): ``grid.shape`` in ``grid.dtype``. The filter runs in units of the value
        range on the variances as :func:`~dp_pixel_torch.restoration.readable_variance` reads them (an infinite one,
        at an ε so small that it overflows, is a release of no information). A parsed record is refused
        (:meth:`NoisyGrid.check_budget <dp_pixel_torch.storage.NoisyGrid.check_budget>`) before any work when its
        frames' work arrays would pass the ``max_bytes`` it was read with."""
        grid.check_budget(f"TemporalRestorer({self.method!r})")
        values, variances, _ = grid.finest_cells()
        partition = grid.finest_partition
        if self._blocks is None and self.cell is not None:
            self._blocks = _block_index(partition, self.cell, values.device)
        lo, hi = grid.value_range
        values = (values - lo) / (hi - lo)
        variances = readable_variance(variances / (hi - lo) / (hi - lo))
        q = self.drift**2
        means, spreads = [], []
        for y, r in zip(values.reshape(-1, *values.shape[-3:]), variances.reshape(-1, *variances.shape[-3:])):
            if self._mean is None:
                self._mean, self._var = y, r
            else:
                self._mean, self._var, _ = kalman_step(self._mean, self._var, y, r, q, self.reset_rate, self._blocks)
            means.append(self._mean)
            spreads.append(self._var)
        cells = torch.stack(means).reshape(values.shape)
        spread = torch.stack(spreads).reshape(variances.shape)
        if self.method == "fill":
            return partition.fill(in_range(cells, grid.value_range, grid.dtype))
        return restore_cells(partition, None, [cells], [spread], self.method, grid.dtype, grid.value_range)


#: MOG2's initial variance of a pixel (OpenCV's default ``varInit``, grey levels²): :func:`release_foreground`
#: averages releases only where their noise variance exceeds it.
MOG2_VAR_INIT = 15.0


def release_foreground(
    grids: Iterable,
    *,
    history: int = 50,
    var_threshold: float = 16.0,
    window: int | None = None,
    residual: float = 0.25,
) -> Iterator[torch.Tensor]:
    """The moving foreground of a video release, frame by frame: bool ``[rows_0, cols_0]`` per frame on the finest
    cells (:attr:`NoisyGrid.finest_partition <dp_pixel_torch.storage.NoisyGrid.finest_partition>`), in stream order.

    ``grids``: the :class:`~dp_pixel_torch.NoisyGrid` releases in stream order, each of ``[C, H, W]`` or ``[T_i, C,
    H, W]`` frames of one camera. Each frame's cells are averaged with the ``window // 2`` releases before and after
    it (a centred window, shorter at the ends: the reading of frame ``t`` waits for release ``t + window // 2``;
    None: 3 if the median noise variance of the first frame's cells exceeds :data:`MOG2_VAR_INIT` grey levels², else
    1), denoised in space
    (:func:`~dp_pixel_torch.restoration.denoise_cells`) and fed, in grey levels, to an OpenCV MOG2 background
    subtractor (``history``, ``var_threshold``: MOG2's) whose variance bounds (``varMin``, ``varInit``, ``varMax``)
    are raised by ``residual`` times the averaged noise variance: the share of the noise that the spatial denoise
    leaves (0.25 was picked on the first 300 frames of PETS2009 S2L1; the frames after them check it). Cells of
    protected regions are public: they are foreground, their noise is never read (they are left out of the means and
    MOG2 sees its own background there; with other than 1 or 3 channels, whose background OpenCV does not give, it
    sees their spatial estimate from the cells around them). Any channel count is read (MOG2 tests all channels of a
    cell together). A generator: bad options raise at the first frame. Reads releases and public parameters only
    (post-processing, no ε).
    """
    from .video import import_cv2

    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0
    ):
        raise ValueError(f"window must be an odd int >= 1 (releases in the centred mean) or None, got {window!r}")
    if not residual >= 0:
        raise ValueError(f"residual must be >= 0 (a share of the noise variance), got {residual!r}")
    cv2 = import_cv2()
    model = cv2.createBackgroundSubtractorMOG2(history=history, varThreshold=var_threshold, detectShadows=False)
    defaults = model.getVarMin(), model.getVarInit(), model.getVarMax()
    past: deque = deque()
    ahead: deque = deque()

    def reading() -> torch.Tensor:
        frames = [*past, *ahead]
        values = torch.stack([v for v, _, _ in frames])
        read = ~torch.stack([p for _, _, p in frames]).unsqueeze(1)  # [k, 1, rows, cols]
        count = read.sum(0).clamp(min=1)
        mean = (values * read).sum(0) / count
        noise = (torch.stack([r for _, r, _ in frames]) * read).sum(0) / count.square()
        unread = ~read.any(0)
        shown = ahead[0][2]
        free = noise[~unread]
        level = float(free.median()) if free.numel() else 0.0
        cells = denoise_cells(mean, noise.masked_fill(unread, 1e6 * max(level, 1.0)))
        model.setVarMin(defaults[0] + residual * level)
        model.setVarInit(defaults[1] + residual * level)
        model.setVarMax(defaults[2] + residual * level)
        image = np.ascontiguousarray(cells.permute(1, 2, 0).numpy(), dtype=np.float32)
        # OpenCV gives MOG2's background image for 1 or 3 channels only; other counts keep the spatial estimate there
        if shown.any() and image.shape[-1] in (1, 3) and (background := model.getBackgroundImage()) is not None:
            image = np.where(shown.numpy()[..., None], background.reshape(image.shape).astype(np.float32), image)
        return torch.from_numpy(model.apply(image) > 0) | shown

    for grid in grids:
        values, variances, protected = grid.finest_cells()
        lo, hi = grid.value_range
        scale = 255.0 / (hi - lo)
        values = ((values - lo) * scale).cpu().reshape(-1, *values.shape[-3:])
        variances = (variances * scale**2).cpu().reshape(-1, *variances.shape[-3:])
        for frame in zip(values, variances, protected.cpu().reshape(-1, *protected.shape[-2:])):
            if window is None:
                window = 3 if float(frame[1].median()) > MOG2_VAR_INIT else 1
            ahead.append(frame)
            if len(ahead) > window // 2:
                yield reading()
                past.append(ahead.popleft())
                if len(past) > window // 2:
                    past.popleft()
    while ahead:
        yield reading()
        past.append(ahead.popleft())
        if len(past) > window // 2:
            past.popleft()
