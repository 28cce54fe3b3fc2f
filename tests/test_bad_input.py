"""SPEC §7: every bad parameter or input raises a clear TypeError/ValueError that names the parameter."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

from dp_pixel_torch import (
    DPPixelize,
    PrivacyAccountant,
    RegionAdaptiveDPPixelize,
    ReleasedOnce,
    Restore,
    dp_pixelize,
    dp_pixelize_adaptive,
)
from dp_pixel_torch.functional import pixelize
from dp_pixel_torch.reference import dp_pixelize_sequential

GOOD = dict(epsilon=1.0, b=4)

BAD_PARAMETERS = [
    (dict(epsilon=0), ValueError, "epsilon"),
    (dict(epsilon=-1.0), ValueError, "epsilon"),
    (dict(epsilon=math.nan), ValueError, "epsilon"),
    (dict(epsilon=math.inf), ValueError, "epsilon"),
    (dict(epsilon="1"), TypeError, "epsilon"),
    (dict(epsilon=True), TypeError, "epsilon"),
    (dict(epsilon=None), TypeError, "epsilon"),
    (dict(b=0), ValueError, "b must be an integer >= 1"),
    (dict(b=-4), ValueError, "b must be an integer >= 1"),
    (dict(b=2.5), TypeError, "b must be an integer"),
    (dict(b=4.0), TypeError, "b must be an integer"),
    (dict(b="4"), TypeError, "b must be an integer"),
    (dict(m=0), ValueError, "m must be an integer >= 1"),
    (dict(m=1.5), TypeError, "m must be an integer"),
    (dict(noise="gaussian"), ValueError, "noise must be one of"),
    (dict(border="replicate"), ValueError, "border must be one of"),
    (dict(channel_rule="mean"), ValueError, "channel_rule must be one of"),
    (dict(b=None), ValueError, "exactly one of b"),
    (dict(grid=(2, 2)), ValueError, "exactly one of b"),
    (dict(b=None, grid=(0, 3)), ValueError, "grid"),
    (dict(b=None, grid=(3,)), TypeError, "grid"),
    (dict(b=None, grid=(2, 2), border="zero_pad"), ValueError, "zero_pad"),
    (dict(value_range=(1.0, 0.0)), ValueError, "value_range"),
    (dict(value_range=(0.0, math.inf)), ValueError, "value_range"),
    (dict(secure=True, seed=1), ValueError, "secure"),
    (dict(secure=True, generator=torch.Generator()), ValueError, "secure"),
    (dict(secure=True, noise="laplace"), ValueError, 'secure=True requires noise="discrete"'),
    (dict(secure="yes"), TypeError, "secure"),
    (dict(seed=-1), TypeError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=1, generator=torch.Generator()), ValueError, "at most one of generator and seed"),
    (dict(generator=42), TypeError, "generator"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_PARAMETERS)
def test_layer_rejects_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        DPPixelize(**{**GOOD, **kwargs})


FUNCTIONAL_BAD = [(k, e, msg) for k, e, msg in BAD_PARAMETERS if "seed" not in k and "value_range" not in k]


@pytest.mark.parametrize(("kwargs", "error", "message"), FUNCTIONAL_BAD)
def test_functional_rejects_bad_parameters(kwargs, error, message):
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(error, match=message):
        dp_pixelize(x, **{**GOOD, **kwargs})


BAD_INPUTS = [
    (np.zeros((3, 8, 8), dtype=np.uint8), TypeError, "found no image to release: expected a torch.Tensor"),
    ((np.zeros((3, 8, 8), dtype=np.uint8), 3), TypeError, "got int, ndarray"),
    (torch.zeros(3, 8, 8, dtype=torch.int32), TypeError, "dtype"),
    (torch.zeros(3, 8, 8, dtype=torch.bool), TypeError, "dtype"),
    (torch.zeros(8, 8), ValueError, r"\[\.\.\., C, H, W\]"),
    (torch.full((3, 8, 8), 1.5), ValueError, "outside value_range"),
    (torch.full((3, 8, 8), -0.1), ValueError, "outside value_range"),
    (torch.full((3, 8, 8), math.inf), ValueError, "outside value_range"),
    (torch.zeros(3, 8, 8).index_fill_(1, torch.tensor([2]), math.nan), ValueError, "NaN"),
    (PIL.Image.new("P", (8, 8)), TypeError, "mode"),
    (PIL.Image.new("I", (8, 8)), TypeError, "mode"),
]


@pytest.mark.parametrize(("x", "error", "message"), BAD_INPUTS)
def test_layer_rejects_bad_inputs(x, error, message):
    with pytest.raises(error, match=message):
        DPPixelize(1.0, 4)(x)


def test_functional_rejects_non_tensors():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        dp_pixelize(np.zeros((3, 8, 8)), 1.0, 4)


def test_uint8_with_a_float_value_range_is_rejected():
    with pytest.raises(ValueError, match="value_range"):
        DPPixelize(1.0, 4, value_range=(0.0, 1.0))(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_float_data_outside_a_given_value_range():
    with pytest.raises(ValueError, match=r"outside value_range \[0, 100\]"):
        DPPixelize(1.0, 4, value_range=(0, 100))(torch.full((3, 8, 8), 200.0))


def test_grid_larger_than_the_image():
    with pytest.raises(ValueError, match="grid"):
        DPPixelize(1.0, grid=(9, 2))(torch.zeros(3, 8, 8))


def test_functional_secure_refuses_a_generator():
    with pytest.raises(ValueError, match="secure"):
        dp_pixelize(torch.zeros(3, 8, 8), 1.0, 4, secure=True, generator=torch.Generator())


def test_bad_input_leaves_the_input_untouched():
    x = torch.full((3, 8, 8), 1.5)
    with pytest.raises(ValueError):
        DPPixelize(1.0, 4)(x)
    assert torch.equal(x, torch.full((3, 8, 8), 1.5))


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "message"),
    [
        (np.zeros((8, 8)), {}, ValueError, r"\[C, H, W\]"),
        ([[0]], {}, TypeError, "numpy array"),
        (np.zeros((1, 8, 8)), dict(epsilon=0), ValueError, "epsilon"),
        (np.full((1, 4, 4), 2.0), {}, ValueError, "outside"),
    ],
)
def test_sequential_baseline_checks_like_the_layer(image, kwargs, error, message):
    with pytest.raises(error, match=message):
        dp_pixelize_sequential(image, **{"epsilon": 1.0, "b": 4, **kwargs})


@pytest.mark.parametrize("shape", [(512, 512, 3), (2, 32, 48, 3), (32, 48, 1), (32, 48, 4), (5, 8, 3)])
def test_channels_last_images_are_refused_everywhere(shape):
    """``torch.from_numpy(photo)`` without a permute ([H, W, C]) was released as H channels of W×C images. A last
    dimension of 1, 3 or 4 with more than 4 channels (dimension -3) is refused by every release, and nothing is
    charged."""
    hwc = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    accountant = PrivacyAccountant()
    releases = [
        lambda: DPPixelize(1.0, 4, accountant=accountant)(hwc),
        lambda: DPPixelize(1.0, 4, accountant=accountant).release(hwc),
        lambda: RegionAdaptiveDPPixelize(1.0, levels=(4, 8), region="complexity", partition_epsilon=1.0)(hwc),
        lambda: dp_pixelize(hwc, 1.0, 4),
        lambda: dp_pixelize_adaptive(hwc, 1.0, levels=(4, 8), region="complexity", partition_epsilon=1.0),
        lambda: pixelize(hwc, 4),
        lambda: ReleasedOnce([(hwc, 0)], DPPixelize(1.0, 4, accountant=accountant))[0],
        lambda: Restore(DPPixelize(1.0, 4))(hwc),
    ]
    if hwc.ndim == 3:
        releases.append(lambda: dp_pixelize_sequential(hwc.numpy(), 1.0, 4))
    for release in releases:
        with pytest.raises(ValueError, match=r"looks channels-last .*x\.permute\(2, 0, 1\)"):
            release()
    assert accountant.frames == 0
    assert DPPixelize(1.0, 4)(hwc.movedim(-1, -3)).shape == hwc.movedim(-1, -3).shape  # as the message says
