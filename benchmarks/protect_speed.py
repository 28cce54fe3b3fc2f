"""Frames per second of ``dp-pixel`` with protected regions, next to the plain release, in one run.

The first N frames (default 300) of PETS2009 ``vtest.avi`` (768×576) are copied to an MJPG clip, then each command
runs in this process on it (``--epsilon 1 --b 8 --quiet``, output an MJPG ``.avi``): the whole command is timed,
reading, detecting, releasing and writing included. Then the cost of each source and face member per frame (mean
over 10 frames of the clip, milliseconds). With a CUDA device, the commands run again with ``--device cuda``.

Run: ``python benchmarks/protect_speed.py [video] [frames]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dp_pixel_torch.cli import main as dp_pixel
from dp_pixel_torch.detectors import FACE_STACK, FaceScan, MotionDetector, PeopleScan, detect_people, face_boxes
from dp_pixel_torch.video import read_frames

VIDEO = Path(__file__).resolve().parents[1] / "data" / "pets2009" / "vtest.avi"
COMMANDS = (
    ("plain release", []),
    ("--protect faces", ["--protect", "faces"]),
    ("  --face-detectors centerface,yunet-2x", ["--protect", "faces", "--face-detectors", "centerface,yunet-2x"]),
    ("  --face-every 25 (FaceScan)", ["--protect", "faces", "--face-every", "25"]),
    ("--protect people,motion", ["--protect", "people,motion"]),
    ("  --people-every 1", ["--protect", "people,motion", "--people-every", "1"]),
    ("--protect motion", ["--protect", "motion"]),
)
MEMBERS = ("haar", "haar-rotated", "centerface", "centerface-2x", "yunet", "yunet-2x", "yunet-3x")


def clip(video: Path, frames: int, folder: Path) -> Path:
    capture, path = cv2.VideoCapture(str(video)), folder / "clip.avi"
    writer = None
    for _ in range(frames):
        ok, bgr = capture.read()
        if not ok:
            raise SystemExit(f"{video}: fewer than {frames} frames")
        if writer is None:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 7, bgr.shape[1::-1])
        writer.write(bgr)
    writer.release()
    return path


def fps(path: Path, frames: int, extra: list[str], folder: Path) -> float:
    argv = [str(path), "-o", str(folder / "out.avi"), "--epsilon", "1", "--b", "8", "--quiet", *extra]
    start = time.perf_counter()
    assert dp_pixel(argv) == 0
    return frames / (time.perf_counter() - start)


def mean_ms(call, frames: list[torch.Tensor]) -> float:
    times = []
    for frame in frames:
        start = time.perf_counter()
        call(frame)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.mean(times))


def main() -> None:
    video = Path(sys.argv[1]) if len(sys.argv) > 1 else VIDEO
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        path = clip(video, count, folder)
        print(f"dp-pixel on the first {count} frames of {video.name} (768×576), whole command, frames/s")
        print(f"face stack: {'+'.join(FACE_STACK)}; {torch.get_num_threads()} torch threads\n")
        print(f"{'command':40}" + "".join(f"{d:>10}" for d in devices))
        plain = {}
        for label, extra in COMMANDS:
            row = [fps(path, count, [*extra, "--device", d], folder) for d in devices]
            plain = plain or dict(zip(devices, row))
            ratios = "  ".join(f"{r / plain[d]:.2f}× plain" for r, d in zip(row, devices))
            print(f"{label:40}" + "".join(f"{r:>10.1f}" for r in row) + f"   {ratios}", flush=True)
        frames = [f for _, f in zip(range(10), read_frames(path))]
    print("\nper frame, mean ms over 10 frames (CPU):")
    motion = MotionDetector()
    rows = {
        "motion (MOG2)": mean_ms(motion, frames),
        "people (HOG)": mean_ms(detect_people, frames),
        "people, PeopleScan (every 10)": mean_ms(PeopleScan(), frames),
        "faces, FaceScan (video)": mean_ms(FaceScan(), frames),
    }
    rows.update({f"face member {m}": mean_ms(lambda f, m=m: face_boxes(f, (m,)), frames) for m in MEMBERS})
    for label, ms in rows.items():
        print(f"{label:40}{ms:>10.1f}")


if __name__ == "__main__":
    main()
