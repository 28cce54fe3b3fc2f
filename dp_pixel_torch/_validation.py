"""Argument and input checks shared by every mechanism (SPEC §7).

Every check raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong value, and the message names the
parameter and the allowed range.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from collections.abc import Iterator, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

#: Image dtypes the mechanisms accept. uint8 has range 255; floats have range ``value_range`` (default [0, 1]).
SUPPORTED_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_epsilon(epsilon: object, name: str = "epsilon") -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"{name} must be a real number > 0, got {type(epsilon).__name__}")
    value = float(epsilon)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {epsilon!r}")
    return value


def check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_device(device: object) -> torch.device:
    """A CPU or an available CUDA device (``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a torch.device)."""
    try:
        parsed = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available here; use 'cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return parsed


def check_grid(grid: object) -> tuple[int, int]:
    if not isinstance(grid, Sequence) or isinstance(grid, str) or len(grid) != 2:
        raise TypeError(f"grid must be a pair (rows, cols) of integers >= 1, got {grid!r}")
    return check_positive_int(grid[0], "grid[0] (rows)"), check_positive_int(grid[1], "grid[1] (cols)")


def check_levels(levels: object) -> tuple[int, ...]:
    """Aligned cell sizes ``b_0 < b_1 < … < b_L``, each a multiple of the one before."""
    if not isinstance(levels, Sequence) or isinstance(levels, str) or len(levels) < 2:
        raise TypeError(f"levels must be a sequence of at least two cell sizes, e.g. (8, 16, 32), got {levels!r}")
    sizes = tuple(check_positive_int(b, "levels[i]") for b in levels)
    for fine, coarse in zip(sizes[:-1], sizes[1:]):
        if coarse <= fine or coarse % fine:
            raise ValueError(f"levels must increase, each a multiple of the one before (aligned), got {tuple(levels)}")
    return sizes


def check_generator_device(generator: object, device: torch.device) -> None:
    """A torch generator must live on the input's device (a KeyStream serves any device)."""
    if isinstance(generator, torch.Generator) and torch.device(generator.device).type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the input is on {device}; "
            "pass a generator created on the input's device (or give the layer seed= instead)"
        )


def check_cells(
    b: object, grid: object, levels: object = None
) -> tuple[int | None, tuple[int, int] | None, tuple[int, ...] | None]:
    """Exactly one of the cell side ``b``, the output grid ``grid=(rows, cols)`` and the adaptive ``levels``."""
    if sum(v is not None for v in (b, grid, levels)) != 1:
        names = "b (cell size in pixels) and grid=(rows, cols)" if levels is None else "b, grid and levels"
        raise ValueError(f"give exactly one of {names}")
    if b is not None:
        return check_positive_int(b, "b"), None, None
    if grid is not None:
        return None, check_grid(grid), None
    return None, None, check_levels(levels)


