"""Sources of protected regions beyond one detector (issue 21): motion, united sources, temporal persistence with a
tracker, and public zones, through ProtectDetected, sanitize_stream and ``dp-pixel``."""

import numpy as np
import pytest
import torch

from dp_pixel_torch import PrivacyAccountant, RegionAdaptiveDPPixelize, load_video
from dp_pixel_torch.cli import main
from dp_pixel_torch.detectors import (
    MotionDetector,
    ProtectDetected,
    RegionSource,
    cells_meeting,
    check_zone,
    region_source,
)
from dp_pixel_torch.tracking import MAX_PERSIST_FRAMES, Tracker, match, persist_frames, track_boxes
from dp_pixel_torch.video import sanitize_stream, to_bgr

cv2 = pytest.importorskip("cv2")

HEIGHT, WIDTH, CELL = 96, 128, 32
BOX = torch.tensor([[40.0, 40.0, 60.0, 60.0]])


def layer(origin: str = "detector", **kwargs) -> RegionAdaptiveDPPixelize:
    return RegionAdaptiveDPPixelize(1.0, levels=(8, CELL), protect=True, region_from=origin, seed=0, **kwargs)


class Scripted:
    """A detector that returns ``script[t]`` at its t-th call (no box when missing) and records what it saw."""

    def __init__(self, script: dict[int, torch.Tensor]) -> None:
        self.script, self.seen = script, []

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        self.seen.append(frame.clone())
        return self.script.get(len(self.seen) - 1, torch.zeros(0, 4))


