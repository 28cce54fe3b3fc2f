"""Issue 20: the public noise law of a release, and restoration from it (fill, smooth, denoise) as post-processing."""

import inspect
import math

import PIL.Image
import pytest
import skimage.data
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from dp_pixel_torch import (
    DPPixelize,
    GridPartition,
    NoisyGrid,
    NoisyGridFormatError,
    RegionAdaptiveDPPixelize,
    Restore,
    restoration,
)
from dp_pixel_torch.cli import main
from dp_pixel_torch.metrics import masked_scores, psnr
from dp_pixel_torch.temporal import TemporalRestorer
from dp_pixel_torch.video import sanitize_stream

RELEASES = 200  # images per noise-law check, each with its own noise
ASTRONAUT_FACE = (175, 70, 268, 163)  # XYXY in skimage.data.astronaut()


def astronaut() -> torch.Tensor:
    return torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).contiguous()


def grey_batch(dtype: torch.dtype, shape=(3, 40, 44)) -> torch.Tensor:
    """RELEASES copies of a constant image of level 128 (on the 1/255 lattice for floats): no clipping at these ε."""
    x = torch.full((RELEASES, *shape), 128, dtype=torch.uint8)
    return x if dtype == torch.uint8 else (x.double() / 255).to(dtype)


def box_mask(height=64, width=64):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[20:30, 40:50] = True
    return mask


NOISE_LAW_CASES = {
    "uniform-uint8-discrete": lambda: DPPixelize(1.0, 8, seed=1).release(grey_batch(torch.uint8)),
    "uniform-uint8-laplace": lambda: DPPixelize(1.0, 8, noise="laplace", seed=2).release(grey_batch(torch.uint8)),
    "uniform-float32-laplace": lambda: DPPixelize(1.0, 8, noise="laplace", seed=3).release(
        grey_batch(torch.float32), storage="float32"
    ),
    "uniform-float-discrete-float16": lambda: DPPixelize(1.0, 8, seed=4).release(grey_batch(torch.float32)),
    "float-uint8-storage": lambda: DPPixelize(0.5, 8, seed=5).release(grey_batch(torch.float32), storage="uint8"),
    "zero-pad-per-channel": lambda: DPPixelize(0.5, 8, border="zero_pad", channel_rule="per_channel", seed=6).release(
        grey_batch(torch.uint8)
    ),
    "grid": lambda: DPPixelize(1.0, grid=(6, 7), seed=7).release(grey_batch(torch.uint8)),
    "adaptive-mask": lambda: RegionAdaptiveDPPixelize(2.0, levels=(4, 8, 16), seed=8).release(
        grey_batch(torch.uint8, (3, 64, 64)), mask=box_mask()
    ),
    "protected-m16": lambda: RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, protect_m=16, seed=9).release(
        grey_batch(torch.uint8, (3, 64, 64)), mask=box_mask()
    ),
    "protected-all-laplace": lambda: RegionAdaptiveDPPixelize(
        60.0, levels=(8, 32), protect=True, noise="laplace", seed=10
    ).release(grey_batch(torch.float32, (3, 64, 64)), mask=box_mask(), storage="float32"),
}


@pytest.mark.parametrize("case", NOISE_LAW_CASES)
def test_noise_variance_is_the_empirical_variance(case):
    """The stated variance of every stored value against its mean square error over RELEASES independent releases of
    a constant image (whose exact cell means are the constant). Per stored tensor, the mean of ``(v - mean)²/stated``
    is 1 within 6 standard errors, ``6·sqrt((κ - 1)/n)`` with the Laplace kurtosis κ = 6 and n values: a correct law
    fails with probability about 2e-9 per tensor (normal approximation); the seeds are fixed, so the outcome is too."""
    grid = NOISE_LAW_CASES[case]()
    stated = grid.noise_variance()
    assert len(stated) == len(grid.values)
    exact = 128.0 if grid.dtype == torch.uint8 else 128 / 255
    if grid.guarantee.border == "zero_pad":  # the zero-padded mean: sum / b²
        exact = exact * grid._layout().counts().double() / grid.guarantee.b**2
    for values, variance in zip(grid.values, stated):
        assert variance.dtype == torch.float64 and variance.shape == values.shape
        decoded = grid._decode(values, torch.float64)
        ratio = ((decoded - exact).square() / variance).mean().item()
        assert abs(ratio - 1) < 6 * math.sqrt(5 / values.numel()), (case, ratio, values.numel())


