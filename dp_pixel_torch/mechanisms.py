"""DP pixelization layers: thin ``nn.Module`` / torchvision ``v2.Transform`` classes over :mod:`.functional`."""

from __future__ import annotations

import datetime
import enum
import math
import numbers
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2._utils import is_pure_tensor

from ._validation import check_choice, check_generator_device, check_input, check_value_range
from .accounting import PrivacyAccountant, PrivacyGuarantee
from .functional import (
    adaptive_cell_values,
    adaptive_guarantee,
    check_split_rule,
    like_layout,
    noisy_cell_values,
    public_split,
    restore_adaptive,
    uniform_release,
)
from .kernels import check_backend, choose
from .noise import KeyStream, NoiseSource, Randomness, check_call_randomness
from .partitions import GridPartition, MultiLevelGrid
from .restoration import METHODS
from .storage import NoisyGrid

_PIL_MODES = ("L", "RGB", "RGBA")


class _DPLayer(Transform):
    """Shared plumbing: input types, checks, randomness, and the guarantee. Subclasses implement ``release``."""

    _transformed_types = (is_pure_tensor, tv_tensors.Image, tv_tensors.Video, PIL.Image.Image)

    def __init__(self, guarantee: PrivacyGuarantee, value_range, secure, generator, seed, accountant, backend) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        if accountant is not None and not isinstance(accountant, PrivacyAccountant):
            raise TypeError(f"accountant must be a PrivacyAccountant or None, got {type(accountant).__name__}")
        self.accountant = accountant
        self._guarantee = guarantee
        self.value_range = None if value_range is None else tuple(value_range)
        check_value_range(self.value_range, torch.float32)
        self._noise_source = NoiseSource(generator=generator, seed=seed, secure=secure)

    @property
    def guarantee(self) -> PrivacyGuarantee:
        """What one call promises for each image or frame it releases."""
        return self._guarantee

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        # torchvision passes unknown types through untouched, and releases only the first plain tensor of a sample
        # (none next to a tv_tensors.Image/Video or PIL image): for a privacy layer either would release raw data.
        needs = self._needs_transform_list(flat_inputs)
        if not any(needs):
            found = ", ".join(sorted({type(i).__name__ for i in flat_inputs}))
            raise TypeError(
                f"{type(self).__name__} found no image to release: expected a torch.Tensor [..., C, H, W], "
                f"tv_tensors.Image/Video or a PIL image, got {found}"
            )
        check_nothing_raw([i for i, n in zip(flat_inputs, needs) if not n], type(self).__name__)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            if inpt.mode not in _PIL_MODES:
                raise TypeError(f"PIL images must have mode in {_PIL_MODES}, got {inpt.mode!r}")
            return TF.to_pil_image(self._pixelize(TF.pil_to_tensor(inpt), params), mode=inpt.mode)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)):
            return tv_tensors.wrap(self._pixelize(inpt.as_subclass(torch.Tensor), params), like=inpt)
        return self._pixelize(inpt, params)

    def _pixelize(self, x: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        if x.numel() == 0:  # an empty batch: nothing to release
            return check_input(x, self.value_range, "input")[0].clone()
        return like_layout(self.released_image(x, **params), x)

    def released_image(self, x: torch.Tensor, **params: Any) -> torch.Tensor:
        """The released image of ``x``, painted straight from the noisy cell values (no NoisyGrid)."""
        raise NotImplementedError

    def _checked(
        self, x: torch.Tensor, generator: Randomness
    ) -> tuple[torch.Tensor, tuple[float, float], KeyStream | torch.Generator]:
        if isinstance(x, tv_tensors.TVTensor):
            x = x.as_subclass(torch.Tensor)
        x, bounds = check_input(x, self.value_range, "input")
        if 0 in x.shape[-2:]:
            raise ValueError(f"input of shape {tuple(x.shape)} has no pixels to release")
        if generator is None:
            generator = self._noise_source.generator_for()
        elif self._guarantee.secure:
            raise ValueError("secure=True keys every call from OS entropy and refuses a generator")
        else:
            check_call_randomness(generator)  # before any charge: a torch generator in a DataLoader worker is refused
        check_generator_device(generator, x.device)
        return x, bounds, generator

    def _charge(self, x: torch.Tensor) -> None:
        """Charge the accountant for every frame of ``x``, before any noise is drawn (it raises over the cap)."""
        if self.accountant is not None:
            self.accountant.charge_release(self._guarantee, x.shape[-3], math.prod(x.shape[:-3]))


#: tv_tensors that annotate an image (public metadata); any other TVTensor may be image data.
_ANNOTATIONS = (tv_tensors.BoundingBoxes, tv_tensors.Mask, tv_tensors.KeyPoints)
#: Values that cannot hold an image (bytes can: an encoded PNG or JPEG).
_SCALARS = (
    numbers.Number,
    np.generic,
    str,
    type(None),
    os.PathLike,
    enum.Enum,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    torch.dtype,
    torch.device,
)


def may_hold_image(value: Any) -> bool:
    """Whether a value that the layer does not release may be (or hold) an image, so that passing it on would be a raw
    release: PIL images; tv_tensors other than annotations (BoundingBoxes, Mask, KeyPoints); tensors and arrays of
    any dtype and layout (CHW, HWC) with two or more dimensions of size >= 8 or 4096 values or more, object arrays
    and nested tensors (label vectors, landmarks ``[5, 2]`` and boxes ``[K, 4]`` pass; give many keypoints as
    tv_tensors.KeyPoints); bytes (an encoded image); and any object the layer cannot look into. Numbers, strings,
    dates, paths and enums pass. Large non-image arrays (audio, label matrices) raise too: apply the layer to the image
    alone. Not recognised: an image spelled out as nested Python lists of numbers."""
    if isinstance(value, tv_tensors.TVTensor):
        return not isinstance(value, _ANNOTATIONS)
    if isinstance(value, torch.Tensor) and value.is_nested:
        return True
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.dtype == object:
            return True
        return sum(n >= 8 for n in value.shape) >= 2 or math.prod(value.shape) >= 4096
    return not isinstance(value, _SCALARS) or isinstance(value, np.void)  # a structured scalar can hold arrays


def check_nothing_raw(values: list[Any], owner: str) -> None:
    """Raise TypeError when any of ``values`` (which ``owner`` passes on without releasing) may hold an image."""
    raw = [type(v).__name__ for v in values if may_hold_image(v)]
    if raw:
        raise TypeError(
            f"{owner} would pass through unreleased {len(raw)} input(s) of this sample that may hold an image "
            f"({', '.join(raw)}): it releases one plain tensor, or every tv_tensors.Image/Video and PIL image. Wrap "
            "each image as tv_tensors.Image; give annotations as tv_tensors (BoundingBoxes, Mask, KeyPoints), small "
            "tensors (labels, boxes [K, 4], landmarks), numbers or strings"
        )


class DPPixelize(_DPLayer):
    """Uniform differentially private pixelization (DP-Pix), as a layer and a torchvision v2 transform.

    Each ``b×b`` cell of each channel is averaged, its sum gets Laplace noise of scale ``C·R·m/ε``, and the cell is
    filled with the clipped noisy mean. The output is ε-DP for images that differ in at most ``m`` pixels.

    Args:
        epsilon: privacy budget per image (per channel under ``channel_rule="per_channel"``); see :attr:`guarantee`.
        b: cell side in pixels. Give ``grid=(rows, cols)`` instead to fix the output grid.
        m: pixels that may differ between neighbouring images.
        noise: ``"discrete"`` (default, lattice output) or ``"laplace"`` (float64 continuous).
        border: ``"area"`` (default, unbiased) or ``"zero_pad"`` (the paper's, dark border cells).
        channel_rule: ``"joint"`` (default) or ``"per_channel"``.
        value_range: ``(lo, hi)`` of float inputs (default [0, 1]); uint8 is always [0, 255].
        secure: every call draws from a ChaCha20 stream keyed with 256 fresh bits of OS entropy; refuses
            ``generator`` and ``seed``. Without any of the three, the layer keys one stream from OS entropy and
            advances it (each copy and process keys its own).
        generator: a torch.Generator on the inputs' device (or a :class:`~dp_pixel_torch.noise.KeyStream`) for
            reproducible noise. A CPU torch generator keeps 32 bits of its seed.
        seed: reproducible noise from a ChaCha20 stream keyed by the whole integer (any size; every bit counts). A known
            seed reveals the noise: use seeds and generators for experiments, ``secure=True`` in deployment.
        accountant: a :class:`~dp_pixel_torch.accounting.PrivacyAccountant` charged for every frame before its noise
            is drawn; a call that would pass its cap raises and releases nothing.
        backend: ``"auto"`` (compiled kernels where they work), ``"compiled"`` or ``"eager"``; the output is the same
            (see :mod:`dp_pixel_torch.kernels`).

    Accepts ``[..., C, H, W]`` tensors, ``tv_tensors.Image``/``Video`` and PIL images (modes L, RGB, RGBA) and returns
    the same type, shape, dtype and device. Bounding boxes, masks and labels in a sample pass through unchanged.
    The layer has no parameters, tracks no gradients, and pickles into DataLoader workers, where every worker draws
    its own noise stream. Apply random crops and flips *after* it. :meth:`release` returns the noisy statistics
    alone, as a :class:`~dp_pixel_torch.storage.NoisyGrid`.
    """

    def __init__(
        self,
        epsilon: float,
        b: int | None = None,
        m: int = 1,
        *,
        grid: Sequence[int] | None = None,
        noise: str = "discrete",
        border: str = "area",
        channel_rule: str = "joint",
        value_range: Sequence[float] | None = None,
        secure: bool = False,
        generator: torch.Generator | KeyStream | None = None,
        seed: int | None = None,
        accountant: PrivacyAccountant | None = None,
        backend: str = "auto",
    ) -> None:
        guarantee = PrivacyGuarantee(
            epsilon, m, b, None if grid is None else tuple(grid), channel_rule, noise, border, secure
        )
        super().__init__(guarantee, value_range, secure, generator, seed, accountant, backend)

    @torch.no_grad()
    def release(self, x: torch.Tensor, storage: str | None = None, *, generator: Randomness = None) -> NoisyGrid:
        """Release ``x [..., C, H, W]`` and keep only the noisy cell values (see :class:`NoisyGrid` for ``storage``).

        ``generator`` (a torch.Generator or KeyStream) draws this release's noise instead of the layer's own source
        (not for secure layers).
        """
        x, bounds, generator = self._checked(x, generator)
        g = self._guarantee
        partition = GridPartition.for_cells(*x.shape[-2:], g.b, g.grid)
        with choose(self.backend, x, g) as compiled:
            self._charge(x)
            values = noisy_cell_values(x, g, partition, bounds, generator, compiled)
        return NoisyGrid.from_release(tuple(x.shape), x.dtype, bounds, g, [values], [], storage)

    @torch.no_grad()
    def released_image(self, x: torch.Tensor) -> torch.Tensor:
        x, bounds, generator = self._checked(x, None)
        with choose(self.backend, x, self._guarantee) as compiled:
            self._charge(x)
            return uniform_release(x, self._guarantee, bounds, generator, compiled)

    def extra_repr(self) -> str:
        g = self._guarantee
        cells = f"b={g.b}" if g.b is not None else f"grid={g.grid}"
        return f"epsilon={g.epsilon:g}, {cells}, m={g.m}, noise={g.noise!r}, border={g.border!r}, secure={g.secure}"


class RegionAdaptiveDPPixelize(_DPLayer):
    """Region-adaptive DP pixelization: fine cells where the image is complex, coarse cells elsewhere (SPEC §3).

    The cells come from an aligned multi-level grid ``levels = (b_0 < … < b_L)``. Every released cell sum gets the
    same noise scale ``C·R·m/ε`` (local noise scaling), so a fine cell's mean is noisier than a coarse one's, and the
    release is ε-DP for any partition that does not depend on the private image. Where the partition comes from:

    * ``region="mask"``: a public region map (annotation boxes, a matte from an independent source). Pass it as
      ``mask=``/``boxes=`` to :meth:`release`, or as a ``tv_tensors.Mask``/``BoundingBoxes`` in a v2 sample. Cells
      touching the region are split down to ``b_0``. Costs no budget, and the guarantee says the mask is public.
    * ``region="complexity"``: private complexity scores (the mean difference between neighbouring ``b_0`` cells
      inside each cell), released with Laplace noise paid from ``partition_epsilon``; a cell is split when its
      noisy score exceeds ``split_threshold`` (a fraction of the range R) or is in the top ``split_fraction`` of
      the image's cells at its level.
      Total ε = ``partition_epsilon`` + ``epsilon``.
    * ``region="previous"``: for video. The partition of frame t comes from the same scores computed on the
      *released* frame t−1 (post-processing: no extra budget). The first frame, and the first after :meth:`reset`,
      is released with coarse cells only. Plain tensors ``[..., C, H, W]`` are one frame of each of ``...`` streams
      per call; a ``tv_tensors.Video`` ``[..., T, C, H, W]`` is processed in time order.

    **Protected regions** (``protect=True``, ``region="mask"``): the region map marks what identifies people (face
    or person boxes) to *hide* instead of to detail (SPEC §3). Every coarsest cell ``levels[-1]`` that meets a region
    is released whole with noise scale ``C·R·protect_m/ε``; every other cell is released at the finest level
    ``levels[0]`` with ``C·R·m/ε``. The release is ε-DP for neighbours that differ in ``m`` pixels anywhere and for
    neighbours that differ in ``protect_m`` pixels inside the protected cells (None, the default: in all of them, so
    any change inside a region is hidden); a change that touches both costs up to 2ε. Region positions are public;
    with ``region_from="detector"`` (boxes found in the private image) the guarantee says that it holds conditional
    on those disclosed positions.

    Other arguments, input types and contract are those of :class:`DPPixelize`.
    """

    def __init__(
        self,
        epsilon: float,
        m: int = 1,
        *,
        levels: Sequence[int] = (8, 16, 32),
        region: str = "mask",
        partition_epsilon: float | None = None,
        split_threshold: float | None = None,
        split_fraction: float | None = None,
        protect: bool = False,
        protect_m: int | None = None,
        region_from: str = "public",
        noise: str = "discrete",
        border: str = "area",
        channel_rule: str = "joint",
        value_range: Sequence[float] | None = None,
        secure: bool = False,
        generator: torch.Generator | KeyStream | None = None,
        seed: int | None = None,
        accountant: PrivacyAccountant | None = None,
        backend: str = "auto",
    ) -> None:
        split_threshold, split_fraction = check_split_rule(region, partition_epsilon, split_threshold, split_fraction)
        guarantee = adaptive_guarantee(
            epsilon,
            m,
            levels,
            region,
            partition_epsilon,
            noise,
            border,
            channel_rule,
            secure,
            protect,
            protect_m,
            region_from,
        )
        super().__init__(guarantee, value_range, secure, generator, seed, accountant, backend)
        self.region = region
        self.split_threshold = split_threshold
        self.split_fraction = split_fraction
        self._previous: torch.Tensor | None = None
        self._sample_region: dict[int, dict[str, Any]] = {}  # per thread: a layer may serve several threads

    def reset(self) -> None:
        """Forget the previous frame (``region="previous"``): the next frame starts a new stream."""
        self._previous = None

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        super().check_inputs(flat_inputs)
        # torchvision hands make_params() only the inputs it transforms; masks and boxes pass through untouched, so
        # the public region is read from the whole sample here and handed on, per thread.
        self._sample_region[threading.get_ident()] = self._region_in(flat_inputs)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self._sample_region.pop(threading.get_ident(), {})

    @staticmethod
    def _region_in(flat_inputs: list[Any]) -> dict[str, Any]:
        """The sample's Masks and BoundingBoxes, each kept apart: each is read on its own against the image it
        protects (its layout, its box format and canvas)."""
        masks = tuple(i.as_subclass(torch.Tensor) for i in flat_inputs if isinstance(i, tv_tensors.Mask))
        boxes = tuple(i for i in flat_inputs if isinstance(i, tv_tensors.BoundingBoxes))
        return {name: region for name, region in (("mask", masks), ("boxes", boxes)) if region}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if self.region == "previous" and isinstance(inpt, tv_tensors.Video):
            frames = inpt.as_subclass(torch.Tensor).unbind(-4)  # time order: frame t's cells come from release t-1
            return tv_tensors.wrap(torch.stack([self._pixelize(f, params) for f in frames], dim=-4), like=inpt)
        return super().transform(inpt, params)

    @torch.no_grad()
    def release(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        storage: str | None = None,
        *,
        generator: Randomness = None,
    ) -> NoisyGrid:
        """Release ``x [..., C, H, W]`` and keep only the noisy statistics and the partition bits.

        ``mask``/``boxes``: the public region for ``region="mask"``: a bool/float mask ``[H, W]`` for every image,
        ``[..., H, W]`` one per image or ``[..., K, H, W]`` K instances per image (or a sequence of masks); XYXY pixel
        boxes ``[K, 4]`` or ``tv_tensors.BoundingBoxes``. A layout that reads two ways and a box that covers no pixel
        are refused.
        ``generator`` (a torch.Generator or KeyStream) draws this release's noise instead of the layer's own source
        (not for secure layers).
        """
        x, bounds, _, values, split, _ = self._cells(x, mask, boxes, generator)
        return NoisyGrid.from_release(tuple(x.shape), x.dtype, bounds, self._guarantee, values, split, storage)

    @torch.no_grad()
    def released_image(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, boxes: torch.Tensor | None = None
    ) -> torch.Tensor:
        _, _, grid, values, split, compiled = self._cells(x, mask, boxes, None)
        return restore_adaptive(grid, values, split, compiled)

    def _cells(self, x, mask, boxes, generator):
        """Checks, the public partition, the charge, then :func:`~dp_pixel_torch.functional.adaptive_cell_values`."""
        x, bounds, generator = self._checked(x, generator)
        g = self._guarantee
        grid = MultiLevelGrid(*x.shape[-2:], g.levels)
        split = public_split(
            self.region,
            grid,
            g,
            bounds,
            tuple(x.shape[:-3]),
            x.device,
            mask=mask,
            boxes=boxes,
            previous=self._continued(x, grid),
            split_threshold=self.split_threshold,
            split_fraction=self.split_fraction,
        )
        with choose(self.backend, x, (g, self.region)) as compiled:
            self._charge(x)  # every check is done; nothing random has been drawn yet
            values, split = adaptive_cell_values(
                x,
                g,
                bounds,
                generator,
                split,
                split_threshold=self.split_threshold,
                split_fraction=self.split_fraction,
                compiled=compiled,
            )
        if self.region == "previous":  # what frame t+1 may see of frame t: its released level-0 cell values
            self._previous = grid.finest_values(grid.released(split), values)
        return x, bounds, grid, values, split, compiled

    def _continued(self, x: torch.Tensor, grid: MultiLevelGrid) -> torch.Tensor | None:
        """The released level-0 values of the previous frame of this stream (``region="previous"``), if any."""
        previous = self._previous if self.region == "previous" else None
        expected = (*x.shape[:-2], *grid.partition(0).shape)
        if previous is not None and (tuple(previous.shape) != expected or previous.device != x.device):
            raise ValueError(
                f"frame of shape {tuple(x.shape)} on {x.device} does not continue the previous stream "
                f"(released cells {tuple(previous.shape)} on {previous.device}); call reset() first"
            )
        return previous

    def extra_repr(self) -> str:
        g = self._guarantee
        return (
            f"epsilon={g.epsilon:g}, levels={g.levels}, m={g.m}, region={self.region!r}, "
            f"partition_epsilon={g.partition_epsilon:g}, noise={g.noise!r}, border={g.border!r}"
            + (f", protect=True, protect_m={g.protect_m}, region_from={g.region_from!r}" if g.protect else "")
        )


class Restore(Transform):
    """Restore the output of a uniform DP layer from that image and the layer's PUBLIC guarantee alone: a torchvision
    v2 transform to put after the layer in a ``v2.Compose`` (post-processing, no ε).

    Each cell of a released image is filled with its released value, so the cell values are read back from the
    image (an image whose cells are not constant is refused: it is not a release of this guarantee), and restored by
    ``method`` (:meth:`NoisyGrid.restore <dp_pixel_torch.storage.NoisyGrid.restore>`: ``"fill"``, ``"smooth"`` or
    ``"denoise"``, the default) under the public noise law of ``guarantee``. Reads: the released image, the
    guarantee and the value range; never the original.

    Args:
        guarantee_or_layer: a :class:`DPPixelize` (its guarantee and value range are read) or a uniform
            :class:`~dp_pixel_torch.PrivacyGuarantee`. Region-adaptive layouts cannot be read back from the image:
            keep the release (``layer.release(x)``) and call ``NoisyGrid.restore(method)`` instead.
        method: ``"fill"``, ``"smooth"`` or ``"denoise"``.
        value_range: ``(lo, hi)`` of float images (default: the layer's, else [0, 1]).

    Takes what the layer returns (tensors ``[..., C, H, W]``, ``tv_tensors.Image``/``Video``, PIL images) and returns
    the same type, shape and dtype; other inputs of a sample pass through.
    """

    _transformed_types = (is_pure_tensor, tv_tensors.Image, tv_tensors.Video, PIL.Image.Image)

    def __init__(
        self,
        guarantee_or_layer: PrivacyGuarantee | _DPLayer,
        method: str = "denoise",
        value_range: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        guarantee = getattr(guarantee_or_layer, "guarantee", guarantee_or_layer)
        if not isinstance(guarantee, PrivacyGuarantee):
            raise TypeError(f"Restore needs a DP layer or a PrivacyGuarantee, got {type(guarantee_or_layer).__name__}")
        if guarantee.levels is not None:
            raise ValueError(
                "Restore reads uniform releases: the cells of a region-adaptive release cannot be recovered from its "
                "image. Keep the release (layer.release(x)) and call NoisyGrid.restore(method) on it"
            )
        self.guarantee = guarantee
        self.method = check_choice(method, "method", METHODS)
        if value_range is None:
            value_range = getattr(guarantee_or_layer, "value_range", None)
        self.value_range = None if value_range is None else tuple(value_range)
        check_value_range(self.value_range, torch.float32)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            return TF.to_pil_image(self.restore(TF.pil_to_tensor(inpt)), mode=inpt.mode)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)):
            return tv_tensors.wrap(self.restore(inpt.as_subclass(torch.Tensor)), like=inpt)
        return self.restore(inpt)

    @torch.no_grad()
    def restore(self, released: torch.Tensor) -> torch.Tensor:
        """The restored image of a released image ``[..., C, H, W]`` (same shape and dtype). Reads: that image, the
        public guarantee and the value range."""
        x, bounds = check_input(released, self.value_range, "released image")
        if x.numel() == 0:
            return x.clone()
        g = self.guarantee
        partition = GridPartition.for_cells(*x.shape[-2:], g.b, g.grid)
        means = partition.cell_sums(x.contiguous()).double() / partition.counts(x.device)
        values = (means.round_() if x.dtype == torch.uint8 else means).to(x.dtype)
        if not torch.equal(partition.fill(values), x):
            raise ValueError(
                f"the image is not a release of {g.b or g.grid} cells: some cell is not constant (was Restore put "
                "before the DP layer, or after a transform that moves pixels?)"
            )
        grid = NoisyGrid.from_release(tuple(x.shape), x.dtype, bounds, g, [values], storage="exact")
        return like_layout(grid.restore(self.method), x)

    def extra_repr(self) -> str:
        g = self.guarantee
        cells = f"b={g.b}" if g.b is not None else f"grid={g.grid}"
        return f"method={self.method!r}, epsilon={g.epsilon:g}, {cells}, m={g.m}, noise={g.noise!r}"
