"""Regions from a detector: face and people detectors, box growth, and ``dp-pixel --protect`` end to end."""

import numpy as np
import pytest
import torch

from dp_pixel_torch import BudgetExceededError, PrivacyAccountant, RegionAdaptiveDPPixelize, load_video
from dp_pixel_torch.cli import main
from dp_pixel_torch.detectors import (
    ProtectDetected,
    boxes_mask,
    detect_faces,
    detect_people,
    dilate_boxes,
)
from dp_pixel_torch.video import read_frames, read_image, sanitize_stream, to_bgr

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

HEIGHT, WIDTH = 256, 320


def face_scene(left: int = 60, top: int = 40) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The astronaut's head pasted at (left, top) on a flat noisy background: uint8 RGB [3, 256, 320] and the true
    face box XYXY (the astronaut's (175, 70, 268, 163), moved)."""
    rng = np.random.default_rng(0)
    scene = rng.integers(100, 140, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    scene[top : top + 170, left : left + 160] = skimage_data.astronaut()[30:200, 140:300]
    face = (175 - 140 + left, 70 - 30 + top, 268 - 140 + left, 163 - 30 + top)
    return torch.from_numpy(scene).permute(2, 0, 1).contiguous(), face


def protect_layer(**kwargs) -> RegionAdaptiveDPPixelize:
    return RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, region_from="detector", seed=0, **kwargs)


def constant_cells(image: torch.Tensor, rows: slice, cols: slice, cell: int) -> bool:
    """Whether every channel of every ``cell``-sized cell in cell ranges ``rows``/``cols`` holds one value."""
    for r in range(rows.start, rows.stop):
        for c in range(cols.start, cols.stop):
            block = image[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].reshape(image.shape[0], -1)
            if not (block == block[:, :1]).all():
                return False
    return True


def test_detector_finds_the_pasted_face_and_the_grown_box_covers_it():
    scene, (x0, y0, x1, y1) = face_scene()
    boxes = detect_faces(scene)
    assert boxes.dtype == torch.float32 and boxes.shape == (1, 4)
    grown = dilate_boxes(boxes, 0.25, HEIGHT, WIDTH)[0].tolist()
    assert grown[0] <= x0 and grown[1] <= y0 and grown[2] >= x1 and grown[3] >= y1
    assert detect_faces(torch.full((3, 64, 64), 128, dtype=torch.uint8)).shape == (0, 4)
    with pytest.raises(ValueError, match="uint8 RGB frame"):
        detect_faces(scene.float())


def test_people_detector_moved_and_is_still_importable_from_metrics():
    from dp_pixel_torch import metrics

    assert metrics.detect_people is detect_people
    assert detect_people(torch.zeros(3, 128, 64, dtype=torch.uint8)).shape == (0, 4)


def test_dilate_boxes_grows_by_the_margin_and_clips_to_the_image():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 40.0, 8.0]])
    grown = dilate_boxes(boxes, 0.25, 64, 36)
    assert grown.tolist() == [[5.0, 10.0, 35.0, 70.0 - 6.0], [0.0, 0.0, 36.0, 10.0]]
    assert dilate_boxes(boxes, 0, 64, 36).tolist() == [[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 36.0, 8.0]]
    assert dilate_boxes(torch.zeros(0, 4), 0.25, 8, 8).shape == (0, 4)
    with pytest.raises(ValueError, match="margin"):
        dilate_boxes(boxes, -0.1, 64, 36)
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        dilate_boxes(torch.zeros(4), 0.25, 64, 36)


def test_boxes_mask_protects_the_cells_that_boxes_protect():
    x = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    boxes = torch.tensor([[7.4, 30.6, 33.5, 40.5], [60.0, 0.0, 61.0, 1.0]])
    by_boxes = protect_layer().release(x, boxes=boxes)
    by_mask = protect_layer().release(x, mask=boxes_mask(boxes, 70, 90))
    assert torch.equal(by_boxes.split[0], by_mask.split[0]) and not by_mask.split[0].all()


