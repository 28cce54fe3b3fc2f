"""Cell geometry and exact cell sums: every pixel in exactly one cell, so the sums have sensitivity C·R·m."""

import numpy as np
import pytest
import torch

from dp_pixel_torch import GridPartition


def brute_sums(x: np.ndarray, rows: tuple[int, ...], cols: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(x.shape[:-2] + (len(rows), len(cols)), dtype=np.float64)
    top = 0
    for i, h in enumerate(rows):
        left = 0
        for j, w in enumerate(cols):
            out[..., i, j] = x[..., top : top + h, left : left + w].astype(np.float64).sum(axis=(-1, -2))
            left += w
        top += h
    return out


@pytest.mark.parametrize(
    ("height", "width", "b", "rows", "cols"),
    [
        (8, 12, 4, (4, 4), (4, 4, 4)),
        (10, 13, 4, (4, 4, 2), (4, 4, 4, 1)),
        (3, 5, 8, (3,), (5,)),
        (7, 7, 1, (1,) * 7, (1,) * 7),
    ],
)
def test_block_sizes(height, width, b, rows, cols):
    p = GridPartition.blocks(height, width, b)
    assert (p.row_sizes, p.col_sizes) == (rows, cols)
    assert p.image_shape == (height, width)


def test_grid_is_non_overlapping_floor_ceil():
    # adaptive_avg_pool2d would use overlapping bins [floor(i*10/3), ceil((i+1)*10/3)) = [0,4), [3,7), [6,10).
    p = GridPartition.grid(10, 13, 3, 4)
    assert p.row_sizes == (3, 3, 4) and p.col_sizes == (3, 3, 3, 4)
    assert int(p.counts().sum()) == 10 * 13


def test_grid_larger_than_image_is_rejected():
    with pytest.raises(ValueError, match="grid"):
        GridPartition.grid(4, 4, 5, 2)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "partition",
    [
        GridPartition.blocks(37, 50, 8),
        GridPartition.blocks(37, 50, 5),
        GridPartition.grid(37, 50, 6, 7),
        GridPartition.blocks(300, 260, 200),
    ],  # cells of 200 rows need an int32 first stage
    ids=["blocks8", "blocks5", "grid6x7", "blocks200"],
)
def test_cell_sums_match_brute_force(partition, dtype):
    g = torch.Generator().manual_seed(0)
    h, w = partition.image_shape
    x = torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8)
    if dtype.is_floating_point:
        x = x.to(dtype) / 255
    before = x.clone()
    got = partition.cell_sums(x)
    assert torch.equal(x, before), "cell_sums must not write into its input"
    if dtype.is_floating_point:
        assert got.dtype == torch.float64
    else:
        assert not got.is_floating_point()
    np.testing.assert_allclose(
        got.double().numpy(), brute_sums(x.double().numpy(), partition.row_sizes, partition.col_sizes), rtol=1e-12
    )


def test_fill_paints_each_cell_with_its_value():
    p = GridPartition.grid(11, 9, 3, 2)
    values = torch.arange(6, dtype=torch.float32).reshape(1, 3, 2)
    img = p.fill(values)
    assert img.shape == (1, 11, 9) and img.is_contiguous()
    np.testing.assert_array_equal(
        brute_sums(img.numpy(), p.row_sizes, p.col_sizes), values.numpy() * p.counts().numpy()
    )


@pytest.mark.parametrize("partition", [GridPartition.blocks(23, 31, 4), GridPartition.grid(23, 31, 5, 6)])
@pytest.mark.parametrize("m", [1, 5])
def test_sensitivity_of_cell_sums_is_C_R_m(partition, m):
    """Changing any m pixels (all channels, by up to R) moves the vector of cell sums by at most C·R·m in L1."""
    g = torch.Generator().manual_seed(m)
    h, w = partition.image_shape
    worst = 0
    for _ in range(200):
        x = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        y = x.clone()
        idx = torch.randperm(h * w, generator=g)[:m]
        y.view(3, -1)[:, idx] = 255 - y.view(3, -1)[:, idx]  # flip: changes of up to R per value
        y.view(3, -1)[:, idx[:1]] = torch.where(x.view(3, -1)[:, idx[:1]] < 128, 255, 0).to(torch.uint8)
        diff = (partition.cell_sums(x) - partition.cell_sums(y)).abs().sum().item()
        assert diff <= 3 * 255 * m
        worst = max(worst, diff)
    assert worst > 0