def check_value_range(value_range: object, dtype: torch.dtype) -> tuple[float, float]:
    """The intensity range [lo, hi] of the data; R = hi - lo enters the sensitivity."""
    if dtype == torch.uint8:
        if value_range not in (None, (0, 255), [0, 255]):
            raise ValueError(f"value_range must be None or (0, 255) for uint8 images, got {value_range!r}")
        return 0.0, 255.0
    if value_range is None:
        return 0.0, 1.0
    if not isinstance(value_range, Sequence) or isinstance(value_range, str) or len(value_range) != 2:
        raise TypeError(f"value_range must be a pair (lo, hi) of finite numbers with lo < hi, got {value_range!r}")
    lo, hi = (float(v) for v in value_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be a pair (lo, hi) of finite numbers with lo < hi, got {value_range!r}")
    return lo, hi


def check_image(x: object, name: str = "x") -> torch.Tensor:
    """Type, dtype and rank of an image batch ``[..., C, H, W]``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [..., C, H, W], got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {x.dtype}")
    if x.ndim < 3:
        raise ValueError(f"{name} must have shape [..., C, H, W] (rank >= 3), got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3, 4) and x.shape[-3] > 4:
        # torch.from_numpy(photo) or an OpenCV frame: [H, W, C] would be read as H channels of W×C images.
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} looks channels-last [..., H, W, C]; it must be [..., C, H, W]: "
            "permute it (one image: x.permute(2, 0, 1); any batch: x.movedim(-1, -3)). Refused: a last dimension "
            "of 1, 3 or 4 with more than 4 channels (dimension -3)"
        )
    return x


def check_pixel_values(x: torch.Tensor, value_range: tuple[float, float], name: str = "x") -> None:
    """Float pixels must be finite and inside ``value_range`` (uint8 always is)."""
    if x.dtype == torch.uint8 or x.numel() == 0:
        return
    lo, hi = torch.aminmax(x)
    lo, hi = lo.item(), hi.item()
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name} contains NaN pixels")
    if lo < value_range[0] or hi > value_range[1]:
        raise ValueError(
            f"{name} has values in [{lo:g}, {hi:g}], outside value_range [{value_range[0]:g}, {value_range[1]:g}]; "
            "pass value_range=(lo, hi) that covers the data"
        )


#: Set by :func:`no_release_inside` while a sample is read from a dataset that ReleasedOnce releases itself.
_READING: contextvars.ContextVar[str | None] = contextvars.ContextVar("dp_pixel_torch_reading", default=None)


@contextlib.contextmanager
def no_release_inside(reading: str) -> Iterator[None]:
    """Refuse every release in this thread while inside: :func:`check_input` raises (before any charge or draw).

    ``reading`` says what is read, e.g. ``"ReleasedOnce read sample 3 from its dataset"``. A release there would
    draw fresh noise on every read (every epoch in DataLoader workers), so the sample would be released again each
    time, while the wrapper promises one release.
    """
    token = _READING.set(reading)
    try:
        yield
    finally:
        _READING.reset(token)


def check_input(x: object, value_range: object, name: str = "x") -> tuple[torch.Tensor, tuple[float, float]]:
    """All checks on an image batch; returns it detached, with its ``(lo, hi)`` range. Every release (the layers,
    ProtectDetected, the functional API, the sequential reference) and Restore start here, so this is also where a
    release inside :func:`no_release_inside` is refused."""
    reading = _READING.get()
    if reading is not None:
        raise ValueError(
            f"a DP release (a DP layer, ProtectDetected, dp_pixelize) ran while {reading}: it would draw fresh noise "
            "on every read, so every epoch (every DataLoader worker) would be a new release and ε would be spent "
            "again, while ReleasedOnce promises one release. Take the layer out of the dataset's transform and give "
            "it to ReleasedOnce: ReleasedOnce(dataset, layer); the dataset must return raw images"
        )
    x = check_image(x, name)
    bounds = check_value_range(value_range, x.dtype)
    check_pixel_values(x, bounds, name)
    return x.detach(), bounds


def check_mask(mask: object, lead: tuple[int, ...], height: int, width: int) -> torch.Tensor:
    """A region mask for images ``[*lead, C, height, width]``, read by its rank: bool, broadcastable to
    ``[*lead, height, width]``. ``[H, W]``: one region for every image; ``[*lead, H, W]``: one per image;
    ``[*lead, K, H, W]``: K instance masks per image, united per image; a 1 in a leading axis is shared along it.
    Float masks are inside where > 0.5. Any other layout, or one that reads two ways, is refused: a region read the
    wrong way leaves part of it unprotected."""
    if not isinstance(mask, torch.Tensor) or mask.ndim < 2 or tuple(mask.shape[-2:]) != (height, width):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor [..., {height}, {width}] matching the image, got {shape}")
    if mask.is_floating_point() and torch.isnan(mask).any():
        raise ValueError("mask holds NaN: a region map must say for every pixel whether it is inside")
    shape, axes = tuple(mask.shape), mask.ndim - 2
    per_image = all(m in (1, n) for m, n in zip(shape, lead))
    if axes not in (0, len(lead), len(lead) + 1) or (axes and not per_image):
        raise ValueError(
            f"mask of shape {shape} does not match images with leading shape {lead}: {_mask_layouts(lead, shape)}"
        )
    if lead and axes == len(lead) + 1 and len(set(shape[:axes])) == 1 and shape[0] > 1:
        raise ValueError(
            f"mask of shape {shape} reads two ways for images with leading shape {lead}: {shape[0]} instance masks "
            f"of each image, or {shape[0]} instance masks shared along the images; {_mask_layouts(lead, shape)}. "
            f"Unite each image's instances first (mask.any({len(lead)}))"
        )
    inside = mask if mask.dtype == torch.bool else mask > 0.5
    return inside.any(-3) if axes == len(lead) + 1 else inside


def _mask_layouts(lead: tuple[int, ...], shape: tuple[int, ...]) -> str:
    def dims(*sizes: object) -> str:
        return f"[{', '.join(map(str, sizes))}]"

    layouts = [f"{dims(*shape[-2:])} (one region for every image)"]
    if lead:
        layouts.append(f"{dims(*lead, *shape[-2:])} (one per image)")
    layouts.append(f"{dims(*lead, 'K', *shape[-2:])} (K instance masks per image, united per image)")
    return f"accepted layouts are {', '.join(layouts)}; a 1 in a leading axis is shared along it"


def check_boxes(boxes: object, height: int, width: int) -> torch.Tensor:
    """Region boxes on a ``height×width`` image as float64 XYXY pixels ``[K, 4]`` (K = 0: no region).

    ``boxes``: XYXY pixels ``[K, 4]`` (or one ``[4]``), a ``tv_tensors.BoundingBoxes`` drawn on this canvas in any
    format (a rotated box stands for the axis-aligned box that encloses it), or a sequence of BoundingBoxes. Every box
    must cover a pixel (hold its centre): one that covers none would protect nothing, so it is refused, never skipped.
    """
    if isinstance(boxes, (list, tuple)) and any(isinstance(b, tv_tensors.BoundingBoxes) for b in boxes):
        return torch.cat([check_boxes(b, height, width) for b in boxes])
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        boxes = _enclosing_xyxy(boxes, height, width)
    boxes = torch.as_tensor(boxes, dtype=torch.float64, device="cpu")
    if boxes.shape[-1:] != (4,) or boxes.ndim > 2 or not torch.isfinite(boxes).all():
        raise ValueError(
            f"boxes must be finite XYXY pixel boxes [K, 4] (or one [4]), got shape {tuple(boxes.shape)}: a "
            "detector's [K, 5] with scores must drop the score column"
        )
    boxes = boxes.reshape(-1, 4)
    pixels = box_pixels(boxes, height, width)
    for bad, why in (
        ((boxes[:, 2:] <= boxes[:, :2]).any(1), "has x1 <= x0 or y1 <= y0 (an OpenCV (x, y, w, h) rectangle is XYWH)"),
        (
            (pixels[:, 2:] <= pixels[:, :2]).any(1),
            f"covers no pixel of the {height}×{width} image (boxes drawn for another image size must be scaled to it)",
        ),
    ):
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            corners = ", ".join(f"{v:g}" for v in boxes[i].tolist())
            raise ValueError(
                f"boxes must be XYXY pixel boxes [K, 4] that each hold a pixel centre: box {i} ({corners}) {why}, "
                "so it would protect nothing"
            )
    return boxes


def _enclosing_xyxy(boxes: tv_tensors.BoundingBoxes, height: int, width: int) -> torch.Tensor:
    if tuple(boxes.canvas_size) != (height, width):
        raise ValueError(
            f"BoundingBoxes with canvas_size {tuple(boxes.canvas_size)} do not belong to the {height}×{width} image: "
            "resize the boxes with the image"
        )
    boxes = boxes.to(torch.float64)  # integer boxes would round converted corners inwards
    if tv_tensors.is_rotated_bounding_format(boxes.format):
        corners = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXYXYXY)
        corners = corners.as_subclass(torch.Tensor).reshape(-1, 4, 2)
        return torch.cat([corners.amin(1), corners.amax(1)], dim=1)
    return TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY).as_subclass(torch.Tensor)


def box_pixels(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The pixels that XYXY ``boxes [K, 4]`` hold, clipped to a ``height×width`` image: int64 ``[K, 4]`` as
    (first column, first row, stop column, stop row). A pixel is inside a box when its centre is."""
    limit = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(torch.ceil(boxes - 0.5).clamp(min=0), limit).long()