def test_each_frame_is_protected_where_its_own_detections_lie():
    frames = torch.randint(0, 256, (2, 3, 96, 128), dtype=torch.uint8)
    places = iter([torch.tensor([[4.0, 4.0, 20.0, 20.0]]), torch.tensor([[70.0, 40.0, 90.0, 60.0]]), torch.zeros(0, 4)])
    accountant = PrivacyAccountant()
    layer = ProtectDetected(protect_layer(accountant=accountant), lambda frame: next(places), margin=0.0)
    released = layer(frames)
    assert released.shape == frames.shape and released.dtype == torch.uint8
    assert constant_cells(released[0], slice(0, 1), slice(0, 1), 32)
    assert constant_cells(released[1], slice(1, 2), slice(2, 3), 32)
    assert not constant_cells(released[0], slice(1, 2), slice(2, 3), 32)
    assert not constant_cells(released[1], slice(0, 1), slice(0, 1), 32)
    assert accountant.frames == 2 and (layer.frames, layer.found, layer.frames_with) == (2, 2, 2)
    grid = layer.release(frames[:1])  # the third detection: no face
    assert grid.split[0].all() and (layer.frames, layer.found, layer.frames_with) == (3, 2, 2)
    assert accountant.frames == 3


def test_frames_the_accountant_refuses_are_not_counted():
    """The detector counted a frame before the accountant could refuse it: under a w-event window, sanitize_stream
    retries a refused chunk frame by frame, and every frame was counted twice."""
    accountant = PrivacyAccountant(window=4, window_cap=2.0)  # 2 frames of ε = 1 in any 4
    layer = ProtectDetected(protect_layer(accountant=accountant), lambda f: torch.tensor([[4.0, 4, 20, 20]]), 0.0)
    frames = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    report = sanitize_stream(list(frames), layer, chunk=4, progress=False, device="cpu")
    assert (report.skipped, accountant.frames, accountant.skipped) == (4, 4, 4)
    assert (layer.frames, layer.found, layer.frames_with) == (4, 4, 4)
    with pytest.raises(BudgetExceededError, match="largest chunk that fits is 2"):
        layer(frames[:3])
    assert layer.frames == 4


def test_protect_detected_needs_a_detector_labelled_protect_layer():
    for layer in (RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, seed=0), object()):
        with pytest.raises(ValueError, match='region_from="detector"'):
            ProtectDetected(layer)
    with pytest.raises(ValueError, match="margin"):
        ProtectDetected(protect_layer(), margin=float("nan"))
    report = ProtectDetected(protect_layer()).guarantee.report(3)
    assert "CONDITIONAL on the disclosed region positions" in report and "only the m protection" in report


