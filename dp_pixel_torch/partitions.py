"""Non-overlapping grid partitions: cell geometry, exact cell sums, and filling cells with values.

Every pixel lies in exactly one cell, so changing m pixels changes at most m cell sums (per channel). That is what the
sensitivity ``C·R·m`` of SPEC §2 relies on. Overlapping bins (as in ``adaptive_avg_pool2d`` when the size does not
divide) or replicate/reflect padding would let one private pixel feed several cells, and are never used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import check_positive_int


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
        b = check_positive_int(b, "b")
        return cls(_block_sizes(height, b), _block_sizes(width, b))

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

    def counts(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Real pixels per cell, ``n_c``: int64 ``[rows, cols]``."""
        rows = torch.tensor(self.row_sizes, dtype=torch.int64, device=device)
        cols = torch.tensor(self.col_sizes, dtype=torch.int64, device=device)
        return rows[:, None] * cols[None, :]

    def cell_sums(self, x: torch.Tensor) -> torch.Tensor:
        """Exact per-cell sums of ``x [..., H, W]`` -> ``[..., rows, cols]``.

        uint8 input gives exact integer sums (int32, or int64 for huge cells); floating input gives float64 sums.
        """
        if x.shape[-2:] != self.image_shape:
            raise ValueError(f"input has spatial size {tuple(x.shape[-2:])}, partition expects {self.image_shape}")
        if x.is_floating_point():
            first = second = torch.float64
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


def _block_sizes(length: int, b: int) -> tuple[int, ...]:
    full, rest = divmod(length, b)
    return (b,) * full + ((rest,) if rest else ())


def _even_sizes(length: int, parts: int) -> tuple[int, ...]:
    edges = [(i * length) // parts for i in range(parts + 1)]
    return tuple(hi - lo for lo, hi in zip(edges[:-1], edges[1:]))


def _narrowest_int(largest: int) -> torch.dtype:
    return next(d for d in (torch.int16, torch.int32, torch.int64) if largest <= torch.iinfo(d).max)


def _sum_segments(x: torch.Tensor, sizes: tuple[int, ...], dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Sum consecutive segments of the given sizes along ``dim`` (-1 or -2)."""
    b = sizes[0]
    if all(s == b for s in sizes[:-1]) and sizes[-1] <= b:
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
    if all(s == sizes[0] for s in sizes):
        return values.repeat_interleave(sizes[0], dim=dim)
    repeats = torch.tensor(sizes, device=values.device)
    return values.repeat_interleave(repeats, dim=dim, output_size=sum(sizes))