def test_noise_variance_follows_the_cells():
    """Border cells cut short are noisier, protected cells far noisier; the per-pixel map paints the same values."""
    grid = DPPixelize(1.0, 8).release(torch.zeros(3, 20, 20, dtype=torch.uint8))
    (v,) = grid.noise_variance()
    assert v[0, 0, 0] < v[0, 0, 2] < v[0, 2, 2]  # 64, 32 and 16 pixels
    pixels = grid.noise_variance_map()
    assert pixels.shape == (3, 20, 20) and pixels[0, 19, 19] == v[0, 2, 2] and pixels[1, 0, 0] == v[1, 0, 0]
    protected = RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True).release(
        torch.zeros(3, 64, 64, dtype=torch.uint8), mask=box_mask()
    )
    fine, coarse = protected.noise_variance()
    assert coarse.min() > 1000 * fine.max()


def test_guarantee_states_the_sum_variance():
    g = DPPixelize(2.0, 8, m=3).guarantee
    scale = 3 * 255 * 3 / 2.0
    assert g.sum_noise_variance(3, 255.0) == pytest.approx(2 * scale**2, rel=1e-3)  # discrete ≈ continuous here
    laplace = DPPixelize(2.0, 8, m=3, noise="laplace").guarantee
    assert laplace.sum_noise_variance(3, 255.0) == pytest.approx(2 * scale**2, rel=1e-12)
    per_image = g.sum_noise_variance(3, 255.0, torch.tensor([3, 6]))
    assert per_image.dtype == torch.float64 and per_image[1] == pytest.approx(4 * per_image[0].item())


def releases():
    x = astronaut()[:, :96, 150:262]
    face = torch.tensor([[30.0, 20.0, 80.0, 70.0]])
    return {
        "uniform": DPPixelize(1.0, 8, seed=0).release(x),
        "adaptive": RegionAdaptiveDPPixelize(1.0, levels=(8, 16, 32), seed=0).release(x, boxes=face),
        "protected": RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, seed=0).release(x, boxes=face),
        "float-batch": DPPixelize(2.0, 8, seed=0).release(torch.stack([x, x]).float() / 255),
    }


@pytest.mark.parametrize("method", restoration.METHODS)
def test_restoring_the_stored_bytes_equals_restoring_the_release(method):
    for name, grid in releases().items():
        restored = grid.restore(method)
        assert restored.shape == grid.shape and restored.dtype == grid.dtype, name
        assert torch.equal(NoisyGrid.from_bytes(grid.to_bytes()).restore(method), restored), name


def test_fill_is_the_default_and_the_layer_output():
    x = astronaut()[:, :100, :90]
    grid = DPPixelize(1.0, 8, seed=3).release(x)
    assert torch.equal(grid.restore(), grid.restore("fill"))
    assert torch.equal(grid.restore(), DPPixelize(1.0, 8, seed=3, backend="eager")(x))
    with pytest.raises(ValueError, match="method"):
        grid.restore("sharpen")


def test_no_restoration_function_reads_an_original_image():
    """Post-processing: every function of the restoration module, NoisyGrid.restore and Restore take released values,
    variances, layouts and public parameters; none has a parameter for an original image."""
    functions = [
        f for _, f in inspect.getmembers(restoration, inspect.isfunction) if f.__module__ == restoration.__name__
    ]
    functions += [NoisyGrid.restore, NoisyGrid.noise_variance, Restore.__init__, Restore.restore]
    for function in functions:
        names = set(inspect.signature(function).parameters)
        assert not names & {"x", "image", "images", "original", "photo", "input", "inpt"}, function.__qualname__
        assert (
            "Reads" in (function.__doc__ or "")
            or function.__name__.startswith("_")
            or function
            in (
                NoisyGrid.noise_variance,
                Restore.__init__,
            )
        ), function.__qualname__


