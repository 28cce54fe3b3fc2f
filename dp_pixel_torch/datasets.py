"""Loaders of the real datasets in their official layouts (SPEC §8), for the experiments; nothing is ever downloaded.

Training data released once lives in :mod:`dp_pixel_torch.training_data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ._validation import box_pixels
from .video import from_bgr, import_cv2, read_image


def _missing(root: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{str(root)!r} is not a copy of the dataset: expected the layout {layout}. Nothing is downloaded; "
        "point the loader (or the experiment's data.root) at a local copy."
    )


class MOTSequence(Dataset):
    """One MOTChallenge sequence (Venice-2, PETS09-S2L1, …): frames with their ground-truth boxes.

    Layout: ``<root>/<benchmark>/<split>/<name>/img1/000001.jpg…``, ``gt/gt.txt`` (optional) and ``seqinfo.ini``
    (optional). Items are ``(frame, target)``: uint8 RGB ``[3, H, W]`` and ``{"boxes": float32 [K, 4] XYXY pixels,
    "ids": int64 [K], "frame": int}``, the boxes that hold a pixel of the frame (MOT15 ``gt.txt`` rows: frame, id, left, top, width, height, conf, …).
    """

    LAYOUT = "<root>/2DMOT2015/train/<name>/img1/000001.jpg… with gt/gt.txt and seqinfo.ini when present"

    def __init__(
        self,
        root: str | Path,
        name: str = "Venice-2",
        *,
        split: str = "train",
        benchmark: str = "2DMOT2015",
        fps: float = 30.0,
    ) -> None:
        self.root = Path(root)
        self.directory = self.root / benchmark / split / name
        self.frames = sorted((self.directory / "img1").glob("*.jpg"))
        if not self.frames:
            raise _missing(self.root, self.LAYOUT.replace("<name>", name))
        self.fps = self._seqinfo_fps() or fps
        self._boxes: dict[int, list[tuple[int, list[float]]]] = {}
        gt = self.directory / "gt" / "gt.txt"
        if gt.exists():
            for line in gt.read_text().splitlines():
                if line.strip():
                    fields = [float(v) for v in line.replace(" ", "").split(",")[:6]]
                    frame, track, left, top, width, height = fields
                    self._boxes.setdefault(int(frame), []).append((int(track), [left, top, left + width, top + height]))

    @property
    def has_ground_truth(self) -> bool:
        return bool(self._boxes)

    def _seqinfo_fps(self) -> float | None:
        info = self.directory / "seqinfo.ini"
        if info.exists():
            for line in info.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip().lower() == "framerate":
                    return float(value)
        return None

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        number = int(self.frames[index].stem)
        rows = self._boxes.get(number, [])
        boxes = torch.tensor([box for _, box in rows], dtype=torch.float32).reshape(-1, 4)
        ids = torch.tensor([track for track, _ in rows], dtype=torch.int64)
        frame = read_image(self.frames[index])
        pixels = box_pixels(boxes, *frame.shape[-2:])
        seen = (pixels[:, 2:] > pixels[:, :2]).all(1)  # an annotation off the frame (or empty) shows no one
        return frame, {"boxes": boxes[seen], "ids": ids[seen], "frame": number}


class PETS2009(Dataset):
    """PETS2009 S2L1 View_001: from the original frames folder, or from a video file (OpenCV's ``vtest.avi`` is this
    sequence). Items are uint8 RGB frames ``[3, H, W]``.

    Layouts: ``<root>/Crowd_PETS09/S2/L1/Time_12-34/View_001/frame_0000.jpg…``, or ``<root>`` itself a video file.
    """

    LAYOUT = "<root>/Crowd_PETS09/S2/L1/Time_12-34/View_001/frame_0000.jpg…, or a video file such as vtest.avi"
    FPS = 7.0

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.video = self.root if self.root.is_file() else None
        self.frames: list[Path] = []
        if self.video is not None:
            from .video import probe

            self._count = probe(self.video).frames
        else:
            self.frames = sorted((self.root / "Crowd_PETS09/S2/L1/Time_12-34/View_001").glob("frame_*.jpg"))
            self._count = len(self.frames)
        if self._count == 0:
            raise _missing(self.root, self.LAYOUT)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.video is None:
            return read_image(self.frames[index])
        cv2 = import_cv2()
        capture = cv2.VideoCapture(str(self.video))
        try:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, bgr = capture.read()
        finally:
            capture.release()
        if not ok:
            raise IndexError(f"frame {index} of {str(self.video)!r} cannot be decoded")
        return from_bgr(bgr)


class PPM100(Dataset):
    """PPM-100 portrait matting: ``(image, matte)`` pairs, uint8 RGB ``[3, H, W]`` and float32 ``[H, W]`` in [0, 1].

    Layout: ``<root>/PPM-100/image/<stem>.jpg`` and ``<root>/PPM-100/matte/<stem>.(jpg|png)``.
    """

    LAYOUT = "<root>/PPM-100/image/<stem>.jpg with <root>/PPM-100/matte/<stem>.jpg or .png"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        images = sorted((self.root / "PPM-100" / "image").glob("*.jpg"))
        self.pairs = []
        for image in images:
            matte = next(
                (m for m in (image.parents[1] / "matte" / f"{image.stem}{s}" for s in (".png", ".jpg")) if m.exists()),
                None,
            )
            if matte is not None:
                self.pairs.append((image, matte))
        if not self.pairs:
            raise _missing(self.root, self.LAYOUT)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, matte = self.pairs[index]
        cv2 = import_cv2()
        alpha = cv2.imread(str(matte), cv2.IMREAD_GRAYSCALE)
        if alpha is None:
            raise ValueError(f"cannot read matte {str(matte)!r}")
        return read_image(image), torch.from_numpy(alpha).float() / 255


class CelebA(Dataset):
    """CelebA aligned faces with identities and landmarks, read from the official files (no MD5 checks, so tiny
    fixtures work; torchvision's loader rejects them).

    Layout: ``<root>/celeba/img_align_celeba/*.jpg``, ``list_eval_partition.txt``, ``identity_CelebA.txt``,
    ``list_landmarks_align_celeba.txt`` (``list_bbox_celeba.txt`` and ``list_attr_celeba.txt`` are not needed).
    Items are ``(image, target)``: uint8 RGB ``[3, 218, 178]`` and ``{"identity": int, "landmarks": float32 [5, 2],
    "boxes": float32 [1, 4]}``, the face box XYXY from :func:`face_box_from_landmarks` (``list_bbox_celeba.txt``
    holds boxes of the *unaligned* images, so it does not apply here).
    ``split``: ``"train"``, ``"valid"``, ``"test"`` or ``"all"``.
    """

    LAYOUT = (
        "<root>/celeba/img_align_celeba/*.jpg with list_eval_partition.txt, identity_CelebA.txt and "
        "list_landmarks_align_celeba.txt"
    )
    SPLITS = {"train": 0, "valid": 1, "test": 2}

    def __init__(self, root: str | Path, split: str = "all") -> None:
        self.root = Path(root)
        base = self.root / "celeba"
        files = [
            base / n for n in ("list_eval_partition.txt", "identity_CelebA.txt", "list_landmarks_align_celeba.txt")
        ]
        if not (base / "img_align_celeba").is_dir() or not all(f.exists() for f in files):
            raise _missing(self.root, self.LAYOUT)
        if split != "all" and split not in self.SPLITS:
            raise ValueError(f"split must be 'all' or one of {tuple(self.SPLITS)}, got {split!r}")
        partition = _table(files[0])
        identity = _table(files[1])
        landmarks = _table(files[2], skip=2)
        self.items = [
            (name, int(identity[name][0]), [float(v) for v in landmarks[name]])
            for name, (part,) in partition.items()
            if (split == "all" or int(part) == self.SPLITS[split]) and (base / "img_align_celeba" / name).exists()
        ]
        self.directory = base / "img_align_celeba"

    def __len__(self) -> int:
        return len(self.items)

    @property
    def identities(self) -> list[int]:
        """The identity of every item, without reading the images."""
        return [identity for _, identity, _ in self.items]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        name, identity, landmarks = self.items[index]
        points = torch.tensor(landmarks, dtype=torch.float32).reshape(5, 2)
        target = {"identity": identity, "landmarks": points, "boxes": face_box_from_landmarks(points)[None]}
        return read_image(self.directory / name), target


def face_box_from_landmarks(landmarks: torch.Tensor) -> torch.Tensor:
    """A face box ``[4]`` XYXY from five aligned landmarks ``[5, 2]`` (x, y of the eyes, nose and mouth corners, as in
    CelebA): their hull widened by the eye distance ``d`` to each side and above the eyes, and by ``0.8 d`` below the
    mouth."""
    d = (landmarks[1] - landmarks[0]).norm()
    low, high = landmarks.amin(0), landmarks.amax(0)
    return torch.stack([low[0] - d, low[1] - d, high[0] + d, high[1] + 0.8 * d])


def _table(path: Path, skip: int = 0) -> dict[str, list[str]]:
    """A CelebA list file: ``name value…`` per line after ``skip`` header lines."""
    rows = {}
    for line in path.read_text().splitlines()[skip:]:
        fields = line.split()
        if fields:
            rows[fields[0]] = fields[1:]
    return rows
