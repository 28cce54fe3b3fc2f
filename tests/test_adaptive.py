"""Region-adaptive DP pixelization: multi-level cells, local noise scaling, and the three partition sources."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision import tv_tensors
from torchvision.transforms import v2

from dp_pixel_torch import DPPixelize, GridPartition, MultiLevelGrid, RegionAdaptiveDPPixelize
from dp_pixel_torch.functional import complexity_scores
from dp_pixel_torch.partitions import cell_contrast, split_where

from conftest import generator

ALPHA = 1e-3  # false-failure rate of each statistical test


def grey(n: int, c: int, h: int, w: int, value: int = 128) -> torch.Tensor:
    return torch.full((n, c, h, w), value, dtype=torch.uint8)


# --- geometry ----------------------------------------------------------------------------------------------------


def test_quadtree_descent_and_level_map():
    grid = MultiLevelGrid(70, 40, (8, 16, 32))
    assert [grid.partition(level).shape for level in range(3)] == [(9, 5), (5, 3), (3, 2)]
    split_top = torch.zeros(3, 2, dtype=torch.bool)
    split_top[0, 0] = True
    split_mid = torch.zeros(5, 3, dtype=torch.bool)
    split_mid[0, 0] = True
    split_mid[4, 2] = True  # under an unsplit top cell: never reached
    released = grid.released([split_mid, split_top])
    assert released[0].sum() == 4 and released[1].sum() == 3 and released[2].sum() == 5
    level = grid.level_map(released)
    assert level[:2, :2].eq(0).all() and level[2:4, :2].eq(1).all() and level[:4, 4].eq(2).all()
    # Every level-0 cell lies in exactly one released cell.
    cover = sum(grid.to_finest(r.long(), lvl) for lvl, r in enumerate(released))
    assert cover.eq(1).all()


@pytest.mark.parametrize("levels", [(8, 12), (8, 8), (16, 8), (4,)])
def test_levels_must_be_aligned(levels):
    with pytest.raises((ValueError, TypeError), match="levels"):
        RegionAdaptiveDPPixelize(1.0, levels=levels)


def test_sums_at_every_level_are_exact():
    x = torch.randint(0, 256, (2, 3, 37, 50), dtype=torch.uint8, generator=generator("cpu", 0))
    grid = MultiLevelGrid(37, 50, (4, 8, 16))
    for level, sums in enumerate(grid.cell_sums(x)):
        assert torch.equal(sums, grid.partition(level).cell_sums(x))


# --- equivalence with the uniform layer --------------------------------------------------------------------------


@pytest.mark.parametrize(("region", "level"), [("none", 2), ("all", 0)])
def test_all_coarse_or_all_fine_mask_releases_the_uniform_distribution(region, level):
    """KS two-sample test of released cell values against DPPixelize at the same b. α = 1e-3."""
    levels = (4, 8, 16)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(40, 216, (1, 3, 48, 50), dtype=np.uint8)).expand(300, -1, -1, -1)
    mask = torch.zeros(48, 50, dtype=torch.bool) if region == "none" else torch.ones(48, 50, dtype=torch.bool)
    adaptive = RegionAdaptiveDPPixelize(4.0, levels=levels, noise="laplace", generator=generator("cpu", 2))
    released = adaptive.release(x, mask=mask)
    assert released.split[-1].any() == (region == "all")
    b = levels[level]
    partition = GridPartition.blocks(48, 50, b)
    noiseless = partition.cell_sums(x[:1]).double() / partition.counts()
    a = adaptive.release(x, mask=mask, storage="exact").restore()[..., ::b, ::b].double() - noiseless
    u = DPPixelize(4.0, b, noise="laplace", generator=generator("cpu", 3))(x)[..., ::b, ::b].double() - noiseless
    assert stats.ks_2samp(a.ravel().numpy(), u.ravel().numpy()).pvalue > ALPHA  # conservative on uint8 values


def test_forward_is_exactly_the_restored_release():
    x = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8, generator=generator("cpu", 0))
    boxes = torch.tensor([[5, 4, 30, 22]])
    for make in (
        lambda: RegionAdaptiveDPPixelize(1.0, levels=(4, 8, 16), seed=5),
        lambda: RegionAdaptiveDPPixelize(1.0, levels=(4, 8), region="complexity", partition_epsilon=1.0, seed=5),
    ):
        kwargs = {"boxes": boxes} if make().region == "mask" else {}
        sample = (x, tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(40, 56))) if kwargs else x
        out = make()(sample)
        out = out[0] if kwargs else out
        assert torch.equal(out, make().release(x, **kwargs).restore())


# --- calibration: local noise scaling ----------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["laplace", "discrete"])
def test_fine_and_coarse_cells_have_the_local_noise_scale(noise):
    """Every released sum has scale t = C·R·m/ε, so a level-l cell mean has variance Var(t)/b_l² (n ≥ 25,000 per
    level; tolerance 5 standard errors, false-failure rate < 1e-5 per level)."""
    levels, t = (4, 8), 160.0
    eps = 3 * 255 / t  # noise scale t grey levels on each sum: 10 on a fine mean, 2.5 on a coarse one
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:, :32] = True  # left half fine (4×4), right half coarse (8×8)
    layer = RegionAdaptiveDPPixelize(eps, levels=levels, noise=noise, generator=generator("cpu", 4))
    out = layer(grey(300, 3, 64, 64), tv_tensors.Mask(mask))[0].double()
    var_t = 2 * t**2 if noise == "laplace" else stats.dlaplace(1 / t).var()
    for cells, b in ((out[..., :, :32][..., ::4, ::4], 4), (out[..., :, 32:][..., ::8, ::8], 8)):
        want = var_t / b**4 + 1 / 12
        assert cells.numel() >= 25_000
        assert abs(cells.var().item() / want - 1) < 5 * math.sqrt(5 / cells.numel())
        assert abs(cells.mean().item() - 128) < 5 * math.sqrt(want / cells.numel()) + 0.5


# --- empirical privacy -------------------------------------------------------------------------------------------
# The likelihood-ratio audit of a pair whose changed pixels straddle a fine and a coarse region is in test_audit.py.


# --- partition sources -------------------------------------------------------------------------------------------


def test_mask_cells_touching_the_region_are_fine_and_the_rest_coarse():
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 8, 16), seed=0)
    boxes = torch.tensor([[20.0, 8.0, 28.0, 12.0]])  # x0, y0, x1, y1: pixels x 20..27, y 8..11
    released = layer.release(grey(1, 3, 32, 48), boxes=boxes)
    grid = MultiLevelGrid(32, 48, (4, 8, 16))
    level = grid.level_map(grid.released(list(released.split)))[0]
    # The top cell holding the box is split; of its four 8-px cells, the two touching the box are split again.
    assert level[2:4, 4:8].eq(0).all() and level[0:2, 4:8].eq(1).all()
    assert level.eq(2).sum() == level.numel() - 16


def test_mask_as_a_v2_sample_and_the_guarantee_says_public():
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 8), seed=0)
    image = tv_tensors.Image(grey(1, 3, 16, 16)[0])
    out_image, out_mask = v2.Compose([layer, v2.RandomHorizontalFlip(p=1.0)])(
        image, tv_tensors.Mask(torch.zeros(16, 16, dtype=torch.bool))
    )
    assert isinstance(out_image, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
    assert "treated as PUBLIC (costs no budget)" in str(layer.guarantee)
    assert layer.guarantee.total_epsilon(3) == 1.0
    with pytest.raises(ValueError, match="needs a public region"):
        layer(image)
    with pytest.raises(ValueError, match="mask must be a tensor"):
        layer.release(image, mask=torch.zeros(8, 8))


def test_complexity_partition_is_a_function_of_the_noisy_scores_only():
    """Same noise seed: (a) images with the same cell contrasts get the same scores, whatever their pixels; (b) one
    changed pixel moves each level's noisy score vector by at most its sensitivity 4·C·R·b_0² (and only in the cells
    next to the changed pixel), so the partition can change only there."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 200, (1, 3, 48, 64), dtype=np.uint8))
    grid = MultiLevelGrid(48, 64, (4, 8, 16))

    def noisy_scores(image):
        finest = grid.partition(0).cell_sums(image)
        return complexity_scores(finest, grid, 255.0, partition_epsilon=0.5, generator=generator("cpu", 7))

    shifted = x + 50  # every pixel differs, every neighbour difference is the same
    for a, b in zip(noisy_scores(x), noisy_scores(shifted)):
        assert torch.equal(a, b)
    y = x.clone()
    y[..., 20, 30] = 255 - y[..., 20, 30]
    for level, (a, b) in enumerate(zip(noisy_scores(x), noisy_scores(y)), start=1):
        units = 2 * grid.partition(level).counts() * 16 * 3 * 255
        moved = ((a - b).abs() * units).sum().item()  # back to integer score units
        assert 0 < moved <= 4 * 3 * 255 * 16 + 1e-6
        changed_cells = torch.nonzero((a - b).abs() > 0)[:, -2:]
        b_l = grid.levels[level]
        assert all(abs(r * b_l - 20) <= b_l and abs(c * b_l - 30) <= b_l for r, c in changed_cells.tolist())
    ragged = MultiLevelGrid(47, 63, (4, 8, 16)).partition(0)  # cut-short border cells
    flat = ragged.cell_sums(torch.full((1, 3, 47, 63), 9, dtype=torch.uint8))
    assert cell_contrast(flat, ragged.counts()).eq(0).all()  # flat image: no contrast anywhere


