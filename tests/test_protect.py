"""Protected regions (SPEC §3): the cells that meet a region are released whole at the coarsest level with noise
``C·R·m_r/ε``; the others at the finest level with ``C·R·m/ε``. Calibration against the formula, equivalence with
uniform DP, the guarantee text, storage, and the empirical audit of both relations.

Statistics: every test uses a fixed seed and states its false-failure rate (the probability that a correct
implementation fails it for a random seed).
"""

import math
import threading

import numpy as np
import PIL.Image
import pytest
import torch
from scipy import stats
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize, dp_pixelize_adaptive
from dp_pixel_torch.audit import audit, protected_pair
from dp_pixel_torch.noise import KeyStream
from dp_pixel_torch.storage import NoisyGrid, NoisyGridFormatError

LEVELS = (4, 16)
SIDE = 64


def top_half(n: int = 1) -> torch.Tensor:
    """A mask over the top half of ``n`` 64×64 images: two rows of 16-pixel protected cells (8 cells)."""
    mask = torch.zeros(n, SIDE, SIDE, dtype=torch.bool)
    mask[:, : SIDE // 2] = True
    return mask


def released_means(layer, mask, images: int, value: float = 0.5, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Released means of a constant float64 image ``[images, 1, 64, 64]``: (protected 16-px cells [images, 8],
    outside 4-px cells [images, 128]), read at each cell's top-left pixel."""
    protected, outside = [], []
    for start in range(0, images, batch):
        n = min(batch, images - start)
        image = tv_tensors.Image(torch.full((n, 1, SIDE, SIDE), value, dtype=torch.float64))
        out = layer(image, tv_tensors.Mask(mask))[0].as_subclass(torch.Tensor)[:, 0]  # a v2 sample: (image, mask)
        protected.append(out[:, : SIDE // 2 : 16, ::16].reshape(n, -1).numpy())
        outside.append(out[:, SIDE // 2 :: 4, ::4].reshape(n, -1).numpy())
    return np.concatenate(protected), np.concatenate(outside)


def assert_variance(sample: np.ndarray, expected: float) -> None:
    """Sample variance against a Laplace variance: relative standard error sqrt(5/n) (kurtosis 6), tolerance 5 SE
    (false-failure rate < 1e-6 per call)."""
    n = sample.size
    assert n >= 60_000
    tolerance = 5 * math.sqrt(5 / n)
    assert abs(sample.var() / expected - 1) < tolerance, (sample.var(), expected)


def test_protected_and_outside_cells_have_the_noise_of_the_formula():
    """Laplace noise on a constant image (nothing clipped): a protected 16×16 cell's mean has variance
    2·(R·m_r/ε)²/256², an outside 4×4 cell's 2·(R·m/ε)²/16². With m_r = 64 and m = 1 the protected mean is 1/4 as
    noisy per pixel-count, and a layer that used m for the protected cells would be 16× off in variance."""
    eps, m_r = 200.0, 64
    layer = RegionAdaptiveDPPixelize(eps, levels=LEVELS, protect=True, protect_m=m_r, noise="laplace", seed=1)
    protected, outside = released_means(layer, top_half(), 8000)
    assert_variance(protected - 0.5, 2 * (m_r / eps / 256) ** 2)
    assert_variance(outside[:, :8] - 0.5, 2 * (1 / eps / 16) ** 2)
    # Every outside pixel is a finest cell: the 4×4 grid is released there, not the coarse one.
    assert np.unique(outside[0]).size > 100


def test_whole_region_protection_scales_with_each_images_own_protected_cells():
    """protect_m=None: m_r is the pixel count of each image's own protected cells. Even images protect the top-left
    32×32 (four 16-px cells, m_r = 1024), odd images the whole top half (eight cells, m_r = 2048), in one batch.
    Two variance checks: false-failure rate < 2e-6."""
    eps = 600.0
    mask = top_half(2)
    mask[0, :, 32:] = False
    layer = RegionAdaptiveDPPixelize(eps, levels=LEVELS, protect=True, noise="laplace", seed=2)
    images = 32_000
    protected, _ = released_means(layer, mask.repeat(500, 1, 1), images)
    four = protected[0::2][:, [0, 1, 4, 5]]
    eight = protected[1::2]
    assert_variance(four - 0.5, 2 * (1024 / eps / 256) ** 2)
    assert_variance(eight - 0.5, 2 * (2048 / eps / 256) ** 2)


@pytest.mark.parametrize("protect_m", [64, None])
def test_an_all_protected_mask_is_uniform_dp_at_the_coarsest_cells_with_m_r(protect_m):
    """Every cell protected: the release has the law of DPPixelize(ε, b=16, m=m_r) (m_r = 64·64 for the whole
    image). Chi-squared homogeneity of the released grey levels of a fixed textured image (uint8, discrete noise),
    α = 1e-3; the same test tells apart m_r and m_r/2 (power check)."""
    eps = 2.0 if protect_m else 128.0
    m_r = protect_m or SIDE * SIDE
    x = torch.randint(60, 196, (1, 1, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    n = 4000
    everywhere = torch.ones(SIDE, SIDE, dtype=torch.bool)
    protected = RegionAdaptiveDPPixelize(eps, levels=LEVELS, protect=True, protect_m=protect_m, seed=3)
    got = protected.release(x.expand(n, -1, -1, -1), mask=everywhere).restore()
    uniform = DPPixelize(eps, 16, m_r, seed=4)(x.expand(n, -1, -1, -1))
    weaker = DPPixelize(eps, 16, max(m_r // 2, 1), seed=5)(x.expand(n, -1, -1, -1))

    def counts(release):
        values = release[:, 0, ::16, ::16].reshape(n, -1).long()  # 16 cells per image
        return torch.stack([torch.bincount(values[:, c], minlength=256) for c in range(values.shape[1])])

    def p_value(a, b):
        table = torch.stack([counts(a).flatten(), counts(b).flatten()]).numpy()
        table = table[:, table.sum(0) >= 10]  # drop bins too sparse for the chi-squared approximation
        return stats.chi2_contingency(table)[1]

    assert p_value(got, uniform) > 1e-3
    assert p_value(uniform, weaker) < 1e-6


def test_the_guarantee_states_both_relations_public_positions_and_2_epsilon():
    g = RegionAdaptiveDPPixelize(1.0, 2, levels=(8, 32), protect=True, protect_m=256).guarantee
    text = g.report(3)
    assert "up to m = 2 pixels anywhere" in text and "up to m_r = 256 pixels inside the protected regions" in text
    assert "PUBLIC" in text and "region positions and per-cell scales are public" in text
    assert "up to 2ε" in text and "b = 32" in text and "b = 8" in text
    assert "CONDITIONAL" not in text
    assert g.total_epsilon(3) == 1.0  # each relation costs ε; the accountant charges ε per frame
    whole = RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, region_from="detector").guarantee.report(3)
    assert "any number of pixels inside the protected regions" in whole
    assert "CONDITIONAL on the disclosed region positions" in whole and "only the m protection" in whole
    detail = RegionAdaptiveDPPixelize(1.0, levels=(8, 32), region_from="detector").guarantee.report(3)
    assert "CONDITIONAL on the disclosed region positions" in detail


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"region": "complexity", "partition_epsilon": 0.1}, "protect marks regions of a region map"),
        ({"region": "previous"}, "protect marks regions of a region map"),
        ({"protect_m": 0}, "protect_m"),
        ({"m": 4, "protect_m": 2}, "at least m = 4"),
        ({"protect_m": 2.5}, "protect_m"),
        ({"region_from": "guess"}, "region_from"),
    ],
)
def test_bad_protection_settings_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RegionAdaptiveDPPixelize(1.0, levels=(8, 16), protect=True, **kwargs)


def test_protect_m_and_region_from_need_their_context():
    with pytest.raises(ValueError, match="protect_m"):
        RegionAdaptiveDPPixelize(1.0, levels=(8, 16), protect_m=64)
    with pytest.raises(ValueError, match="region_from"):
        RegionAdaptiveDPPixelize(1.0, levels=(8, 16), region="previous", region_from="detector")


def test_protected_cells_are_coarse_and_everything_else_fine_and_storage_round_trips():
    x = torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[20.0, 10.0, 40.0, 30.0]])
    layer = RegionAdaptiveDPPixelize(5.0, levels=(4, 8, 32), protect=True, protect_m=100, seed=6)
    grid = layer.release(x, boxes=boxes)
    out = grid.restore()
    # The box (rows 10..29, cols 20..39) meets the 32-px cells (0, 0) and (0, 1): each is one value per channel.
    for rows, cols in ((slice(0, 32), slice(0, 32)), (slice(0, 32), slice(32, 64))):
        cell = out[..., rows, cols].flatten(-2)
        assert (cell == cell[..., :1]).all()
    # Outside, the 4-px grid: cells differ within a 32-px block.
    assert (out[..., 32:64, 0:32].flatten(-2) != out[..., 32:33, 0:1].flatten(-2)).any()
    # 3×3 cells of 32 px, two protected per image; the 8-px grid (9×12) is split except under them (4×8 cells).
    assert [int(s.sum()) for s in grid.split] == [2 * (108 - 32), 2 * (9 - 2)]
    back = NoisyGrid.from_bytes(grid.to_bytes())
    assert back.guarantee == layer.guarantee and back.guarantee.protect_m == 100
    assert torch.equal(back.restore(), out)
    # The partition bits are all that is added: 32-px cells with their values, 4-px cells everywhere else.
    assert [v.numel() for v in grid.values] == [2 * 3 * (18 * 23 - 8 * 16), 0, 2 * 3 * 2]


def test_the_layer_function_and_v2_sample_release_the_same_protected_image():
    x = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    boxes = torch.tensor([[5.0, 5.0, 20.0, 40.0]])
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 16), protect=True, protect_m=64, generator=KeyStream.from_seed(9))
    by_layer = layer.release(x, boxes=boxes).restore()
    by_function = dp_pixelize_adaptive(
        x, 1.0, levels=(4, 16), protect=True, protect_m=64, boxes=boxes, generator=KeyStream.from_seed(9)
    )
    assert torch.equal(by_layer, by_function)
    sample = RegionAdaptiveDPPixelize(1.0, levels=(4, 16), protect=True, protect_m=64, generator=KeyStream.from_seed(9))
    out = sample(
        {"image": tv_tensors.Image(x), "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(48, 64))}
    )
    assert torch.equal(out["image"].as_subclass(torch.Tensor), by_layer)


# --- the empirical audit of both relations (confidence 99.9%: a correct layer fails a bound with prob. < 1e-3) ---

CONFIDENCE = 0.999


@pytest.mark.parametrize("inside", [True, False], ids=["m_r-inside", "m-outside"])
def test_audit_stays_within_epsilon_for_both_relations(inside):
    """A pair that differs in m_r = 32 pixels spread over the four protected 8×8 cells, and a pair that differs in
    m = 1 pixel in a 4×4 cell outside: both bounds stay within ε = 1."""
    m_r = 32
    x, y, box = protected_pair(m_r if inside else 1, 8, inside)
    changed = (x != y)[0]
    assert int(changed.sum()) == (m_r if inside else 1)
    assert bool(changed[:, :16].any()) == inside and bool(changed[:, 16:].any()) != inside
    if inside:
        assert all(changed[r : r + 8, c : c + 8].any() for r in (0, 8) for c in (0, 8))
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 8), protect=True, protect_m=m_r, seed=11)
    result = audit(
        lambda batch: layer.release(batch, boxes=box).restore(),
        x,
        y,
        epsilon=layer.guarantee.epsilon,
        samples=200_000,
        confidence=CONFIDENCE,
    )
    assert result.epsilon_claimed == 1.0
    assert result.consistent, str(result)
    assert result.epsilon_lower_bound > 0.6, str(result)  # the audit has power: it certifies most of the ε


