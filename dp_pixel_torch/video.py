"""Streaming video: release a video file or a stream of frames chunk by chunk, in bounded memory.

Decoding and encoding use OpenCV (``pip install 'dp-pixel-torch[video]'``); no codec code lives here. Frames are
uint8 ``[3, H, W]`` RGB tensors. At most one chunk of frames is held at a time, on the chosen device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._validation import check_choice, check_device, check_epsilon, check_positive_int
from .accounting import BudgetExceededError, PrivacyAccountant
from .mechanisms import _DPLayer
from .restoration import METHODS
from .storage import NoisyGrid
from .temporal import TemporalRestorer

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".webm")
#: How a stream's releases become frames: a restoration method of one release, or ``"temporal"`` (over the stream).
STREAM_METHODS = (*METHODS, "temporal")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG", ".webm": "VP80"}


def import_cv2():
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - opencv is in the [video] and [dev] extras
        raise ImportError("video files need OpenCV: pip install 'dp-pixel-torch[video]'") from error
    return cv2


def from_bgr(bgr) -> torch.Tensor:
    """An OpenCV BGR ``[H, W, 3]`` array as a uint8 RGB tensor ``[3, H, W]``."""
    cv2 = import_cv2()
    return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)


def to_bgr(image: torch.Tensor):
    """A uint8 RGB tensor ``[3, H, W]`` as an OpenCV BGR ``[H, W, 3]`` array."""
    cv2 = import_cv2()
    return cv2.cvtColor(image.permute(1, 2, 0).contiguous().cpu().numpy(), cv2.COLOR_RGB2BGR)


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as uint8 RGB ``[3, H, W]`` (decoded by OpenCV); ``ValueError`` when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        data = b""
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "image") -> torch.Tensor:
    """The bytes of an image file as uint8 RGB ``[3, H, W]`` (decoded by OpenCV, EXIF orientation applied, as
    ``cv2.imread`` does); ``ValueError`` naming ``name`` when they cannot be decoded."""
    cv2 = import_cv2()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise ValueError(f"cannot read image {name!r}: missing, or not an image OpenCV can decode")
    return from_bgr(bgr)


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # as reported by the container (may be 0 when unknown)
    height: int
    width: int
    fps: float


def probe(path: str | Path) -> VideoInfo:
    """Frame count, size and frame rate of a video file; raises ``ValueError`` when it cannot be read."""
    cv2 = import_cv2()
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot read video {str(path)!r}: missing, or not a video OpenCV can decode")
        return VideoInfo(
            int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            float(capture.get(cv2.CAP_PROP_FPS)) or 25.0,
        )
    finally:
        capture.release()


def read_frames(path: str | Path) -> Iterator[torch.Tensor]:
    """Decode a video file lazily into uint8 RGB frames ``[3, H, W]``."""
    cv2 = import_cv2()
    probe(path)
    capture = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield from_bgr(frame)
    finally:
        capture.release()


@dataclass(frozen=True)
class StreamReport:
    """What :func:`sanitize_stream` did."""

    frames: int  # of the stream, released or skipped
    height: int
    width: int
    epsilon_per_frame: float
    epsilon_spent: float | None  # by the accountant, when there is one
    output: Path | None
    grids: Path | None
    skipped: int  # refused by the accountant's w-event window: nothing released, a black frame in the video

    def __str__(self) -> str:
        spent = "" if self.epsilon_spent is None else f"; accountant: ε spent = {self.epsilon_spent:g}"
        frames, refused = f"{self.frames}", ""
        if self.skipped:
            frames = f"{self.frames - self.skipped} of {self.frames}"
            refused = f" (the w-event window refused {self.skipped}: nothing released, black in the video)"
        return (
            f"{frames} frames of {self.width}×{self.height} released at ε = {self.epsilon_per_frame:g} per frame"
            f"{refused}: a person visible in T frames is covered at T·{self.epsilon_per_frame:g}{spent}"
        )


def sanitize_stream(
    frames: Iterable[torch.Tensor] | str | Path,
    layer: _DPLayer,
    output: str | Path | None = None,
    *,
    grids: str | Path | None = None,
    fps: float | None = None,
    chunk: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    restore: str = "fill",
) -> StreamReport:
    """Release a video chunk by chunk; write the released video and/or the NoisyGrid file of all frames.

    Args:
        frames: a video file, or an iterable of uint8 ``[C, H, W]`` frames (or ``[T, C, H, W]`` chunks); a video
            output needs RGB (C = 3).
        layer: the DP layer; its accountant, if any, is charged for every frame before its noise is drawn. When a
            w-event window refuses a chunk, its frames are released one by one; a frame the window refuses goes out
            as nothing (a black frame in the video, no record in ``grids``) and is recorded with
            :meth:`~dp_pixel_torch.PrivacyAccountant.skip`, so the window slides on. The total cap (or a frame that
            passes the window cap alone) stops the stream with :class:`~dp_pixel_torch.BudgetExceededError`. The
            layer's ``backend`` picks the kernels (``dp-pixel --backend``); it never changes the release.
        output: the released video file (codec from the suffix: .avi MJPG, .mp4 mp4v); None writes no video.
        grids: a file for the NoisyGrid records of every chunk (see :func:`~dp_pixel_torch.load_video`).
        fps: frame rate of the output (default: the input file's, else 25).
        chunk: frames per release: memory holds one chunk.
        device: where to release, ``"cpu"`` or an available ``"cuda[:N]"`` (default: CUDA when available).
        restore: how each released grid becomes the frames of the video: ``"fill"`` (the layer's output),
            ``"smooth"`` or ``"denoise"`` (:meth:`NoisyGrid.restore`), or ``"temporal"``: a Kalman filter per cell
            over the stream's releases, drawn by ``"denoise"`` (:class:`~dp_pixel_torch.temporal.TemporalRestorer`);
            all post-processing, no ε. ``grids`` holds the released grids whatever it is.
    """
    restore = check_choice(restore, "restore", STREAM_METHODS)
    temporal = TemporalRestorer() if restore == "temporal" else None
    chunk = check_positive_int(chunk, "chunk")
    fps = None if fps is None else check_epsilon(fps, "fps")  # a finite number > 0
    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cv2 = import_cv2() if output is not None else None
    if isinstance(frames, (str, Path)):
        fps = fps or probe(frames).fps
        frames = read_frames(frames)
    fps = fps or 25.0
    region = getattr(layer, "region", None)
    if region == "mask":
        raise ValueError("streams take layers whose partition needs no per-frame mask (uniform, complexity, previous)")
    # Regions found in the ORIGINAL frames (ProtectDetected): every frame goes through the detectors once, in order,
    # and comes back with its regions once the frames after it that persistence needs are detected.
    # on the release's device already, so that a batched source (the face networks) runs there
    stream_regions = getattr(layer, "stream_regions", None)
    blocks = (block.to(device) for block in _chunks(frames, chunk))
    items = stream_regions(blocks, chunk) if stream_regions is not None else ((block, None) for block in blocks)
    bar = _progress(progress)
    writer, sink, count, skipped, shape = None, None, 0, 0, None
    try:
        sink = None if grids is None else open(grids, "wb")
        for block, regions in items:
            shape = tuple(block.shape[-3:])
            block = block.to(device)
            # A "previous" partition is sequential in time: release the chunk frame by frame.
            parts = block.split(1) if region == "previous" else [block]
            for released in (grid for part in parts for grid in _release(layer, part, regions)):
                skipped += released is None
                if sink is not None and released is not None:
                    sink.write(released.to_bytes())
                if output is not None:
                    if writer is None:
                        writer = _open_writer(cv2, Path(output), fps, shape[-2:])
                    if released is None:
                        restored = torch.zeros(1, *shape, dtype=torch.uint8)
                    else:
                        restored = released.restore(restore) if temporal is None else temporal(released)
                    restored = restored.reshape(-1, *shape)
                    for frame in restored.cpu():
                        writer.write(to_bgr(frame))
            count += block.shape[0]
            bar.update(block.shape[0])
    finally:
        bar.close()
        if writer is not None:
            writer.release()
        if sink is not None:
            sink.close()
    if count == 0:
        raise ValueError("the stream holds no frames")
    accountant: PrivacyAccountant | None = layer.accountant
    return StreamReport(
        count,
        shape[1],
        shape[2],
        layer.guarantee.total_epsilon(shape[0]),  # the ε each frame is charged, for its own channel count
        None if accountant is None else accountant.spent,
        None if output is None else Path(output),
        None if grids is None else Path(grids),
        skipped,
    )


def _release(layer: _DPLayer, part: torch.Tensor, regions=None) -> list[NoisyGrid | None]:
    """The releases of ``part``: one NoisyGrid, or, when the w-event window refuses it, one per frame and None for
    each frame the window refuses, which is recorded as skipped (ε = 0) so that the window slides. ``regions``: the
    part's regions from ``layer.stream_regions``, found once and split with it."""
    if part.shape[0] > 1:
        try:
            return [layer.release(part, **({} if regions is None else {"regions": regions}))]
        except BudgetExceededError as refused:
            if refused.final:
                raise
    grids: list[NoisyGrid | None] = []
    for frame, one in zip(part.split(1), [None] * part.shape[0] if regions is None else regions.split()):
        try:
            grids.append(layer.release(frame, **({} if one is None else {"regions": one})))
        except BudgetExceededError as refused:
            if refused.final:
                raise
            layer.accountant.skip()
            grids.append(None)
    return grids


def _chunks(frames: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Group frames into ``[T <= size, C, H, W]`` uint8 chunks, holding one chunk at a time; a frame whose size
    differs from the first frame's raises ``ValueError`` (within a chunk or between two)."""
    pending: list[torch.Tensor] = []
    shape = None
    for item in frames:
        if not isinstance(item, torch.Tensor) or item.dtype != torch.uint8 or item.ndim not in (3, 4):
            raise TypeError("frames must be uint8 tensors [C, H, W] or [T, C, H, W]")
        shape = shape or tuple(item.shape[-3:])
        if tuple(item.shape[-3:]) != shape:
            raise ValueError(f"frame size changed from {shape} to {tuple(item.shape[-3:])} within the stream")
        pending.extend(item.unbind(0) if item.ndim == 4 else [item])
        while len(pending) >= size:
            yield torch.stack(pending[:size])
            del pending[:size]
    if pending:
        yield torch.stack(pending)


def _open_writer(cv2, path: Path, fps: float, shape: tuple[int, int]):
    suffix = path.suffix.lower()
    if suffix not in _FOURCC:
        raise ValueError(f"output video must end in one of {tuple(_FOURCC)}, got {path.name!r}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*_FOURCC[suffix]), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise ValueError(f"cannot write video {str(path)!r} with codec {_FOURCC[suffix]}")
    return writer


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the [video] extra
        return _NoProgress()
    return tqdm(unit="frame", desc="releasing")
