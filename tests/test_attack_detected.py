"""The re-identification attack on detector-driven releases (experiments/reid_attack.py, faces=lfw_scenes,
mechanisms.dp_protect.regions=[annotation,detector]): the detector-driven condition protects exactly the detected
boxes, and a face the detector misses is released at m."""

import sys

import torch
from hydra import compose, initialize_config_dir
from test_experiments import ROOT

from dp_pixel_torch.detectors import FACE_MARGIN, boxes_mask, cells_meeting, dilate_boxes

sys.path.insert(0, str(ROOT / "experiments"))
import reid_attack

SCENES = ["faces=lfw_scenes", "faces.background=skimage", "mechanisms.dp_protect.regions=[annotation,detector]"]


def smoke_config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="reid_attack", overrides=["attack=smoke", *overrides])


def constant_cells(image: torch.Tensor, where: torch.Tensor, cell: int) -> bool:
    """Whether ``image [C, H, W]`` is constant over each ``cell×cell`` cell that meets ``where [H, W]``."""
    height, width = where.shape
    ids = torch.arange(height)[:, None] // cell * width + torch.arange(width)[None] // cell
    return all((image[:, ids == i] == image[:, ids == i][:, :1]).all() for i in ids[where].unique())


def test_the_default_runs_annotation_driven_conditions_only():
    jobs = list(reid_attack.conditions(smoke_config()))
    assert {job[8] for job in jobs} == {"annotation"}
    assert not any("[detector]" in job[0] for job in jobs)


def test_the_detector_driven_release_protects_the_detected_boxes_and_leaves_a_missed_face_at_m(monkeypatch):
    cfg = smoke_config(*SCENES)
    faces = reid_attack.lfw_scenes(cfg)
    scene = faces["scenes"]["test"]
    frame, truths = scene["frames"][0], scene["truths"][0]
    height, width = frame.shape[-2:]
    monkeypatch.setattr(reid_attack, "detect_faces", lambda image: truths[1:].clone())  # misses face 0
    reid_attack.detect(scene)
    assert scene["found"].tolist() == [False] + [True] * (len(truths) - 1)
    assert torch.equal(scene["detector"][0], dilate_boxes(truths[1:], FACE_MARGIN, height, width))

    jobs = {reid_attack.condition_name(*job[:6]): job for job in reid_attack.conditions(cfg)}
    *_, release, report, regions = jobs["dp_protect[detector] ε=1 b=8 m=1 m_r=all"]
    assert regions == "detector" and "detector" in report
    released = release(scene["frames"][:1], scene["detector"][:1])[0]
    protected = cells_meeting(boxes_mask(scene["detector"][0], height, width), 16)
    assert constant_cells(released, protected, 16)  # the grown detected boxes, in whole 16-px cells
    assert torch.equal(protected, cells_meeting(boxes_mask(scene["annotation"][0][1:], height, width), 16))
    x0, y0, x1, y1 = (round(v) for v in truths[0].tolist())
    missed = torch.zeros(height, width, dtype=torch.bool)
    missed[y0:y1, x0:x1] = True
    assert not (missed & protected).any()
    assert constant_cells(released, missed, 8) and not constant_cells(released, missed, 16)  # b = 8 cells, m = 1
    cells = torch.nn.functional.avg_pool2d(frame[None].float(), 8)[0]  # the 8-px cell means of the scene
    error = (released.float() - cells.repeat_interleave(8, 1).repeat_interleave(8, 2)).abs()
    assert 5 * error[:, missed].mean() < error[:, protected].mean()  # m = 1 noise vs the face hidden whole

    annotated = jobs["dp_protect ε=1 b=8 m=1 m_r=all"][6](scene["frames"][:1], scene["annotation"][:1])[0]
    assert constant_cells(annotated, missed, 16)  # with the annotation box, face 0 is protected too