def test_complexity_splits_textured_regions_and_reports_the_total():
    x = torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)
    blocks = torch.randint(0, 256, (1, 3, 4, 4), generator=generator("cpu", 0), dtype=torch.uint8)
    x[..., :32, :32] = blocks.repeat_interleave(8, -1).repeat_interleave(8, -2)  # detail at the finest cell scale
    layer = RegionAdaptiveDPPixelize(
        1.0, levels=(8, 16, 32), region="complexity", partition_epsilon=1.0, split_threshold=0.1, seed=0
    )
    split_top = layer.release(x).split[-1][0]
    assert split_top[0, 0] and not split_top[1, 1]  # the textured quadrant is split, the flat one is not
    g = layer.guarantee
    assert (g.partition, g.partition_epsilon, g.total_epsilon(3)) == ("complexity", 1.0, 2.0)
    assert "total ε = 1 + 1 = 2" in str(g)


def test_previous_frame_source_default_first_frame_and_reset():
    layer = RegionAdaptiveDPPixelize(2.0, levels=(4, 8, 16), region="previous", seed=0)
    textured = torch.randint(0, 256, (2, 3, 32, 48), generator=generator("cpu", 1), dtype=torch.uint8)
    first = layer.release(textured)
    assert not any(s.any() for s in first.split)  # documented default: coarse cells only
    second = layer.release(torch.zeros_like(textured))
    grid = MultiLevelGrid(32, 48, (4, 8, 16))
    expected = split_where(complexity_scores(grid.partition(0).cell_sums(first.restore()), grid, 255.0), None, 0.25)
    assert all(torch.equal(s, e) for s, e in zip(second.split, expected))  # from release t-1, not from frame t
    assert any(s.any() for s in second.split)
    layer.reset()
    assert not any(s.any() for s in layer.release(textured).split)
    with pytest.raises(ValueError, match="reset"):
        layer.release(textured[:, :, :16])
    video = tv_tensors.Video(textured[:1].expand(4, -1, -1, -1).clone())
    layer.reset()
    assert isinstance(layer(video), tv_tensors.Video)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(region="faces"), "region must be one of"),
        (dict(region="complexity"), "partition_epsilon > 0"),
        (dict(region="complexity", partition_epsilon=0.0), "partition_epsilon"),
        (dict(partition_epsilon=1.0), "only spent by partition='complexity'"),
        (dict(region="previous", split_fraction=1.5), "split_fraction"),
        (dict(region="previous", split_fraction=0.2, split_threshold=0.1), "at most one"),
        (dict(split_threshold=0.1), "not 'mask'"),
        (dict(levels=(8, 12)), "aligned"),
        (dict(epsilon=0), "epsilon"),
    ],
)
def test_adaptive_bad_parameters(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RegionAdaptiveDPPixelize(**{"epsilon": 1.0, **kwargs})


def test_mask_given_to_a_non_mask_source_is_refused():
    layer = RegionAdaptiveDPPixelize(1.0, region="previous")
    with pytest.raises(ValueError, match="only used with region='mask'"):
        layer.release(grey(1, 3, 32, 32), mask=torch.ones(32, 32))


@pytest.mark.parametrize("box", [(20.0, 8.0, 28.0, 12.0), (19.6, 7.5, 27.5, 11.4), (0, 0, 1, 1), (40, 20, 48, 32)])
def test_boxes_and_the_equivalent_mask_give_the_same_partition(box):
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 8, 16), seed=0)
    x0, y0, x1, y1 = box
    mask = torch.zeros(2, 32, 48, dtype=torch.bool)  # two instance masks of one image: their union is the region
    ys, xs = torch.arange(32)[:, None] + 0.5, torch.arange(48)[None, :] + 0.5  # pixel centres
    mask[0] = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    from_boxes = layer.release(grey(1, 3, 32, 48)[0], boxes=torch.tensor([box])).split
    from_mask = layer.release(grey(1, 3, 32, 48)[0], mask=mask).split
    assert all(torch.equal(a, b) for a, b in zip(from_boxes, from_mask))
    assert any(s.any() for s in from_mask)


