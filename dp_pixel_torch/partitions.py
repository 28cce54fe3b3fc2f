"""Non-overlapping grid partitions: cell geometry, exact cell sums, and filling cells with values.

Every pixel lies in exactly one cell, so changing m pixels changes at most m cell sums (per channel). That is what the
sensitivity ``C·R·m`` of SPEC §2 relies on. Overlapping bins (as in ``adaptive_avg_pool2d`` when the size does not
divide) or replicate/reflect padding would let one private pixel feed several cells, and are never used here.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch

from ._validation import box_pixels, check_boxes, check_levels, check_mask, check_positive_int


@dataclass(frozen=True)
class GridPartition:
    """An axis-aligned, non-overlapping grid over an ``H×W`` image.

    ``row_sizes``/``col_sizes`` are the heights of the cell rows and the widths of the cell columns (sum H and W).
    """

    row_sizes: tuple[int, ...]
    col_sizes: tuple[int, ...]

    @classmethod
    def blocks(cls, height: int, width: int, b: int) -> GridPartition:
        """``b×b`` cells from the top-left corner; the last row/column of cells is cut short when b does not divide."""
        return _blocks(height, width, check_positive_int(b, "b"))

    @classmethod
    def grid(cls, height: int, width: int, rows: int, cols: int) -> GridPartition:
        """``rows×cols`` cells of floor/ceil size (no overlap, unlike ``adaptive_avg_pool2d``)."""
        if rows > height or cols > width:
            raise ValueError(f"grid=({rows}, {cols}) must not exceed the image size ({height}, {width})")
        return cls(_even_sizes(height, rows), _even_sizes(width, cols))

    @classmethod
    def for_cells(cls, height: int, width: int, b: int | None, grid: tuple[int, int] | None) -> GridPartition:
        """``b×b`` blocks when ``b`` is given, else the ``grid=(rows, cols)`` partition."""
        return cls.blocks(height, width, b) if b is not None else cls.grid(height, width, *grid)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of cell rows and columns."""
        return len(self.row_sizes), len(self.col_sizes)

    @property
    def image_shape(self) -> tuple[int, int]:
        return sum(self.row_sizes), sum(self.col_sizes)

    @cached_property
    def block_side(self) -> int | None:
        """b when the cells are ``b×b`` blocks from the top-left corner (the last row and column cut short), else None."""
        b = max(self.row_sizes[0], self.col_sizes[0])
        fits = all(sizes[-1] <= b and all(s == b for s in sizes[:-1]) for sizes in (self.row_sizes, self.col_sizes))
        return b if fits else None

    def counts(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Real pixels per cell, ``n_c``: int64 ``[rows, cols]`` (a shared tensor: do not modify it)."""
        key = str(torch.device(device) if device is not None else torch.device("cpu"))
        if key not in self._counts:
            rows = torch.tensor(self.row_sizes, dtype=torch.int64, device=key)
            cols = torch.tensor(self.col_sizes, dtype=torch.int64, device=key)
            self._counts[key] = rows[:, None] * cols[None, :]
        return self._counts[key]

    @cached_property
    def _counts(self) -> dict[str, torch.Tensor]:
        return {}

    def cell_sums(self, x: torch.Tensor) -> torch.Tensor:
        """Exact per-cell sums of ``x [..., H, W]`` -> ``[..., rows, cols]``.

        uint8 input gives exact integer sums (int32, or int64 for huge cells); wider integer input gives int64 sums;
        floating input gives float64 sums.
        """
        if x.shape[-2:] != self.image_shape:
            raise ValueError(f"input has spatial size {tuple(x.shape[-2:])}, partition expects {self.image_shape}")
        if x.is_floating_point():
            first = second = torch.float64
        elif x.dtype != torch.uint8:
            first = second = torch.int64
        else:
            # The first reduction reads every pixel, so it uses the narrowest exact accumulator.
            first = _narrowest_int(max(self.row_sizes) * 255)
            second = _narrowest_int(max(self.row_sizes) * max(self.col_sizes) * 255)
        # Rows first: adding whole image rows is contiguous and vectorises; the second pass is b times smaller.
        return _sum_segments(_sum_segments(x, self.row_sizes, -2, first), self.col_sizes, -1, second)

    def fill(self, values: torch.Tensor) -> torch.Tensor:
        """Paint every pixel with its cell's value: ``[..., rows, cols]`` -> new contiguous ``[..., H, W]``."""
        if values.shape[-2:] != self.shape:
            raise ValueError(f"values have grid shape {tuple(values.shape[-2:])}, partition has {self.shape}")
        # Columns first: the intermediate [..., rows, W] is small; the full-size expansion then copies whole rows.
        return _repeat_segments(_repeat_segments(values, self.col_sizes, dim=-1), self.row_sizes, dim=-2)


@lru_cache(maxsize=256)
def _blocks(height: int, width: int, b: int) -> GridPartition:
    return GridPartition(_block_sizes(height, b), _block_sizes(width, b))


def _block_sizes(length: int, b: int) -> tuple[int, ...]:
    full, rest = divmod(length, b)
    return (b,) * full + ((rest,) if rest else ())


def _even_sizes(length: int, parts: int) -> tuple[int, ...]:
    edges = [(i * length) // parts for i in range(parts + 1)]
    return tuple(hi - lo for lo, hi in zip(edges[:-1], edges[1:]))


def _narrowest_int(largest: int) -> torch.dtype:
    return next(d for d in (torch.int16, torch.int32, torch.int64) if largest <= torch.iinfo(d).max)


@lru_cache(maxsize=1024)
def _blocks_of(sizes: tuple[int, ...]) -> int | None:
    """b when the sizes are b, b, …, b and a last one <= b; else None."""
    b = sizes[0]
    return b if all(s == b for s in sizes[:-1]) and sizes[-1] <= b else None


def _sum_segments(x: torch.Tensor, sizes: tuple[int, ...], dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Sum consecutive segments of the given sizes along ``dim`` (-1 or -2)."""
    b = _blocks_of(sizes)
    if b is not None:
        # Blocks of b plus an optional shorter tail. Adding the b offsets of each block as whole slices (a loop over
        # offsets inside a cell, vectorised over all cells and images) is several times faster than .sum() over a
        # short inner axis.
        n_full = len(sizes) if sizes[-1] == b else len(sizes) - 1
        blocks = x.narrow(dim, 0, n_full * b).unflatten(dim, (n_full, b))
        total = blocks.select(dim, 0).to(dtype, copy=True)  # never an alias of the input
        for offset in range(1, b):
            total += blocks.select(dim, offset)
        if n_full == len(sizes):
            return total
        tail = x.narrow(dim, n_full * b, sizes[-1]).sum(dim, keepdim=True, dtype=dtype)
        return torch.cat([total, tail], dim=dim)
    # Arbitrary sizes (floor/ceil grids): differences of a running sum at the segment ends.
    ends = torch.tensor(sizes, device=x.device).cumsum(0) - 1
    wide = dtype if dtype.is_floating_point else torch.int64
    running = x.cumsum(dim, dtype=wide).index_select(dim, ends)
    return torch.diff(running, dim=dim, prepend=torch.zeros_like(running.narrow(dim, 0, 1))).to(dtype)


def _repeat_segments(values: torch.Tensor, sizes: tuple[int, ...], dim: int) -> torch.Tensor:
    if _blocks_of(sizes) == sizes[-1]:  # all equal
        return values.repeat_interleave(sizes[0], dim=dim)
    repeats = torch.tensor(sizes, device=values.device)
    return values.repeat_interleave(repeats, dim=dim, output_size=sum(sizes))


@dataclass(frozen=True)
class MultiLevelGrid:
    """Aligned multi-level cells over an ``H×W`` image: sides ``levels = (b_0 < b_1 < … < b_L)``, each a multiple of
    the one before, all anchored at the top-left corner (SPEC §3).

    Level L tiles the image. A partition keeps a level-l cell whole, or splits it into the level-(l-1) cells it
    contains, down to level 0. It is described by ``split`` maps, one bool ``[..., rows_l, cols_l]`` per level
    l = 1..L; the cells it releases are the ``released`` maps, one per level l = 0..L. Every pixel lies in exactly one
    released cell, so the released sums keep the sensitivity ``C·R·m`` of a uniform grid.
    """

    height: int
    width: int
    levels: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", check_levels(self.levels))

    @property
    def top(self) -> int:
        """Index L of the coarsest level."""
        return len(self.levels) - 1

    def partition(self, level: int) -> GridPartition:
        """The level's cells over the image."""
        return GridPartition.blocks(self.height, self.width, self.levels[level])

    def step(self, level: int) -> GridPartition:
        """The level's cells as groups of level-(level-1) cells (over the level-(level-1) grid)."""
        rows, cols = self.partition(level - 1).shape
        return GridPartition.blocks(rows, cols, self.levels[level] // self.levels[level - 1])

    def cell_sums(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Exact sums at every level, ``[..., rows_l, cols_l]`` for l = 0..L (one pass over the pixels)."""
        return self.coarsen(self.partition(0).cell_sums(x))

    def coarsen(self, finest: torch.Tensor) -> list[torch.Tensor]:
        """Sums of a level-0 map ``[..., rows_0, cols_0]`` over the cells of every level l = 0..L."""
        sums = [finest]
        for level in range(1, len(self.levels)):
            sums.append(self.step(level).cell_sums(sums[-1]))
        return sums

    def to_finest(self, values: torch.Tensor, level: int) -> torch.Tensor:
        """Repeat a level's cell values onto the level-0 grid."""
        for lower in range(level, 0, -1):
            values = self.step(lower).fill(values)
        return values

    def released(self, split: list[torch.Tensor]) -> list[torch.Tensor]:
        """Which cells the partition releases at each level l = 0..L, from the split maps of levels 1..L."""
        if len(split) != self.top:
            raise ValueError(f"need one split map per level 1..{self.top}, got {len(split)}")
        reached = torch.ones_like(split[-1], dtype=torch.bool)
        released = []
        for level in range(self.top, 0, -1):
            keep = split[level - 1].to(torch.bool)
            if keep.shape[-2:] != self.partition(level).shape:
                raise ValueError(
                    f"split map of level {level} has grid {tuple(keep.shape[-2:])}, "
                    f"expected {self.partition(level).shape}"
                )
            released.append(reached & ~keep)
            reached = self.step(level).fill(reached & keep)
        released.append(reached)
        return released[::-1]

    def released_counts(self, split: list[torch.Tensor]) -> list[int]:
        """How many cells :meth:`released` marks at each level l = 0..L, computed on the grids of levels 1..L only:
        no map of the image's size is built, so the work is proportional to the split maps."""
        reached = torch.ones_like(split[-1], dtype=torch.bool)
        counts = []
        for level in range(self.top, 0, -1):
            keep = split[level - 1].to(torch.bool)
            counts.append(int((reached & ~keep).sum()))
            kept = reached & keep
            if level > 1:
                reached = self.step(level).fill(kept)
        counts.append(int((kept.long() * self.step(1).counts(kept.device)).sum()))  # level-0 cells of kept cells
        return counts[::-1]

    def fill(self, released: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        """Paint every pixel with the value of the released cell it lies in.

        ``released[l]``: bool ``[..., rows_l, cols_l]``; ``values[l]``: ``[..., C, rows_l, cols_l]``. Returns a new
        ``[..., C, H, W]``. Only released cells are read.
        """
        return self.partition(0).fill(self.finest_values(released, values))

    def finest_values(self, released: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        """The value of every level-0 cell, taken from the released cell that holds it: ``[..., C, rows_0, cols_0]``."""
        finest = values[0]
        for lvl in range(1, len(self.levels)):
            inside = self.to_finest(released[lvl], lvl).unsqueeze(-3)  # level-0 cells of released level-lvl cells
            finest = torch.where(inside, self.to_finest(values[lvl], lvl), finest)
        return finest

    def level_map(self, released: list[torch.Tensor]) -> torch.Tensor:
        """The level of the released cell that holds each level-0 cell: int64 ``[..., rows_0, cols_0]``."""
        return sum(self.to_finest(r.long() * level, level) for level, r in enumerate(released))


def region_cells(
    partition: GridPartition,
    mask: torch.Tensor | Sequence[torch.Tensor] | None,
    boxes: object,
    lead: tuple[int, ...],
) -> torch.Tensor:
    """Which cells of ``partition`` touch a public region: bool ``[*lead or broadcastable, rows, cols]``.

    The region is the union of ``mask``, in a layout of :func:`~dp_pixel_torch._validation.check_mask` (or a
    sequence of masks, each read on its own: the Masks of a v2 sample), and ``boxes`` of
    :func:`~dp_pixel_torch._validation.check_boxes`, shared by the batch.
    """
    masks = [] if mask is None else list(mask) if isinstance(mask, (list, tuple)) else [mask]
    if not masks and boxes is None:
        raise ValueError(
            "region='mask' needs a public region: pass mask= or boxes= (or a tv_tensors.Mask / "
            "BoundingBoxes in the sample)"
        )
    height, width = partition.image_shape
    touched = torch.zeros(partition.shape, dtype=torch.bool)
    for one in masks:
        inside = check_mask(one, lead, height, width)
        touched = touched.to(inside.device) | (partition.cell_sums(inside.to(torch.uint8)) > 0)
    if boxes is not None:
        touched = touched.clone()
        row_edges = [0, *itertools.accumulate(partition.row_sizes)]
        col_edges = [0, *itertools.accumulate(partition.col_sizes)]
        for c0, r0, c1, r1 in box_pixels(check_boxes(boxes, height, width), height, width).tolist():
            touched[..., _cells_between(row_edges, r0, r1), _cells_between(col_edges, c0, c1)] = True
    return touched


def _cells_between(edges: list[int], first: int, stop: int) -> slice:
    """The cells holding pixels ``first .. stop-1`` (at least one, inside the image), for cell boundaries ``edges``."""
    return slice(bisect.bisect_right(edges, first) - 1, bisect.bisect_left(edges, stop))


def cell_contrast(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Contrast of every cell with its right and lower neighbours: ``[..., C, rows, cols]`` integer sums and their
    ``[rows, cols]`` pixel counts -> int64 (float64 for float sums) ``[..., rows, cols]``,
    ``g(f) = Σ_c Σ_{g ∈ {right, below}} |S_f·n_g − S_g·n_f|``.

    ``S_f·n_g − S_g·n_f`` is ``n_f·n_g`` times the difference of the two cell means, so a flat image has no contrast,
    even at cut-short border cells, and the score is exact in integers. Sensitivity: a changed pixel moves ``S_f`` of
    its one cell by at most R per channel, which moves the four terms holding f by at most ``R·n_max`` each, so the
    sum of g over any cells moves by at most ``4·C·R·n_max`` per changed pixel (``n_max`` the largest cell).
    """
    s = sums.double() if sums.is_floating_point() else sums.to(torch.int64)
    n = counts.to(sums.device)
    g = torch.zeros(s.shape[:-3] + s.shape[-2:], dtype=s.dtype, device=s.device)
    g[..., :, :-1] = (s[..., :, :-1] * n[:, 1:] - s[..., :, 1:] * n[:, :-1]).abs_().sum(-3)
    g[..., :-1, :] += (s[..., :-1, :] * n[1:, :] - s[..., 1:, :] * n[:-1, :]).abs_().sum(-3)
    return g


def split_where(scores: list[torch.Tensor], threshold: float | None, fraction: float | None) -> list[torch.Tensor]:
    """Split maps for levels 1..L from per-cell scores: above ``threshold``, or the top ``fraction`` of each image's
    cells at each level. Pure post-processing of the scores."""
    if threshold is not None:
        return [s > threshold for s in scores]
    split = []
    for s in scores:
        flat = s.flatten(-2).double()
        cut = torch.quantile(flat, 1.0 - fraction, dim=-1, keepdim=True)
        split.append((flat > cut).reshape(s.shape))
    return split