def test_audit_catches_under_noised_protected_cells():
    """A layer that claims m_r = 32 but noises the protected cells for m_r = 16 really has ε = 2 on the 32-pixel
    pair: the audit must prove more than the claimed ε = 1."""
    x, y, box = protected_pair(32, 8, inside=True)
    under = RegionAdaptiveDPPixelize(1.0, levels=(4, 8), protect=True, protect_m=16, seed=12)
    caught = audit(
        lambda batch: under.release(batch, boxes=box).restore(),
        x,
        y,
        epsilon=1.0,
        samples=200_000,
        confidence=CONFIDENCE,
    )
    assert not caught.consistent and caught.epsilon_lower_bound > 1.3, str(caught)


def test_region_inputs_that_would_lose_a_region_are_refused():
    """A region lost on the way in leaves a face at the m protection: these inputs raise instead."""
    x = torch.zeros(3, 64, 64, dtype=torch.uint8)
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 16), protect=True, seed=0)
    scored = torch.tensor([[0, 0, 10, 10, 0.9], [50, 0, 64, 10, 0.8], [0, 50, 10, 64, 0.7], [50, 50, 64, 64, 0.9]])
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        layer.release(x, boxes=scored)  # a detector's [K, 5] with scores: 20 numbers, which reshape to 5 boxes
    with pytest.raises(ValueError, match="finite"):
        layer.release(x, boxes=torch.tensor([[0.0, 0.0, float("nan"), 10.0]]))
    with pytest.raises(ValueError, match="NaN"):
        layer.release(x, mask=torch.full((64, 64), float("nan")))
    boxes = tv_tensors.BoundingBoxes([[0, 0, 32, 32]], format="XYXY", canvas_size=(128, 128))
    with pytest.raises(ValueError, match="canvas_size"):
        layer(tv_tensors.Image(x), boxes)


