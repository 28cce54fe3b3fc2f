"""Scale-out on Ray Data (local Ray, 2 CPUs): one release per item, equal to the single-process release under the
same key, under retries and resumes; the Parquet column; video items; bad input."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
cv2 = pytest.importorskip("cv2")

from dp_pixel_torch import DPPixelize, NoisyGrid, RegionAdaptiveDPPixelize, load_video  # noqa: E402
from dp_pixel_torch.cli import main  # noqa: E402
from dp_pixel_torch.distributed import (  # noqa: E402
    RECORD,
    Releaser,
    RunKey,
    connect,
    done_items,
    file_digest,
    list_items,
    release_dataset,
    release_files,
    release_item,
)
from dp_pixel_torch.storage import NoisyGridFormatError  # noqa: E402
from dp_pixel_torch.video import read_frames, read_image  # noqa: E402

from conftest import assert_uncorrelated  # noqa: E402

# The fault-injecting layer below travels to Ray's workers by value: this test module is not importable there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    connect(num_cpus=2, quiet=True)
    yield
    ray.shutdown()


def write_images(root: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = root / f"part{i % 3}" / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def expected(layer, key: RunKey, root: Path, path: Path) -> bytes:
    """The single-process release of one item under ``key``."""
    return release_item(layer, key, read_image(path), file_digest(path)).to_bytes()


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*" + RECORD)}


def test_every_item_is_released_once_and_equals_the_single_process_release(cluster, tmp_path):
    paths = write_images(tmp_path / "in", 200)
    layer, key = DPPixelize(1.0, 8), RunKey.create()
    summary = release_files(tmp_path / "in", layer, tmp_path / "out", key, workers=2, batch_size=16)
    assert summary.items == 200 and summary.frames == 200 and not summary.errors and summary.skipped == 0
    records = outputs(tmp_path / "out")
    assert len(records) == 200
    assert len(list((tmp_path / "out").rglob("*.png"))) == 200
    assert not list((tmp_path / "out").rglob(".*partial*"))  # nothing half-written is left
    for path in paths[::20]:
        rel = path.relative_to(tmp_path / "in").as_posix()
        assert records[rel + RECORD] == expected(layer, key, tmp_path / "in", path)
    released = NoisyGrid.from_bytes(records[paths[0].relative_to(tmp_path / "in").as_posix() + RECORD]).restore()
    assert not torch.equal(released, read_image(paths[0]))
    assert "ε = 1 per image" in str(summary) and "T·ε" in str(summary)


class FaultOnce:
    """A layer with one fault, injected the first time any worker sees the marker file (only one wins it):
    ``"die"`` (the worker exits: Ray restarts the actor and re-runs its batch), ``"raise"`` (an error before anything
    is written: the item is reported and skipped) or ``"rewrite"`` (the file at ``path`` is overwritten with another
    image while it is released). Without the marker it is the layer, with the same settings: one run key serves the
    run with the fault and its resume."""

    def __init__(self, layer, marker: Path, fault: str = "die", path: Path | None = None):
        self.layer, self.marker, self.fault, self.path = layer, str(marker), fault, str(path)
        self.guarantee, self.accountant, self.region = layer.guarantee, None, None

    def release(self, x, *, generator=None):
        try:
            os.remove(self.marker)
        except FileNotFoundError:
            return self.layer.release(x, generator=generator)
        if self.fault == "die":
            os._exit(1)
        if self.fault == "raise":
            raise ValueError("the worker died here")
        cv2.imwrite(self.path, np.full((24, 40, 3), 7, dtype=np.uint8))
        return self.layer.release(x, generator=generator)


def test_a_worker_that_dies_mid_run_is_retried_and_every_item_keeps_its_one_release(cluster, tmp_path):
    write_images(tmp_path / "in", 60, seed=1)
    key, marker = RunKey.create(), tmp_path / "die-once"
    layer = FaultOnce(DPPixelize(1.0, 8), marker)
    clean = release_files(tmp_path / "in", layer, tmp_path / "out", key, workers=2, batch_size=8)
    (tmp_path / "out").rename(tmp_path / "clean")  # the same run again from scratch, with a fault
    marker.touch()
    faulty = release_files(tmp_path / "in", layer, tmp_path / "out", key, workers=2, batch_size=8)
    assert not marker.exists()  # the fault happened
    assert clean.items == faulty.items == 60
    assert outputs(tmp_path / "out") == outputs(tmp_path / "clean")


def test_an_interrupted_run_resumes_with_its_key_file_and_writes_only_the_missing_items(cluster, tmp_path):
    paths = write_images(tmp_path / "in", 40, seed=2)
    layer, key_file = DPPixelize(2.0, 4), tmp_path / "run.key"
    key = RunKey.create()
    key.save(key_file)
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and "fingerprint" in repr(key)
    first = release_files(paths[:20], layer, tmp_path / "out", key)  # "interrupted" after half the items
    assert first.items == 20
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*" + RECORD)}
    resumed = release_files(tmp_path / "in", layer, tmp_path / "out", RunKey.load(key_file))
    assert resumed.items == 20 and resumed.skipped == 20
    for path in paths:
        rel = path.relative_to(tmp_path / "in").as_posix()
        assert (tmp_path / "out" / (rel + RECORD)).read_bytes() == expected(layer, key, tmp_path / "in", path)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # the first run's records were not rewritten
    with pytest.raises(ValueError, match="another guarantee"):  # a resume under another layer releases nothing
        release_files(tmp_path / "in", DPPixelize(1.0, 4), tmp_path / "out", key)


def test_the_parquet_column_of_noisygrid_records_round_trips(cluster, tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (12, 20, 28, 3), dtype=np.uint8)
    dataset = ray.data.from_items([{"key": f"frame-{i}", "image": image} for i, image in enumerate(images)])
    layer, key = (
        RegionAdaptiveDPPixelize(1.0, levels=(4, 8), region="complexity", partition_epsilon=0.5),
        RunKey.create(),
    )
    release_dataset(dataset, layer, key).write_parquet(str(tmp_path / "parquet"))
    rows = ray.data.read_parquet(str(tmp_path / "parquet")).take_all()
    assert set(rows[0]) == {"key", "grid"}  # the raw image column is not passed through
    assert sorted(r["key"] for r in rows) == sorted(f"frame-{i}" for i in range(12))
    for row in rows:
        grid = NoisyGrid.from_bytes(row["grid"])
        image = torch.from_numpy(images[int(row["key"].split("-")[1])]).permute(2, 0, 1)
        assert grid.shape == (3, 20, 28) and grid.guarantee == layer.guarantee
        assert row["grid"] == release_item(layer, key, image).to_bytes()
    with pytest.raises(ValueError, match="no column"):
        release_dataset(dataset, layer, key, key_column="path")
    twins = ray.data.from_items([{"key": "same", "image": image} for image in images[:2]])
    with pytest.raises(ValueError, match="duplicates"):
        release_dataset(twins, layer, key)


def test_a_video_is_one_item_with_its_frames(cluster, tmp_path):
    (tmp_path / "in").mkdir()
    writer = cv2.VideoWriter(str(tmp_path / "in" / "cam.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 32))
    for _ in range(7):
        writer.write(np.random.default_rng(4).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    writer.release()
    summary = release_files(tmp_path / "in", DPPixelize(1.0, 8), tmp_path / "out", RunKey.create())
    assert summary.items == 1 and summary.frames == 7 and summary.longest == 7
    assert "7 frames" in str(summary)
    grids = list(load_video(tmp_path / "out" / ("cam.avi" + RECORD)))
    assert sum(g.shape[0] for g in grids) == 7
    assert len(list(read_frames(tmp_path / "out" / "cam.avi.avi"))) == 7


def test_the_cli_runs_on_ray_and_reports_bad_input(cluster, tmp_path, capsys):
    write_images(tmp_path / "in", 6, seed=5)
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    args = ["-o", str(tmp_path / "out"), "--epsilon", "1", "--b", "8", "--ray", "--quiet"]
    assert main([str(tmp_path / "in"), *args, "--key-file", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert "6 items released" in err and "broken.png" in err and "could not be read" in err
    assert len(outputs(tmp_path / "out")) == 6
    assert main([str(tmp_path / "missing"), *args]) == 2
    assert "does not exist" in capsys.readouterr().err
    elsewhere = ["-o", str(tmp_path / "elsewhere"), *args[2:-2]]  # "out" holds the releases of the first run's key
    assert main([str(tmp_path / "in"), *args, "--key-file", str(tmp_path / "k2")]) == 2
    assert "another run key" in capsys.readouterr().err and not (tmp_path / "k2").exists()
    assert main([str(tmp_path / "in"), *elsewhere, "--ray", "not-an-address", "--quiet"]) == 2
    assert "host:port" in capsys.readouterr().err
    assert main([str(tmp_path / "in"), *elsewhere, "--ray", "127.0.0.1:9", "--quiet"]) == 2
    assert "no Ray cluster answers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not exist"):
        list_items(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="inside the input folder"):
        release_files(tmp_path / "in", DPPixelize(1.0, 8), tmp_path / "in" / "released", RunKey.create())
    assert main([str(tmp_path / "in"), *args, "--seed", "3"]) == 2
    assert "drop --seed" in capsys.readouterr().err


# Issue 18, findings 1-3: an item's noise is bound to its content; a key serves one run; a resume from another root or
# list recognises what it released; Dataset keys are typed and never null.


def noise_of(grid: NoisyGrid, image: torch.Tensor, b: int = 8) -> torch.Tensor:
    """The noise on the released cell means of a uniform b×b release of ``image`` (exact means subtracted)."""
    cells = torch.nn.functional.avg_pool2d(image.double()[None], b)[0]
    return grid.restore().double()[..., ::b, ::b] - cells


def test_two_different_images_never_share_noise(tmp_path):
    """Two photos both named ``cam/IMG_0001.png`` (two days, two folders) under one key: their streams are keyed by
    their contents, so they never share noise; the same image again (a retry, a copy) gets the same release."""
    rng = np.random.default_rng(6)
    day1, day2 = (torch.from_numpy(rng.integers(60, 196, (3, 96, 96), dtype=np.uint8)) for _ in range(2))
    layer, key = DPPixelize(4.0, 8, noise="laplace", seed=0), RunKey.create()
    first = noise_of(release_item(layer, key, day1), day1)
    second = noise_of(release_item(layer, key, day2), day2)
    # Shared noise would make the two releases differ by the exact difference of the images on every cell (within
    # the rounding of one grey level). The difference of two independent noises (s.d. 6 per cell mean) lies within 1
    # on about 13% of the 432 cells: more than 70% happens with probability below 1e-100.
    assert (first - second).abs().le(1.0).float().mean() < 0.7
    # The same image gives the same release: a retry reproduces it.
    assert release_item(layer, key, day1).to_bytes() == release_item(layer, key, day1).to_bytes()


def test_a_run_key_file_is_refused_for_another_input_root_without_resume(cluster, tmp_path, capsys):
    for day, seed in (("day1", 7), ("day2", 8)):
        write_images(tmp_path / day / "cam", 3, seed=seed)
    args = ["--epsilon", "1", "--b", "8", "--ray", "--quiet", "--key-file", str(tmp_path / "run.key")]
    assert main([str(tmp_path / "day1"), "-o", str(tmp_path / "out1"), *args]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "day2"), "-o", str(tmp_path / "out2"), *args]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "day1" in err
    assert not (tmp_path / "out2").exists()
    assert main([str(tmp_path / "day2"), "-o", str(tmp_path / "out2"), *args, "--resume"]) == 2
    assert "outside" in capsys.readouterr().err and not (tmp_path / "out2").exists()
    key = RunKey.load(tmp_path / "run.key")
    with pytest.raises(ValueError, match="outside"):
        release_files(tmp_path / "day2", DPPixelize(1.0, 8), tmp_path / "out1", key)
    with pytest.raises(ValueError, match="another output"):
        release_files(tmp_path / "day1", DPPixelize(1.0, 8), tmp_path / "out2", key)
    with pytest.raises(ValueError, match="another guarantee"):
        release_files(tmp_path / "day1", DPPixelize(2.0, 8), tmp_path / "out1", key)


def test_a_resume_from_a_sub_folder_or_a_file_list_releases_nothing_twice(cluster, tmp_path, capsys):
    paths = write_images(tmp_path / "day1", 9, seed=9)
    args = ["--epsilon", "1", "--b", "8", "--ray", "--quiet", "--key-file", str(tmp_path / "run.key")]
    first = paths[:4]
    assert main([*map(str, first[:1]), "-o", str(tmp_path / "out"), *args]) == 0  # one file: its folder is the root
    capsys.readouterr()
    done = outputs(tmp_path / "out")
    assert main([str(tmp_path / "day1"), "-o", str(tmp_path / "out"), *args, "--resume"]) == 2
    assert "outside" in capsys.readouterr().err  # part0 is the run's root; day1 lies outside it
    assert outputs(tmp_path / "out") == done
    (tmp_path / "run.key").unlink()
    key = RunKey.create()
    layer = DPPixelize(1.0, 8)
    release_files(tmp_path / "day1", layer, tmp_path / "out2", key)
    before = outputs(tmp_path / "out2")
    # The same run named by a sub-folder, then by a list of files: every item keeps its identity under day1.
    again = release_files(tmp_path / "day1" / "part1", layer, tmp_path / "out2", key)
    listed = release_files([str(p) for p in paths[::2]], layer, tmp_path / "out2", key)
    assert again.items == listed.items == 0 and again.skipped == 3 and listed.skipped == 5
    assert outputs(tmp_path / "out2") == before and len(before) == 9
    assert len(done) == 1


def test_a_copy_or_a_renamed_file_gets_the_same_release_under_its_own_name(cluster, tmp_path):
    """One image, one release (issue 28, finding 9c): a byte-identical copy in the run, and a file renamed between a
    run and its resume, are each written under their own names with the very release of the image they copy (no
    second draw, no extra ε); the summary lists the copies it saw. (Before: the copy was listed but never written.)"""
    paths = write_images(tmp_path / "in", 4, seed=10)
    layer, key = DPPixelize(1.0, 8), RunKey.create()
    (tmp_path / "in" / "copy.png").write_bytes(paths[0].read_bytes())
    summary = release_files(tmp_path / "in", layer, tmp_path / "out", key, workers=2, batch_size=1)
    assert summary.items == 5 and summary.copies == {"part0/img0000.png": "copy.png"}
    assert "same bytes" in str(summary) and "ε is spent once" in str(summary)
    records = outputs(tmp_path / "out")
    assert len(records) == 5 and records["copy.png" + RECORD] == records["part0/img0000.png" + RECORD]
    assert (tmp_path / "out" / "copy.png.png").read_bytes() == (tmp_path / "out" / "part0/img0000.png.png").read_bytes()
    renamed = paths[1].rename(tmp_path / "in" / "renamed.png")  # a rename between a run and its resume
    resumed = release_files(tmp_path / "in", layer, tmp_path / "out", key)
    assert resumed.items == 1 and resumed.skipped == 4 and renamed.exists()
    records = outputs(tmp_path / "out")
    assert records["renamed.png" + RECORD] == records["part1/img0001.png" + RECORD]


def test_an_item_whose_release_never_happened_is_released_under_its_new_name(cluster, tmp_path):
    """Issue 28, finding 2a: the release of an item fails after its content was claimed, and the file is renamed
    before the resume. The claim outlived the release: the resume called the renamed file a duplicate of an item with
    no record and no media, and the photo was never released. Now nothing is claimed ahead of a release."""
    paths = write_images(tmp_path / "in", 3, seed=13)
    marker = tmp_path / "fail-once"
    marker.touch()
    layer, key = FaultOnce(DPPixelize(1.0, 8), marker, "raise"), RunKey.create()
    first = release_files(tmp_path / "in", layer, tmp_path / "out", key)  # fails on the first item, part0/img0000
    assert first.items == 2 and "died" in first.errors["part0/img0000.png"]
    renamed = paths[0].rename(tmp_path / "in" / "renamed.png")
    resumed = release_files(tmp_path / "in", layer, tmp_path / "out", key)
    assert resumed.items == 1 and not resumed.errors and not resumed.copies
    assert outputs(tmp_path / "out")["renamed.png" + RECORD] == expected(layer, key, tmp_path / "in", renamed)
    assert (tmp_path / "out" / "renamed.png.png").exists()


def test_a_copy_of_a_file_rewritten_while_released_is_released(cluster, tmp_path):
    """Issue 28, finding 2b: ``a/photo.png`` is rewritten while it is released (nothing is published for it), and
    ``b/copy.png`` holds its old bytes. The copy was reported as a duplicate forever, while the owner's record held
    other bytes. Now the copy is released from its own bytes, and the rewritten file from its new ones."""
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "b").mkdir()
    (photo,) = write_images(tmp_path / "in" / "a", 1, seed=14)
    photo = photo.rename(tmp_path / "in" / "a" / "photo.png")
    copy = tmp_path / "in" / "b" / "copy.png"
    copy.write_bytes(photo.read_bytes())
    marker = tmp_path / "rewrite-once"
    marker.touch()
    layer, key = FaultOnce(DPPixelize(1.0, 8), marker, "rewrite", photo), RunKey.create()
    first = release_files(tmp_path / "in", layer, tmp_path / "out", key)  # rewrites a/photo.png, released first
    assert "changed while" in first.errors["a/photo.png"]
    resumed = release_files(tmp_path / "in", layer, tmp_path / "out", key)
    assert resumed.skipped == first.items and not resumed.errors
    records = outputs(tmp_path / "out")
    assert records["b/copy.png" + RECORD] == expected(layer, key, tmp_path / "in", copy)
    assert records["a/photo.png" + RECORD] == expected(layer, key, tmp_path / "in", photo)  # its new bytes


def test_dataset_keys_are_typed_and_never_null(cluster, tmp_path):
    images = np.random.default_rng(11).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    layer, key = DPPixelize(1.0, 8), RunKey.create()
    nulls = ray.data.from_items([{"key": k, "image": image} for k, image in zip((None, "None"), images)])
    with pytest.raises(ValueError, match="null"):
        release_dataset(nulls, layer, key)
    numbered = ray.data.from_items([{"key": k, "image": image} for k, image in enumerate(images)])
    rows = release_dataset(numbered, layer, key).take_all()
    assert sorted(r["key"] for r in rows) == [0, 1] and all(type(r["key"]) is int for r in rows)  # typed keys
    # Rows of equal pixels, whatever their keys, get the same release (one image, one release); other pixels never
    # share noise with them.
    rows = [{"key": "a", "image": images[0]}, {"key": "b", "image": images[0]}, {"key": "c", "image": images[1]}]
    grids = {r["key"]: r["grid"] for r in release_dataset(ray.data.from_items(rows), layer, key).take_all()}
    x = torch.from_numpy(images[0]).permute(2, 0, 1)
    assert grids["a"] == grids["b"] == release_item(layer, key, x).to_bytes() != grids["c"]
    with pytest.raises(TypeError, match="ints, strings or bytes"):
        release_dataset(ray.data.from_items([{"key": 0.5, "image": images[0]}]), layer, key)


def test_a_file_that_changes_while_it_is_released_publishes_nothing(cluster, tmp_path):
    (path,) = write_images(tmp_path / "in", 1, seed=12)
    marker = tmp_path / "rewrite-once"
    marker.touch()
    key, layer = RunKey.create(), FaultOnce(DPPixelize(1.0, 8), marker, "rewrite", path)
    summary = release_files(tmp_path / "in", layer, tmp_path / "out", key)
    assert summary.items == 0 and "changed while" in summary.errors["part0/img0000.png"]
    assert not outputs(tmp_path / "out") and not list((tmp_path / "out").rglob("*.png"))
    resumed = release_files(tmp_path / "in", layer, tmp_path / "out", key)  # the new bytes: their own stream
    assert resumed.items == 1
    assert outputs(tmp_path / "out")["part0/img0000.png" + RECORD] == expected(layer, key, tmp_path / "in", path)


def test_the_cli_protects_faces_on_ray_with_the_detectors_it_is_given(cluster, tmp_path, capsys):
    """--protect faces --face-detectors haar under --ray: each actor runs the named detector on its ORIGINAL images
    and the records disclose protected cells over the astronaut's face (about 100 px, found by Haar)."""
    skimage = pytest.importorskip("skimage.data")
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "astronaut.png"), skimage.astronaut()[..., ::-1])
    args = ["-o", str(tmp_path / "out"), "--epsilon", "1", "--b", "8", "--ray", "--quiet"]
    assert main([str(tmp_path / "in"), *args, "--protect", "faces", "--face-detectors", "haar"]) == 0
    grid = NoisyGrid.load(tmp_path / "out" / ("astronaut.png" + RECORD))
    protected = ~grid.split[-1]
    rows, cols = protected.nonzero(as_tuple=True)
    assert protected.any() and grid.guarantee.protect
    # the face lies around rows 40-120 and columns 170-240 of the 512x512 photo (cells of 32 px)
    assert 40 // 32 <= rows.float().mean() <= 120 // 32 and 170 // 32 <= cols.float().mean() <= 240 // 32
    args[1] = str(tmp_path / "out2")
    assert main([str(tmp_path / "in"), *args, "--protect", "faces", "--face-detectors", "no-such-detector"]) == 2
    assert "no-such-detector" in capsys.readouterr().err


