"""NoisyGrid: exact round trips, a video file format, sizes, and hostile input that never crashes or runs code."""

import json
import re
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_pixel_torch import (
    DPPixelize,
    NoisyGrid,
    NoisyGridFormatError,
    RegionAdaptiveDPPixelize,
    load_video,
    save_video,
)

from conftest import generator


def image(dtype=torch.uint8, shape=(2, 3, 37, 50), seed=0):
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator("cpu", seed))
    return x if dtype == torch.uint8 else (x.double() / 255).to(dtype)


def releases():
    x = image()
    mask = torch.zeros(37, 50, dtype=torch.bool)
    mask[5:20, 10:30] = True
    return {
        "uniform-uint8": DPPixelize(1.0, 8, seed=0).release(x),
        "grid-uint8": DPPixelize(1.0, grid=(5, 7), seed=0).release(x),
        "uniform-float16": DPPixelize(1.0, 8, seed=0).release(image(torch.float32)),
        "uniform-float-as-uint8": DPPixelize(1.0, 8, seed=0).release(image(torch.float32), storage="uint8"),
        "adaptive-mask": RegionAdaptiveDPPixelize(1.0, levels=(4, 8, 16), seed=0).release(x, mask=mask),
        "adaptive-complexity": RegionAdaptiveDPPixelize(
            1.0, levels=(4, 8), region="complexity", partition_epsilon=0.5, border="zero_pad", seed=0
        ).release(x),
    }


@pytest.mark.parametrize("name", list(releases()))
def test_round_trip_through_bytes_and_file_is_exact(name, tmp_path):
    grid = releases()[name]
    again = NoisyGrid.from_bytes(grid.to_bytes())
    assert torch.equal(again.restore(), grid.restore())
    assert again.guarantee == grid.guarantee and again.shape == grid.shape and again.dtype == grid.dtype
    assert all(torch.equal(a, b) for a, b in zip(again.split, grid.split))
    grid.save(tmp_path / "release.dpxg")
    assert torch.equal(NoisyGrid.load(tmp_path / "release.dpxg").restore(), grid.restore())
    assert grid.nbytes == (tmp_path / "release.dpxg").stat().st_size


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_restore_is_exactly_what_forward_returns(dtype):
    x = image(dtype)
    forward = DPPixelize(1.0, 8, seed=3)(x)
    assert torch.equal(DPPixelize(1.0, 8, seed=3).release(x, storage="exact").restore(), forward)
    light = DPPixelize(1.0, 8, seed=3).release(x)  # uint8 for uint8 images, float16 for floats
    assert light.storage == ("uint8" if dtype == torch.uint8 else "float16")
    tolerance = 0 if dtype == torch.uint8 else 1e-3  # float16 keeps 11 significant bits of values in [0, 1]
    assert (light.restore().double() - forward.double()).abs().max() <= tolerance


def test_stored_values_are_clipped_cells_and_nothing_else():
    grid = DPPixelize(0.01, 8, seed=0).release(image())  # tiny ε: most noisy means fall outside [0, 255]
    (values,) = grid.values
    assert values.shape == (2, 3, 5, 7) and values.dtype == torch.uint8
    assert grid.split == ()


def test_uniform_uint8_size_is_cells_times_channels_plus_a_fixed_header():
    for shape in [(1, 3, 1080, 1920), (1, 3, 64, 64), (4, 1, 100, 120)]:
        grid = DPPixelize(1.0, 8, seed=0).release(torch.zeros(shape, dtype=torch.uint8))
        rows, cols = -(-shape[-2] // 8), -(-shape[-1] // 8)
        values = shape[0] * shape[1] * rows * cols
        assert grid.nbytes <= 1.05 * values + 600


def test_a_video_is_one_file_of_records(tmp_path):
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 8), region="previous", seed=0)
    frames = [layer.release(image(seed=t)[:1]) for t in range(5)]
    assert save_video(tmp_path / "clip.dpxg", iter(frames)) == 5
    loaded = list(load_video(tmp_path / "clip.dpxg"))
    assert len(loaded) == 5
    assert all(torch.equal(a.restore(), b.restore()) for a, b in zip(loaded, frames))
    with pytest.raises(NoisyGridFormatError, match="trailing bytes"):
        NoisyGrid.load(tmp_path / "clip.dpxg")


