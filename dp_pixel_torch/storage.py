"""Lightweight storage of a release: the noisy cell values and the layout, nothing more (SPEC §5).

A stored release holds the shape, dtype and value range of the images, the cell layout (uniform ``b``/``grid``, or the
adaptive ``levels`` with bit-packed split maps), the clipped noisy cell values (uint8, float16 or float32) and the
privacy guarantee. It never holds a pixel of the input, only what the release already revealed, so storing and
restoring cost no budget.

File format (version 1), one record per release; a video file is a sequence of records::

    b"DPXG" | version: u16 | header length: u32 | payload length: u64 | CRC-32 of header and payload: u32
    header: UTF-8 JSON | payload: packed split bits of levels 1..L, then the values of the released cells

All integers are little-endian. No pickle anywhere: a record from an untrusted source is parsed as JSON and raw
numbers. Everything the header declares is validated (types, finite numbers, a value range that fits the dtype, a
storage that fits the dtype, sizes, finite payload values inside the range), the CRC is checked, and any mismatch
raises :class:`NoisyGridFormatError`. Memory: parsing allocates in proportion to the record's payload (adaptive records
are kept as the values of their released cells); a record whose restore would allocate more than ``max_bytes``
(default :data:`MAX_RESTORE_BYTES`, counting the restored images and the work arrays) is refused before anything is
allocated: ``fill`` at parse time, ``smooth``, ``denoise`` and a :class:`~dp_pixel_torch.temporal.TemporalRestorer`
before their float work (:meth:`NoisyGrid.check_budget`), so a small hostile file cannot make a reader allocate
gigabytes. The CRC guards against accidents, not forgery: a record's guarantee is a claim by whoever wrote it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._validation import check_choice
from .accounting import PrivacyGuarantee
from .functional import level_span, protected_m
from .partitions import GridPartition, MultiLevelGrid
from .restoration import METHODS, canvas_shape, restore_cells

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
#: Limits on what a record may declare, so that a small hostile file cannot make a reader allocate without bound.
MAX_SIDE = 1 << 16
MAX_RANK = 8
MAX_LEVELS = 24
#: The largest JSON header a record may declare (real ones take under 1 kB): a reader never takes in more for it.
MAX_HEADER = 1 << 16
#: The largest pixel count or cell side a guarantee may claim (exact in float64): the noise law is computed in floats.
MAX_COUNT = 1 << 53
#: Default limit on what restoring one record may allocate: 16 frames of 1080p RGB uint8 fit, with their work arrays.
MAX_RESTORE_BYTES = 256 << 20
#: What ``restore("smooth" | "denoise")`` and a :class:`~dp_pixel_torch.temporal.TemporalRestorer` frame allocate
#: beyond the output, checked against a parsed record's ``max_bytes``: bytes per value of the interpolation canvas
#: (:func:`~dp_pixel_torch.restoration.canvas_shape`, at most 4.3 measured: the float32 interpolation of a float16
#: image; under 1 for uint8), plus bytes per level-0 cell value with 2 more cells on every side (the pyramid's 5×5
#: sums pad them: 5 times the cells of a single column; at most 91 measured: a protected denoise at b = 1 in one
#: group of images; about 15 when many groups share the work arrays), plus bytes per pixel of the canvas' height and
#: width (the interpolation's index and weight tables: about 45 measured on a canvas 65,536 pixels wide). Peak CPU
#: memory under the torch profiler, b = 1, 2, 8, uint8, float16 and float32 images (2026-12-06), and peak RSS of
#: hostile shapes (a single row or column of cells, one cell wider than the image, 2026-12-08: ``tests/test_storage.py``).
_SMOOTH_BYTES_PER_VALUE = 8
_SMOOTH_BYTES_PER_CELL = 128
_SMOOTH_BYTES_PER_SIDE = 64


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
        values: the clipped noisy means, in the ``storage`` dtype. Uniform cells: one ``[..., C, rows, cols]``.
            Adaptive cells: per level l = 0..L, the values of the released cells only, flat, in the row-major order
            of ``[..., C, rows_l, cols_l]`` (cells the partition does not release are never stored).
        split: for adaptive releases, one bool ``[..., rows_l, cols_l]`` per level 1..L; empty for uniform cells.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    value_range: tuple[float, float]
    guarantee: PrivacyGuarantee
    values: tuple[torch.Tensor, ...]
    split: tuple[torch.Tensor, ...] = ()
    _released_cells: list[torch.Tensor] | None = field(default=None, init=False, repr=False)
    _max_bytes: int | None = field(default=None, init=False, repr=False)  # a parsed record's budget (from_bytes)

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
            stored.append(v if released is None else v[released[level].unsqueeze(-3).expand_as(v)])
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

    def restore(self, method: str = "fill") -> torch.Tensor:
        """The released images, ``self.shape`` in ``self.dtype``, restored from the stored cell values alone
        (post-processing, no budget; see :mod:`dp_pixel_torch.restoration`).

        ``method``: ``"fill"`` (default) paints each cell with its value, exactly what the layer returned when the
        storage dtype holds the released values exactly (uint8 images; float32 storage of float32 images);
        ``"smooth"`` interpolates between cell centres; ``"denoise"`` estimates every cell mean under the public
        noise law (:meth:`noise_variance`), then smooths. Reads the stored values, the layout and the guarantee.
        """
        check_choice(method, "method", METHODS)
        layout, released = self._layout(), self._released()
        if method == "fill":
            values = self._dense([self._decode(v) for v in self.values])
            return layout.fill(values[0]) if released is None else layout.fill(released, values)
        self.check_budget(f"restore({method!r})")
        values = self._dense([self._unit(v) for v in self.values])
        variances = self._variances(unit=True)
        return restore_cells(layout, released, values, variances, method, self.dtype, self.value_range)

    def check_budget(self, what: str) -> None:
        """Refuse, before anything is allocated, float work on a parsed record (``what``: ``restore("smooth" |
        "denoise")``, a :class:`~dp_pixel_torch.temporal.TemporalRestorer` frame) that would pass the ``max_bytes``
        it was read with: :class:`NoisyGridFormatError`. Counted at the measured bytes a value: the interpolation
        canvas (:func:`~dp_pixel_torch.restoration.canvas_shape`) and its sides, and the level-0 cells with the
        pyramid's padding. A release made in memory is not checked."""
        images = math.prod(self.shape[:-2])
        (height, width), (rows, cols) = canvas_shape(self.finest_partition), self.finest_partition.shape
        need = (
            images * height * width * (_SMOOTH_BYTES_PER_VALUE + self.dtype.itemsize)
            + images * (rows + 4) * (cols + 4) * _SMOOTH_BYTES_PER_CELL
            + (height + width) * _SMOOTH_BYTES_PER_SIDE
        )
        if self._max_bytes is not None and need > self._max_bytes:
            raise NoisyGridFormatError(
                f"{what} of this record needs about {need / 2**20:.0f} MiB of float work arrays, over the limit of "
                f"{self._max_bytes / 2**20:.0f} MiB it was read with: pass max_bytes= to from_bytes/load if it comes "
                "from a trusted source, or restore it with 'fill'"
            )

    def noise_variance(self) -> tuple[torch.Tensor, ...]:
        """The public noise law: the variance of every stored value around its exact cell mean (the zero-padded mean
        ``sum/b²`` under ``border="zero_pad"``), float64 in the
        layout of :attr:`values` (image units², before clipping).

        It is the variance of the noise on the cell sum (:meth:`PrivacyGuarantee.sum_noise_variance`: discrete or
        continuous Laplace at the scale of the cell, with the protected cells' ``m_r``), divided by the cell's
        divisor squared (its area, or ``b²`` under ``border="zero_pad"``), in image units, plus ``step²/12`` when
        the values are rounded to the 255-step lattice (uint8 images, or uint8 storage; ``step = (hi-lo)/255``), which
        is exact when the noise spans many steps and an upper bound of the rounding's share when it spans about one.
        float16 storage rounds too (relative error below 2⁻¹¹), which is not counted. For discrete noise on float
        images, the exact mean is that of the image rounded to the 1/255 lattice. ``inf`` where the variance
        overflows float64 (a release at an ε so small, about 1e-150 and below, that its values are noise alone); the
        restorations read it as a value of no information. Reads the layout and guarantee.
        """
        variances = [v.expand(*self.shape[:-2], *v.shape[-2:]) for v in self._variances()]
        released = self._released()
        if released is None:
            return (variances[0].contiguous(),)
        return tuple(v[r.unsqueeze(-3).expand_as(v)] for v, r in zip(variances, released))

    def noise_variance_map(self) -> torch.Tensor:
        """:meth:`noise_variance` of the value that covers every pixel: float64 ``self.shape``."""
        variances = [v.expand(*self.shape[:-2], *v.shape[-2:]) for v in self._variances()]
        layout, released = self._layout(), self._released()
        return layout.fill(variances[0]) if released is None else layout.fill(released, variances)

    @property
    def finest_partition(self) -> GridPartition:
        """The cells of :meth:`finest_cells`: the uniform layout, or level 0 of an adaptive one (public)."""
        layout = self._layout()
        return layout if isinstance(layout, GridPartition) else layout.partition(0)

    def finest_cells(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The release on its finest cells: ``(values, variances, protected)``.

        ``values`` float64 ``[..., C, rows_0, cols_0]`` (image units): each finest cell takes the value of the
        released cell that holds it; ``variances`` float64 ``[..., 1, rows_0, cols_0]``: that value's
        :meth:`noise_variance` times the finest cells it covers (together they carry its information once);
        ``protected`` bool ``[..., rows_0, cols_0]``: the finest cells inside protected cells (public: the region
        map of a ``protect`` release), all False otherwise. Reads the stored values, the layout and the guarantee.
        """
        layout, released = self._layout(), self._released()
        values = self._dense([self._decode(v, torch.float64) for v in self.values])
        variances = [v.expand(*self.shape[:-3], *v.shape[-3:]) for v in self._variances()]
        if released is None:
            protected = torch.zeros(values[0].shape[:-3] + values[0].shape[-2:], dtype=torch.bool)
            return values[0], variances[0], protected.to(values[0].device)
        ones = torch.ones(layout.partition(0).shape, dtype=torch.float64, device=values[0].device)
        spread = [v * k for v, k in zip(variances, layout.coarsen(ones))]
        top = ~self.split[-1].to(values[0].device) if self.guarantee.protect else torch.zeros_like(released[-1])
        protected = layout.to_finest(top, layout.top)
        return layout.finest_values(released, values), layout.finest_values(released, spread), protected

    def _variances(self, unit: bool = False) -> list[torch.Tensor]:
        """:meth:`noise_variance` dense per level: float64 ``[..., 1, rows_l, cols_l]`` (the same for every channel);
        ``unit``: in units of the squared value range."""
        g, layout = self.guarantee, self._layout()
        lo, hi = self.value_range
        span = level_span(self.dtype, g.noise, self.value_range)
        rounding = 1 / (255**2 * 12) if self.storage == "uint8" else 0.0  # in units of the squared range
        width = 1.0 if unit else hi - lo
        device, lead = self.values[0].device, self.shape[:-3]
        if isinstance(layout, GridPartition):
            partitions, sides = [layout], [g.b]
        else:
            partitions, sides = [layout.partition(level) for level in range(len(g.levels))], list(g.levels)
        variances = []
        for level, (partition, side) in enumerate(zip(partitions, sides)):
            m = g.m
            if g.protect and level == len(partitions) - 1:
                m = protected_m(layout, g, [s.to(device) for s in self.split])
            # m as a float64 tensor: the law is computed in tensors, where an overflow is inf rather than an error
            law = g.sum_noise_variance(self.shape[-3], span, torch.as_tensor(m, dtype=torch.float64, device=device))
            divisor = partition.counts(device).double() if g.border == "area" else float(side**2)
            v = (law.reshape(*law.shape, 1, 1, 1) / divisor / divisor / span / span + rounding) * width * width
            variances.append(v.expand(*lead, 1, *partition.shape))
        return variances

    def _dense(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Stored values as dense per-level tensors ``[..., C, rows_l, cols_l]`` (zero where not released)."""
        released = self._released()
        if released is None:
            return values
        channels = self.shape[-3]
        dense = []
        for mask, v in zip(released, values):
            full = mask.unsqueeze(-3).expand(*mask.shape[:-2], channels, *mask.shape[-2:])
            dense.append(torch.zeros(full.shape, dtype=v.dtype, device=v.device).masked_scatter_(full, v))
        return dense

    def _unit(self, v: torch.Tensor) -> torch.Tensor:
        """Stored values in units of the value range, ``(v - lo)/(hi - lo)``: float64 (uint8 codes are ``k/255``)."""
        if v.dtype == torch.uint8:
            return v.double().div_(255)
        lo, hi = self.value_range
        return (v.double() - lo) / (hi - lo)

    def _decode(self, v: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        if v.dtype == torch.uint8 and self.dtype != torch.uint8:
            lo, hi = self.value_range
            return (v.double() * ((hi - lo) / 255) + lo).clamp_(lo, hi).to(dtype)  # rounding stays in range
        return v.to(dtype)

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
        parts += [v.cpu().contiguous().numpy().tobytes() for v in self.values]
        payload = b"".join(parts)
        crc = zlib.crc32(payload, zlib.crc32(header))
        return _PREFIX.pack(MAGIC, VERSION, len(header), len(payload), crc) + header + payload

    @property
    def nbytes(self) -> int:
        """Size of :meth:`to_bytes`."""
        return len(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_RESTORE_BYTES) -> NoisyGrid:
        """Parse one record; ``max_bytes`` bounds what its :meth:`restore` may allocate (raise it for big batches)."""
        grid, end = _parse(memoryview(data), 0, max_bytes)
        if end != len(data):
            raise NoisyGridFormatError(
                f"{len(data) - end} trailing bytes after the record (a video file? use load_video)"
            )
        return grid

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path, *, max_bytes: int = MAX_RESTORE_BYTES) -> NoisyGrid:
        return cls.from_bytes(Path(path).read_bytes(), max_bytes=max_bytes)


def save_video(path: str | Path, grids: Iterable[NoisyGrid]) -> int:
    """Write releases (one per frame or chunk of frames) to one file, in order; returns the number of records."""
    count = 0
    with open(path, "wb") as f:
        for grid in grids:
            f.write(grid.to_bytes())
            count += 1
    return count


def load_video(path: str | Path, *, max_bytes: int = MAX_RESTORE_BYTES) -> Iterator[NoisyGrid]:
    """The releases stored by :func:`save_video`, in order (``max_bytes`` as in :meth:`NoisyGrid.from_bytes`)."""
    data = memoryview(Path(path).read_bytes())
    offset = 0
    while offset < len(data):
        grid, offset = _parse(data, offset, max_bytes)
        yield grid


def record_guarantees(path: str | Path) -> Iterator[PrivacyGuarantee]:
    """The guarantee of every record of a file written by :meth:`NoisyGrid.save` or :func:`save_video`, in order,
    read from the headers: each header is validated and each record's CRC checked, but its payload is streamed
    through the CRC in MiB blocks and never kept, and no restore budget applies (nothing is restored). So a run's
    own large records (16 frames of 4K, long chunks) are checked in bounded memory."""
    with open(path, "rb") as f:
        while prefix := f.read(_PREFIX.size):
            header_len, payload_len, crc = _prefix(prefix, 0, len(prefix))
            header = f.read(header_len)
            checksum, left = zlib.crc32(header), payload_len
            while left and (block := f.read(min(left, 1 << 20))):
                checksum, left = zlib.crc32(block, checksum), left - len(block)
            if len(header) < header_len or left:
                raise NoisyGridFormatError(f"truncated: {str(path)!r} ends inside a record")
            if checksum != crc:
                raise NoisyGridFormatError("corrupted: CRC-32 mismatch")
            with _format_errors():
                guarantee = _header_fields(json.loads(header, parse_constant=_non_finite))[4]
            yield guarantee


def _prefix(data: memoryview | bytes, offset: int, size: int) -> tuple[int, int, int]:
    """The header length, payload length and CRC of the record at ``offset`` of ``data`` (``size`` bytes in all,
    from its start), after checking its magic, version and that the record fits."""
    if size - offset < _PREFIX.size:
        raise NoisyGridFormatError(f"truncated: {size - offset} bytes, a record starts with {_PREFIX.size}")
    magic, version, header_len, payload_len, crc = _PREFIX.unpack_from(data, offset)
    if magic != MAGIC:
        raise NoisyGridFormatError(f"not a NoisyGrid record (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise NoisyGridFormatError(f"format version {version} is not supported (this library reads version {VERSION})")
    if header_len > MAX_HEADER:
        raise NoisyGridFormatError(f"a header of {header_len} bytes: a record's header takes at most {MAX_HEADER}")
    return header_len, payload_len, crc


@contextlib.contextmanager
def _format_errors() -> Iterator[None]:
    """Any error of decoding a record's content is a :class:`NoisyGridFormatError`."""
    try:
        yield
    except NoisyGridFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, OverflowError, IndexError) as error:
        raise NoisyGridFormatError(f"invalid record: {error}") from error


def _parse(data: memoryview, offset: int, max_bytes: int) -> tuple[NoisyGrid, int]:
    header_len, payload_len, crc = _prefix(data, offset, len(data))
    start = offset + _PREFIX.size
    end = start + header_len + payload_len
    if end > len(data):
        raise NoisyGridFormatError(f"truncated: the record declares {end - offset} bytes, {len(data) - offset} remain")
    header, payload = bytes(data[start : start + header_len]), bytes(data[start + header_len : end])
    if zlib.crc32(payload, zlib.crc32(header)) != crc:
        raise NoisyGridFormatError("corrupted: CRC-32 mismatch")
    with _format_errors():
        grid = _from_header(_header_fields(json.loads(header, parse_constant=_non_finite)), payload, max_bytes)
    return grid, end


def _non_finite(name: str) -> float:
    raise NoisyGridFormatError(f"invalid record: the header holds {name}, and every number must be finite")


_FIELDS = {"shape", "dtype", "storage", "value_range", "guarantee"}


def _header_fields(meta: object) -> tuple[tuple[int, ...], torch.dtype, type, tuple[float, float], PrivacyGuarantee]:
    """A record header's shape, dtype, storage type, value range and guarantee, each validated."""
    if not isinstance(meta, dict) or set(meta) != _FIELDS:
        raise NoisyGridFormatError(f"invalid header: a JSON object with the fields {sorted(_FIELDS)}")
    shape = meta["shape"]
    if (
        not isinstance(shape, list)
        or not 3 <= len(shape) <= MAX_RANK
        or any(type(n) is not int or n < 0 for n in shape)
        or not (1 <= shape[-1] <= MAX_SIDE and 1 <= shape[-2] <= MAX_SIDE)
    ):
        raise NoisyGridFormatError(f"invalid shape {shape!r}: [..., C, H, W] of integers with 1 <= H, W <= {MAX_SIDE}")
    shape = tuple(shape)
    if meta["dtype"] not in _IMAGE_DTYPES or meta["storage"] not in _STORAGE_DTYPES:
        raise NoisyGridFormatError(f"invalid dtype {meta['dtype']!r} or storage {meta['storage']!r}")
    dtype, storage = _IMAGE_DTYPES[meta["dtype"]], _STORAGE_DTYPES[meta["storage"]]
    if dtype == torch.uint8 and storage is not np.uint8:
        raise NoisyGridFormatError(f"a uint8 image stores uint8 values, not {meta['storage']}")
    value_range = meta["value_range"]
    if (
        not isinstance(value_range, list)
        or len(value_range) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value_range)
        or not value_range[0] < value_range[1]
        or (dtype == torch.uint8 and value_range != [0, 255])
    ):
        raise NoisyGridFormatError(
            f"invalid value_range {value_range!r}: two finite numbers lo < hi ([0, 255] for uint8 images)"
        )
    value_range = (float(value_range[0]), float(value_range[1]))
    in_dtype = torch.tensor(value_range, dtype=torch.float64).to(dtype)
    if not (math.isfinite(value_range[1] - value_range[0]) and torch.isfinite(in_dtype).all()):
        raise NoisyGridFormatError(f"invalid value_range {value_range}: its ends and span must be finite in {dtype}")
    fields = meta["guarantee"]
    if not isinstance(fields, dict):
        raise NoisyGridFormatError("invalid guarantee: a JSON object")
    guarantee = PrivacyGuarantee(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    if guarantee.levels is not None and len(guarantee.levels) > MAX_LEVELS:
        raise NoisyGridFormatError(f"{len(guarantee.levels)} levels: at most {MAX_LEVELS} are read")
    counts = (guarantee.m, guarantee.b, guarantee.protect_m, *(guarantee.grid or ()), *(guarantee.levels or ()))
    if any(n is not None and n > MAX_COUNT for n in counts):
        raise NoisyGridFormatError("invalid guarantee: m, protect_m, b, grid and levels must be at most 2^53")
    return shape, dtype, storage, value_range, guarantee


def _from_header(fields: tuple, payload: bytes, max_bytes: int) -> NoisyGrid:
    """The release of a record from its :func:`_header_fields` and payload, refused if its restore would allocate
    more than ``max_bytes``."""
    shape, dtype, storage, value_range, guarantee = fields
    empty = NoisyGrid(shape, dtype, value_range, guarantee, ())
    layout = empty._layout()
    need = _restore_bytes(shape, dtype, storage, layout)
    if need > max_bytes:
        raise NoisyGridFormatError(
            f"the record declares images of shape {shape} whose restore needs about {need / 2**20:.0f} MiB, over the "
            f"limit of {max_bytes / 2**20:.0f} MiB: pass max_bytes= to read it if it comes from a trusted source"
        )
    lead, channels = shape[:-3], shape[-3]
    reader = _Reader(payload)
    if isinstance(layout, GridPartition):
        values = (reader.array(storage, (*lead, channels, *layout.shape)),)
        split = ()
    else:
        split = tuple(reader.bits((*lead, *layout.partition(level).shape)) for level in range(1, len(layout.levels)))
        counts = layout.released_counts(list(split))
        if guarantee.protect and any(counts[1:-1]):
            raise NoisyGridFormatError(
                "invalid record: a protected release has cells of the finest and the coarsest level only, but its "
                "split maps release cells of an intermediate level"
            )
        values = tuple(reader.array(storage, (n * channels,)) for n in counts)
    reader.done()
    _check_values(values, dtype, storage, value_range)
    grid = NoisyGrid(shape, dtype, value_range, guarantee, values, split)
    object.__setattr__(grid, "_max_bytes", max_bytes)  # smooth and denoise check their work arrays against it
    return grid


def _check_values(values: tuple[torch.Tensor, ...], dtype: torch.dtype, storage: type, value_range) -> None:
    """Stored float values are clipped means: finite and inside the value range (as rounded to the storage)."""
    if storage is np.uint8:
        return
    lo, hi = torch.tensor(value_range, dtype=torch.float64).to(dtype).to(values[0].dtype).tolist()
    for v in values:
        if v.numel() and not (torch.isfinite(v).all() and v.min() >= lo and v.max() <= hi):
            raise NoisyGridFormatError(f"stored values must be finite and inside the value range [{lo:g}, {hi:g}]")


def _restore_bytes(shape: tuple[int, ...], dtype: torch.dtype, storage: type, layout) -> int:
    """An upper bound of what :meth:`NoisyGrid.restore` allocates: the images, the image-wide half of the fill, the
    decoded cell values (float64 on the way for uint8-coded floats), and for adaptive cells the level-0 maps."""
    size, stored = torch.empty((), dtype=dtype).element_size(), np.dtype(storage).itemsize
    images, channels = math.prod(shape[:-3]), shape[-3]
    height, width = shape[-2:]
    if isinstance(layout, GridPartition):
        rows, cols = layout.shape
        return images * channels * (height * width + rows * width) * size + images * channels * rows * cols * (
            stored + 16 + size
        )
    cells = [math.prod(layout.partition(level).shape) for level in range(len(layout.levels))]
    rows0 = layout.partition(0).shape[0]
    per_image = (
        channels * (height * width + rows0 * width) * size  # the images and the column-filled rows
        + sum(cells) * (channels * (stored + 16 + size) + 2)  # dense decoded values and released maps per level
        + cells[0] * (4 * channels * size + 32)  # level-0 values, their expansions, and the int64 level map
    )
    return images * per_image


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


def store_first(path: Path, data: bytes) -> bytes:
    """Store ``data`` at ``path`` unless a file is already there; return what is stored. Atomic on POSIX: of several
    processes storing one path, exactly one wins, and every one of them reads back the winner's bytes."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
        f.write(data)
    try:
        os.link(f.name, path)  # fails if another process stored this file first
    except FileExistsError:
        data = path.read_bytes()  # ours is discarded unseen
    finally:
        os.unlink(f.name)
    return data