def test_a_stored_protected_record_that_releases_intermediate_cells_is_refused():
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    protected = RegionAdaptiveDPPixelize(1.0, levels=(4, 8, 16), protect=True, seed=0)
    good = protected.release(x, boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert NoisyGrid.from_bytes(good.to_bytes()).guarantee.protect
    split = [torch.zeros(1, 8, 8, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.bool)]
    split[1][0, 0, 0] = True  # one 16-px cell split into four 8-px cells: released at the intermediate level
    values = [torch.zeros(1, 3, n, n, dtype=torch.uint8) for n in (16, 8, 4)]
    forged = NoisyGrid.from_release(x.shape, x.dtype, (0.0, 255.0), protected.guarantee, values, split)
    with pytest.raises(NoisyGridFormatError, match="intermediate level"):
        NoisyGrid.from_bytes(forged.to_bytes())


def test_each_thread_releases_its_own_samples_region():
    """The region of a v2 sample is handed from check_inputs to make_params per thread: another thread's sample
    arriving in between does not swap the regions."""
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 16), protect=True, protect_m=64, seed=0)
    image = tv_tensors.Image(torch.zeros(1, 32, 32, dtype=torch.uint8))
    mine = tv_tensors.Mask(torch.zeros(32, 32, dtype=torch.bool))
    mine[:16, :16] = True
    layer.check_inputs([image, mine])
    other = threading.Thread(target=layer.check_inputs, args=([image, tv_tensors.Mask(~mine)],))
    other.start()
    other.join()
    assert torch.equal(layer.make_params([image])["mask"][0], mine)


