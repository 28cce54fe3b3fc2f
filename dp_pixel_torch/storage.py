"""Lightweight storage of a release: the noisy cell values and the layout, nothing more (SPEC §5).

A stored release holds the shape, dtype and value range of the images, the cell layout (uniform ``b``/``grid``, or the
adaptive ``levels`` with bit-packed split maps), the clipped noisy cell values (uint8, float16 or float32) and the
privacy guarantee. It never holds a pixel of the input, only what the release already revealed, so storing and
restoring cost no budget.

File format (version 1), one record per release; a video file is a sequence of records::

    b"DPXG" | version: u16 | header length: u32 | payload length: u64 | CRC-32 of header and payload: u32
    header: UTF-8 JSON | payload: packed split bits of levels 1..L, then the values of the released cells

All integers are little-endian. No pickle anywhere: a record from an untrusted source is parsed as JSON and raw
numbers, checked against its declared sizes and CRC, and any mismatch raises :class:`NoisyGridFormatError`.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .accounting import PrivacyGuarantee
from .partitions import GridPartition, MultiLevelGrid

MAGIC = b"DPXG"
VERSION = 1
_PREFIX = struct.Struct("<4sHIQI")
_IMAGE_DTYPES = {
    "uint8": torch.uint8,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_STORAGE_DTYPES = {"uint8": np.uint8, "float16": np.float16, "float32": np.float32, "float64": np.float64}
#: Limits on what a record may declare, so that a small hostile file cannot make restore() allocate without bound.
MAX_SIDE = 1 << 16
MAX_VALUES = 1 << 30


class NoisyGridFormatError(ValueError):
    """A stored release is truncated, corrupted, of another version, or not a release at all."""


@dataclass(frozen=True, eq=False)
class NoisyGrid:
    """The released statistics of one batch of images (or frames), enough to restore the released images exactly.

    Attributes:
        shape: ``(..., C, H, W)`` of the released images.
        dtype: their dtype.
        value_range: ``(lo, hi)`` of their values.
        guarantee: what the release promises (cells, noise, ε, partition source).
        values: per level (one for uniform cells) ``[..., C, rows, cols]`` clipped noisy means, in ``storage`` dtype;
            cells that were not released hold 0.
        split: for adaptive releases, one bool ``[..., rows_l, cols_l]`` per level 1..L; empty for uniform cells.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    value_range: tuple[float, float]
    guarantee: PrivacyGuarantee
    values: tuple[torch.Tensor, ...]
    split: tuple[torch.Tensor, ...] = ()
    _released_cells: list[torch.Tensor] | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_release(
        cls,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        value_range: tuple[float, float],
        guarantee: PrivacyGuarantee,
        values: list[torch.Tensor],
        split: list[torch.Tensor] = (),
        storage: str | None = None,
    ) -> NoisyGrid:
        """Wrap released values (in the image dtype), converted to ``storage``: ``"uint8"``, ``"float16"``,
        ``"float32"``, ``"float64"``, or ``"exact"`` (the image dtype). The default is the light one: uint8 for uint8
        images, float16 for float images. Conversion is post-processing."""
        storage = storage or ("uint8" if dtype == torch.uint8 else "float16")
        if storage == "exact":
            storage = "float32" if dtype == torch.bfloat16 else str(dtype).removeprefix("torch.")
        if storage not in _STORAGE_DTYPES:
            raise ValueError(f"storage must be one of {tuple(_STORAGE_DTYPES)}, got {storage!r}")
        if dtype == torch.uint8 and storage != "uint8":
            raise ValueError("uint8 images store their cell values as uint8 (storage='uint8')")
        grid = cls(tuple(shape), dtype, value_range, guarantee, (), tuple(s.to(torch.bool) for s in split))
        released = grid._released()
        stored = []
        for level, v in enumerate(values):
            if storage == "uint8" and dtype != torch.uint8:
                lo, hi = value_range
                v = ((v.double() - lo) * (255 / (hi - lo))).round_().clamp_(0, 255)
            v = v.to(getattr(torch, storage))
            stored.append(v if released is None else torch.where(released[level].unsqueeze(-3), v, 0))
        release = cls(grid.shape, dtype, value_range, guarantee, tuple(stored), grid.split)
        object.__setattr__(release, "_released_cells", released)
        return release

    @property
    def storage(self) -> str:
        return str(self.values[0].dtype).removeprefix("torch.")

    @property
    def is_adaptive(self) -> bool:
        return self.guarantee.levels is not None

    def _layout(self) -> MultiLevelGrid | GridPartition:
        height, width = self.shape[-2:]
        g = self.guarantee
        if g.levels is not None:
            return MultiLevelGrid(height, width, g.levels)
        return GridPartition.for_cells(height, width, g.b, g.grid)

    def _released(self) -> list[torch.Tensor] | None:
        """The released cells of every level (adaptive releases), computed once from the split maps."""
        if not self.is_adaptive:
            return None
        if self._released_cells is None:
            object.__setattr__(self, "_released_cells", self._layout().released(list(self.split)))
        return self._released_cells

    def restore(self) -> torch.Tensor:
        """The released images, ``self.shape`` in ``self.dtype``: exactly what the layer returned when the storage
        dtype holds the released values exactly (uint8 images; float32 storage of float32 images)."""
        values = [self._decode(v) for v in self.values]
        layout = self._layout()
        if isinstance(layout, GridPartition):
            return layout.fill(values[0])
        return layout.fill(self._released(), values)

    def _decode(self, v: torch.Tensor) -> torch.Tensor:
        if v.dtype == torch.uint8 and self.dtype != torch.uint8:
            lo, hi = self.value_range
            return (v.double() * ((hi - lo) / 255) + lo).to(self.dtype)
        return v.to(self.dtype)

    # --- serialisation -------------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        header = json.dumps(
            {
                "shape": list(self.shape),
                "dtype": str(self.dtype).removeprefix("torch."),
                "storage": self.storage,
                "value_range": list(self.value_range),
                "guarantee": asdict(self.guarantee),
            },
            sort_keys=True,
        ).encode()
        parts = [np.packbits(s.cpu().numpy().ravel()).tobytes() for s in self.split]
        released = self._released()
        for level, v in enumerate(self.values):
            if released is not None:
                v = v[released[level].unsqueeze(-3).expand_as(v)]
            v = v.cpu()
            parts.append(v.contiguous().numpy().tobytes())
        payload = b"".join(parts)
        crc = zlib.crc32(payload, zlib.crc32(header))
        return _PREFIX.pack(MAGIC, VERSION, len(header), len(payload), crc) + header + payload

    @property
    def nbytes(self) -> int:
        """Size of :meth:`to_bytes`."""
        return len(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> NoisyGrid:
        grid, end = _parse(memoryview(data), 0)
        if end != len(data):
            raise NoisyGridFormatError(
                f"{len(data) - end} trailing bytes after the record (a video file? use load_video)"
            )
        return grid

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> NoisyGrid:
        return cls.from_bytes(Path(path).read_bytes())


def save_video(path: str | Path, grids: Iterable[NoisyGrid]) -> int:
    """Write releases (one per frame or chunk of frames) to one file, in order; returns the number of records."""
    count = 0
    with open(path, "wb") as f:
        for grid in grids:
            f.write(grid.to_bytes())
            count += 1
    return count


def load_video(path: str | Path) -> Iterator[NoisyGrid]:
    """The releases stored by :func:`save_video`, in order."""
    data = memoryview(Path(path).read_bytes())
    offset = 0
    while offset < len(data):
        grid, offset = _parse(data, offset)
        yield grid


def _parse(data: memoryview, offset: int) -> tuple[NoisyGrid, int]:
    if len(data) - offset < _PREFIX.size:
        raise NoisyGridFormatError(f"truncated: {len(data) - offset} bytes, a record starts with {_PREFIX.size}")
    magic, version, header_len, payload_len, crc = _PREFIX.unpack_from(data, offset)
    if magic != MAGIC:
        raise NoisyGridFormatError(f"not a NoisyGrid record (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise NoisyGridFormatError(f"format version {version} is not supported (this library reads version {VERSION})")
    start = offset + _PREFIX.size
    end = start + header_len + payload_len
    if end > len(data):
        raise NoisyGridFormatError(f"truncated: the record declares {end - offset} bytes, {len(data) - offset} remain")
    header, payload = bytes(data[start : start + header_len]), bytes(data[start + header_len : end])
    if zlib.crc32(payload, zlib.crc32(header)) != crc:
        raise NoisyGridFormatError("corrupted: CRC-32 mismatch")
    try:
        meta = json.loads(header)
        grid = _from_header(meta, payload)
    except NoisyGridFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as error:
        raise NoisyGridFormatError(f"invalid record: {error}") from error
    return grid, end


def _from_header(meta: dict, payload: bytes) -> NoisyGrid:
    shape = tuple(int(n) for n in meta["shape"])
    if len(shape) < 3 or min(shape) < 0 or not (1 <= shape[-1] <= MAX_SIDE and 1 <= shape[-2] <= MAX_SIDE):
        raise NoisyGridFormatError(f"invalid shape {shape}: [..., C, H, W] with 1 <= H, W <= {MAX_SIDE}")
    if math.prod(shape) > MAX_VALUES:
        raise NoisyGridFormatError(f"shape {shape} declares more than {MAX_VALUES} values")
    dtype = _IMAGE_DTYPES[meta["dtype"]]
    storage = _STORAGE_DTYPES[meta["storage"]]
    value_range = tuple(float(v) for v in meta["value_range"])
    guarantee = PrivacyGuarantee(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["guarantee"].items()})
    lead, channels = shape[:-3], shape[-3]
    empty = NoisyGrid(shape, dtype, value_range, guarantee, ())
    layout = empty._layout()
    reader = _Reader(payload)
    if isinstance(layout, GridPartition):
        values = (reader.array(storage, (*lead, channels, *layout.shape)),)
        split = ()
    else:
        split = tuple(reader.bits((*lead, *layout.partition(level).shape)) for level in range(1, len(layout.levels)))
        released = layout.released(list(split))
        values = []
        for level, mask in enumerate(released):
            stored = reader.array(storage, (int(mask.sum()) * channels,))  # size-checked before any allocation
            full = mask.unsqueeze(-3).expand(*lead, channels, *layout.partition(level).shape)
            v = torch.zeros(full.shape, dtype=stored.dtype)
            v[full] = stored
            values.append(v)
        values = tuple(values)
    reader.done()
    return NoisyGrid(shape, dtype, value_range, guarantee, values, split)


class _Reader:
    """Reads typed arrays off a payload, checking every size."""

    def __init__(self, payload: bytes):
        self.payload, self.offset = payload, 0

    def _take(self, n: int) -> bytes:
        if self.offset + n > len(self.payload):
            raise NoisyGridFormatError("payload shorter than its header declares")
        chunk = self.payload[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def array(self, dtype: type, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        chunk = self._take(n * np.dtype(dtype).itemsize)
        return torch.from_numpy(np.frombuffer(chunk, dtype=dtype).reshape(shape).copy())

    def bits(self, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        chunk = self._take((n + 7) // 8)
        return torch.from_numpy(np.unpackbits(np.frombuffer(chunk, dtype=np.uint8))[:n].reshape(shape).astype(bool))

    def done(self) -> None:
        if self.offset != len(self.payload):
            raise NoisyGridFormatError("payload longer than its header declares")
