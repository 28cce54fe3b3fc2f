"""The re-identification attack on protected faces (experiments/reid_attack.py, mechanism dp_protect): the protected
conditions run end to end, carry m_r into their names, rows and report, and hide the face box in whole coarse cells."""

import csv
import math
import sys

import pytest
import skimage.data
import torch
from hydra import compose, initialize_config_dir
from test_experiments import ROOT, run_job

sys.path.insert(0, str(ROOT / "experiments"))
import reid_attack

PROTECTED = ["dp_protect ε=1 b=8 m=1 m_r=64", "dp_protect ε=1 b=8 m=1 m_r=all"]


def smoke_config():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="reid_attack", overrides=["attack=smoke"])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reid_protect")
    run_job("reid_attack.py", "attack=smoke", "linkage_probes=6", f"hydra.run.dir={out}")
    return out


def test_the_protected_conditions_run_end_to_end_with_m_r_in_rows_and_columns(smoke_run):
    with open(smoke_run / "results.csv") as fh:
        rows = {r["condition"]: r for r in csv.DictReader(fh)}
    assert list(rows)[-2:] == PROTECTED
    assert [rows[c]["m_r"] for c in PROTECTED] == ["64", "all"] and rows["dp_uniform ε=1 b=8 m=1"]["m_r"] == ""
    for row in rows.values():
        for key in ("naive_top1", "adaptive_top1", "linkage_top1", "astronaut_rank1"):
            assert 0 <= float(row[key]) <= 1
    for where in ("face", "outside"):
        assert float(rows["original"][f"astronaut_{where}_psnr"]) == math.inf
        assert float(rows["original"][f"astronaut_{where}_mse"]) == 0
    for condition in PROTECTED:  # the face pays for the protection, the scene keeps its m = 1 release
        row = rows[condition]
        assert 0 < float(row["astronaut_face_psnr"]) < float(row["astronaut_outside_psnr"]) < 40
        assert float(row["astronaut_face_mse"]) > float(row["astronaut_outside_mse"]) > 0


def test_the_report_names_the_smallest_m_r_and_keeps_the_chance_levels(smoke_run):
    report = (smoke_run / "report.md").read_text()
    assert "chance = 0.0833" in report and "- **linkage** (6 faces, chance 0.0769): stopped by" in report
    assert "| astronaut_face_psnr | astronaut_face_mse | astronaut_outside_psnr | astronaut_outside_mse |" in report
    section = report.split("## Protected faces: the smallest m_r that stops all attackers")[1]
    line = next(s for s in section.splitlines() if s.startswith("- dp_protect ε=1 b=8 m=1 (m_r ∈ {64, all}): "))
    assert "the smallest m_r that stops all 3 attackers is **m_r = " in line or "**no m_r stops all 3" in line
    assert "in up to m_r = 64 pixels inside the protected regions" in report


def test_smallest_m_r_takes_the_first_m_r_that_stops_every_attacker():
    tests = {"naive": (200, 0.01), "linkage": (200, 0.01)}

    def row(eps, m_r, naive, linkage):
        return {
            "mechanism": "dp_protect",
            "epsilon": eps,
            "b": 8,
            "m": 1,
            "m_r": m_r,
            "naive_top1": naive,
            "linkage_top1": linkage,
        }

    rows = [
        {"mechanism": "dp_uniform", "epsilon": 1.0, "b": 8, "m": 1, "m_r": None, "naive_top1": 0, "linkage_top1": 0},
        row(1.0, "all", 0.01, 0.0),
        row(1.0, 1024, 0.005, 0.01),
        row(1.0, 64, 0.5, 0.01),  # naive leaks
        row(1.0, 256, 0.01, 0.05),  # linkage leaks: 10 of 200 against 2 expected
        row(5.0, 64, 0.9, 0.3),
        row(5.0, "all", 0.02, 0.04),
    ]
    assert reid_attack.smallest_m_r(rows, tests) == [
        (
            "- dp_protect ε=1 b=8 m=1 (m_r ∈ {64, 256, 1024, all}): the smallest m_r that stops all 2 attackers is "
            "**m_r = 1024** (stopped by m_r = 1024, all)."
        ),
        "- dp_protect ε=5 b=8 m=1 (m_r ∈ {64, all}): **no m_r stops all 2 attackers**.",
    ]


def test_a_protected_astronaut_release_is_constant_over_each_coarse_cell_of_the_face():
    jobs = {reid_attack.condition_name(*job[:6]): job[6] for job in reid_attack.conditions(smoke_config())}
    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).contiguous()
    box = torch.tensor([reid_attack.ASTRONAUT_FACE], dtype=torch.float32)
    released = jobs["dp_protect ε=1 b=8 m=1 m_r=64"](photo[None], box)[0]
    x0, y0, x1, y1 = reid_attack.ASTRONAUT_FACE
    face = released[:, y0 // 16 * 16 : -(-y1 // 16) * 16, x0 // 16 * 16 : -(-x1 // 16) * 16]  # the cells meeting it
    assert face.shape[1:] == (112, 112)
    cells = face.unflatten(1, (7, 16)).unflatten(3, (7, 16))  # [C, rows, 16, cols, 16]
    assert (cells == cells[:, :, :1, :, :1]).all()
    assert not torch.equal(face, photo[:, 64:176, 160:272])
    scene = released[:, :64].unflatten(1, (8, 8)).unflatten(3, (64, 8))  # above the face: 8-pixel cells
    assert (scene == scene[:, :, :1, :, :1]).all() and (scene[:, ::2] != scene[:, 1::2]).any()
