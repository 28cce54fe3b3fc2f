"""Streaming video and the dp-pixel command line, on synthetic clips made here."""

import shutil
import subprocess
import sys
import weakref

import cv2
import numpy as np
import pytest
import torch

from dp_pixel_torch import DPPixelize, PrivacyAccountant, RegionAdaptiveDPPixelize, load_video
from dp_pixel_torch.cli import main
from dp_pixel_torch.video import probe, read_frames, sanitize_stream


@pytest.fixture
def clip(tmp_path):
    """A 23-frame 64×48 MJPG clip at 10 fps."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(23):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return path


def frame_count(path) -> int:
    return sum(1 for _ in read_frames(path))


def test_api_preserves_frame_count_and_size_and_writes_grids(clip, tmp_path):
    out, grids = tmp_path / "released.avi", tmp_path / "released.dpxg"
    acc = PrivacyAccountant()
    report = sanitize_stream(
        clip, DPPixelize(0.5, 8, accountant=acc, seed=0), out, grids=grids, chunk=5, progress=False
    )
    assert (report.frames, report.height, report.width) == (23, 48, 64)
    info = probe(out)
    assert (info.height, info.width, info.fps) == (48, 64, 10.0) and frame_count(out) == 23
    records = list(load_video(grids))
    assert [r.shape[0] for r in records] == [5, 5, 5, 5, 3]  # one record per chunk
    assert acc.frames == 23 and acc.spent == pytest.approx(11.5) and report.epsilon_spent == acc.spent


def test_previous_source_streams_frame_by_frame(clip, tmp_path):
    layer = RegionAdaptiveDPPixelize(1.0, levels=(8, 16), region="previous", seed=0)
    report = sanitize_stream(clip, layer, grids=tmp_path / "g.dpxg", chunk=4, progress=False)
    records = list(load_video(tmp_path / "g.dpxg"))
    assert report.frames == len(records) == 23
    assert not records[0].split[0].any() and any(r.split[0].any() for r in records[1:])


def test_memory_stays_bounded_as_chunks_go_by():
    alive: weakref.WeakSet = weakref.WeakSet()
    peak = 0

    def frames():
        nonlocal peak
        for _ in range(200):
            peak = max(peak, len(alive))
            frame = torch.zeros(3, 32, 32, dtype=torch.uint8)
            alive.add(frame)
            yield frame

    sanitize_stream(frames(), DPPixelize(1.0, 8), chunk=8, progress=False, device="cpu")
    assert peak <= 8 + 1  # never more than one chunk of frames is held


@pytest.mark.parametrize("channels", [1, 3])
def test_stream_report_charges_the_frames_own_channel_count(channels):
    """Under ε per channel, a grey frame costs ε and an RGB frame 3ε; the report and the accountant agree."""
    acc = PrivacyAccountant()
    layer = DPPixelize(0.5, 4, channel_rule="per_channel", accountant=acc, seed=0)
    frames = [torch.zeros(channels, 8, 8, dtype=torch.uint8)] * 4
    report = sanitize_stream(frames, layer, chunk=2, progress=False, device="cpu")
    assert report.epsilon_per_frame == pytest.approx(0.5 * channels) == acc.spent / 4
    assert f"T·{0.5 * channels:g}" in str(report)


def test_stream_rejects_bad_frames_and_empty_streams(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        sanitize_stream([torch.zeros(3, 8, 8)], DPPixelize(1.0, 4), progress=False)
    with pytest.raises(ValueError, match="frame size changed"):
        sanitize_stream(
            [torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 16, dtype=torch.uint8)],
            DPPixelize(1.0, 4),
            chunk=1,
            progress=False,
        )
    with pytest.raises(ValueError, match="no frames"):
        sanitize_stream([], DPPixelize(1.0, 4), progress=False)
    with pytest.raises(ValueError, match="cannot read video"):
        probe(tmp_path / "missing.avi")


def test_cli_on_video_image_and_folder(clip, tmp_path, capsys):
    assert (
        main(
            [
                str(clip),
                "-o",
                str(tmp_path / "out.avi"),
                "--epsilon",
                "0.5",
                "--b",
                "8",
                "--cap",
                "20",
                "--grids",
                str(tmp_path / "out.dpxg"),
                "--quiet",
            ]
        )
        == 0
    )
    report = capsys.readouterr().out
    assert "23 frames of 64×48" in report and "Privacy report: ε = 0.5 per image" in report
    assert "23 frames released, ε spent = 11.5 of a cap of 20" in report
    assert frame_count(tmp_path / "out.avi") == 23
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((20, 30, 3), 120, np.uint8))
    assert main([str(image), "-o", str(tmp_path / "released.png"), "--epsilon", "1", "--b", "4"]) == 0
    assert cv2.imread(str(tmp_path / "released.png")).shape == (20, 30, 3)
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(image, folder / "a.png")
    shutil.copy(image, folder / "b.png")
    assert (
        main(
            [
                str(folder),
                "-o",
                str(tmp_path / "outs"),
                "--epsilon",
                "1",
                "--levels",
                "4",
                "8",
                "--region",
                "complexity",
                "--partition-epsilon",
                "0.5",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "outs").iterdir()) == ["a.png", "b.png"]


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["missing.avi", "-o", "o.avi", "--epsilon", "1", "--b", "8"], "does not exist", 2),
        (["{clip}", "-o", "o.avi", "--epsilon", "-1", "--b", "8"], "epsilon must be a finite number > 0", 2),
        (["{clip}", "-o", "o.avi", "--epsilon", "1"], "give --b", 2),
        (["{clip}", "-o", "o.avi", "--epsilon", "1", "--levels", "8", "12", "--region", "previous"], "aligned", 2),
        (["{clip}", "-o", "o.xyz", "--epsilon", "1", "--b", "8"], "output video must end in", 2),
        (["{clip}", "-o", "o.avi", "--epsilon", "1", "--b", "8", "--cap", "5"], "budget cap reached", 3),
        (["{clip}", "-o", "o.avi", "--epsilon", "1", "--b", "8", "--noise", "laplace"], "needs --seed", 2),
        (["{bad}", "-o", "o.png", "--epsilon", "1", "--b", "8"], "cannot read image", 2),
    ],
)
def test_cli_exits_non_zero_with_a_message(args, message, code, clip, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    argv = [a.format(clip=clip, bad=bad) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "dp_pixel_torch.cli", *argv, "--quiet"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == code and message in done.stderr, done.stderr


def test_cli_runs_share_a_budget_through_a_ledger(clip, tmp_path, capsys):
    """Each run of 23 frames at ε = 0.5 costs 11.5; with a ledger the second run sees the first, and a third would
    pass the cap of 30, so it stops (exit 3) before it writes anything past the cap."""
    args = ["--epsilon", "0.5", "--b", "8", "--cap", "30", "--ledger", str(tmp_path / "camera.sqlite"), "--quiet"]
    assert main([str(clip), "-o", str(tmp_path / "a.avi"), *args]) == 0
    assert main([str(clip), "-o", str(tmp_path / "b.avi"), *args]) == 0
    assert "46 frames released, ε spent = 23 of a cap of 30" in capsys.readouterr().out
    assert main([str(clip), "-o", str(tmp_path / "c.avi"), *args]) == 3
    assert PrivacyAccountant(30.0, ledger=tmp_path / "camera.sqlite").spent <= 30


def test_cli_argument_errors_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "dp_pixel_torch.cli", "x.avi", "--epsilon", "one"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "invalid float value" in done.stderr


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("clip", ["--chunk", "0"], "--chunk must be an integer >= 1"),
        ("clip", ["--chunk", "-1"], "--chunk must be an integer >= 1"),
        ("clip", ["--device", "tpu:7"], "device must be 'cpu', 'cuda' or 'cuda:N'"),
        ("clip", ["--device", "cuda:99"], "'cuda:99'"),
        ("clip", ["--fps", "nan"], "fps must be a finite number > 0"),
        ("clip", ["--workers", "2"], "--workers cannot apply to a video"),
        ("image", ["--grids", "o.dpxg"], "--grids cannot apply to an image"),
        ("image", ["--fps", "10"], "--fps cannot apply to an image"),
        ("image", ["--chunk", "4"], "--chunk cannot apply to an image"),
        ("image", ["--gpus", "1"], "--gpus cannot apply to an image"),
        ("image", ["--device", "tpu:7"], "device must be 'cpu', 'cuda' or 'cuda:N'"),
        ("folder", ["--grids", "o.dpxg"], "--grids cannot apply to a folder of images"),
        ("folder", ["--ray", "--device", "cpu"], "--device cannot apply to --ray"),
        ("folder", ["--ray", "--fps", "10"], "--fps cannot apply to --ray"),
        ("folder", ["--ray", "--gpus", "inf"], "--gpus must be a finite number >= 0"),
    ],
)
def test_cli_refuses_an_option_it_cannot_use_or_would_ignore(target, extra, message, clip, tmp_path, capsys):
    """Issue 18, finding 10: one line and exit status 2, before anything is written, charged or connected."""
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((20, 30, 3), 120, np.uint8))
    (tmp_path / "folder").mkdir()
    shutil.copy(image, tmp_path / "folder" / "a.png")
    source = {"clip": clip, "image": image, "folder": tmp_path / "folder"}[target]
    ledger, out = tmp_path / "ledger.sqlite", tmp_path / ("out.avi" if target == "clip" else "out.png")
    argv = [str(source), "-o", str(out), "--epsilon", "1", "--b", "8", "--quiet", *extra]
    if "--ray" not in extra:
        argv += ["--cap", "100", "--ledger", str(ledger)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dp-pixel: error:") and message in err and err.count("\n") == 1, err
    assert not out.exists() and not ledger.exists()


def test_stream_refuses_a_chunk_fps_or_device_it_cannot_use(clip, tmp_path):
    layer, out = DPPixelize(1.0, 8, seed=0), tmp_path / "out.avi"
    for bad, error in [
        ({"chunk": 0}, ValueError),
        ({"chunk": -1}, ValueError),
        ({"chunk": 2.5}, TypeError),
        ({"fps": float("nan")}, ValueError),
        ({"fps": -25.0}, ValueError),
        ({"device": "tpu:7"}, ValueError),
    ]:
        with pytest.raises(error, match=next(iter(bad))):
            sanitize_stream(clip, layer, out, progress=False, **bad)
    assert not out.exists()


def test_cli_releases_an_image_on_the_device_it_is_given(tmp_path, capsys, monkeypatch):
    """``--device`` is used for images (it was ignored), and ``--backend`` reaches the layer."""
    seen = []
    call = DPPixelize.forward
    monkeypatch.setattr(
        DPPixelize, "forward", lambda self, x: seen.append((x.device.type, self.backend)) or call(self, x)
    )
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((20, 30, 3), 120, np.uint8))
    argv = [str(image), "-o", str(tmp_path / "o.png"), "--epsilon", "1", "--b", "4", "--device", "cpu"]
    assert main([*argv, "--backend", "eager"]) == 0
    assert seen == [("cpu", "eager")] and cv2.imread(str(tmp_path / "o.png")).shape == (20, 30, 3)
    assert main(argv) == 0
    assert seen[-1] == ("cpu", "auto")


def test_cli_refuses_a_compiled_backend_where_nothing_compiles(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((20, 30, 3), 120, np.uint8))
    argv = [str(image), "-o", str(tmp_path / "o.png"), "--epsilon", "1", "--b", "4"]
    assert main([*argv, "--backend", "compiled"]) == 2
    assert "--backend compiled needs torch.compile on cpu" in capsys.readouterr().err
    assert main(argv) == 0  # auto runs eagerly


# --- outputs that alias inputs, copies in a folder, a frame size that changes inside a chunk (issue 28) ---------------


def test_cli_refuses_an_output_that_is_an_input_or_another_output(clip, tmp_path, capsys):
    """Finding 3: ``-o`` equal to the input video replaced a 23-frame original with what was released before the end;
    ``--grids`` equal to it truncated it to 0 bytes before the first read; ``-o`` equal to ``--grids`` left both
    unreadable; ``a.png`` and ``a.jpg`` of one folder were both written to ``out/a.png`` (exit 0, the ledger charged
    twice). Each is refused before anything is read or charged, and every original is left as it was."""
    ledger = tmp_path / "budget.sqlite"
    common = ["--epsilon", "1", "--b", "8", "--quiet", "--cap", "100", "--ledger", str(ledger)]
    original = clip.read_bytes()
    link = tmp_path / "link.avi"
    link.hardlink_to(clip)
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((20, 30, 3), 120, np.uint8))
    folder = tmp_path / "folder"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((20, 30, 3), 10, np.uint8))
    cv2.imwrite(str(folder / "a.jpg"), np.full((20, 30, 3), 200, np.uint8))
    linked = tmp_path / "linked"  # outputs that already exist as one inode (say, deduplicated by `hardlink`)
    linked.mkdir()
    (linked / "a.png").write_bytes(b"old")
    (linked / "b.png").hardlink_to(linked / "a.png")
    (linked / "b.dpxg").hardlink_to(linked / "a.png")
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    cv2.imwrite(str(jpegs / "a.jpg"), np.full((20, 30, 3), 10, np.uint8))
    pair = tmp_path / "pair"
    pair.mkdir()
    cv2.imwrite(str(pair / "a.png"), np.full((20, 30, 3), 10, np.uint8))
    cv2.imwrite(str(pair / "b.png"), np.full((20, 30, 3), 200, np.uint8))
    cases = [
        ([str(pair), "-o", str(linked)], "both be written"),  # a's and b's releases into one inode
        ([str(clip), "-o", str(linked / "a.png"), "--grids", str(linked / "b.dpxg")], "both be written"),
        ([str(image), "-o", str(ledger)], "both be written"),  # the release and the ledger in one file
        ([str(clip), "-o", str(tmp_path / "y.avi"), "--grids", f"{ledger}-wal"], "both be written"),  # its journal
        ([str(clip), "-o", str(clip)], "is the input"),
        ([str(clip), "-o", str(tmp_path / "out.avi"), "--grids", str(clip)], "--grids"),
        ([str(clip), "-o", str(link)], "is the input"),  # a hard link to the input is the input
        ([str(clip), "-o", str(tmp_path / "x.avi"), "--grids", str(tmp_path / "x.avi")], "both be written"),
        ([str(image), "-o", str(image)], "is the input"),
        ([str(folder), "-o", str(tmp_path / "out")], "both be written"),
        ([str(folder), "-o", str(folder)], "is the input"),
        ([str(jpegs), "-o", str(jpegs)], "is the input folder"),  # releases beside the originals
    ]
    for argv, message in cases:
        assert main([*argv, *common]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert clip.read_bytes() == original and frame_count(clip) == 23
    assert (linked / "a.png").read_bytes() == b"old"
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.avi").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "a.png"]
    assert [p.name for p in jpegs.iterdir()] == ["a.jpg"]
    assert PrivacyAccountant(100, ledger=ledger).spent == 0.0  # nothing was charged


def test_cli_writes_a_copy_in_a_folder_with_the_release_of_the_image_it_copies(tmp_path, capsys):
    """Finding 9c: a byte-identical copy in a folder was released again with fresh noise (2ε on one image while the
    report said ε). One image, one release: the copy gets the same release under its own name, charged once."""
    folder, ledger = tmp_path / "photos", tmp_path / "budget.sqlite"
    folder.mkdir()
    rng = np.random.default_rng(1)
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "c.png"), rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    shutil.copy(folder / "a.png", folder / "b.png")
    args = [str(folder), "-o", str(tmp_path / "out"), "--epsilon", "1", "--b", "4", "--cap", "10"]
    assert main([*args, "--ledger", str(ledger)]) == 0
    report = capsys.readouterr().out
    assert "3 images written" in report and "1 byte-identical copies" in report and "2 releases" in report
    released = {name: (tmp_path / "out" / name).read_bytes() for name in ("a.png", "b.png", "c.png")}
    assert released["a.png"] == released["b.png"] != released["c.png"]
    assert PrivacyAccountant(10, ledger=ledger).spent == pytest.approx(2.0)  # two images, one release each


def test_a_frame_size_that_changes_inside_a_chunk_is_a_clear_error():
    """Finding 8: between chunks it was the intended ValueError, inside one a RuntimeError from torch.stack."""
    frames = [torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2 + [torch.zeros(3, 8, 16, dtype=torch.uint8)]
    with pytest.raises(ValueError, match=r"frame size changed from \(3, 8, 8\) to \(3, 8, 16\)"):
        sanitize_stream(frames, DPPixelize(1.0, 4), chunk=4, progress=False, device="cpu")


def test_output_checks_read_each_file_once(tmp_path, monkeypatch):
    """The alias check compared every output with every input: 80,200 path resolutions for 200 images, about 8·10⁸
    for a folder of 20,000. It now looks each file up once."""
    from dp_pixel_torch import cli

    calls = []
    names = cli._names
    monkeypatch.setattr(cli, "_names", lambda path: calls.append(path) or names(path))
    inputs = [tmp_path / f"in{i}.png" for i in range(200)]
    cli.check_outputs(inputs, [(f"out{i}", tmp_path / "out" / f"{i}.png") for i in range(200)])
    assert len(calls) == 400


def test_cli_skips_a_folder_image_that_changed_after_it_was_matched_and_says_so(tmp_path, capsys, monkeypatch):
    """An image whose bytes no longer match the digest its copies were matched by is not released under their names
    (that would label one image's release with another's name): it is skipped, the others are written, and the run
    exits 2 naming it."""
    from dp_pixel_torch import cli

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, level in (("a.png", 10), ("b.png", 200)):
        cv2.imwrite(str(folder / name), np.full((20, 30, 3), level, np.uint8))
    digest = cli.file_digest
    monkeypatch.setattr(cli, "file_digest", lambda path: b"before" if path.name == "b.png" else digest(path))
    assert main([str(folder), "-o", str(tmp_path / "out"), "--epsilon", "1", "--b", "4"]) == 2
    err = capsys.readouterr().err
    assert "1 images written" in err and "changed while the folder was read" in err and "'b.png'" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