def test_a_stream_sent_to_ray_tasks_draws_other_words_in_every_task(cluster):
    """Ray pickles task arguments (and objects put in its store) like a process pool: each task's copy of a stream
    re-keys itself (issue 28, finding 1), whether the stream is passed by value or through one ``ray.put``; the
    driver keeps its words, and ``derive`` gives the same children in the tasks."""
    from dp_pixel_torch import KeyStream

    stream = KeyStream.from_seed(23)
    words = ray.remote(lambda s, label=None: (s if label is None else s.derive(label)).words(64).tolist())
    put = ray.put(stream)
    drawn = ray.get([words.remote(stream) for _ in range(3)] + [words.remote(put) for _ in range(3)])
    assert len({tuple(d) for d in drawn}) == 6
    assert stream.words(64).tolist() not in drawn
    assert ray.get(words.remote(stream, "task")) == KeyStream.from_seed(23).derive("task").words(64).tolist()


def test_a_runs_own_4k_record_does_not_block_its_resume(tmp_path):
    """Issue 28, finding 4: ``done_items`` parsed records with the default restore budget (256 MiB); a 16-frame
    3840×2160 record needs ~534 MiB by the parser's estimate, so every later run on that output raised before
    releasing anything. Only headers are read now: the record is recognised as done, and one of another guarantee
    (or a damaged one) still raises."""
    layer = DPPixelize(1.0, 8)
    values = torch.zeros(16, 3, 270, 480, dtype=torch.uint8)
    grid = NoisyGrid.from_release((16, 3, 2160, 3840), torch.uint8, (0.0, 255.0), layer.guarantee, [values])
    (tmp_path / "cam").mkdir()
    record = tmp_path / "cam" / ("street.mp4" + RECORD)
    record.write_bytes(grid.to_bytes() * 2)  # two chunks of 16 frames
    items = [{"key": "cam/street.mp4", "kind": "video"}]
    assert done_items(items, tmp_path, layer.guarantee) == ["cam/street.mp4"]
    with pytest.raises(NoisyGridFormatError, match="another guarantee"):
        done_items(items, tmp_path, DPPixelize(2.0, 8).guarantee)
    record.write_bytes(grid.to_bytes()[:-1])
    with pytest.raises(NoisyGridFormatError, match="truncated"):
        done_items(items, tmp_path, layer.guarantee)


