"""The layer's contract: types, dtypes, devices, layouts, torchvision pipelines, gradients, and no aliasing."""

import copy
import dataclasses
import datetime
import types
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from dp_pixel_torch import DPPixelize, PrivacyGuarantee, RegionAdaptiveDPPixelize, dp_pixelize
from dp_pixel_torch.functional import pixelize

from conftest import generator

DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]


def image(dtype: torch.dtype, *shape: int, device="cpu") -> torch.Tensor:
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator("cpu", 0)).to(device)
    return x if dtype == torch.uint8 else (x.to(torch.float64) / 255).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noise", ["discrete", "laplace"])
def test_dtype_shape_device_preserved_in_new_memory(dtype, noise, device):
    x = image(dtype, 2, 3, 17, 23, device=device)
    before = x.clone()
    out = DPPixelize(1.0, 4, noise=noise, generator=generator(device, 0))(x)
    assert (out.dtype, out.shape, out.device) == (x.dtype, x.shape, x.device)
    assert type(out) is torch.Tensor
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert torch.equal(x, before), "the input must not change"
    assert not out.isnan().any() if out.is_floating_point() else True
    lo, hi = (0, 255) if dtype == torch.uint8 else (0.0, 1.0)
    assert out.min() >= lo and out.max() <= hi


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 3, 8, 8), (2, 4, 3, 8, 8)])
def test_any_leading_shape(shape):
    assert DPPixelize(1.0, 4, seed=0)(image(torch.uint8, *shape)).shape == shape


@pytest.mark.parametrize("shape", [(3, 8, 1), (3, 8, 3), (4, 8, 4), (1, 5, 3), (2, 4, 9, 3), (5, 8, 5), (6, 3, 8)])
def test_chw_with_few_channels_and_any_width_is_released(shape):
    """Only channels-last looking shapes (last dimension 1, 3 or 4 with more than 4 channels) are refused."""
    x = image(torch.uint8, *shape)
    assert DPPixelize(1.0, 2, seed=0)(x).shape == shape and dp_pixelize(x, 1.0, 2).shape == shape
    if len(shape) == 4:
        channels_last = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(DPPixelize(1.0, 2, seed=0)(channels_last), DPPixelize(1.0, 2, seed=0)(x))


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 0, 8, 8), (2, 3, 0, 8)])
def test_empty_batch_passes_through(shape):
    x = torch.empty(shape, dtype=torch.uint8)
    out = DPPixelize(1.0, 4)(x)
    assert out.shape == shape and out.dtype == torch.uint8


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_channels_last_and_non_contiguous_give_the_same_release(dtype):
    x = image(dtype, 2, 3, 20, 28)
    reference = DPPixelize(2.0, 4, seed=1)(x)
    channels_last = DPPixelize(2.0, 4, seed=1)(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(channels_last, reference)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    transposed = image(dtype, 2, 3, 28, 20).transpose(-1, -2)  # a non-contiguous view
    assert torch.equal(DPPixelize(2.0, 4, seed=1)(transposed), DPPixelize(2.0, 4, seed=1)(transposed.contiguous()))
    strided = image(dtype, 2, 3, 40, 28)[:, :, ::2]
    assert torch.equal(DPPixelize(2.0, 4, seed=1)(strided), DPPixelize(2.0, 4, seed=1)(strided.contiguous()))


def test_tv_tensors_keep_their_type():
    layer = DPPixelize(1.0, 4, seed=0)
    img = tv_tensors.Image(image(torch.uint8, 3, 16, 16))
    video = tv_tensors.Video(image(torch.float32, 5, 3, 16, 16))
    assert type(layer(img)) is tv_tensors.Image and layer(img).shape == img.shape
    assert type(layer(video)) is tv_tensors.Video and layer(video).dtype == torch.float32


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_pil_images_keep_mode_and_size(mode):
    pil = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (15, 22, 4), dtype=np.uint8)).convert(mode)
    out = DPPixelize(1.0, 4, seed=0)(pil)
    assert isinstance(out, PIL.Image.Image) and out.mode == mode and out.size == pil.size
    arr = np.asarray(out)
    assert (arr[:4, :4] == arr[0, 0]).all()  # the first 4×4 cell is one colour


