"""Recall, false detections and speed of the face detectors behind ``dp-pixel --protect faces``: real faces pasted
into real frames.

A face every member of the stack misses is protected only at ``m``: one minus the recall is the share of faces left
unprotected. Faces: the 100 LFW crops of ``skimage.data.lfw_subset()`` (25×25 grey, the face fills the crop) and the
astronaut's face (``skimage.data.astronaut()``, box (175, 70, 268, 163), 93 px, RGB), resized with
``cv2.INTER_CUBIC`` to 25, 40, 56 and 112 px (upscaled LFW crops are blurry: at 112 px they hold 25×25 pixels of
detail, so recall there is a floor for sharp faces of that size), turned by 0 and ±25 degrees, and pasted (the turned
square only, no border) at spaced places, at most :data:`PER_FRAME` a frame, into real frames of PETS2009
(``vtest.avi``, 768×576, a crowded street seen from above whose people's own faces are 5–15 px). The true box is the
upright square of the face's size around its centre; a face is found when a box (for a stack: its merged box) has
IoU >= 0.3 with it. False detections are counted on clean PETS frames (no face pasted: any box is false, though a
few may be real tiny faces), per frame. ``dlib-cnn`` (about 1.6 s a frame) is measured only with ``--cnn``. Times are milliseconds per 768×576 frame on this machine's CPUs (a stack: the
sum of its members). Run: ``python benchmarks/face_detector_recall.py [vtest.avi]`` (``--members a,b``: only those members and the stacks
made of them); ``--cli`` also times
``dp-pixel --protect faces`` on the first 100 frames for each stack.

``--scan [N]`` measures instead the video path of ``dp-pixel --protect faces`` (:class:`FaceScan`, the default stack
searched whole every :data:`FACE_EVERY` frames, crops enlarged :data:`FACE_SCALE` times in between) on the first N
faces (default all) pasted, :data:`SCAN_PER_FRAME` at a time, into :data:`SCAN_FRAMES` consecutive PETS2009 frames, with a
new FaceScan per group: *moving*, the faces appear at frame :data:`SCAN_START` (after the full search of frame 0) and
move 3 px a frame to the right, so they can only be found in crops; *still*, the faces stand at one place from frame
0, so they are found by the full search of frame 0 (at scale 1) or not at all until the next. Recall is over (face,
frame) pairs while the face is in the frame: a pair counts when a returned box (what the release protects, held
boxes included) has IoU >= 0.3 with it. ``boxes/fr``: boxes returned per frame of the clean sequence.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
from torchvision.ops import box_iou

from dp_pixel_torch.cli import main as dp_pixel
from dp_pixel_torch.detectors import (
    FACE_DETECTORS,
    FACE_EVERY,
    FACE_SCALE,
    FACE_STACK,
    FaceScan,
    face_boxes,
    merge_boxes,
)

VIDEO = Path(__file__).resolve().parents[1] / "data" / "pets2009" / "vtest.avi"
SIZES = (25, 40, 56, 112)
TILTS = (0, 25, -25)
PER_FRAME = 12
IOU = 0.3
ASTRONAUT_FACE = (175, 70, 268, 163)
SCAN_FRAMES, SCAN_START, SCAN_STEP, SCAN_PER_FRAME = 15, 3, 3, 4
SCAN_CONDITIONS = ((25, 0), (40, 0), (56, 0), (112, 0), (56, 25), (56, -25))
STACKS = (
    ("haar",),
    ("centerface",),
    ("haar", "haar-rotated"),
    ("centerface", "yunet"),
    ("centerface", "yunet-2x"),
    ("centerface", "yunet-3x"),
    ("centerface", "yunet-2x", "haar"),
    ("centerface", "yunet-2x", "haar-rotated"),
    ("centerface", "centerface-2x", "yunet-2x"),
    ("centerface", "yunet-3x", "haar-rotated"),
    ("haar", "haar-rotated", "centerface", "centerface-2x"),
    ("haar", "haar-rotated", "centerface", "centerface-2x", "dlib-hog"),
    ("haar", "haar-rotated", "centerface", "centerface-2x", "dlib-hog", "dlib-cnn"),
)


def pets_frames(path: Path, count: int, step: int = 20) -> list[np.ndarray]:
    """``count`` RGB frames of the video, ``step`` frames apart."""
    capture, frames = cv2.VideoCapture(str(path)), []
    for index in itertools.count():
        ok, bgr = capture.read()
        if not ok or len(frames) == count:
            break
        if index % step == 0:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if len(frames) < count:
        raise SystemExit(f"{path}: fewer than {count * step} frames")
    return frames


def faces() -> list[np.ndarray]:
    """The 100 LFW crops (grey, as RGB) and the astronaut's face, uint8 RGB squares."""
    crops = (skimage.data.lfw_subset()[:100] * 255).round().astype(np.uint8)
    x0, y0, x1, y1 = ASTRONAUT_FACE
    return [np.repeat(c[..., None], 3, -1) for c in crops] + [skimage.data.astronaut()[y0:y1, x0:x1]]