# --- region inputs read one way only (issue 18, findings 4 and 5) -------------------------------------------------


def protected_cells(layer, x, **region) -> torch.Tensor:
    """The 16-px cells a protect layer releases whole: bool ``[..., 4, 4]`` for 64×64 images."""
    return ~layer.release(x, **region).split[-1]


def instance_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """Instance masks ``[2, 3, 64, 64]`` of two images, and the 16-px cells each image's union meets ``[2, 4, 4]``."""
    instances = torch.zeros(2, 3, SIDE, SIDE, dtype=torch.bool)
    instances[0, 0, :16, :16] = instances[0, 1, 4:8, 20:24] = True  # image 0: cells (0, 0) and (0, 1)
    instances[1, 0, 50:60, 50:60] = instances[1, 2, 40:44, 0:4] = True  # image 1: cells (3, 3) and (2, 0)
    cells = torch.zeros(2, 4, 4, dtype=torch.bool)
    cells[0, 0, 0] = cells[0, 0, 1] = cells[1, 3, 3] = cells[1, 2, 0] = True
    return instances, cells


def test_per_image_instance_masks_are_united_per_image():
    """``[N, K, H, W]``: each image is protected where any of ITS OWN K instances lies. The layer used to unite the
    first axis (the images), so N ≠ K was refused and N = K left regions of each image in fine cells."""
    layer = RegionAdaptiveDPPixelize(1.0, levels=LEVELS, protect=True, seed=0)
    instances, cells = instance_masks()
    x = torch.zeros(2, 1, SIDE, SIDE, dtype=torch.uint8)
    assert torch.equal(protected_cells(layer, x, mask=instances), cells)
    assert torch.equal(protected_cells(layer, x[1], mask=instances[1]), cells[1])  # one image: [K, H, W]
    videos = torch.zeros(3, 2, 1, SIDE, SIDE, dtype=torch.uint8)  # [B, T, C, H, W] with [B, T, K, H, W]
    assert torch.equal(
        protected_cells(layer, videos, mask=instances.expand(3, -1, -1, -1, -1)), cells.expand(3, -1, -1, -1)
    )
    first = torch.zeros(1, 4, 4, dtype=torch.bool)
    first[0, 0, 0] = True  # image 0's first instance alone: one image, one instance, [1, 1, H, W]
    assert torch.equal(protected_cells(layer, x[:1], mask=instances[:1, :1]), first)