def test_inside_v2_compose_with_labels_and_boxes():
    boxes = tv_tensors.BoundingBoxes([[1, 2, 10, 12]], format="XYXY", canvas_size=(32, 48))
    pipeline = v2.Compose(
        [
            v2.ToImage(),
            DPPixelize(2.0, 8, seed=0),
            v2.RandomHorizontalFlip(p=1.0),  # augmentations come after the DP layer
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    pil = PIL.Image.new("RGB", (48, 32), (120, 60, 200))
    out_img, out_boxes, label = pipeline(pil, boxes, 3)
    assert isinstance(out_img, tv_tensors.Image) and out_img.shape == (3, 32, 48) and out_img.dtype == torch.float32
    assert label == 3
    assert out_boxes.tolist() == [[38, 2, 47, 12]]  # flipped by the flip, untouched by the DP layer


def test_pure_tensor_with_extra_tensors_only_first_is_released():
    x, target = image(torch.uint8, 3, 8, 8), torch.tensor([1, 2, 3])
    out, out_target = DPPixelize(1.0, 4, seed=0)(x, target)
    assert out_target is target and out.shape == x.shape


@pytest.mark.parametrize(
    "sample",
    [
        lambda: (image(torch.uint8, 3, 8, 8), image(torch.uint8, 3, 8, 8)),
        lambda: (tv_tensors.Image(image(torch.uint8, 3, 8, 8)), image(torch.uint8, 3, 8, 8)),
        lambda: {"image": tv_tensors.Image(image(torch.uint8, 3, 8, 8)), "raw": image(torch.float32, 1, 8, 8)},
        lambda: (image(torch.uint8, 3, 8, 8), np.zeros((8, 8, 3), dtype=np.uint8)),
        lambda: (PIL.Image.new("RGB", (8, 8)), image(torch.uint8, 3, 8, 8)),
        lambda: (image(torch.uint8, 3, 8, 8), image(torch.float32, 8, 8)),
        lambda: (tv_tensors.Image(image(torch.uint8, 3, 8, 8)), image(torch.uint8, 3, 8, 8).to(torch.int32) * 257),
        lambda: (tv_tensors.Image(image(torch.uint8, 3, 8, 8)), np.zeros((8, 8), dtype=np.uint16)),
        lambda: (tv_tensors.Image(image(torch.uint8, 3, 8, 8)), Depth(image(torch.float32, 1, 8, 8))),
        lambda: (tv_tensors.Image(image(torch.uint8, 3, 8, 8)), types.SimpleNamespace(raw=image(torch.uint8, 3, 8, 8))),
        lambda: (tv_tensors.Image(image(torch.uint8, 3, 8, 8)), {"bytes": b"\x89PNG...", "path": "a.png"}),
        lambda: (tv_tensors.Image(image(torch.uint8, 3, 8, 8)), image(torch.uint8, 3, 64, 64).flatten()),
        lambda: (tv_tensors.Image(image(torch.uint8, 3, 8, 8)), np.array([np.zeros((2, 2)), np.zeros((3, 3))], object)),
    ],
    ids=[
        "two-tensors",
        "image-and-tensor",
        "dict",
        "numpy",
        "pil-and-tensor",
        "2d-tensor",
        "int32",
        "uint16-numpy",
        "custom-tv-tensor",
        "object",
        "encoded-bytes",
        "flattened",
        "object-array",
    ],
)
def test_an_image_that_torchvision_would_pass_through_raises(sample):
    """torchvision v2 transforms one plain tensor per sample and passes the others through: for a privacy layer that
    is a raw release, so any input it would not release that may hold an image is an error."""
    with pytest.raises(TypeError, match="pass through unreleased"):
        DPPixelize(1.0, 4, seed=0)(sample())


class Depth(tv_tensors.TVTensor):
    """A user's own tv_tensor type: the layer cannot know it is not an image."""


def test_annotations_and_labels_pass_through_next_to_the_image():
    x = tv_tensors.Image(image(torch.uint8, 3, 16, 16))
    target = {
        "label": 3,
        "labels": torch.tensor([1, 2]),
        "one_hot": torch.zeros(1000),
        "landmarks": torch.rand(5, 2) * 16,
        "keypoints": torch.rand(2, 17, 3),
        "many_keypoints": tv_tensors.KeyPoints(torch.rand(12, 17, 2), canvas_size=(16, 16)),
        "boxes": torch.rand(4, 4) * 16,
        "mask": tv_tensors.Mask(torch.zeros(16, 16, dtype=torch.uint8)),
        "path": Path("img_0001.jpg"),
        "name": "img_0001",
        "flag": np.bool_(True),
        "taken": datetime.date(2009, 1, 1),
    }
    out, out_target = DPPixelize(1.0, 4, seed=0)(x, target)
    assert not torch.equal(out, x) and all(out_target[k] is target[k] for k in target)


def test_output_never_requires_grad_and_layer_has_no_parameters():
    x = image(torch.float32, 1, 3, 8, 8).requires_grad_()
    layer = DPPixelize(1.0, 4, seed=0)
    assert not layer(x).requires_grad
    assert not dp_pixelize(x, 1.0, 4).requires_grad
    assert list(layer.parameters()) == [] and layer.state_dict() == {}
    assert x.grad is None


def test_module_niceties():
    layer = DPPixelize(1.5, 8, 2, noise="laplace", seed=0)
    assert "epsilon=1.5" in repr(layer) and "b=8" in repr(layer)
    deep = copy.deepcopy(layer)
    x = image(torch.uint8, 3, 16, 16)
    assert torch.equal(deep(x), layer(x))


def test_guarantee_is_explicit_immutable_and_readable():
    g = DPPixelize(1.0, 8, 4, seed=0).guarantee
    assert isinstance(g, PrivacyGuarantee)
    assert (g.epsilon, g.m, g.b, g.channel_rule, g.noise, g.border) == (1.0, 4, 8, "joint", "discrete", "area")
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.epsilon = 2.0
    text = str(g)
    for part in (
        "ε = 1 per image",
        "all channels jointly",
        "m = 4 pixels",
        "b = 8",
        "border = area",
        "discrete Laplace",
    ):
        assert part in text
    assert g.noise_scale(3, 255) == 3 * 255 * 4 / 1.0
    per_channel = DPPixelize(0.5, 8, channel_rule="per_channel").guarantee
    assert per_channel.total_epsilon(3) == 1.5 and per_channel.total_epsilon(1) == 0.5
    assert "per channel" in str(per_channel) and "1.5 for RGB" in str(per_channel)
    assert "ChaCha20 stream keyed with fresh OS entropy per call" in str(DPPixelize(1.0, 8, secure=True).guarantee)
    assert "grid = 4×6 cells" in str(DPPixelize(1.0, grid=(4, 6)).guarantee)


def test_the_report_states_the_total_that_is_charged():
    """Per-channel ε with a private partition: RGB is charged 3·0.5 + 0.2 = 1.7, and the text must say so."""
    layer = RegionAdaptiveDPPixelize(
        0.5, levels=(4, 8), region="complexity", partition_epsilon=0.2, channel_rule="per_channel"
    )
    g = layer.guarantee
    assert g.total_epsilon(3) == pytest.approx(1.7) and g.total_epsilon(1) == pytest.approx(0.7)
    assert "1.7 for RGB" in str(g) and "0.7 per channel" not in str(g)
    assert "total ε = 3·0.5 + 0.2 = 1.7" in g.report(3)
    assert "total ε = 0.5 + 0.2 = 0.7" in g.report(1)
    assert "total ε = 0.5 + 0.2 = 0.7" in RegionAdaptiveDPPixelize(
        0.5, levels=(4, 8), region="complexity", partition_epsilon=0.2
    ).guarantee.report(3)


def test_value_range_for_float_data_in_other_units():
    x = image(torch.float32, 3, 16, 16) * 255  # floats in [0, 255]
    out = DPPixelize(1.0, 4, value_range=(0, 255), seed=0)(x)
    assert out.max() <= 255 and out.min() >= 0 and out.max() > 1
    # Same release as the uint8 image, up to float rounding of the lattice.
    discrete_from_uint8 = DPPixelize(1.0, 4, seed=0)(x.round().to(torch.uint8))
    assert (out.round() - discrete_from_uint8.float()).abs().max() <= 1


def test_extreme_budgets_give_no_nan_and_stay_in_range():
    x = image(torch.float32, 2, 3, 16, 16)
    for eps in (1e-6, 1e6):
        for noise in ("discrete", "laplace"):
            out = DPPixelize(eps, 4, noise=noise, seed=0)(x)
            assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # A huge ε is (nearly) plain pixelization: the release is the cell mean.
    out = DPPixelize(1e9, 4, noise="laplace", seed=0)(x)
    torch.testing.assert_close(out[..., ::4, ::4], torch.nn.functional.avg_pool2d(x, 4), atol=1e-5, rtol=0)


def test_plain_pixelize_is_the_noiseless_mean_and_not_private():
    x = image(torch.float64, 2, 3, 10, 13)
    out = pixelize(x, 4)
    torch.testing.assert_close(out[..., :8:4, :12:4], torch.nn.functional.avg_pool2d(x[..., :8, :12], 4))
    torch.testing.assert_close(out[..., 8, 12], x[..., 8:, 12:].mean((-1, -2)))  # 2×1 corner cell, true area
    u8 = (x * 255).round().to(torch.uint8)
    assert pixelize(u8, grid=(2, 3)).dtype == torch.uint8
