"""Recall of the face detector behind ``dp-pixel --protect faces``, on the faces available offline.

A face the detector misses is protected only at ``m``: one minus the recall is the share of faces left unprotected.

* the astronaut (``skimage.data.astronaut()``, 512×512 RGB), true face box XYXY (175, 70, 268, 163);
* the 100 LFW face crops of ``skimage.data.lfw_subset()`` (25×25 grey, the face fills the crop), upscaled with
  ``cv2.INTER_CUBIC`` to each size below; the true box is the whole crop;
* false detections: the 100 non-face crops of ``lfw_subset()`` at the same sizes, and four photographs without a
  human face (coffee, chelsea the cat, rocket, coins).

A face counts as found when a detected box has IoU >= 0.3 with its true box; every other box on the image is a false
detection. "covered" is the share of a found face's true box that lies inside its grown boxes (margin
``FACE_MARGIN`` per side; the release protects the whole coarse cells they meet, more than that), mean over found
faces. The cascade in use (``FACE_CASCADE``) was picked on these same images, so its numbers are
optimistic; the OpenCV ``default`` cascade is listed for comparison. Run: ``python benchmarks/face_detector_recall.py``.
"""

from __future__ import annotations

import cv2
import numpy as np
import skimage.data
import torch
from torchvision.ops import box_iou

from dp_pixel_torch.detectors import FACE_CASCADE, FACE_MARGIN, detect_faces, dilate_boxes

SIZES = (25, 56, 112, 224)
CASCADES = (FACE_CASCADE, "haarcascade_frontalface_default.xml")
IOU = 0.3
ASTRONAUT_FACE = (175.0, 70.0, 268.0, 163.0)
NO_FACES = ("coffee", "chelsea", "rocket", "coins")


def rgb(image: np.ndarray) -> torch.Tensor:
    """A uint8 grey ``[H, W]`` or RGB ``[H, W, 3]`` array as uint8 RGB ``[3, H, W]``."""
    image = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def upscaled(crops: np.ndarray, size: int) -> list[torch.Tensor]:
    return [rgb(cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC)) for c in crops]


def score(images: list[torch.Tensor], truths: list[tuple[float, ...]], cascade: str) -> tuple[float, float, float]:
    """Recall, covered share of the found faces' boxes, and false detections per image (one true face per image)."""
    found, covered, false = 0, 0.0, 0
    for image, truth in zip(images, truths):
        boxes = detect_faces(image, cascade=cascade)
        true_box = torch.tensor([truth])
        hits = box_iou(boxes, true_box)[:, 0] >= IOU
        false += int((~hits).sum())
        if hits.any():
            found += 1
            grown = dilate_boxes(boxes[hits], FACE_MARGIN, *image.shape[-2:])
            x0, y0, x1, y1 = truth
            inside = torch.zeros(int(y1) - int(y0), int(x1) - int(x0), dtype=torch.bool)
            for gx0, gy0, gx1, gy1 in (grown - true_box[:, [0, 1, 0, 1]]).round().int().tolist():
                inside[max(gy0, 0) : max(gy1, 0), max(gx0, 0) : max(gx1, 0)] = True
            covered += float(inside.float().mean())
    return found / len(images), covered / found if found else float("nan"), false / len(images)


def false_rate(images: list[torch.Tensor], cascade: str) -> float:
    return sum(len(detect_faces(i, cascade=cascade)) for i in images) / len(images)


def main() -> None:
    crops = (skimage.data.lfw_subset() * 255).round().astype(np.uint8)
    faces, others = crops[:100], crops[100:]
    photos = [rgb(getattr(skimage.data, name)()) for name in NO_FACES]
    print(f"face found: a detected box with IoU >= {IOU} with the true box; covered: share of a found face's true box")
    print(f"inside its grown boxes (margin {FACE_MARGIN} per side); unprotected = 1 - recall.\n")
    header = f"{'cascade':38} {'faces':22} {'n':>4} {'recall':>7} {'unprot.':>8} {'covered':>8} {'false/img':>9}"
    print(header)
    print("-" * len(header))
    for cascade in CASCADES:
        datasets = [("astronaut 512×512", [rgb(skimage.data.astronaut())], [ASTRONAUT_FACE])]
        datasets += [(f"LFW {s}×{s}", upscaled(faces, s), [(0.0, 0.0, float(s), float(s))] * 100) for s in SIZES]
        for name, images, truths in datasets:
            recall, cover, false = score(images, truths, cascade)
            print(
                f"{cascade:38} {name:22} {len(images):>4} {recall:>7.2f} {1 - recall:>8.2f} {cover:>8.2f} {false:>9.2f}"
            )
        for s in SIZES:
            print(
                f"{cascade:38} {f'LFW non-faces {s}×{s}':22} {100:>4} {'':>7} {'':>8} {'':>8} "
                f"{false_rate(upscaled(others, s), cascade):>9.2f}"
            )
        print(
            f"{cascade:38} {'photos without faces':22} {len(photos):>4} {'':>7} {'':>8} {'':>8} "
            f"{false_rate(photos, cascade):>9.2f}"
        )


if __name__ == "__main__":
    main()