@pytest.mark.parametrize(("images", "stack"), [((2,), (2, 2)), ((3,), (3, 3)), ((2, 2), (2, 2, 2))])
def test_instance_masks_that_read_two_ways_are_refused(images, stack):
    """``[N, N, H, W]`` for N images is N instances per image (``[N, K]``) or N instances shared along the images
    (``[K, N]``, the layer's old reading): the two protect different pixels, so the layer refuses to guess."""
    x = torch.zeros(*images, 1, SIDE, SIDE, dtype=torch.uint8)
    mask = torch.zeros(*stack, SIDE, SIDE, dtype=torch.bool)
    mask[(0,) * len(images)][1, :16, :16] = True
    layer = RegionAdaptiveDPPixelize(1.0, levels=LEVELS, protect=True, seed=0)
    for release in (
        lambda: layer.release(x, mask=mask),
        lambda: dp_pixelize_adaptive(x, 1.0, levels=LEVELS, protect=True, mask=mask),
        lambda: layer(x, tv_tensors.Mask(mask)),
    ):
        with pytest.raises(ValueError, match="reads two ways") as refused:
            release()
        assert "accepted layouts" in str(refused.value)


@pytest.mark.parametrize(
    ("images", "shape"),
    [
        ((2,), (3, 2)),  # the instance axis first, [K, N, H, W]: the old reading
        ((2, 3), (3,)),  # one mask per frame without the batch axis
        ((), (2, 3)),  # a 2-D stack for one image
        ((2,), (3,)),  # three masks for two images
        ((2,), (2, 3, 4)),  # an axis too many
    ],
)
def test_masks_in_no_accepted_layout_are_refused(images, shape):
    x = torch.zeros(*images, 1, SIDE, SIDE, dtype=torch.uint8)
    layer = RegionAdaptiveDPPixelize(1.0, levels=LEVELS, protect=True, seed=0)
    with pytest.raises(ValueError, match="accepted layouts"):
        layer.release(x, mask=torch.ones(*shape, SIDE, SIDE, dtype=torch.bool))