def noise(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (frames, 3, HEIGHT, WIDTH), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def moving_square_clip(frames: int = 40, side: int = 16) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """A static textured background with a bright textured square moving right 2 px a frame: uint8 [T, 3, 96, 128],
    and the square's (left, top) per frame."""
    rng = np.random.default_rng(0)
    background = torch.from_numpy(rng.integers(40, 90, (3, HEIGHT, WIDTH), dtype=np.uint8))
    square = torch.from_numpy(rng.integers(160, 256, (3, side, side), dtype=np.uint8))
    clip, places = [], []
    for t in range(frames):
        frame, left, top = background.clone(), 10 + 2 * t, 50
        frame[:, top : top + side, left : left + side] = square
        clip.append(frame)
        places.append((left, top))
    return torch.stack(clip), places


def test_persistence_bridges_a_frame_the_detector_misses():
    """The detector blinks at frame 2: without persistence frame 2 is released with no protected cell, with it the
    box of frames 1 and 3 (and the tracker's between them) protect it."""
    script = {0: BOX, 1: BOX + 4, 3: BOX + 12, 4: BOX + 16}
    blinking = ProtectDetected(layer(), sources=[RegionSource("scripted", Scripted(script))])
    assert blinking.masks(noise(5)).sum((1, 2)).tolist() == [400, 400, 0, 400, 400]
    persistent = ProtectDetected(layer(), sources=[RegionSource("scripted", Scripted(script))], persist=0.1, fps=10)
    masks = persistent.masks(noise(5))
    assert persistent.k == 1 and masks.any((1, 2)).all()
    assert masks[2, 48:68, 48:68].all()  # the box interpolated between frames 1 and 3: (48, 48, 68, 68)
    assert not masks[2, :40].any() and not masks[2, :, :40].any()


def test_sanitize_stream_looks_ahead_so_a_gap_is_protected_from_both_sides(tmp_path):
    """Frame 3 has no detection and frames 0..2 none either: only the look-ahead (frames 4.. seen before frame 3 is
    released) protects frames 1..3; frame 0 is more than k = 3 frames before the first detection."""
    script = {t: BOX for t in range(4, 12)}
    protect = ProtectDetected(layer(), sources=[RegionSource("scripted", Scripted(script))], persist=0.3, fps=10)
    report = sanitize_stream(list(noise(12)), protect, grids=tmp_path / "g.dpxg", chunk=5, progress=False, device="cpu")
    protected = torch.cat([~record.split[0] for record in load_video(tmp_path / "g.dpxg")])
    assert report.frames == 12 and protected.shape == (12, HEIGHT // CELL, WIDTH // CELL)
    assert protected.any((1, 2)).tolist() == [False] + [True] * 11
    assert (protect.frames, protect.found, protect.frames_with, protect.bridged) == (12, 8, 8, 3)
    assert (protect.found_by, protect.frames_with_by) == ([8], [8])


def test_counts_are_kept_per_source():
    """Two boxes from one source in frames 0-3, a mask from another in frames 2-5: the totals and each source's."""
    boxes = RegionSource("two", Scripted({t: torch.cat([BOX, BOX + 30]) for t in range(4)}))
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    mask[:8, :8] = True
    calls = iter(range(6))
    masked = RegionSource("mask", lambda frame: mask if 2 <= next(calls) < 6 else mask & False)
    protect = ProtectDetected(layer(), sources=[boxes, masked])
    protect.release(noise(6))
    assert (protect.frames, protect.found, protect.frames_with) == (6, 12, 6)
    assert (protect.found_by, protect.frames_with_by) == ([8, 4], [4, 4])


def test_stream_regions_holds_only_the_look_ahead():
    pulled = []

    def frames():
        for t, frame in enumerate(noise(20)):
            pulled.append(t)
            yield frame[None]

    protect = ProtectDetected(layer(), sources=[RegionSource("s", Scripted({}))], persist=0.4, fps=10)
    outputs = protect.stream_regions(frames(), 4)
    first, _ = next(outputs)
    assert first.shape == (4, 3, HEIGHT, WIDTH) and len(pulled) == 4 + protect.k == 8
    assert sum(len(r.found) for _, r in outputs) == 16


def test_tracker_pieces():
    points = [(0, torch.tensor([0.0, 0, 10, 10])), (4, torch.tensor([8.0, 0, 18, 10]))]
    at = lambda t, k: [b.tolist() for b in track_boxes(points, t, k)]
    assert at(2, 0) == [[4.0, 0, 14, 10]]  # interpolated
    assert at(1, 1) == [[0.0, 0, 10, 10], [2.0, 0, 12, 10]]  # kept, and interpolated
    assert at(6, 2) == [[8.0, 0, 18, 10], [12.0, 0, 22, 10]]  # kept, and extrapolated at constant velocity
    assert at(-1, 1) == [[0.0, 0, 10, 10], [-2.0, 0, 8, 10]]
    assert at(7, 2) == []
    assert match(torch.tensor([[0.0, 0, 10, 10], [50.0, 0, 60, 10]]), torch.tensor([[52.0, 0, 62, 10]])) == [(1, 0)]
    tracker = Tracker(k=2)
    for t in (0, 1, 3):  # the box moves 2 px a frame; frame 2 is missed
        tracker.update(t, torch.tensor([[2.0 * t, 0, 2.0 * t + 10, 10]]))
    assert len(tracker.tracks) == 1 and len(tracker.tracks[0]) == 3
    tracker.update(20, torch.zeros(0, 4))
    assert tracker.tracks == []  # out of reach: dropped
    assert persist_frames(0.5, 25) == 13 and persist_frames(0.5, 10) == 5 and persist_frames(0, 25) == 0
    with pytest.raises(ValueError, match="persist"):
        persist_frames(-1, 25)


def test_motion_finds_a_moving_square_and_not_the_static_background():
    clip, places = moving_square_clip()
    motion = MotionDetector(dilate=2)
    masks = [motion(frame) for frame in clip]
    assert masks[0].all()  # no background learned yet: MOG2 calls the first frame all shadow, and shadows are kept
    for mask, (left, top) in list(zip(masks, places))[5:]:
        square = mask[top : top + 16, left : left + 16]
        assert square.float().mean() > 0.5  # the square's leading part moves into new background
        outside = mask.clone()
        outside[top - 4 : top + 20, max(left - 12, 0) : left + 20] = False
        assert not outside.any()
    motion.reset()
    assert motion(clip[10]).all()
    with pytest.raises(ValueError, match="min_area"):
        MotionDetector(min_area=0)


def test_motion_keeps_what_mog2_calls_a_shadow():
    """After 30 static frames, a square that darkens the background to 60% without changing its hue walks in: what
    MOG2 labels a shadow (a dark coat, a face in shade). The default keeps it, ``shadows=False`` drops it."""
    background = torch.from_numpy(np.random.default_rng(1).integers(120, 200, (3, HEIGHT, WIDTH), dtype=np.uint8))
    clip = background.expand(60, -1, -1, -1).clone()
    places = [(10 + 2 * (t - 30), 50) for t in range(30, 60)]
    for t, (left, top) in enumerate(places, start=30):
        clip[t, :, top : top + 16, left : left + 16] = (background[:, top : top + 16, left : left + 16] * 0.6).round()
    kept, dropped = MotionDetector(dilate=0), MotionDetector(dilate=0, shadows=False)
    share = {True: [], False: []}
    for t, frame in enumerate(clip):
        for keep, motion in ((True, kept), (False, dropped)):
            mask = motion(frame)
            if t >= 30:
                left, top = places[t - 30]
                share[keep].append(float(mask[top : top + 16, left : left + 16].float().mean()))
    assert min(share[True]) > 0.8 and max(share[False]) < 0.5, share  # measured: at least 0.875 and at most 0.0


def test_sources_unite_boxes_and_masks():
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    mask[:10, 100:] = True
    boxes = RegionSource("boxes", lambda frame: BOX)
    masked = RegionSource("mask", lambda frame: mask)
    both = ProtectDetected(layer(), sources=[boxes, masked]).masks(noise(2))
    one = ProtectDetected(layer(), sources=[boxes]).masks(noise(2))
    other = ProtectDetected(layer(), sources=[masked]).masks(noise(2))
    assert torch.equal(both, one | other) and one.any() and other.any() and not (one & other).any()
    assert [region_source(name).name for name in ("faces", "people", "motion")] == ["faces", "people", "motion"]
    assert region_source("motion").detect is not region_source("motion").detect  # one background model each


def test_zone_is_unconditional_in_the_report_and_detections_stay_conditional():
    zone = torch.zeros(HEIGHT, WIDTH)
    zone[70:80, 5:15] = 1
    both = ProtectDetected(layer("public+detector"), sources=["faces"], zone=zone)
    text = both.guarantee.report(3)
    assert "PUBLIC zone" in text and "UNCONDITIONALLY" in text and "CONDITIONAL on the disclosed region" in text
    alone = ProtectDetected(layer("public"), sources=[], zone=zone).guarantee.report(3)
    assert "CONDITIONAL" not in alone and "PUBLIC" in alone
    detected = ProtectDetected(layer(), sources=["faces"]).guarantee.report(3)
    assert "CONDITIONAL on the disclosed region positions" in detected and "zone" not in detected
    with pytest.raises(ValueError, match='region_from="public\\+detector"'):
        ProtectDetected(layer(), sources=["faces"], zone=zone)
    with pytest.raises(ValueError, match='region_from="public"'):
        ProtectDetected(layer(), sources=[], zone=zone)


def test_sources_never_see_the_zone_cells_so_a_change_there_moves_no_region():
    zone = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    zone[40:50, 40:50] = True  # meets the 32-px cell (1, 1)
    hidden = cells_meeting(zone, CELL)
    assert hidden.sum() == CELL * CELL and hidden[32:64, 32:64].all()
    seen = Scripted({0: BOX, 1: BOX})
    protect = ProtectDetected(layer("public+detector"), sources=[RegionSource("s", seen)], zone=zone)
    x = noise(2)
    x[1, :, 32:64, 32:64] = 255 - x[0, :, 32:64, 32:64]  # frame 1 differs from frame 0 only inside the zone cell
    x[1, :, :32] = x[0, :, :32]
    x[1, :, 64:] = x[0, :, 64:]
    x[1, :, :, :32] = x[0, :, :, :32]
    x[1, :, :, 64:] = x[0, :, :, 64:]
    masks = protect.masks(x)
    assert torch.equal(seen.seen[0], seen.seen[1]) and not seen.seen[0][:, hidden].any()
    assert torch.equal(masks[0], masks[1]) and masks[0][hidden].all()
    zone_only = ProtectDetected(layer("public"), sources=[], zone=zone)
    assert torch.equal(zone_only.masks(x), hidden.expand(2, -1, -1))
    with pytest.raises(ValueError, match="zone is 96×128 pixels but the frames are 64×64"):
        zone_only.masks(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize(
    "zone, message",
    [
        (torch.zeros(4, 4), "zone marks no pixel"),
        (torch.ones(3, 4, 4), r"zone must be a mask tensor \[H, W\]"),
        (torch.tensor([[float("nan"), 1.0]]), "NaN"),
        (np.ones((4, 4)), "zone must be a mask tensor"),
    ],
)
def test_bad_zones_are_refused(zone, message):
    with pytest.raises(ValueError, match=message):
        check_zone(zone)


def test_protect_detected_refuses_mixed_or_incomplete_arguments():
    with pytest.raises(ValueError, match="not both"):
        ProtectDetected(layer(), lambda frame: BOX, sources=["faces"])
    with pytest.raises(ValueError, match="give the video's fps"):
        ProtectDetected(layer(), persist=0.5)
    with pytest.raises(ValueError, match="nothing to protect"):
        ProtectDetected(layer(), sources=[])
    with pytest.raises(ValueError, match="unknown region source 'cars'"):
        ProtectDetected(layer(), sources=["cars"])
    with pytest.raises(TypeError, match="string"):
        ProtectDetected(layer(), sources="faces")
    with pytest.raises(ValueError, match="source 'bad'"):
        ProtectDetected(layer(), sources=[RegionSource("bad", lambda f: torch.tensor([[5.0, 5, 2, 2]]))])(noise(1))


def test_a_window_refusal_feeds_every_frame_to_the_sources_once_in_order():
    """sanitize_stream retries a refused chunk frame by frame: the regions found once are split, never found again
    (a stateful source such as motion would learn the frames twice)."""
    order = []

    def recording(frame: torch.Tensor) -> torch.Tensor:
        order.append(int(frame[0, 0, 0]))
        return BOX

    frames = noise(8)
    frames[:, 0, 0, 0] = torch.arange(8, dtype=torch.uint8)
    accountant = PrivacyAccountant(window=4, window_cap=2.0)
    protect = ProtectDetected(layer(accountant=accountant), sources=[RegionSource("r", recording)], persist=0.2, fps=10)
    report = sanitize_stream(list(frames), protect, chunk=4, progress=False, device="cpu")
    assert order == list(range(8)) and report.skipped == 4 and protect.frames == 4


def write_clip(path, clip: torch.Tensor, fps: int = 10) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (clip.shape[-1], clip.shape[-2]))
    for frame in clip:
        writer.write(to_bgr(frame))
    writer.release()


def test_cli_unites_faces_people_motion_and_a_zone_on_a_clip(tmp_path, capsys):
    clip, places = moving_square_clip(frames=24)
    write_clip(tmp_path / "clip.avi", clip)
    zone = np.zeros((HEIGHT, WIDTH), np.uint8)
    zone[5:10, 100:110] = 255  # meets the 32-px cell (0, 3)
    cv2.imwrite(str(tmp_path / "zone.png"), zone)
    argv = [str(tmp_path / "clip.avi"), "-o", str(tmp_path / "out.avi"), "--epsilon", "1", "--b", "8", "--quiet"]
    argv += ["--protect", "faces,people,motion", "--protect-zone", str(tmp_path / "zone.png")]
    argv += ["--grids", str(tmp_path / "out.dpxg"), "--seed", "0"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "faces,people,motion: " in text and "persistence (0.5 s = 5 frames each side) and tracking" in text
    assert "zone: 50 pixels, protected in every frame unconditionally" in text
    assert "UNCONDITIONALLY" in text and "CONDITIONAL on the disclosed region positions" in text
    protected = torch.cat([~record.split[0] for record in load_video(tmp_path / "out.dpxg")])
    assert protected.shape == (24, 3, 4) and protected[:, 0, 3].all()
    for frame, (left, top) in list(zip(protected, places))[6:]:  # the moving square's cells, from motion
        assert frame[top // CELL : (top + 15) // CELL + 1, left // CELL : (left + 15) // CELL + 1].all()


def test_cli_zone_alone_is_public(tmp_path, capsys):
    clip, _ = moving_square_clip(frames=6)
    write_clip(tmp_path / "clip.avi", clip)
    zone = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    zone[90:, :5] = (0, 0, 255)  # an RGB zone: the 32-px cell (2, 0)
    cv2.imwrite(str(tmp_path / "zone.png"), zone)
    argv = [str(tmp_path / "clip.avi"), "-o", str(tmp_path / "out.avi"), "--epsilon", "1", "--b", "8", "--quiet"]
    assert main([*argv, "--protect-zone", str(tmp_path / "zone.png"), "--grids", str(tmp_path / "g.dpxg")]) == 0
    text = capsys.readouterr().out
    assert "zone: 30 pixels" in text and "CONDITIONAL" not in text and "given as PUBLIC" in text
    protected = torch.cat([~record.split[0] for record in load_video(tmp_path / "g.dpxg")])
    assert protected[:, 2, 0].all() and protected.sum() == 6


def bad_zone(kind: str, path):
    """Write a bad zone file of ``kind`` at ``path``; return it."""
    if kind == "rgba":
        cv2.imwrite(str(path), np.full((HEIGHT, WIDTH, 4), 255, np.uint8))
    elif kind == "empty":
        cv2.imwrite(str(path), np.zeros((HEIGHT, WIDTH), np.uint8))
    elif kind == "size":
        cv2.imwrite(str(path), np.full((HEIGHT // 2, WIDTH), 255, np.uint8))
    elif kind == "unreadable":
        path.write_bytes(b"not an image")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "cannot read zone"),
        ("unreadable", "cannot read zone"),
        ("rgba", "must be a single-channel or an RGB image, got 4 channels"),
        ("empty", "zone marks no pixel"),
        ("size", "zone is 48×128 pixels but the frames are 96×128"),
    ],
)
def test_cli_refuses_a_bad_zone_file_with_one_line_and_status_2(kind, message, tmp_path, capsys):
    clip, _ = moving_square_clip(frames=3)
    write_clip(tmp_path / "clip.avi", clip)
    zone = bad_zone(kind, tmp_path / "zone.png")
    argv = [str(tmp_path / "clip.avi"), "-o", str(tmp_path / "out.avi"), "--epsilon", "1", "--b", "8", "--quiet"]
    assert main([*argv, "--protect", "faces", "--protect-zone", str(zone)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "out.avi").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--protect", "motion"], "--protect motion finds what moves in a video"),
        (["--protect", "faces", "--protect-persist", "1"], "--protect-persist cannot apply to an image"),
        (["--protect", "faces,faces"], "each once"),
        (["--protect", "motion,cars"], "each once"),
    ],
)
def test_cli_refuses_sources_an_image_cannot_use(extra, message, tmp_path, capsys):
    image = tmp_path / "flat.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 120, np.uint8))
    try:
        status = main([str(image), "-o", str(tmp_path / "o.png"), "--epsilon", "1", "--b", "8", *extra])
    except SystemExit as refused:  # argparse refuses a bad --protect list
        status = refused.code
    assert status == 2 and message in capsys.readouterr().err


def test_cli_refuses_a_margin_without_box_sources_and_persist_without_sources(tmp_path, capsys):
    clip, _ = moving_square_clip(frames=3)
    write_clip(tmp_path / "clip.avi", clip)
    zone = tmp_path / "zone.png"
    cv2.imwrite(str(zone), np.full((HEIGHT, WIDTH), 255, np.uint8))
    argv = [str(tmp_path / "clip.avi"), "-o", str(tmp_path / "out.avi"), "--epsilon", "1", "--b", "8", "--quiet"]
    assert main([*argv, "--protect", "motion", "--protect-margin", "0.2"]) == 2
    assert "--protect-margin grows the boxes" in capsys.readouterr().err
    assert main([*argv, "--protect-zone", str(zone), "--protect-persist", "1"]) == 2
    assert "--protect-persist keeps the regions of --protect sources" in capsys.readouterr().err


def test_a_persistence_longer_than_a_stream_may_hold_back_is_refused_not_overflowed(tmp_path, capsys):
    """Issue 28: ``--protect-persist 1e308`` raised OverflowError from ceil(inf), and 1e6 seconds held every frame of
    the video back. persist × fps is the number of frames a stream holds: above MAX_PERSIST_FRAMES it is refused."""
    assert persist_frames(10, 30) == MAX_PERSIST_FRAMES == 300
    for seconds, fps in ((1e308, 10), (0.5, 1e308), (10.01, 30)):
        with pytest.raises(ValueError, match="persist × fps must be at most 300 frames"):
            persist_frames(seconds, fps)
    with pytest.raises(ValueError, match="--protect-persist"):
        ProtectDetected(layer(), sources=[RegionSource("s", Scripted({}))], persist=1e308, fps=25)
    clip, _ = moving_square_clip(frames=3)
    write_clip(tmp_path / "clip.avi", clip)
    argv = [str(tmp_path / "clip.avi"), "-o", str(tmp_path / "out.avi"), "--epsilon", "1", "--b", "8", "--quiet"]
    for seconds in ("1e308", "1e6", "30.1"):
        assert main([*argv, "--protect", "motion", "--protect-persist", seconds]) == 2
        error = capsys.readouterr().err
        assert "--protect-persist" in error and "at most 300 frames" in error and error.count("\n") == 1
        assert not (tmp_path / "out.avi").exists()


#: The exit status of ``dp-pixel`` for each numeric option of --protect and --face (the sources that let it apply)
#: at each extreme value: 0 runs to completion, 2 refuses with one line (argparse: usage and one line).
EXTREMES = ("0", "-1", "nan", "inf", "-inf", "1e308")
EXTREME_STATUS = {
    ("--protect-persist", "motion"): (0, 2, 2, 2, 2, 2),
    ("--protect-cell", "motion"): (2, 2, 2, 2, 2, 2),
    ("--protect-m", "motion"): (2, 2, 2, 2, 2, 2),
    ("--protect-margin", "faces"): (0, 2, 2, 2, 2, 0),
    ("--face-every", "faces"): (2, 2, 2, 2, 2, 2),
    ("--face-scale", "faces"): (2, 2, 2, 2, 2, 2),
}


@pytest.mark.parametrize("option, source", list(EXTREME_STATUS))
def test_cli_extreme_values_of_the_protect_options_exit_cleanly(option, source, tmp_path, capsys):
    """0, -1, NaN, ±inf and 1e308 for every numeric --protect/--face option: a release or a one-line refusal (exit
    2), never a traceback (issue 28: --protect-persist 1e308 and --face-scale 1e308 ended in OverflowError)."""
    clip, _ = moving_square_clip(frames=3)
    write_clip(tmp_path / "clip.avi", clip)
    argv = [str(tmp_path / "clip.avi"), "--epsilon", "1", "--b", "8", "--quiet", "--protect", source]
    argv += ["--face-detectors", "haar"] if source == "faces" else []
    for value, expected in zip(EXTREMES, EXTREME_STATUS[option, source]):
        output = tmp_path / f"{option}{value}.avi"
        try:
            status, parsed = main([*argv, "-o", str(output), f"{option}={value}"]), True
        except SystemExit as refused:  # argparse refuses what is not an int: its usage, then one line
            status, parsed = refused.code, False
        error = capsys.readouterr().err
        assert status == expected and output.exists() == (status == 0), (value, error)
        if status:
            last = error.splitlines()[-1]
            assert last.startswith("dp-pixel: error: " if parsed else f"dp-pixel: error: argument {option}: "), error
            assert not parsed or error.count("\n") == 1, error


def test_a_keyed_protect_layer_starts_a_new_stream_per_item_and_keeps_the_look_ahead(tmp_path):
    """The Ray pipeline wraps the layer per item (distributed.keyed_layer): each item is a new stream (the sources
    are reset) and still released with the look-ahead of stream_regions."""
    from dp_pixel_torch.distributed import RunKey, keyed_layer

    script = Scripted({3: BOX})
    protect = ProtectDetected(layer(), sources=[RegionSource("s", script)], persist=0.2, fps=10)
    key = RunKey.create()
    for item in ("a", "b"):
        script.seen.clear()  # a reset stream: the script starts over
        keyed = keyed_layer(protect, key, item.encode())
        sanitize_stream(list(noise(6)), keyed, grids=tmp_path / f"{item}.dpxg", chunk=4, progress=False, device="cpu")
        protected = torch.cat([~r.split[0] for r in load_video(tmp_path / f"{item}.dpxg")]).any((1, 2))
        assert protected.tolist() == [False, True, True, True, True, True] and len(script.seen) == 6


def test_people_scan_searches_every_frame_while_mog2_learns_then_every_n_and_holds_the_boxes(monkeypatch):
    from dp_pixel_torch import detectors

    searched = []

    def people(frame):
        searched.append(len(searched))
        return torch.tensor([[float(len(searched)), 0, 30, 60]])

    monkeypatch.setattr(detectors, "detect_people", people)
    scan = detectors.PeopleScan(every=2)
    boxes = [scan(frame) for frame in noise(16)]
    # after a search at frame s the next comes at most s // PEOPLE_WARM_UP frames later (at least 1, at most every):
    # frames 0 to 10, then 12 and 14
    assert detectors.PEOPLE_WARM_UP == 5 and scan.searches == 13
    assert [int(b[0, 0]) for b in boxes] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 12, 12, 13, 13]
    scan.reset()
    scan(noise(1)[0])
    assert scan.searches == 14  # a new stream searches its first frame


def test_people_between_searches_need_the_motion_source(tmp_path, capsys):
    scan = RegionSource("people", __import__("dp_pixel_torch").detectors.PeopleScan(every=10), 0.1)
    with pytest.raises(ValueError, match="history is at least 10·N frames.*N = 10, motion history none"):
        ProtectDetected(layer(), sources=[scan])
    with pytest.raises(ValueError, match="N = 10, motion history 99"):  # MOG2 would absorb a still person too soon
        ProtectDetected(layer(), sources=[scan, RegionSource("motion", MotionDetector(history=99))])
    ProtectDetected(layer(), sources=[scan, RegionSource("motion", MotionDetector(history=100))])
    ProtectDetected(layer(), sources=[scan, region_source("motion")])
    assert region_source("people", people_every=1).detect is not scan.detect
    clip, _ = moving_square_clip(frames=12)
    write_clip(tmp_path / "clip.avi", clip)
    argv = [str(tmp_path / "clip.avi"), "-o", str(tmp_path / "out.avi"), "--epsilon", "1", "--b", "8", "--quiet"]
    assert main([*argv, "--protect", "people", "--people-every", "5"]) == 2
    assert "--people-every > 1 needs --protect motion too" in capsys.readouterr().err
    assert main([*argv, "--protect", "motion", "--people-every", "5"]) == 2
    assert "--people-every sets how often a video is searched for --protect people" in capsys.readouterr().err
    assert main([*argv, "--protect", "people,motion", "--people-every", "51"]) == 2
    assert "motion history 500" in capsys.readouterr().err
    assert main([*argv, "--protect", "people,motion", "--people-every", "2"]) == 0  # 12 frames: warm-up 10, then 10
    assert "people: searched (HOG) every 2 frames (11 searches), boxes held in between" in capsys.readouterr().out
    assert main([*argv, "--protect", "people,motion", "--people-every", "1"]) == 0
    assert "people: searched (HOG)" not in capsys.readouterr().out


def test_a_stream_that_fails_or_stops_early_leaves_no_frame_for_the_next_one():
    calls = []

    def fails_third(frame):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("detector failed")
        return torch.zeros(0, 4)

    protect = ProtectDetected(layer(), sources=[RegionSource("d", fails_third)], persist=0.5, fps=10)
    with pytest.raises(RuntimeError, match="detector failed"):
        list(protect.stream_regions(iter([noise(2, 1), noise(2, 2)]), 1))
    fresh = noise(3, 3)
    out = torch.cat([frames for frames, _ in protect.stream_regions(iter([fresh]), 2)])
    assert torch.equal(out, fresh)  # the failed stream's frames are gone
    stream = protect.stream_regions(iter([noise(8, 4)]), 1)
    next(stream)
    stream.close()  # stopped early
    assert torch.equal(torch.cat([f for f, _ in protect.stream_regions(iter([fresh]), 2)]), fresh)