def paste(scene: np.ndarray, face: np.ndarray, size: int, tilt: float, centre: tuple[int, int]) -> tuple:
    """Paste ``face`` resized to ``size`` and turned by ``tilt`` degrees at ``centre`` (x, y) of ``scene`` (in
    place); return its true box XYXY, the upright ``size`` square around ``centre``."""
    square = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    side = int(np.ceil(size * 1.5))
    turn = cv2.getRotationMatrix2D((size / 2, size / 2), tilt, 1.0)
    turn[:, 2] += (side - size) / 2
    turned = cv2.warpAffine(square, turn, (side, side), flags=cv2.INTER_CUBIC)
    inside = cv2.warpAffine(np.ones((size, size), np.uint8), turn, (side, side), flags=cv2.INTER_NEAREST) > 0
    x, y = centre[0] - side // 2, centre[1] - side // 2
    scene[y : y + side, x : x + side][inside] = turned[inside]
    return (centre[0] - size / 2, centre[1] - size / 2, centre[0] + size / 2, centre[1] + size / 2)


def composites(backgrounds, pool, size, tilt):
    """Frames with every face of ``pool`` pasted, at most PER_FRAME a frame on a spaced grid: (frame, true boxes)."""
    spots = places(size)
    out = []
    for start in range(0, len(pool), len(spots)):
        scene = backgrounds[(start // len(spots)) % len(backgrounds)].copy()
        truths = [paste(scene, face, size, tilt, place) for face, place in zip(pool[start:], spots)]
        out.append((torch.from_numpy(scene).permute(2, 0, 1).contiguous(), torch.tensor(truths)))
    return out


def places(size: int, most: int = PER_FRAME) -> list[tuple[int, int]]:
    """At most ``most`` centres (x, y) on a grid spaced ``2·size`` apart, spread over a 768×576 frame."""
    step = 2 * size
    grid = [(x, y) for y in range(step // 2, 576 - step // 2, step) for x in range(step // 2, 768 - step // 2, step)]
    return grid[:: max(1, len(grid) // most)][:most]


def scan_recall(sequence: list[np.ndarray], pool: list[np.ndarray], size: int, tilt: float, moving: bool) -> tuple:
    """Recall of a FaceScan over (face, frame) pairs of ``pool`` pasted into the consecutive frames ``sequence``,
    and the share of frames it searched whole."""
    spots = places(size, SCAN_PER_FRAME)
    hits = pairs = whole = 0
    for start in range(0, len(pool), len(spots)):
        scan, group = FaceScan(), pool[start : start + len(spots)]
        for t, background in enumerate(sequence):
            scene, shift = background.copy(), SCAN_STEP * max(t - SCAN_START, 0)
            present = t >= SCAN_START or not moving
            if present:
                truths = [paste(scene, f, size, tilt, (x + shift * moving, y)) for f, (x, y) in zip(group, spots)]
            boxes = scan(torch.from_numpy(scene).permute(2, 0, 1).contiguous())
            if present:
                pairs += len(truths)
                if len(boxes):
                    hits += int((box_iou(torch.tensor(truths), boxes).amax(1) >= IOU).sum())
        whole += scan.full_frames
    return hits / pairs, whole / (len(sequence) * -(-len(pool) // len(spots)))


def scan_main(video: Path, count: int | None) -> None:
    pool = faces()[:count]
    capture, sequence = cv2.VideoCapture(str(video)), []
    while len(sequence) < SCAN_FRAMES:
        ok, bgr = capture.read()
        if not ok:
            raise SystemExit(f"{video}: fewer than {SCAN_FRAMES} frames")
        sequence.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    # the pasted faces are drawn on clean frames: without them the sequence gives the boxes per clean frame
    scan, start = FaceScan(), time.perf_counter()
    boxes = sum(len(scan(torch.from_numpy(f).permute(2, 0, 1).contiguous())) for f in sequence)
    ms = 1000 * (time.perf_counter() - start) / len(sequence)
    print(f"FaceScan ({'+'.join(FACE_STACK)}, whole every {FACE_EVERY} frames, crops ×{FACE_SCALE:g}): {len(pool)}")
    print(f"faces, {SCAN_FRAMES} consecutive PETS2009 frames; recall over (face, frame) pairs (IoU >= {IOU})\n")
    print("| faces | " + " | ".join(f"{s} px, {t:+d}°" for s, t in SCAN_CONDITIONS) + " |")
    print("|---|" + "---|" * len(SCAN_CONDITIONS))
    for moving in (True, False):
        rows = [scan_recall(sequence, pool, s, t, moving) for s, t in SCAN_CONDITIONS]
        print(f"| {'moving' if moving else 'still'} | " + " | ".join(f"{r:.2f}" for r, _ in rows) + " |")
        print("| (share searched whole) | " + " | ".join(f"{w:.2f}" for _, w in rows) + " |", flush=True)
    print(f"\nclean sequence: {boxes / len(sequence):.2f} boxes/fr, {ms:.0f} ms per frame")


def run_members(frame: torch.Tensor, timings: dict, members: tuple[str, ...]) -> dict:
    found = {}
    for name in members:
        start = time.perf_counter()
        found[name] = face_boxes(frame, (name,))[name]
        timings.setdefault(name, []).append(time.perf_counter() - start)
    return found


def stack_boxes(found: dict, stack: tuple[str, ...]) -> torch.Tensor:
    return torch.from_numpy(merge_boxes(np.concatenate([found[name] for name in stack])))


def cli_fps(video: Path, stack: tuple[str, ...], frames: int = 100) -> float:
    """Frames per second of ``dp-pixel --protect faces --face-detectors STACK`` on the first ``frames`` frames."""
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.avi"
        capture = cv2.VideoCapture(str(video))
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 7, (768, 576))
        for _ in range(frames):
            writer.write(capture.read()[1])
        writer.release()
        argv = [str(clip), "-o", str(Path(folder) / "out.avi"), "--epsilon", "1", "--b", "8", "--protect", "faces"]
        start = time.perf_counter()
        assert dp_pixel([*argv, "--face-detectors", ",".join(stack), "--quiet"]) == 0
        return frames / (time.perf_counter() - start)


def main() -> None:
    if "--scan" in sys.argv:
        rest = sys.argv[sys.argv.index("--scan") + 1 :]
        count = int(rest[0]) if rest and rest[0].isdigit() else None
        others = [a for a in sys.argv[1:] if a != "--scan" and not a.isdigit()]
        return scan_main(Path(others[0]) if others else VIDEO, count)
    chosen = sys.argv[sys.argv.index("--members") + 1].split(",") if "--members" in sys.argv else None
    args = [a for a in sys.argv[1:] if a not in ("--cli", "--cnn", "--members", *([",".join(chosen)] if chosen else []))]
    members = FACE_DETECTORS if "--cnn" in sys.argv else tuple(d for d in FACE_DETECTORS if d != "dlib-cnn")
    members = tuple(d for d in members if chosen is None or d in chosen)
    stacks = [s for s in STACKS if set(s) <= set(members)]
    video = Path(args[0]) if args else VIDEO
    frames = pets_frames(video, 30)
    backgrounds, clean = frames[:20], frames[20:]
    pool = faces()
    timings: dict = {}
    rows = []  # (condition, {detector or stack: recall})
    for tilt, size in itertools.product(TILTS, SIZES):
        hits = {}
        for frame, truths in composites(backgrounds, pool, size, tilt):
            found = run_members(frame, timings, members)
            for key in [*members, *stacks]:
                boxes = torch.from_numpy(found[key]) if isinstance(key, str) else stack_boxes(found, key)
                hit = (box_iou(truths.float(), boxes).amax(1) >= IOU) if len(boxes) else torch.zeros(len(truths))
                hits[key] = hits.get(key, 0) + int(hit.sum())
        rows.append((f"{size} px, {tilt:+d}°", {key: n / len(pool) for key, n in hits.items()}))
        print(f"done {rows[-1][0]}", file=sys.stderr)
    false = {}
    for frame in clean:
        found = run_members(torch.from_numpy(frame).permute(2, 0, 1).contiguous(), timings, members)
        for key in [*members, *stacks]:
            false[key] = false.get(key, 0) + len(found[key] if isinstance(key, str) else stack_boxes(found, key))
    ms = {name: 1000 * float(np.median(t)) for name, t in timings.items()}
    keys = [*members, *stacks]
    names = [k if isinstance(k, str) else "+".join(k) for k in keys]
    print(f"recall of {len(pool)} real faces pasted into PETS2009 frames (IoU >= {IOU}); false detections per clean")
    print(f"frame ({len(clean)} frames); median ms per 768×576 frame (a stack: sum of its members). Default stack:")
    print(f"{'+'.join(FACE_STACK)}\n")
    header = f"{'detector or stack':52}" + "".join(f"{c:>11}" for c, _ in rows) + f"{'false/fr':>9}{'ms':>8}"
    print(header + "\n" + "-" * len(header))
    for key, name in zip(keys, names):
        total = ms[key] if isinstance(key, str) else sum(ms[k] for k in key)
        print(
            f"{name:52}"
            + "".join(f"{r[key]:>11.2f}" for _, r in rows)
            + f"{false[key] / len(clean):>9.2f}{total:>8.0f}"
        )
    if "--cli" in sys.argv:
        print("\ndp-pixel --protect faces --b 8 on the first 100 frames of vtest.avi (frames/s, whole run):")
        for stack in stacks:
            print(f"{'+'.join(stack):52}{cli_fps(video, stack):>8.1f}")


if __name__ == "__main__":
    main()