# Issue 28, review of findings 2 and 9c: what decides which word noises which cell is in the stream's label and binds
# the run (the frames per video release, the protect zone and sources, ...), and an image is released from the very
# bytes it was digested from.


def test_a_video_copy_released_with_another_chunk_draws_other_words(tmp_path):
    """How a video's words map to frames depends on ``chunk``: a renamed copy released on a resume with ``--chunk
    8`` drew the words of frames 16+k for its frames 8+k, so two released frames differed by the exact difference of
    their cell means. ``chunk`` now labels the stream and binds the run."""
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(15)
    writer = cv2.VideoWriter(str(tmp_path / "in" / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (16, 16))
    for _ in range(32):
        writer.write(rng.integers(60, 200, (16, 16, 3), dtype=np.uint8))
    writer.release()
    (tmp_path / "in" / "copy.avi").write_bytes((tmp_path / "in" / "v.avi").read_bytes())
    key, layer = RunKey.create(), DPPixelize(5.0, 4, noise="laplace", seed=0)
    key.bind(tmp_path / "in", tmp_path / "out", layer, chunk=16)
    with pytest.raises(ValueError, match="other layer settings"):
        key.bind(tmp_path / "in", tmp_path / "out", layer, chunk=8)
    for name, chunk in (("v.avi", 16), ("copy.avi", 8)):
        batch = {"key": np.array([name]), "path": np.array([str(tmp_path / "in" / name)]), "kind": np.array(["video"])}
        assert not Releaser(layer, key, str(tmp_path / "out"), chunk=chunk)(batch)["error"][0]
    means = torch.nn.functional.avg_pool2d(torch.stack(list(read_frames(tmp_path / "in" / "v.avi"))).double(), 4)

    def noise(name: str) -> torch.Tensor:
        return torch.cat([g.restore().double()[..., ::4, ::4] for g in load_video(tmp_path / "out" / (name + RECORD))])

    first, second = noise("v.avi") - means, noise("copy.avi") - means
    assert_uncorrelated(first[16:24] + 128, second[8:16] + 128)  # were the same noise (r = 0.9995)
    assert_uncorrelated(first + 128, second + 128)


def test_layers_that_differ_outside_their_guarantee_never_share_words():
    """A protect zone is not in the guarantee: under one key, a copy released with zone Z1 and again with Z2 got the
    same words on cells protected at scale s and 2s (2·r1 − r2 recovered their means). The layer's settings label
    the stream; equal settings still give the one release."""
    from dp_pixel_torch.detectors import ProtectDetected
    from dp_pixel_torch.distributed import layer_id

    def protected(rows: int) -> ProtectDetected:
        zone = torch.zeros(32, 32, dtype=torch.bool)
        zone[:rows] = True
        inner = RegionAdaptiveDPPixelize(
            40.0, levels=(1, 8), region="mask", protect=True, region_from="public", noise="laplace", seed=0
        )
        return ProtectDetected(inner, sources=[], zone=zone)

    x = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    key = RunKey.create()
    one, other = protected(8), protected(16)
    assert one.guarantee == other.guarantee and layer_id(one) != layer_id(other)
    assert layer_id(one) == layer_id(protected(8))
    assert release_item(one, key, x).to_bytes() == release_item(protected(8), key, x).to_bytes()
    unprotected = slice(16, 32)  # released at b = 1 by both: independent words now, the same words before
    a = release_item(one, key, x).restore()[..., unprotected, :]
    b = release_item(other, key, x).restore()[..., unprotected, :]
    assert_uncorrelated(a, b)


def test_an_image_is_released_from_the_bytes_it_was_digested_from(tmp_path, monkeypatch):
    """A file rewritten in place with its modification time put back (``rsync --inplace``) between its digest and
    its decoding was released from its new pixels with the stream of its old bytes, which an untouched copy of the
    old bytes also drew: the difference of the two releases was the difference of two images. Images are decoded
    from the digested bytes now, and the status-change time is part of a file's version."""
    from dp_pixel_torch import distributed

    paths = write_images(tmp_path / "in", 2, seed=16)
    twin = tmp_path / "in" / "twin.png"
    twin.write_bytes(paths[0].read_bytes())
    other = paths[1].read_bytes()
    digest = distributed.content_digest

    def rewrite_after_digest(data: bytes) -> bytes:
        result = digest(data)
        if data == twin.read_bytes() and not getattr(rewrite_after_digest, "done", False):
            rewrite_after_digest.done = True
            info = twin.stat()
            twin.write_bytes(other)  # the race: a writer between the digest and the decoding
            os.utime(twin, ns=(info.st_atime_ns, info.st_mtime_ns))
        return result

    monkeypatch.setattr(distributed, "content_digest", rewrite_after_digest)
    key, layer = RunKey.create(), DPPixelize(1.0, 8)
    key.bind(tmp_path / "in", tmp_path / "out", layer)
    batch = {"key": np.array(["twin.png"]), "path": np.array([str(twin)]), "kind": np.array(["image"])}
    rows = Releaser(layer, key, str(tmp_path / "out"))(batch)
    assert "changed while" in rows["error"][0] and not (tmp_path / "out" / ("twin.png" + RECORD)).exists()


def test_layer_ids_fail_closed():
    """A second review: settings that ``layer_id`` could not see gave layers that release differently one id (and a
    copy released under each the same words): numbers of numpy, Fraction or Decimal types, lambdas and closures,
    bound methods, a module's weights. Each is now told apart; an object it cannot read is refused."""
    import decimal
    import fractions
    import functools
    import operator

    from dp_pixel_torch.detectors import FaceScan, ProtectDetected
    from dp_pixel_torch.distributed import layer_id

    def protect(detect) -> ProtectDetected:
        inner = RegionAdaptiveDPPixelize(5.0, levels=(4, 16), region="mask", protect=True, region_from="detector")
        return ProtectDetected(inner, detect, 0.0)

    def box(top: float):
        return lambda frame: torch.tensor([[0.0, top, 32.0, top + 8.0]])

    class Threshold:
        def __init__(self, t: float):
            self.t = t

        def detect(self, frame):
            return torch.tensor([[0.0, 0.0, 32.0, self.t]])

    def net(bias: float) -> torch.nn.Module:
        module = torch.nn.Linear(1, 4)
        torch.nn.init.constant_(module.bias, bias)
        return module

    previous = functools.partial(RegionAdaptiveDPPixelize, 5.0, levels=(4, 16), region="previous")
    pairs = [
        (DPPixelize(5.0, 4, value_range=np.array([0, 1], np.float32)), DPPixelize(5.0, 4, value_range=(-1.0, 1.0))),
        (previous(split_fraction=fractions.Fraction(1, 10)), previous(split_fraction=fractions.Fraction(9, 10))),
        (previous(split_threshold=decimal.Decimal("0.01")), previous(split_threshold=decimal.Decimal("0.5"))),
        (protect(box(0)), protect(box(24))),
        (protect(Threshold(8).detect), protect(Threshold(32).detect)),
        (protect(FaceScan(("haar",), every=5).__call__), protect(FaceScan(("haar",), every=50).__call__)),
        (protect(net(8.0)), protect(net(30.0))),
    ]
    for one, other in pairs:
        assert layer_id(one) != layer_id(other)
    assert layer_id(DPPixelize(5.0, 4, value_range=(np.float32(0), np.float32(1)))) == layer_id(
        DPPixelize(5.0, 4, value_range=(0.0, 1.0))
    )  # a number is its value, whatever its type
    assert layer_id(protect(box(0))) == layer_id(protect(box(0)))
    with pytest.raises(TypeError, match="cannot tell the settings"):
        layer_id(protect(operator.methodcaller("new_zeros", (0, 4))))  # a C object: no attributes to read


def test_an_output_of_another_run_key_is_refused(tmp_path):
    """A second review: a fresh key into an output folder holding another key's releases skipped those as done and
    released a new copy of one of their images under the new key: two releases of one image. The folder now names
    the key its releases were made under (a keyed id); another key, or records of no known key, is refused before
    anything is released."""
    from dp_pixel_torch.distributed import OWNER, claim_output

    (path,) = write_images(tmp_path / "in", 1, seed=17)
    first, second = RunKey.create(), RunKey.create()
    claim_output(tmp_path / "out", first)
    claim_output(tmp_path / "out", first)  # a resume with its key
    with pytest.raises(ValueError, match="another run key"):
        release_files(tmp_path / "in", DPPixelize(1.0, 8), tmp_path / "out", second)
    (tmp_path / "out" / OWNER).unlink()
    (tmp_path / "out" / ("a" + RECORD)).write_bytes(b"")
    with pytest.raises(ValueError, match="does not name"):
        claim_output(tmp_path / "out", second)
    assert first.output_id != second.output_id and first.fingerprint not in first.output_id


def test_a_still_image_under_a_video_suffix_is_an_image_item(tmp_path):
    """A second review: OpenCV opens a JPEG named ``.avi`` as a one-frame video, whose stream was labelled as a
    video's, so a copy of a photo named as a video got another release of it. Items are images by their content."""
    (photo,) = write_images(tmp_path / "in", 1, seed=18)
    for suffix in (".avi", ".mp4", ".mkv"):
        (tmp_path / "in" / f"photo{suffix}").write_bytes(photo.read_bytes())
    kinds = {item["key"]: item["kind"] for item in list_items(tmp_path / "in")}
    assert set(kinds.values()) == {"image"} and len(kinds) == 4