# --- hostile input -----------------------------------------------------------------------------------------------


def record(header: dict, payload: bytes = b"", version: int = 1) -> bytes:
    head = json.dumps(header).encode()
    crc = zlib.crc32(payload, zlib.crc32(head))
    return struct.pack("<4sHIQI", b"DPXG", version, len(head), len(payload), crc) + head + payload


def test_every_truncation_raises_the_documented_error():
    data = releases()["adaptive-mask"].to_bytes()
    for n in range(len(data)):
        with pytest.raises(NoisyGridFormatError):
            NoisyGrid.from_bytes(data[:n])


def test_fuzzed_bytes_raise_the_documented_error():
    rng = np.random.default_rng(0)
    for name, grid in releases().items():
        data = bytearray(grid.to_bytes())
        for _ in range(150):
            corrupt = bytearray(data)
            for i in rng.integers(0, len(data), size=rng.integers(1, 4)):
                corrupt[i] ^= int(rng.integers(1, 256))
            with pytest.raises(NoisyGridFormatError):
                NoisyGrid.from_bytes(bytes(corrupt))
        for _ in range(50):
            with pytest.raises(NoisyGridFormatError):
                NoisyGrid.from_bytes(rng.bytes(int(rng.integers(0, 200))))


def test_wrong_version_and_magic():
    data = bytearray(releases()["uniform-uint8"].to_bytes())
    data[4:6] = struct.pack("<H", 2)
    with pytest.raises(NoisyGridFormatError, match="version 2 is not supported"):
        NoisyGrid.from_bytes(bytes(data))
    with pytest.raises(NoisyGridFormatError, match="not a NoisyGrid record"):
        NoisyGrid.from_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))


def test_well_formed_but_hostile_headers_are_refused_before_allocating():
    data = releases()["uniform-uint8"].to_bytes()
    header_len = struct.unpack_from("<I", data, 6)[0]
    good = json.loads(data[22 : 22 + header_len])
    huge = dict(good, shape=[1, 3, 65536, 65536], guarantee=dict(good["guarantee"], b=65536))
    with pytest.raises(NoisyGridFormatError, match="declares more than"):
        NoisyGrid.from_bytes(record(huge, b"\x00" * 3))  # 3 values would be enough, but restore would take 12 GB
    short = dict(good, shape=[1, 3, 1024, 1024], guarantee=dict(good["guarantee"], b=64))
    with pytest.raises(NoisyGridFormatError, match="payload shorter"):
        NoisyGrid.from_bytes(record(short, b"\x00" * 3))
    for bad in (
        dict(good, shape=[3, 8, 8 << 20]),
        dict(good, shape=[1 << 20, 3, 4096, 4096]),
        dict(good, dtype="object"),
        dict(good, storage="pickle"),
        dict(good, guarantee={"epsilon": -1}),
        [1, 2, 3],
        dict(good, shape="3x8x8"),
    ):
        with pytest.raises(NoisyGridFormatError):
            NoisyGrid.from_bytes(record(bad))


class _Exploit:
    def __reduce__(self):
        return (Path("pwned").write_text, ("code ran",))


def test_no_pickle_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps(_Exploit())
    for data in (payload, record({"shape": [1, 1, 1, 1]}, payload)):
        with pytest.raises(NoisyGridFormatError):
            NoisyGrid.from_bytes(data)
    assert not (tmp_path / "pwned").exists()
    source = "\n".join(p.read_text() for p in Path(__file__).parents[1].joinpath("dp_pixel_torch").glob("*.py"))
    for unsafe in (r"\bimport pickle\b", r"(?<![\w.])torch\.load\(", r"allow_pickle\s*=\s*True", r"\bnp\.load\("):
        assert not re.search(unsafe, source), unsafe
