"""The Hydra jobs: the README's demo and the adaptive utility comparison, on photos bundled with scikit-image."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dp_pixel_torch.detectors import PEOPLE_MARGIN

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import run


def run_job(script: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *overrides],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )


def run_demo(*overrides: str) -> subprocess.CompletedProcess:
    return run_job("demo.py", *overrides)


def test_config_composes_with_overrides():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="demo", overrides=["m=16", "epsilons=[2.0]"])
    assert cfg.m == 16 and list(cfg.epsilons) == [2.0] and cfg.noise == "discrete"


def test_demo_writes_grids_and_the_privacy_report(tmp_path):
    done = run_demo(
        "images=[camera,astronaut]", "epsilons=[1.0,5.0]", "cell_sizes=[8]", "max_side=96", f"hydra.run.dir={tmp_path}"
    )
    assert (tmp_path / "grid_camera.png").stat().st_size > 1000
    assert (tmp_path / "grid_astronaut.png").stat().st_size > 1000
    report = (tmp_path / "privacy_report.txt").read_text()
    assert "ε=1, b=8: ε = 1 per image (all channels jointly)" in report
    assert "Privacy report" in done.stdout


def test_demo_sweeps_with_multirun(tmp_path):
    run_demo(
        "-m", "cell_sizes=[4],[16]", "images=[camera]", "epsilons=[1.0]", "max_side=64", f"hydra.sweep.dir={tmp_path}"
    )
    assert sorted(p.name for p in tmp_path.glob("*/grid_camera.png")) == ["grid_camera.png"] * 2


def test_unknown_photo_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "demo.py"), "images=[nosuch]", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode != 0 and "'nosuch' is not a bundled photo" in done.stderr


def test_adaptive_utility_writes_tables_at_equal_total_epsilon(tmp_path):
    run_job("adaptive_utility.py", "total_epsilons=[2.0]", "repeats=1", f"hydra.run.dir={tmp_path}")
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["condition"] for r in rows] == [
        "uniform b=4",
        "uniform b=16",
        "adaptive, face mask (public)",
        "adaptive, complexity (20% of ε on scores)",
        "adaptive, previous frame",
    ]
    assert all(float(r["total_epsilon"]) == 2.0 and 5 < float(r["psnr"]) < 60 for r in rows)
    report = (tmp_path / "results.md").read_text()
    assert "total ε = 1.6 + 0.4 = 2" in report and "treated as PUBLIC" in report
    assert (tmp_path / "examples.png").stat().st_size > 10_000


def test_audit_job_reports_consistent_layers_and_catches_the_miscalibrated(tmp_path):
    run_job("audit.py", "samples=20000", f"hydra.run.dir={tmp_path}")
    with open(tmp_path / "audit.csv") as f:
        rows = {r["mechanism"]: r for r in csv.DictReader(f)}
    assert len(rows) == 11
    for name, row in rows.items():
        assert row["consistent"] == ("False" if name.startswith("MIS-CALIBRATED") else "True"), name
    assert "**caught**" in (tmp_path / "audit.md").read_text()


def make_mot_and_pets(root):
    """A tiny MOTChallenge sequence with boxes, and a tiny PETS2009 clip, under ``root``."""
    import cv2
    import numpy as np

    seq = root / "2DMOT2015" / "train" / "Venice-2"
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 5):
        cv2.imwrite(str(seq / "img1" / f"{i:06d}.jpg"), rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    (seq / "gt" / "gt.txt").write_text("".join(f"{i},1,10,10,20,40,1,-1,-1,-1\n" for i in range(1, 5)))
    (root / "pets2009").mkdir()
    # 128 rows: HOG (people regions of a clip without ground truth) needs frames at least as tall as its window
    writer = cv2.VideoWriter(str(root / "pets2009" / "vtest.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 7, (96, 128))
    for _ in range(6):
        writer.write(rng.integers(0, 256, (128, 96, 3), dtype=np.uint8))
    writer.release()


def test_suite_configs_compose_for_every_data_and_preset():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for data in ("samples", "pets2009", "venice2", "ppm100", "celeba"):
            cfg = compose(config_name="config", overrides=[f"data={data}", "data_dir=/somewhere"])
            assert cfg.data.name == data and set(cfg.mechanisms) >= {"plain", "blur", "dp_uniform"}
        preset = compose(config_name="config", overrides=["experiment=pets_detection"])
        assert preset.data.name == "pets2009" and preset.mechanisms.dp_adaptive_complexity is None
        assert list(preset.grid.cell_sizes) == [4, 8, 16]
        default = compose(config_name="config")
        people = compose(config_name="config", overrides=["experiment=protect_people"])
    # the default run hides the regions at 4 settings only; the preset sweeps ε, m_r and b on PETS2009
    assert run.settings(default.mechanisms.dp_protect, default.grid) == [
        (1.0, 8, 1, 256),
        (1.0, 8, 1, "all"),
        (5.0, 8, 1, 256),
        (5.0, 8, 1, "all"),
    ]
    assert people.data.name == "pets2009" and people.mechanisms.dp_adaptive_mask.kind == "adaptive"
    assert len(run.settings(people.mechanisms.dp_protect, people.grid)) == 16  # 4 ε × b = 8 × 4 m_r


def test_regions_are_ground_truth_or_grown_detections_labelled_detector(monkeypatch):
    frames = [torch.zeros(3, 100, 200, dtype=torch.uint8)] * 2
    gt = [torch.tensor([[10.0, 20.0, 30.0, 60.0]])] * 2
    assert run.people(frames, gt) == {"reference": gt, "regions": [{"boxes": b} for b in gt], "region_from": "public"}
    found = torch.tensor([[100.0, 20.0, 150.0, 90.0]])
    monkeypatch.setattr(run, "detect_people", lambda frame: found)
    detected = run.people(frames, None)
    assert detected["region_from"] == "detector" and all(torch.equal(r, found) for r in detected["reference"])
    grown = [100 - 50 * PEOPLE_MARGIN, 20 - 70 * PEOPLE_MARGIN, 150 + 50 * PEOPLE_MARGIN, 90 + 70 * PEOPLE_MARGIN]
    assert detected["regions"][0]["boxes"].tolist() == [pytest.approx(grown)]  # HOG boxes grown, labelled detector


def test_each_source_gets_its_region_origin_and_its_own_noise():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        mechanisms = compose(config_name="config").mechanisms
    frame, region = torch.full((3, 32, 32), 128, dtype=torch.uint8), {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]])}
    released, reports = [], []
    for k, origin in enumerate(("public", "detector")):
        release, report = run.make_release(
            run.for_source(mechanisms.dp_protect, {"region_from": origin}), 1.0, 8, 1, run.stream_seed(0, 0, k), "all"
        )
        released.append(release([frame], [region])[0].restore())
        reports.append(report)
    assert "given as PUBLIC" in reports[0] and "CONDITIONAL on the disclosed region positions" in reports[1]
    assert not torch.equal(released[0], released[1])  # two sources never share a noise stream
    assert "region_from" not in run.for_source(mechanisms.dp_uniform, {"region_from": "detector"})


def test_tiny_end_to_end_sweep_with_multirun(tmp_path):
    make_mot_and_pets(tmp_path / "data")
    run_job(
        "run.py",
        "-m",
        "data=venice2,samples",
        f"data_dir={tmp_path / 'data'}",
        "experiment=quick",
        "max_frames=4",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    runs = sorted((tmp_path / "sweep").glob("*/results.csv"))
    assert len(runs) == 2
    with open(runs[0]) as f:
        venice = {r["mechanism"]: r for r in csv.DictReader(f)}
    assert len(venice) == 7 and {r["source"] for r in venice.values()} == {"Venice-2"}  # 7 mechanisms × 1 setting
    assert venice["dp_protect"]["m_r"] == "all"  # the gt boxes: public regions of the adaptive and protected cells
    assert "dp_adaptive_mask" in venice and venice["dp_uniform"]["m_r"] == ""
    for row in venice.values():
        assert 0 <= float(row["occupancy_iou"]) <= 1 and float(row["mse"]) >= 0
        assert 0 < float(row["outside_psnr"]) < 100 and 0 < float(row["inside_psnr"]) < 100
    report = (runs[0].parent / "report.md").read_text()
    headline, rest = report.split("## Utility: every setting")
    assert "## Headline" in headline and "### Venice-2" in headline and "| mse |" in headline
    assert "Does the crowd task survive when every person is protected?" in headline
    assert "ε per frame; a person visible in all 4 frames used is covered at 4·ε." in headline
    assert "People: the ground-truth boxes, public." in headline
    assert "- **dp_protect** (Venice-2; public regions): ε ∈ {1}; b ∈ {8}; m ∈ {1}; m_r ∈ {all}." in rest
    samples = (runs[1].parent / "report.md").read_text()
    assert "### photos" in samples and "| pets2009 |" in samples and "Privacy report" in samples
    assert "People: HOG detections on the original frames" in samples  # the clip has no ground truth
    assert "**dp_protect** (pets2009; detector regions)" in samples and "CONDITIONAL" in samples
    assert "a person visible in all 4 frames used is covered at 4·ε" in samples
    assert (runs[1].parent / "privacy_utility.png").stat().st_size > 10_000
    assert (runs[1].parent / "examples.png").stat().st_size > 10_000


def test_attack_configs_compose_for_every_faces_source_and_preset():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="reid_attack")
        assert cfg.faces.name == "lfw_views" and list(cfg.attackers) == ["naive", "adaptive", "linkage"]
        assert list(cfg.mechanisms.plain.cell_sizes) == [4, 8, 16] and cfg.mechanisms.dp_uniform.kind == "dp"
        celeba = compose(config_name="reid_attack", overrides=["faces=celeba", "data_dir=/somewhere"])
        assert celeba.faces.root == "/somewhere" and celeba.faces.min_images == 20
        gpu = compose(config_name="reid_attack", overrides=["attack=celeba_gpu"])
        assert gpu.faces.name == "celeba" and gpu.faces.max_identities == 1000 and gpu.device == "cuda"


def test_attack_runs_end_to_end_on_the_offline_real_faces(tmp_path):
    done = run_job("reid_attack.py", "attack=smoke", "linkage_probes=6", f"hydra.run.dir={tmp_path}")
    rows = {r["condition"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert list(rows) == [
        "original",
        "plain b=8",
        "blur b=8",
        "dp_uniform ε=1 b=8 m=1",
        "dp_adaptive_mask ε=1 b=8 m=1",
        "dp_protect ε=1 b=8 m=1 m_r=64",
        "dp_protect ε=1 b=8 m=1 m_r=all",
    ]
    for row in rows.values():
        for key in ("naive_top1", "adaptive_top1", "linkage_top1", "linkage_top5", "astronaut_rank1"):
            assert 0 <= float(row[key]) <= 1
    # the clean test views are other crops of the gallery photos: dlib links nearly all of them
    assert float(rows["original"]["linkage_top1"]) >= 0.9 and float(rows["original"]["astronaut_rank1"]) == 1.0
    assert float(rows["original"]["psnr"]) == float("inf") and float(rows["dp_uniform ε=1 b=8 m=1"]["psnr"]) < 40
    report = (tmp_path / "report.md").read_text()
    assert "chance = 0.0833" in report and "NOT private" in report
    assert "- **naive** (12 faces, chance 0.0833): stopped by" in report
    assert "- **linkage** (6 faces, chance 0.0769): stopped by" in report  # 6 probes, the astronaut is the 13th face
    assert "ε = 1 per image" in report and "chance = 0.0833" in done.stdout
    for name in ("attack_vs_privacy.png", "examples.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def make_celeba(root, identities: int = 4, per_identity: int = 5):
    """A CelebA layout of synthetic identities: each identity is a random colour pattern of 8×8 blocks, each image
    of it adds noise; every image has the same aligned landmarks."""
    import cv2
    import numpy as np

    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names, partition, identity = [], [], []
    for person in range(identities):
        pattern = rng.integers(0, 256, (28, 23, 3)).repeat(8, 0).repeat(8, 1)[:218, :178]
        for k in range(per_identity):
            name = f"{len(names) + 1:06d}.jpg"
            noisy = np.clip(pattern + rng.normal(0, 10, pattern.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(base / "img_align_celeba" / name), noisy)
            names.append(name)
            partition.append(f"{name} {k % 3}\n")
            identity.append(f"{name} {100 + person}\n")
    (base / "list_eval_partition.txt").write_text("".join(partition))
    (base / "identity_CelebA.txt").write_text("".join(identity))
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    rows = "".join(f"{n} 69 109 106 113 77 142 73 152 108 154\n" for n in names)
    (base / "list_landmarks_align_celeba.txt").write_text(f"{len(names)}\n{header}\n{rows}")


def test_attack_runs_on_celeba_with_the_protocol_of_the_config(tmp_path):
    make_celeba(tmp_path / "data")
    run_job(
        "reid_attack.py",
        "faces=celeba",
        f"data_dir={tmp_path / 'data'}",
        "faces.min_images=5",
        "faces.max_identities=3",
        "grid.epsilons=[5.0]",
        "grid.cell_sizes=[16]",
        "grid.ms=[1]",
        "mechanisms.plain.cell_sizes=[16]",
        "mechanisms.blur=null",
        "mechanisms.dp_protect=null",
        "classifier.epochs=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    report = (tmp_path / "run" / "report.md").read_text()
    # 3 identities of 5 images, 1 test image each (round(0.25 · 5) = 1): chance 1/3
    assert "the 3 first identities with at least 5 images; 12 train and 3 test images" in report
    assert (
        "chance = 0.3333" in report and "linkage gallery holds 12 clean train images (up to 5 per identity)" in report
    )
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert [r["condition"] for r in rows] == [
        "original",
        "plain b=16",
        "dp_uniform ε=5 b=16 m=1",
        "dp_adaptive_mask ε=5 b=16 m=1",
    ]
    assert "astronaut_rank1" not in rows[0]