def test_each_mask_of_a_v2_sample_is_read_on_its_own():
    """Two ``tv_tensors.Mask [H, W]`` next to a batch of two images each cover both images: they were stacked into
    one ``[2, H, W]`` and read as one mask per image, so each image lost the other mask's region."""
    x = torch.randint(0, 256, (2, 1, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    top, left = torch.zeros(2, SIDE, SIDE, dtype=torch.bool)
    top[:8], left[:, :8] = True, True
    instances, _ = instance_masks()

    def layer() -> RegionAdaptiveDPPixelize:
        return RegionAdaptiveDPPixelize(1.0, levels=LEVELS, protect=True, generator=KeyStream.from_seed(4))

    for sample, union in (
        ((tv_tensors.Mask(top), tv_tensors.Mask(left)), top | left),
        ((tv_tensors.Mask(instances),), instances.any(1)),
        ((tv_tensors.Mask(top), tv_tensors.Mask(instances)), top | instances.any(1)),
    ):
        out = layer()(tv_tensors.Image(x), *sample)[0].as_subclass(torch.Tensor)
        assert torch.equal(out, layer().release(x, mask=union).restore())


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([[20, 20, 8, 8]], "x1 <= x0 or y1 <= y0"),  # OpenCV's (x, y, w, h) given as XYXY
        ([[8, 20, 30, 20]], "x1 <= x0 or y1 <= y0"),  # no height
        ([[70, 0, 90, 20]], "covers no pixel"),  # right of the 64×64 image: drawn for a larger one
        ([[-20, -20, -1, 30]], "covers no pixel"),
        ([[10.6, 0, 11.4, 30]], "covers no pixel"),  # between two pixel centres
        ([[0, 0, 32, 32], [20, 20, 8, 8]], "box 1"),  # one bad box among good ones
    ],
)
def test_boxes_that_would_protect_nothing_are_refused(boxes, message):
    from dp_pixel_torch.detectors import boxes_mask, dilate_boxes

    x = torch.zeros(3, SIDE, SIDE, dtype=torch.uint8)
    layer = RegionAdaptiveDPPixelize(1.0, levels=LEVELS, protect=True, seed=0)
    given = torch.tensor(boxes, dtype=torch.float32)
    for release in (
        lambda: layer.release(x, boxes=given),
        lambda: dp_pixelize_adaptive(x, 1.0, levels=LEVELS, protect=True, boxes=given),
        lambda: layer(tv_tensors.Image(x), tv_tensors.BoundingBoxes(given, format="XYXY", canvas_size=(SIDE, SIDE))),
        lambda: boxes_mask(given, SIDE, SIDE),
        lambda: dilate_boxes(given, 0.25, SIDE, SIDE),
    ):
        with pytest.raises(ValueError, match=message) as refused:
            release()
        assert "would protect nothing" in str(refused.value)
    # No box at all is a region with nothing in it: every cell is released fine.
    assert not protected_cells(layer, x, boxes=torch.zeros(0, 4)).any()


def test_boxes_drawn_for_another_canvas_are_refused_next_to_any_image():
    """A BoundingBoxes' canvas_size is checked against the image it protects, whatever the image's type (it was
    checked only next to a tv_tensors.Image) and also when it is given as ``boxes=``."""
    layer = RegionAdaptiveDPPixelize(1.0, levels=LEVELS, protect=True, seed=0)
    x = torch.zeros(3, SIDE, SIDE, dtype=torch.uint8)
    other = tv_tensors.BoundingBoxes([[0, 0, 32, 32]], format="XYXY", canvas_size=(128, 128))
    for image in (x, tv_tensors.Image(x), PIL.Image.new("RGB", (SIDE, SIDE))):
        with pytest.raises(ValueError, match="canvas_size"):
            layer(image, other)
    with pytest.raises(ValueError, match="canvas_size"):
        layer.release(x, boxes=other)


@pytest.mark.parametrize("fmt", list(tv_tensors.BoundingBoxFormat), ids=lambda f: f.name)
def test_bounding_boxes_in_every_format_protect_their_region(fmt):
    """A BoundingBoxes protects the cells of its XYXY corners in any format, in a v2 sample or as ``boxes=``; a
    rotated box protects the axis-aligned box that encloses it."""
    height, width = 48, SIDE
    x = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    if tv_tensors.is_rotated_bounding_format(fmt):
        # XYWHR (20, 10, 10, 6, 30°): corners (20, 10), (20 + 10 cos, 10 - 10 sin), (20 + 6 sin, 10 + 6 cos), …
        given = tv_tensors.BoundingBoxes([[20.0, 10, 10, 6, 30]], format="XYWHR", canvas_size=(height, width))
        c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
        enclosing = [[20, 10 - 10 * s, 20 + 10 * c + 6 * s, 10 + 6 * c]]
    else:
        given = tv_tensors.BoundingBoxes([[10.0, 6, 30, 20]], format="XYXY", canvas_size=(height, width))
        enclosing = [[10, 6, 30, 20]]
    boxes = TF.convert_bounding_box_format(given, new_format=fmt)
    assert boxes.format == fmt

    def layer() -> RegionAdaptiveDPPixelize:
        return RegionAdaptiveDPPixelize(1.0, levels=(2, 8), protect=True, generator=KeyStream.from_seed(6))

    expected = layer().release(x, boxes=torch.tensor(enclosing))
    assert torch.equal(layer().release(x, boxes=boxes).split[-1], expected.split[-1])
    out = layer()(tv_tensors.Image(x), boxes)[0].as_subclass(torch.Tensor)
    assert torch.equal(out, expected.restore())