def test_cli_protects_faces_of_an_image(tmp_path, capsys):
    scene, (x0, y0, x1, y1) = face_scene()
    source, output = tmp_path / "scene.png", tmp_path / "released.png"
    cv2.imwrite(str(source), to_bgr(scene))
    argv = [str(source), "-o", str(output), "--epsilon", "1", "--b", "8", "--protect", "faces", "--seed", "0"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "faces: 1 found and protected in 1 of 1 images/frames" in text
    assert "CONDITIONAL on the disclosed region positions" in text and "b ∈ {8, 32}" in text
    released = read_image(output)
    assert released.shape == scene.shape
    # the true face lies in the 32-pixel cells it meets, each released whole
    assert constant_cells(released, slice(y0 // 32, -(-y1 // 32)), slice(x0 // 32, -(-x1 // 32)), 32)
    assert not constant_cells(released, slice(0, 1), slice(WIDTH // 32 - 1, WIDTH // 32), 32)


def test_cli_protects_faces_frame_by_frame_in_a_video(tmp_path, capsys):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (WIDTH, HEIGHT))
    lefts = [20, 60, 100, 140, 140]
    for left in lefts:
        writer.write(to_bgr(face_scene(left=left)[0]))
    writer.write(np.full((HEIGHT, WIDTH, 3), 120, np.uint8))  # a frame without a face
    writer.release()
    argv = [str(clip), "-o", str(tmp_path / "out.avi"), "--epsilon", "0.5", "--b", "8", "--protect", "faces"]
    argv += ["--protect-m", "64", "--cap", "10", "--grids", str(tmp_path / "out.dpxg"), "--chunk", "4", "--quiet"]
    argv += ["--protect-persist", "0"]  # each frame with its own detections only
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "faces: 5 found and protected in 5 of 6 images/frames" in text
    assert "6 frames released, ε spent = 3 of a cap of 10" in text and "m_r = 64" in text and "CONDITIONAL" in text
    assert sum(1 for _ in read_frames(tmp_path / "out.avi")) == 6
    protected = torch.cat([~record.split[0] for record in load_video(tmp_path / "out.dpxg")])
    assert protected.shape == (6, HEIGHT // 32, WIDTH // 32) and not protected[-1].any()
    for frame, left in zip(protected, lefts):  # each frame's protection follows its own face
        _, (x0, y0, x1, y1) = face_scene(left=left)
        assert frame[y0 // 32 : -(-y1 // 32), x0 // 32 : -(-x1 // 32)].all()
        assert not frame[:, : x0 // 32 - 1].any()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--levels", "8", "32", "--region", "complexity"], "drop --levels/--region"),
        (["--b", "8", "--region", "complexity"], "drop --levels/--region"),
        (["--b", "8", "--protect-cell", "20"], "--protect-cell must be a multiple of --b = 8"),
        (["--b", "8", "--protect-cell", "8"], "--protect-cell must be a multiple of --b = 8"),
        (["--b", "8", "--protect-margin", "-1"], "margin must be a finite number"),
        (["--b", "8", "--m", "4", "--protect-m", "2"], "protect_m must be at least m"),
        ([], "--protect needs --b"),
    ],
)
def test_cli_refuses_protect_combinations_with_one_line(extra, message, tmp_path, capsys):
    image = tmp_path / "flat.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 120, np.uint8))
    assert main([str(image), "-o", str(tmp_path / "o.png"), "--epsilon", "1", "--protect", "faces", *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_cli_refuses_protect_options_without_protect(tmp_path, capsys):
    image = tmp_path / "flat.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 120, np.uint8))
    assert main([str(image), "-o", str(tmp_path / "o.png"), "--epsilon", "1", "--b", "8", "--protect-m", "9"]) == 2
    assert "apply to --protect" in capsys.readouterr().err


def test_people_in_frames_smaller_than_the_hog_window_are_none():
    for height, width in ((64, 96), (127, 200), (200, 63)):
        boxes = detect_people(torch.zeros(3, height, width, dtype=torch.uint8))
        assert boxes.shape == (0, 4) and boxes.dtype == torch.float32


def test_detections_that_would_protect_nothing_raise():
    """A detector's box that covers no pixel (an OpenCV (x, y, w, h) rectangle read as XYXY, a box off the frame)
    protected nothing in silence: the frame raises before the accountant is charged. No detection is no region."""
    frames = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for found in ([[20.0, 20.0, 8.0, 8.0]], [[70.0, 0.0, 90.0, 20.0]]):
        accountant = PrivacyAccountant()
        layer = ProtectDetected(protect_layer(accountant=accountant), lambda frame, boxes=found: torch.tensor(boxes))
        for release in (layer, layer.release, layer.masks):
            with pytest.raises(ValueError, match="would protect nothing"):
                release(frames)
        assert accountant.frames == 0 and layer.frames == 0
    nothing = ProtectDetected(protect_layer(), lambda frame: torch.zeros(0, 4))
    assert nothing.release(frames).split[0].all() and not nothing.masks(frames).any()