def test_a_batch_of_masks_must_match_the_batch():
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 8), seed=0)
    batch = grey(2, 3, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[1, :4, :4] = True  # one mask per image: only the second image gets fine cells
    split = layer.release(batch, mask=masks).split[0]
    assert not split[0].any() and split[1, 0, 0]
    with pytest.raises(ValueError, match="does not match images"):
        layer.release(batch, mask=torch.zeros(3, 16, 16, dtype=torch.bool))


# --- the layer contract, shared with DPPixelize --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("region", ["complexity", "previous"])
def test_adaptive_contract_dtypes_layouts_and_no_aliasing(dtype, region, device):
    x = torch.randint(0, 256, (2, 3, 37, 41), dtype=torch.uint8, generator=generator("cpu", 0)).to(device)
    x = x if dtype == torch.uint8 else (x.double() / 255).to(dtype)
    x.requires_grad_(x.is_floating_point())
    before = x.detach().clone()

    def make():
        return RegionAdaptiveDPPixelize(
            2.0,
            levels=(4, 8, 16),
            region=region,
            generator=generator(device, 1),
            partition_epsilon=0.5 if region == "complexity" else None,
        )

    out = make()(x)
    assert (type(out), out.dtype, out.shape, out.device) == (torch.Tensor, x.dtype, x.shape, x.device)
    assert not out.requires_grad and torch.equal(x.detach(), before)
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    channels_last = make()(x.detach().contiguous(memory_format=torch.channels_last))
    assert torch.equal(channels_last, make()(x.detach()))
    assert channels_last.is_contiguous(memory_format=torch.channels_last)


def test_adaptive_keeps_input_types():
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 8), region="previous", seed=0)
    pil = v2.functional.to_pil_image(grey(1, 3, 16, 24)[0])
    assert layer(pil).size == (24, 16)
    layer.reset()
    assert isinstance(layer(tv_tensors.Image(grey(1, 3, 16, 24)[0])), tv_tensors.Image)
    assert layer(torch.empty(0, 3, 16, 24, dtype=torch.uint8)).shape == (0, 3, 16, 24)
    with pytest.raises(ValueError, match="outside value_range"):
        layer(torch.full((3, 16, 24), 2.0))
