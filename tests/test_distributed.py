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
    RunKey,
    connect,
    list_items,
    release_dataset,
    release_files,
    release_item,
)
from dp_pixel_torch.video import read_frames, read_image  # noqa: E402

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
    return release_item(layer, key, path.relative_to(root).as_posix(), read_image(path)).to_bytes()


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


class FailOnce:
    """A layer whose worker dies (``os._exit``) the first time any worker sees the marker file: Ray restarts the
    actor and re-runs its batch."""

    def __init__(self, layer, marker: Path):
        self.layer, self.marker = layer, str(marker)
        self.guarantee, self.accountant, self.region = layer.guarantee, None, None

    def release(self, x, *, generator=None):
        try:
            os.remove(self.marker)  # only one worker wins the marker
        except FileNotFoundError:
            return self.layer.release(x, generator=generator)
        os._exit(1)


def test_a_worker_that_dies_mid_run_is_retried_and_every_item_keeps_its_one_release(cluster, tmp_path):
    write_images(tmp_path / "in", 60, seed=1)
    key = RunKey.create()
    clean = release_files(tmp_path / "in", DPPixelize(1.0, 8), tmp_path / "clean", key, workers=2, batch_size=8)
    marker = tmp_path / "die-once"
    marker.touch()
    faulty = release_files(
        tmp_path / "in", FailOnce(DPPixelize(1.0, 8), marker), tmp_path / "faulty", key, workers=2, batch_size=8
    )
    assert not marker.exists()  # the fault happened
    assert clean.items == faulty.items == 60
    assert outputs(tmp_path / "faulty") == outputs(tmp_path / "clean")


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
        assert row["grid"] == release_item(layer, key, row["key"], image).to_bytes()
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
    assert main([str(tmp_path / "in"), *args[:-2], "--ray", "not-an-address", "--quiet"]) == 2
    assert "host:port" in capsys.readouterr().err
    assert main([str(tmp_path / "in"), *args[:-2], "--ray", "127.0.0.1:9", "--quiet"]) == 2
    assert "no Ray cluster answers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not exist"):
        list_items(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="inside the input folder"):
        release_files(tmp_path / "in", DPPixelize(1.0, 8), tmp_path / "in" / "released", RunKey.create())
    assert main([str(tmp_path / "in"), *args, "--seed", "3"]) == 2
    assert "drop --seed" in capsys.readouterr().err
