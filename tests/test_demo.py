"""The README's main job: the Hydra demo on the real photos bundled with scikit-image."""

import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def run_demo(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "demo.py"), *overrides],
                          capture_output=True, text=True, check=True, cwd=ROOT)


def test_config_composes_with_overrides():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="demo", overrides=["m=16", "epsilons=[2.0]"])
    assert cfg.m == 16 and list(cfg.epsilons) == [2.0] and cfg.noise == "discrete"


def test_demo_writes_grids_and_the_privacy_report(tmp_path):
    done = run_demo("images=[camera,astronaut]", "epsilons=[1.0,5.0]", "cell_sizes=[8]", "max_side=96",
                    f"hydra.run.dir={tmp_path}")
    assert (tmp_path / "grid_camera.png").stat().st_size > 1000
    assert (tmp_path / "grid_astronaut.png").stat().st_size > 1000
    report = (tmp_path / "privacy_report.txt").read_text()
    assert "ε=1, b=8: ε = 1 per image (all channels jointly)" in report
    assert "Privacy report" in done.stdout


def test_demo_sweeps_with_multirun(tmp_path):
    run_demo("-m", "cell_sizes=[4],[16]", "images=[camera]", "epsilons=[1.0]", "max_side=64",
             f"hydra.sweep.dir={tmp_path}")
    assert sorted(p.name for p in tmp_path.glob("*/grid_camera.png")) == ["grid_camera.png"] * 2


def test_unknown_photo_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "demo.py"), "images=[nosuch]",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "'nosuch' is not a bundled photo" in done.stderr
