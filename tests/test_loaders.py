"""Loaders of the real datasets, on tiny synthetic copies of their official layouts (SPEC §8)."""

import cv2
import numpy as np
import pytest
import torch

from dp_pixel_torch.datasets import PETS2009, PPM100, CelebA, MOTSequence
from dp_pixel_torch.detectors import boxes_mask


def write_jpg(path, h=24, w=32, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def test_mot_sequence_with_ground_truth_and_seqinfo(tmp_path):
    seq = tmp_path / "2DMOT2015" / "train" / "Venice-2"
    for i in (1, 2, 3):
        write_jpg(seq / "img1" / f"{i:06d}.jpg")
    (seq / "gt").mkdir()
    rows = ["1,1,10,5,8,12", "1,2,0,0,4,4", "1,3,40,2,6,6", "3,1,11,6,8,12"]  # track 3 is off the 32-pixel frame
    (seq / "gt" / "gt.txt").write_text("".join(f"{row},1,-1,-1,-1\n" for row in rows))
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=Venice-2\nframeRate=30\n")
    data = MOTSequence(tmp_path, "Venice-2")
    assert len(data) == 3 and data.fps == 30 and data.has_ground_truth
    frame, target = data[0]
    assert frame.shape == (3, 24, 32) and frame.dtype == torch.uint8
    assert target["boxes"].tolist() == [[10, 5, 18, 17], [0, 0, 4, 4]] and target["ids"].tolist() == [1, 2]
    assert boxes_mask(target["boxes"], 24, 32).sum() == 8 * 12 + 4 * 4
    assert data[1][1]["boxes"].shape == (0, 4)


def test_mot_sequence_without_gt_or_seqinfo(tmp_path):
    write_jpg(tmp_path / "2DMOT2015" / "train" / "PETS09-S2L1" / "img1" / "000001.jpg")
    data = MOTSequence(tmp_path, "PETS09-S2L1", fps=7)
    assert data.fps == 7 and not data.has_ground_truth and data[0][1]["boxes"].shape == (0, 4)


def test_pets2009_from_frames_and_from_a_video(tmp_path):
    folder = tmp_path / "Crowd_PETS09" / "S2" / "L1" / "Time_12-34" / "View_001"
    for i in range(4):
        write_jpg(folder / f"frame_{i:04d}.jpg", value=50 * i)
    frames = PETS2009(tmp_path)
    assert len(frames) == 4 and frames[3].shape == (3, 24, 32)
    video = tmp_path / "vtest.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 7, (32, 24))
    for i in range(5):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    clip = PETS2009(video)
    assert len(clip) == 5 and abs(int(clip[4].float().mean()) - 160) <= 3


def test_ppm100_pairs_by_stem(tmp_path):
    base = tmp_path / "PPM-100"
    write_jpg(base / "image" / "a.jpg")
    write_jpg(base / "image" / "b.jpg")
    (base / "matte").mkdir()
    cv2.imwrite(str(base / "matte" / "a.png"), np.full((24, 32), 255, np.uint8))
    cv2.imwrite(str(base / "matte" / "b.jpg"), np.zeros((24, 32), np.uint8))
    data = PPM100(tmp_path)
    assert len(data) == 2
    image, matte = data[0]
    assert image.shape == (3, 24, 32) and matte.shape == (24, 32) and matte.max() == 1.0 and data[1][1].max() == 0


def test_celeba_identities_landmarks_and_splits(tmp_path):
    base = tmp_path / "celeba"
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        write_jpg(base / "img_align_celeba" / name, 218, 178)
    (base / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 0\n000003.jpg 2\n")
    (base / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 9\n000003.jpg 7\n")
    header = (
        "3\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
    )
    rows = "".join(f"{n} 69 109 106 113 77 142 73 152 108 154\n" for n in ("000001.jpg", "000002.jpg", "000003.jpg"))
    (base / "list_landmarks_align_celeba.txt").write_text(header + rows)
    train, test = CelebA(tmp_path, "train"), CelebA(tmp_path, "test")
    assert (len(train), len(test), len(CelebA(tmp_path))) == (2, 1, 3)
    image, target = train[1]
    assert image.shape == (3, 218, 178) and target["identity"] == 9 and target["landmarks"][0].tolist() == [69, 109]
    assert train.identities == [7, 9]
    box = target["boxes"][0]  # the landmark hull widened by the eye distance (37.2 px), 0.8 of it below the mouth
    assert box.tolist() == pytest.approx([69 - 37.2, 109 - 37.2, 108 + 37.2, 154 + 0.8 * 37.2], abs=0.05)
    with pytest.raises(ValueError, match="split"):
        CelebA(tmp_path, "val")


@pytest.mark.parametrize(
    ("make", "layout"),
    [
        (lambda r: MOTSequence(r, "Venice-2"), "2DMOT2015/train/Venice-2/img1"),
        (PETS2009, "Crowd_PETS09/S2/L1/Time_12-34/View_001"),
        (PPM100, "PPM-100/image"),
        (CelebA, "img_align_celeba"),
    ],
)
def test_a_missing_root_names_the_expected_layout(make, layout, tmp_path):
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded") as error:
        make(tmp_path / "nowhere")
    assert layout in str(error.value)