def test_denoise_tends_to_the_released_values_as_the_noise_vanishes():
    values = torch.rand(2, 3, 9, 11, dtype=torch.float64) * 255
    for variance in (1e-6, 1e-3):
        assert torch.allclose(restoration.denoise_cells(values, torch.tensor(variance)), values, atol=0.05)
    for partition in (GridPartition.blocks(45, 60, 8), GridPartition.grid(45, 60, 7, 9)):
        cells = values[..., : partition.shape[0], : partition.shape[1]]
        image = restoration.upsample(restoration.consistent(cells, partition), partition)
        means = partition.cell_sums(image) / partition.counts()
        assert torch.allclose(means, cells, atol=1e-9)  # the restored image keeps every cell's mean (unclipped)


def test_denoise_beats_fill_on_a_photo():
    x = astronaut()
    gains = {}
    for eps in (1.0, 20.0):
        grid = DPPixelize(eps, 8, seed=11).release(x)
        gains[eps] = psnr(x, grid.restore("denoise")) - psnr(x, grid.restore("fill"))
    assert gains[1.0] > 1.0 and gains[20.0] > -0.1, gains


def test_protected_cells_become_a_plausible_patch():
    x = astronaut()
    face = torch.tensor([ASTRONAUT_FACE], dtype=torch.float32)
    inside = torch.zeros(512, 512, dtype=torch.bool)
    inside[70:163, 175:268] = True
    grid = RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, seed=12).release(x, boxes=face)
    fill = masked_scores(x, grid.restore("fill"), inside)["inside_psnr"]
    denoise = masked_scores(x, grid.restore("denoise"), inside)["inside_psnr"]
    assert fill < 8 and denoise > 11, (fill, denoise)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_restore_dtypes_batches_and_devices(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = astronaut()[:, :64, :72].to(device)
    batch = torch.stack([torch.stack([x, x.flip(-1)])] * 2)  # [2, 2, 3, H, W]
    for images in (batch, batch.float() / 255, batch.half() / 255):
        grid = DPPixelize(1.0, 8, seed=0).release(images)
        for method in ("smooth", "denoise"):
            out = grid.restore(method)
            assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
            assert torch.isfinite(out.float()).all() and out.float().min() >= 0
    empty = DPPixelize(1.0, 8).release(torch.zeros(0, 3, 16, 16, dtype=torch.uint8, device=device))
    assert empty.restore("denoise").shape == (0, 3, 16, 16)


def test_restore_transform_follows_the_layer():
    x = astronaut()[:, :96, :128]
    layer = DPPixelize(1.0, 8, seed=5)
    restored = v2.Compose([layer, Restore(layer, "denoise")])(tv_tensors.Image(x))
    assert isinstance(restored, tv_tensors.Image)
    assert torch.equal(restored.as_subclass(torch.Tensor), DPPixelize(1.0, 8, seed=5).release(x).restore("denoise"))
    pil = v2.Compose([DPPixelize(1.0, 8, seed=5), Restore(layer.guarantee, "smooth")])(v2.functional.to_pil_image(x))
    assert isinstance(pil, PIL.Image.Image)
    floats = DPPixelize(1.0, 8, seed=5)(x.float() / 255)
    assert Restore(layer, "fill")(floats).equal(floats)
    with pytest.raises(ValueError, match="not a release"):
        Restore(layer)(x)
    with pytest.raises(ValueError, match="region-adaptive"):
        Restore(RegionAdaptiveDPPixelize(1.0, levels=(8, 16), region="complexity", partition_epsilon=0.1))
    with pytest.raises(ValueError, match="method"):
        Restore(layer, "sharpen")


def test_cli_and_streams_restore(tmp_path):
    cv2 = pytest.importorskip("cv2")
    x = astronaut()[:, :64, :64]
    cv2.imwrite(str(tmp_path / "in.png"), x.permute(1, 2, 0).numpy()[..., ::-1])
    common = [str(tmp_path / "in.png"), "--epsilon", "1", "--b", "8", "--seed", "1", "--quiet"]
    assert main([*common, "-o", str(tmp_path / "fill.png")]) == 0
    assert main([*common, "-o", str(tmp_path / "denoise.png"), "--restore", "denoise"]) == 0
    fill, denoise = (cv2.imread(str(tmp_path / f"{n}.png")) for n in ("fill", "denoise"))
    assert fill.shape == denoise.shape and (fill != denoise).any()
    assert main([*common, "-o", str(tmp_path / "r"), "--restore", "smooth", "--ray"]) == 2
    frames = [x, x.flip(-1), x]
    report = sanitize_stream(
        frames, DPPixelize(1.0, 8, seed=2), tmp_path / "out.avi", restore="denoise", progress=False
    )
    assert report.frames == 3 and (tmp_path / "out.avi").stat().st_size > 0
    with pytest.raises(ValueError, match="restore"):
        sanitize_stream(frames, DPPixelize(1.0, 8, seed=2), tmp_path / "bad.avi", restore="sharpen")


def test_a_parsed_record_is_smoothed_only_within_the_budget_it_was_read_with():
    """A record read with ``max_bytes`` bounds its float work arrays too, not only its fill: a small hostile file
    cannot make ``restore("denoise")`` allocate several times what its parse allowed."""
    grid = DPPixelize(1.0, 8, seed=0).release(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    data = grid.to_bytes()
    tight = NoisyGrid.from_bytes(data, max_bytes=200_000)  # the fill of 24,576 values fits, 8 bytes a value does not
    assert torch.equal(tight.restore(), grid.restore())
    for method in ("smooth", "denoise"):
        with pytest.raises(NoisyGridFormatError, match="max_bytes="):
            tight.restore(method)
        assert torch.equal(NoisyGrid.from_bytes(data).restore(method), grid.restore(method))


def _reference_wiener_pyramid(y: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """The pull-push pyramid as first written (float32 ``[N, rows, cols]``): interpolation calls, 5×5 average
    pools and one formula per line; the oracle of the fast :func:`restoration.wiener_pyramid`."""
    F = torch.nn.functional

    def pool_sum(cells):
        cells = F.pad(cells, (0, cells.shape[-1] % 2, 0, cells.shape[-2] % 2))
        return cells.unflatten(-1, (-1, 2)).unflatten(-3, (-1, 2)).sum((-1, -3))

    def local_mean(cells):
        return F.avg_pool2d(cells.unsqueeze(1), 5, stride=1, padding=2, count_include_pad=False).squeeze(1)

    def up(cells, shape):
        size = (2 * cells.shape[-2], 2 * cells.shape[-1])
        return F.interpolate(cells.unsqueeze(1), size=size, mode="bilinear").squeeze(1)[..., : shape[0], : shape[1]]

    pyramid = [(y, variance.expand_as(y))]
    while max(pyramid[-1][0].shape[-2:]) > 1:
        y_, v_ = pyramid[-1]
        precision = pool_sum(1.0 / v_)
        pyramid.append((pool_sum(y_ / v_) / precision, 1.0 / precision))
    estimate, spread = pyramid[-1]
    for y_, v_ in reversed(pyramid[:-1]):
        m, v_m = up(estimate, y_.shape[-2:]), up(spread, y_.shape[-2:])
        weight = 1.0 / (v_ + v_m).square()
        tau2 = (local_mean(weight * ((y_ - m).square() - v_ - v_m)) / local_mean(weight)).clamp(min=0.0)
        prior = tau2 + v_m
        estimate = m + prior / (prior + v_) * (y_ - m)
        spread = prior * v_ / (prior + v_)
    return estimate


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fast_pyramid_estimates_what_the_formulas_say(seed):
    """The fast pyramid (shifted adds, lerps, grouped terms) against the formulas, on noisy photo cells of odd and
    even sides with a protected (huge-variance) block: within 1e-4 of the value range (float32 rounding)."""
    generator = torch.Generator().manual_seed(seed)
    cells = astronaut()[:, : 45 + 2 * seed, : 60 + seed].double()
    variance = torch.full(cells.shape[-2:], 30.0 * (seed + 1), dtype=torch.float64)
    variance[5:12, 10:20] = 1e7  # protected cells
    noisy = cells + variance.sqrt() * torch.randn(cells.shape, generator=generator, dtype=torch.float64)
    fast = restoration.wiener_pyramid(noisy.float(), variance.float())
    formulas = _reference_wiener_pyramid(noisy.float(), variance.float())
    assert (fast - formulas).abs().max() <= 1e-4 * 255


def test_restoring_in_groups_restores_each_image_alone(monkeypatch):
    """restore_cells works a few images at a time; any grouping gives the same images (each is restored alone)."""
    x = astronaut()[:, :96, :112]
    grids = [
        DPPixelize(1.0, 8, seed=0).release(torch.stack([x, x.flip(-1), x.flip(-2)])),
        RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, seed=0).release(
            torch.stack([x, x.flip(-1), x.flip(-2)]), boxes=torch.tensor([[30.0, 20.0, 80.0, 70.0]])
        ),
    ]
    cases = [(grid, method) for grid in grids for method in ("smooth", "denoise")]
    whole = [grid.restore(method) for grid, method in cases]
    monkeypatch.setattr(restoration, "_CHUNK_CELLS", 1)  # one image per group
    for (grid, method), expected in zip(cases, whole):
        assert torch.equal(grid.restore(method), expected), method


def test_the_denoise_budget_counts_the_cells():
    """At b = 1 every pixel is a cell and the pyramid's work arrays (about 90 bytes a cell value) dominate: a parsed
    record is refused a denoise its max_bytes cannot hold, even though its fill fits."""
    grid = DPPixelize(1.0, 1, seed=0).release(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    tight = NoisyGrid.from_bytes(grid.to_bytes(), max_bytes=1_000_000)  # 24,576 values: 128 bytes a cell do not fit
    assert torch.equal(tight.restore(), grid.restore())
    with pytest.raises(NoisyGridFormatError, match="max_bytes="):
        tight.restore("denoise")


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_uint8_upsampling_in_two_passes_is_the_one_pass_interpolation(channels):
    """The CPU uint8 upsampling (rows, then columns read as 4 or 3 channels) gives exactly the one-pass bilinear
    interpolation, at widths divisible by 4, by 3 only, and by neither (one pass)."""
    generator = torch.Generator().manual_seed(channels)
    for rows, cols, b in ((5, 6, 8), (4, 3, 3), (3, 5, 5), (7, 7, 1)):
        cells = torch.randint(0, 256, (2, channels, rows, cols), dtype=torch.uint8, generator=generator)
        partition = GridPartition.blocks(rows * b, cols * b, b)
        expected = torch.nn.functional.interpolate(cells, size=(rows * b, cols * b), mode="bilinear")
        restored = restoration.upsample(cells, partition)
        assert restored.is_contiguous() and torch.equal(restored, expected), (rows, cols, b)


def _dense_consistent(values: torch.Tensor, partition: GridPartition) -> torch.Tensor:
    """:func:`restoration.consistent` as written before issue 28: the dense inverses of the ``n×n`` cell-mean
    matrices (``n²`` memory, ``n³`` time); the oracle of the tridiagonal solve, on small layouts."""
    F = torch.nn.functional

    def inverse(sizes, b):
        n, length = len(sizes), sum(sizes)
        eye = torch.eye(n, dtype=torch.float64)[None, None]
        up = F.interpolate(eye, size=(n, n * b if b is not None else length), mode="bilinear", align_corners=False)
        running = F.pad(up[0, 0, :, :length].cumsum(1), (1, 0))
        width = torch.tensor(sizes)
        ends = width.cumsum(0)
        return torch.linalg.inv((running[:, ends] - running[:, ends - width]) / width.double())

    b = partition.block_side
    return inverse(partition.row_sizes, b).to(values).T @ values @ inverse(partition.col_sizes, b).to(values)


def test_the_tridiagonal_solve_gives_what_the_dense_inverses_gave():
    """Issue 28, finding 5: ``consistent`` solves the tridiagonal cell-mean matrices by LU recurrences (memory and
    time in proportion to the cells) instead of building their dense inverses. On b×b blocks (full and cut-short
    border cells, one cell, b = 1) and floor/ceil grids of cells of 2 pixels or more, it gives today's coefficients
    within float rounding: 1e-12 in float64, 1e-5 in float32 (values in [0, 1])."""
    generator = torch.Generator().manual_seed(0)
    layouts = [
        GridPartition.blocks(height, width, b)
        for height in (1, 2, 5, 9, 17, 65, 100)
        for width in (1, 4, 33, 130)
        for b in (1, 2, 3, 7, 8, 64)
    ]
    layouts += [
        GridPartition.grid(height, width, rows, cols)
        for height, rows in ((3, 1), (45, 7), (60, 30), (101, 50))
        for width, cols in ((7, 3), (40, 20), (60, 9))
    ]
    for partition in layouts:
        values = torch.rand(2, 3, *partition.shape, generator=generator, dtype=torch.float64)
        for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            solved, dense = (f(values.to(dtype), partition) for f in (restoration.consistent, _dense_consistent))
            assert torch.allclose(solved, dense, rtol=tolerance, atol=tolerance), (partition.shape, dtype)


def ramp(height: int = 200, width: int = 300) -> torch.Tensor:
    """A smooth float image ``[3, H, W]`` in [0.2, 1.0]: its cell means are restored well by any method."""
    rows, cols = torch.linspace(0.2, 0.8, height)[:, None], torch.linspace(0.0, 0.2, width)[None, :]
    return (rows + cols).expand(3, height, width).contiguous()


def test_grids_of_cells_under_two_pixels_and_exact_values_restore_finite_images():
    """Issue 28, finding 8 (no output is NaN): a grid of cells under 2 pixels on average puts its interpolation
    centres up to half a pixel off their cells, and the dense inverse of its nearly singular cell-mean matrix gave
    coefficients of 1e23 to NaN (7 × 299 cells of a 200 × 300 image: NaN); such an axis is now left uncorrected. And
    a release whose stated variance is 0 (ε = 1e6 or 1e300, float storage: it underflows) made the pyramid divide by it
    (NaN everywhere); it is read as VARIANCE_BOUNDS[0]. The ramp, released with no noise to speak of, is restored
    finite and within 0.05 of itself; coefficients of values in [0, 1] stay within 4 (a corrected axis is
    diagonally dominant, ``‖M⁻¹‖ ≤ 2``)."""
    x = ramp()
    generator = torch.Generator().manual_seed(1)
    for grid in ((150, 7), (7, 299), (150, 299), (40, 60)):
        partition = GridPartition.grid(200, 300, *grid)
        coefficients = restoration.consistent(torch.rand(3, *grid, generator=generator), partition)
        assert torch.isfinite(coefficients).all() and coefficients.abs().max() <= 4, grid  # ‖M⁻¹‖ ≤ 2 per axis
        release = DPPixelize(1e6, grid=grid, seed=0).release(x, storage="float32")
        restored = release.restore("denoise")
        assert torch.isfinite(restored).all() and (restored - x).abs().max() < 0.05, grid
    exact = DPPixelize(1e300, 8, noise="laplace", seed=0).release(x, storage="float32")
    assert (exact.noise_variance()[0] == 0).all()
    assert (exact.restore("denoise") - x).abs().max() < 0.05


@pytest.mark.parametrize("epsilon", [1e-100, 1e-300])
def test_a_release_whose_noise_variance_overflows_restores_to_defined_values(epsilon):
    """Issue 28, finding 8: at ε = 1e-100 a cell value's noise variance is 1e197 to 1e202 (inf in the float32 estimate),
    at 1e-300 it overflows float64; restore and the TemporalRestorer returned all-NaN floats and all-black uint8, or
    raised ZeroDivisionError from a parsed record. Such a value is noise alone (clipped to the range), so the
    estimates read its variance as VARIANCE_BOUNDS[1], a cell of no information, and give smooth local means of the
    released values: finite, inside the range, with the mean of the fill (within 5% of the range; the released
    values are about half at each end of the range)."""
    x = astronaut()[:, :64, :72]
    face = torch.tensor([[20.0, 10.0, 50.0, 40.0]])
    grids = (
        DPPixelize(epsilon, 8, seed=0).release(x),
        DPPixelize(epsilon, 8, noise="laplace", seed=0).release(x.float() / 255, storage="float32"),
        RegionAdaptiveDPPixelize(epsilon, levels=(8, 32), protect=True, seed=0).release(x, boxes=face),
    )
    for grid in grids:
        parsed = NoisyGrid.from_bytes(grid.to_bytes())
        assert all((v > 1e150).all() for v in parsed.noise_variance())
        lo, hi = parsed.value_range
        fill = parsed.restore().double()
        for restored in (parsed.restore("smooth"), parsed.restore("denoise"), TemporalRestorer()(parsed)):
            restored = restored.double()
            assert torch.isfinite(restored).all() and restored.min() >= lo and restored.max() <= hi
            assert abs(restored.mean() - fill.mean()) < 0.05 * (hi - lo), (grid.dtype, restored.mean(), fill.mean())
