"""Scale-out on Ray Data: release folders of images, lists of videos, or a ``ray.data.Dataset``, across a cluster,
every item exactly once (the ``[ray]`` extra).

**One image, one release, under retries and copies.** Ray re-runs failed tasks and restarts dead actors, so an item
may be processed more than once, and an archive may hold one photo under several names. Two *independent* releases of
one image would cost 2ε. Here an item's noise is never drawn fresh: it comes from a ChaCha20 stream keyed by a PRF
(keyed BLAKE2b) of the run's secret :class:`RunKey` (256 bits from ``os.urandom``), a digest of the item's content
(the file's bytes, or the row's pixels) and the layer's settings (:func:`layer_id`: its guarantee and everything else
that decides which word noises which cell at which scale). Every attempt at an item, and every byte-identical
copy of it under another name (in this run, or in a resume after a rename), therefore draws the same words and writes
the same release under its own name (on one kind of device: CPU and GPU floats may differ in the last bit, SPEC §4):
no second draw, no extra ε. Outputs are replaced atomically. Nothing is claimed ahead of a release, so nothing can
outlive a release that never happened: a worker killed mid-item, or an item that changed while it was read, leaves no
trace, and the next attempt releases it. An image is decoded from the very bytes that were digested.

**Never shared noise.** Because the content is the stream's label, two *different* images never share a stream,
whatever names or keys they are given and however a key is reused: shared noise would make the difference of their
releases the exact difference of the images. Layers of other settings get unrelated streams: the same words on other
cells, or at other scales, would let the difference of two releases of one image cancel their noise.

**One run per key, one name per item.** A key serves one run: :meth:`RunKey.bind` records the input root (item
identities, which name the outputs, are paths under it), the output folder, the guarantee and the layer's settings
(with the frames per video release), and a key bound to a run is refused for another root, output, guarantee or
settings. A resume may name the run's items by any folder or file list inside
its root: identities stay paths under the run's root, so an item whose record exists is checked and skipped.

The secret travels to the actors as a pickled :class:`RunKey` in Ray's object store, never in outputs, logs or reprs
(its ``repr`` shows a fingerprint). Save it (:meth:`RunKey.save`, file mode 0600, with its run) only to resume; whoever
holds it and the items can recompute the noise and undo the releases, so keep it like a password, and delete it when
the run is done.
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import functools
import hashlib
import json
import math
import numbers
import os
import socket
import time
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .detectors import FaceScan, MotionDetector, PeopleScan, ProtectDetected
from .mechanisms import _DPLayer
from .noise import KEY_BYTES, KeyStream, image_digest
from .storage import NoisyGrid, NoisyGridFormatError, record_guarantees, store_first
from .video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, decode_image, import_cv2, sanitize_stream, to_bgr

RECORD = ".dpxg"  # the NoisyGrid record of an item, written last: its presence marks the item done
OWNER = ".dp-pixel-run"  # under the output: the keyed id of the run key whose releases the folder holds
KEY_FORMAT = "dp_pixel_torch.run-key/2"  # 2: streams keyed by content alone (1: by path and content, with claims)
_RUN = ("root", "output", "guarantee", "layer")
ROW = ("key", "frames", "bytes_in", "bytes_out", "error", "content")  # the statistics of one item


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError as error:  # pragma: no cover - ray is in the [ray] and [dev] extras
        raise ImportError("dp_pixel_torch.distributed needs Ray Data: pip install 'dp-pixel-torch[ray]'") from error
    return ray


class RunKey:
    """The secret of one run (≥ 128 bits; 256 from ``os.urandom`` by :meth:`create`) and, once bound, the run it
    serves (:meth:`bind`). Every item's noise stream is a PRF of the secret, so whoever holds it can recompute the
    noise; it never appears in a repr, a log or an output."""

    __slots__ = ("_secret", "run")

    def __init__(self, secret: bytes, run: dict[str, str] | None = None) -> None:
        if not isinstance(secret, bytes) or len(secret) != KEY_BYTES:
            raise ValueError(f"a run key is {KEY_BYTES} secret bytes")
        self._secret, self.run = secret, run

    @classmethod
    def create(cls) -> RunKey:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def load(cls, path: str | Path) -> RunKey:
        """A key and its run from a file written by :meth:`save`."""
        data = Path(path).read_bytes()
        if len(data) == KEY_BYTES:
            raise ValueError(
                f"{str(path)!r} is a run key of an older version: it records no run, so a resume could not be "
                "checked. Start a new run with a new key file and a new output folder"
            )
        try:
            record = json.loads(data)
            run = record["run"]
            if record["format"] == "dp_pixel_torch.run-key/1":
                raise _OlderKey
            if record["format"] != KEY_FORMAT or not (
                run is None
                or (isinstance(run, dict) and set(run) == set(_RUN) and all(isinstance(v, str) for v in run.values()))
            ):
                raise ValueError
            return cls(bytes.fromhex(record["secret"]), run)
        except _OlderKey:
            raise ValueError(
                f"{str(path)!r} is a run key of an older version, whose items drew streams keyed by their paths: this "
                "version keys them by content alone, so it cannot continue that run. Start a new run with a new key "
                "file and a new output folder"
            ) from None
        except (ValueError, TypeError, KeyError, RecursionError):
            raise ValueError(f"{str(path)!r} is not a run key file") from None

    def save(self, path: str | Path) -> None:
        """Write the key and its run to a new file readable by its owner only (an existing file is never
        overwritten). Bind the key first (:meth:`bind`), so that a resume can check that it continues the same run."""
        record = {"format": KEY_FORMAT, "secret": self._secret.hex(), "run": self.run}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)

    def bind(self, source: str | Path | Sequence[str | Path], output: str | Path, layer, chunk: int = 16) -> Path:
        """Bind the key to a run, or check that ``source``, ``output``, ``layer`` and ``chunk`` continue the run it is
        bound to; return the run's input root, under which item identities are paths.

        A new key is bound to the root of ``source`` (the folder, a file's folder, or the common folder of a list),
        the output, the layer's guarantee and its settings (:func:`layer_id`, with the frames per video release
        ``chunk``). A bound key takes any source inside its root, with the same output, guarantee and settings;
        anything else raises: a new run needs a new key."""
        root = source_root(source)
        run = {
            "root": str(root),
            "output": str(Path(output).resolve()),
            "guarantee": _guarantee_id(layer.guarantee),
            "layer": layer_id(layer, chunk),
        }
        if Path(run["output"]).is_relative_to(root):
            raise ValueError(
                f"output {str(output)!r} lies inside the input folder: a later run would take its releases as items"
            )
        if root.is_relative_to(run["output"]):
            raise ValueError(
                f"the input folder {str(root)!r} lies inside the output {str(output)!r}: outputs could overwrite inputs"
            )
        if self.run is None:
            self.run = run
            return root
        bound = Path(self.run["root"])
        problems = [
            f"another guarantee ({layer.guarantee})" if run["guarantee"] != self.run["guarantee"] else "",
            "other layer settings (value range, split rule, protect sources or zone, or --chunk): the same words "
            "would noise other cells"
            if run["guarantee"] == self.run["guarantee"] and run["layer"] != self.run["layer"]
            else "",
            f"another output ({run['output']}, not {self.run['output']})"
            if run["output"] != self.run["output"]
            else "",
            f"{str(root)!r}, which lies outside it" if not root.is_relative_to(bound) else "",
        ]
        if any(problems):
            raise ValueError(
                f"run key {self.fingerprint} serves the run of {str(bound)!r}; it is refused for "
                + "; ".join(p for p in problems if p)
                + ". A new run needs a new key"
            )
        return bound

    def stream(self, content: bytes, settings: str) -> KeyStream:
        """The noise stream of one content under one layer: a PRF of the key, the digest of the content and the
        layer's :func:`layer_id` ``settings``. Different contents, or other settings, never share a stream; every
        copy of one content under one layer draws the same one (one image, one release)."""
        return KeyStream(self._secret).derive("dp_pixel_torch.distributed", content, settings)

    def tag(self, content: bytes) -> str:
        """The keyed tag of a content digest: tells the driver which items are copies of each other, and nothing of
        the content to whoever lacks the key (it is never written)."""
        return hashlib.blake2b(content, key=self._secret, digest_size=16, person=b"runkey-copy").hexdigest()

    @property
    def output_id(self) -> str:
        """The id written to an output folder this key releases into (``.dp-pixel-run``): keyed, so it tells nothing of
        the key, and 128 bits, so that two keys never share it."""
        return hashlib.blake2b(self._secret, digest_size=16, person=b"runkey-output").hexdigest()

    @property
    def fingerprint(self) -> str:
        return hashlib.blake2b(self._secret, digest_size=4, person=b"runkey-id").hexdigest()

    def __repr__(self) -> str:
        return f"RunKey(fingerprint={self.fingerprint})"

    def __getstate__(self):
        return self._secret, self.run

    def __setstate__(self, state: tuple[bytes, dict | None]) -> None:
        self._secret, self.run = state


class _OlderKey(Exception):
    pass


def _guarantee_id(guarantee) -> str:
    return json.dumps(dataclasses.asdict(guarantee), sort_keys=True, default=str)


def layer_id(layer, chunk: int | None = None) -> str:
    """A canonical JSON of everything that decides which word of an item's stream noises which cell, at which scale:
    the layer's kind, guarantee and value range, its adaptive split rule, and for a
    :class:`~dp_pixel_torch.detectors.ProtectDetected` its sources (names, margins, the detectors' settings), zone
    (a digest) and persistence; and the frames per release of a video (``chunk``). It labels every item's stream and binds a run: two layers that differ in any of these
    would noise other cells (or the same cells at other scales) with the same words, and a copy released under each
    would leak the difference of its two releases' noise. A custom detector is known by its qualified name only."""
    return json.dumps({"layer": _settings(layer), "chunk": chunk}, sort_keys=True, default=str)


#: What the library's layers and detectors count as they run: not settings.
_COUNTERS = frozenset(
    {
        "frames",
        "found",
        "frames_with",
        "bridged",
        "found_by",
        "frames_with_by",
        "full_frames",
        "crop_frames",
        "searches",
    }
)
#: The library's own detectors and protect layer: their settings are their public attributes (their run state, a
#: background model or the boxes held, is private).
_SHIPPED = (ProtectDetected, FaceScan, MotionDetector, PeopleScan)


def _settings(obj: object) -> object:
    """``obj`` as JSON-ready settings (see :func:`layer_id`). It fails closed: a value is described by everything
    that may change what it does (numbers by value, whatever their type; a closure or lambda by its code and the
    values it holds; a module's weights; any other object by all its attributes, private ones included), and an
    object it cannot describe raises ``TypeError`` rather than look like another."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (numbers.Real, np.floating)):
        return float(obj)
    if isinstance(obj, (numbers.Number, decimal.Decimal)):
        return f"{type(obj).__qualname__}:{obj}"
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, (os.PathLike, enum.Enum)):
        return f"{type(obj).__qualname__}:{obj}"
    if isinstance(obj, (tuple, list)):
        return [_settings(v) for v in obj]
    if isinstance(obj, dict):
        return {json.dumps(_settings(k)): _settings(v) for k, v in obj.items()}
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        data = torch.as_tensor(obj).detach().cpu().contiguous()
        return {"shape": list(data.shape), "dtype": str(data.dtype), "digest": image_digest(data).hex()}
    if isinstance(obj, functools.partial):
        return {"partial": _settings(obj.func), "args": _settings(obj.args), "keywords": _settings(obj.keywords)}
    if isinstance(obj, types.MethodType):
        return {"method": _settings(obj.__func__), "of": _settings(obj.__self__)}
    if isinstance(obj, types.FunctionType):
        return _function(obj)
    if isinstance(obj, (type, types.BuiltinFunctionType)):
        return f"{obj.__module__}.{obj.__qualname__}"
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if dataclasses.is_dataclass(obj):
        return {kind: {f.name: _settings(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, _DPLayer):
        fields = ("guarantee", "value_range", "region", "split_threshold", "split_fraction")
        return {kind: {name: _settings(getattr(obj, name, None)) for name in fields}}
    attributes = getattr(obj, "__dict__", None)
    if attributes is None:
        raise TypeError(
            f"cannot tell the settings of a {kind} (it has no attributes to read): a Ray run binds every setting of "
            "its layer and detectors; use a function, a functools.partial or an object whose attributes hold them"
        )
    if isinstance(obj, torch.nn.Module):
        public = {k: v for k, v in attributes.items() if not k.startswith("_") and k != "training"}
        return {kind: {"weights": _settings(obj.state_dict()), **_settings(public)}}
    shipped = isinstance(obj, _SHIPPED)
    chosen = {k: v for k, v in attributes.items() if k not in _COUNTERS and not (shipped and k.startswith("_"))}
    return {kind: _settings(dict(sorted(chosen.items())))}


def _function(function: types.FunctionType) -> object:
    """A module-level function by its qualified name; a closure, lambda or local function also by its code, defaults
    and the values it closes over (two such functions of one name may do different things)."""
    name = f"{function.__module__}.{function.__qualname__}"
    if "<" not in function.__qualname__ and not function.__closure__:
        return name
    cells = [cell.cell_contents for cell in function.__closure__ or ()]
    return {
        "function": name,
        "code": _code(function.__code__),
        "defaults": _settings([function.__defaults__, function.__kwdefaults__]),
        "closure": _settings(cells),
    }


def _code(code: types.CodeType) -> str:
    """A digest of what a code object does (its bytecode, constants and names; not its file or lines)."""
    consts = [_code(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return hashlib.blake2b(repr((code.co_code, consts, code.co_names)).encode(), digest_size=16).hexdigest()


class _Keyed:
    """A layer whose every release draws from one item's stream (the shape ``sanitize_stream`` expects)."""

    def __init__(self, layer, stream: KeyStream) -> None:
        self.layer, self.stream = layer, stream
        self.guarantee, self.accountant = layer.guarantee, None
        self.region = getattr(layer, "region", None)
        self.stream_regions = getattr(layer, "stream_regions", None)  # ProtectDetected: regions with look-ahead

    def release(self, x: torch.Tensor, **regions) -> NoisyGrid:
        return self.layer.release(x, generator=self.stream, **regions)


def keyed_layer(layer, key: RunKey, content: bytes, settings: str | None = None) -> _Keyed:
    """``layer`` drawing from the stream of content digest ``content`` under ``settings`` (default
    ``layer_id(layer)``; a video's releases: ``layer_id(layer, chunk)``), its state reset (a "previous" partition
    starts afresh). A :class:`~dp_pixel_torch.detectors.ProtectDetected` detects on the CPU from then on, whatever the
    frames' device: the same words must always meet the same regions, and a network on a GPU rounds otherwise
    (a copy released on another device would expose the cells where the two region maps differ)."""
    if hasattr(layer, "reset"):
        layer.reset()
    if isinstance(layer, ProtectDetected):
        layer._detect_device = "cpu"
    return _Keyed(layer, key.stream(content, layer_id(layer) if settings is None else settings))


def release_item(
    layer, key: RunKey, x: torch.Tensor, content: bytes | None = None, settings: str | None = None
) -> NoisyGrid:
    """The one release of image ``x`` (``[C, H, W]``) under ``key``: what every worker, retry, copy and
    single-process check computes for it. ``content`` is the digest of the item's content: :func:`content_digest`
    of its file's bytes, or by default :func:`~dp_pixel_torch.noise.image_digest` of ``x``; ``settings`` as in
    :func:`keyed_layer`."""
    return keyed_layer(layer, key, image_digest(x) if content is None else content, settings).release(x)


def _version(path: Path) -> tuple[int, ...]:
    """What changes when a file is replaced or written to: device, inode, size, modification time and status-change
    time (a write that puts the modification time back, as ``rsync --inplace`` or ``tar -x`` do, still moves it)."""
    info = path.stat()
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def content_digest(data: bytes) -> bytes:
    """BLAKE2b of a file's bytes: the content label of a file item (:func:`file_digest` of its file)."""
    return hashlib.blake2b(data, digest_size=32, person=b"file-digest").digest()


def file_digest(path: str | Path) -> bytes:
    """:func:`content_digest` of a file, read in MiB blocks."""
    digest = hashlib.blake2b(digest_size=32, person=b"file-digest")
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.digest()


def check_layer(layer) -> None:
    g = getattr(layer, "guarantee", None)
    if g is None or not hasattr(layer, "release"):
        raise TypeError("give a DP layer (DPPixelize, RegionAdaptiveDPPixelize or detectors.ProtectDetected)")
    if g.secure:
        raise ValueError(
            "the pipeline keys every item from its own 256-bit run key (a CSPRNG, for exactly-once releases); give "
            "the layer without secure=True"
        )
    if getattr(layer, "accountant", None) is not None:
        raise ValueError("an accountant cannot charge from Ray workers: the summary reports the ε of every item")
    if getattr(layer, "region", None) == "mask":
        raise ValueError("items carry no region map: use a uniform, complexity or previous layer, or ProtectDetected")


def source_root(source: str | Path | Sequence[str | Path]) -> Path:
    """The folder a source's identities are relative to: the folder itself, a file's folder, or the common folder of
    a list of files (resolved)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ValueError(f"input {str(path)!r} does not exist")
        return path.resolve() if path.is_dir() else path.resolve().parent
    paths = [Path(p).resolve() for p in source]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise ValueError(f"{len(missing)} input file(s) do not exist, e.g. {missing[0]!r}" if missing else "no files")
    return Path(os.path.commonpath([p.parent for p in paths]))


def list_items(source: str | Path | Sequence[str | Path], root: Path | None = None) -> list[dict]:
    """The items of a folder tree (every image and video below it), of one file, or of a list of files, each with
    its identity: its path relative to ``root`` (default :func:`source_root`; a run's root, so that every folder or
    list inside the run names an item alike). Sorted by identity."""
    root = source_root(source) if root is None else root
    if isinstance(source, (str, Path)):
        path = Path(source).resolve()
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p)) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"folder {str(source)!r} holds no images or videos")
    else:
        files = [Path(p).resolve() for p in source]
    items = {}
    for path in files:
        if not path.is_relative_to(root):
            raise ValueError(f"{str(path)!r} lies outside the run's input root {str(root)!r}")
        items[path.relative_to(root).as_posix()] = path
    return [_item(path, identity) for identity, path in sorted(items.items())]


#: How the files OpenCV decodes as still images begin: JPEG, PNG, GIF, BMP, TIFF (both byte orders), WebP.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _kind(path: Path) -> str | None:
    """``"image"`` or ``"video"`` by the suffix, but a still image under a video suffix is an image: OpenCV would
    open it as a one-frame video, whose stream is labelled as a video's, and its copies named as images would get
    another release of it."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix not in VIDEO_SUFFIXES:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return "video"  # unreadable: reported as the item's error
    still = head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    return "image" if still else "video"


def _item(path: Path, key: str) -> dict:
    kind = _kind(path)
    if kind is None:
        raise ValueError(f"{str(path)!r} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video")
    return {"key": key, "path": str(path.resolve()), "kind": kind}


class Releaser:
    """The Ray Data actor: holds the layer (on a GPU when Ray gives it one) and releases a batch of items, writing
    each item's media and record atomically under ``output``. Returns one row of statistics per item."""

    def __init__(self, layer, key: RunKey, output: str, chunk: int = 16) -> None:
        self.layer, self.key, self.output, self.chunk = layer, key, Path(output), chunk
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.settings = {"image": layer_id(layer), "video": layer_id(layer, chunk)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows: dict[str, list] = {name: [] for name in ROW}
        for key, path, kind in zip(batch["key"], batch["path"], batch["kind"]):
            key, path, kind = str(key), Path(str(path)), str(kind)
            frames, written, error, tag = 0, 0, "", ""
            try:
                version = _version(path)
                # An image is decoded from the very bytes digested: its stream is bound to what is released.
                data = path.read_bytes() if kind == "image" else None
                content = file_digest(path) if data is None else content_digest(data)
                tag = self.key.tag(content)
                frames, written = self._release(key, path, kind, content, version, data)
            except (OSError, ValueError, TypeError) as problem:  # an unreadable file: reported, the others go on
                error = f"{type(problem).__name__}: {problem}"
            size = path.stat().st_size if path.exists() else 0
            for name, value in zip(ROW, (key, frames, size, written, error, tag)):
                rows[name].append(value)
        return rows

    def _release(
        self, key: str, path: Path, kind: str, content: bytes, version: tuple, data: bytes | None
    ) -> tuple[int, int]:
        record = self.output / (key + RECORD)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.partial")
        if kind == "image":
            image = decode_image(data, str(path)).to(self.device)
            grid = release_item(self.layer, self.key, image, content, self.settings["image"])
            media = self.output / (key + ".png")
            media_tmp = media.with_name(f".{media.name}.partial.png")
            if not import_cv2().imwrite(str(media_tmp), to_bgr(grid.restore().cpu())):
                raise OSError(f"cannot write {str(media)!r}")
            tmp.write_bytes(grid.to_bytes())
            frames = 1
        else:
            media = self.output / (key + ".avi")
            media_tmp = media.with_name(f".{media.name}.partial.avi")
            report = sanitize_stream(
                path,
                keyed_layer(self.layer, self.key, content, self.settings["video"]),
                media_tmp,
                grids=tmp,
                chunk=self.chunk,
                device=self.device,
                progress=False,
            )
            frames = report.frames
        if _version(path) != version:  # its noise is bound to the bytes digested before: publish nothing
            media_tmp.unlink()
            tmp.unlink()
            raise ValueError(f"{str(path)!r} changed while it was being released; nothing was written for it")
        os.replace(media_tmp, media)
        os.replace(tmp, record)  # last: the record marks the item done
        return frames, media.stat().st_size + record.stat().st_size


def claim_output(output: str | Path, key: RunKey, *, claim: bool = True) -> None:
    """Bind ``output`` to ``key`` (with ``claim=False``: only check that it could be): a folder that holds the
    releases of another run key, or records of no known key, is refused. Its records would be skipped as done while
    a copy of one of their images was released under this key: two releases of one image."""
    output = Path(output)
    owner, mine = output / OWNER, key.output_id.encode()
    if owner.exists():
        if owner.read_bytes() != mine:
            raise ValueError(
                f"output {str(output)!r} holds the releases of another run key: a new run needs a new output folder "
                "(or --resume with that run's key file)"
            )
        return
    if output.is_dir() and any(output.rglob("*" + RECORD)):
        raise ValueError(
            f"output {str(output)!r} holds releases of a run whose key it does not name (no {OWNER}): use a new "
            "output folder"
        )
    if claim:
        output.mkdir(parents=True, exist_ok=True)
        if store_first(owner, mine) != mine:  # another run claimed it meanwhile
            claim_output(output, key, claim=False)


def done_items(items: list[dict], output: Path, guarantee) -> list[str]:
    """The identities whose record already exists under ``output``; each record's headers must parse and hold
    ``guarantee`` (a record of another layer raises: releasing the item again under this one would be a second
    release). Only headers are read (:func:`~dp_pixel_torch.storage.record_guarantees`): a run's own records of
    any size, which it could write, never block its resume."""
    done = []
    for item in items:
        record = output / (item["key"] + RECORD)
        if not record.exists():
            continue
        guarantees = list(record_guarantees(record))
        if not guarantees or any(g != guarantee for g in guarantees):
            raise NoisyGridFormatError(
                f"{str(record)!r} was written under another guarantee: refusing to release {item['key']!r} again"
            )
        done.append(item["key"])
    return done


@dataclass
class RunSummary:
    """What :func:`release_files` did (``str`` gives the report to print)."""

    items: int
    skipped: int
    frames: int
    longest: int
    bytes_in: int
    bytes_out: int
    seconds: float
    privacy: str
    errors: dict[str, str] = field(default_factory=dict)
    copies: dict[str, str] = field(default_factory=dict)  # item -> the first item of this run with the same bytes

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        lines = [
            f"{self.items} items released ({self.frames} frames; {self.skipped} already done, checked and skipped) "
            f"in {self.seconds:.1f} s: {self.items_per_second:.1f} items/s, {self.bytes_in / 1e6:.1f} MB in, "
            f"{self.bytes_out / 1e6:.1f} MB out",
            f"Privacy report (per image or frame): {self.privacy}",
            f"Video: ε per frame; a person visible in T frames is covered at T·ε (the longest item here has "
            f"{self.longest} frames).",
        ]
        if self.errors:
            lines.append(f"{len(self.errors)} item(s) could not be read and were skipped:")
            lines += [f"  {k}: {e}" for k, e in sorted(self.errors.items())]
        if self.copies:
            lines.append(
                f"{len(self.copies)} item(s) hold the same bytes as another item and got its very release, written "
                "under their own names (one image, one release: ε is spent once):"
            )
            lines += [f"  {k} = {d}" for k, d in sorted(self.copies.items())]
        return "\n".join(lines)


def connect(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = False):
    """Start a local Ray instance (``address`` None or ``"local"``) or join the cluster at ``host:port`` (or
    ``ray://host:port``), after checking that it answers within 3 s (Ray itself would wait minutes)."""
    ray = import_ray()
    local = address in (None, "local")
    if not local:
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Ray address must be host:port or ray://host:port, got {address!r}")
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except OSError as error:
            raise ValueError(f"no Ray cluster answers at {address!r}: {error}") from error
    ray.data.DataContext.get_current().enable_progress_bars = not quiet
    if ray.is_initialized():
        return ray
    if local:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=not quiet)
    else:
        ray.init(address=address, log_to_driver=False)
    return ray


def release_files(
    source: str | Path | Iterable[str | Path],
    layer,
    output: str | Path,
    key: RunKey,
    *,
    workers: int = 1,
    num_gpus: float = 0,
    batch_size: int = 8,
    chunk: int = 16,
    retries: int = 3,
) -> RunSummary:
    """Release every image and video of ``source`` with ``layer`` on the connected Ray cluster (:func:`connect`),
    each exactly once under ``key``; write ``<output>/<identity>.png`` (images) or ``.avi`` (videos) and the
    NoisyGrid record ``<output>/<identity>.dpxg`` (a video's records in one file, see :func:`~dp_pixel_torch.load_video`).

    ``key`` is bound to this run on first use (:meth:`RunKey.bind`); a bound key takes any folder or file list inside
    its run's root and refuses anything else. Items whose record exists are checked and skipped (a resumed run). An
    item with the same bytes as another (a copy, or a file renamed before a resume) gets that item's very release
    under its own name: one image, one release; the summary lists the copies it saw.
    ``workers`` actors each hold the layer, ``num_gpus`` per actor; ``batch_size`` items per task and ``chunk``
    video frames per release bound the memory. A failed task is retried up to ``retries`` times and reproduces the
    same release. Unreadable files are reported in the summary and skipped. Each actor releases with the layer's own
    ``backend``: under ``"auto"`` an actor compiles only once its own eager calls have shown that compiling pays.
    """
    ray = import_ray()
    check_layer(layer)
    source = source if isinstance(source, (str, Path)) else list(source)
    output = Path(output)
    items = list_items(source, key.bind(source, output, layer, chunk))
    claim_output(output, key)
    done = set(done_items(items, output, layer.guarantee))
    todo = [i for i in items if i["key"] not in done]
    start = time.perf_counter()
    rows: dict[str, list] = {name: [] for name in ROW}
    if todo:
        context = ray.data.DataContext.get_current()
        context.actor_task_retry_on_errors = True  # an exception in a worker re-runs its batch (the same release)
        context.max_errored_blocks = 0
        released = ray.data.from_items(todo, override_num_blocks=max(1, len(todo) // batch_size)).map_batches(
            Releaser,
            fn_constructor_args=(layer, key, str(output), chunk),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=num_gpus,
            max_restarts=retries,
            max_task_retries=retries,
        )
        for row in released.iter_rows():
            for name in rows:
                rows[name].append(row[name])
    seconds = time.perf_counter() - start
    errors = {k: e for k, e in zip(rows["key"], rows["error"]) if e}
    kinds = {item["key"]: item["kind"] for item in todo}
    first: dict[tuple[str, str], str] = {}  # (content tag, kind) -> the first item (by name) that holds it
    copies = {}
    for item, tag in sorted((k, t) for k, t, e in zip(rows["key"], rows["content"], rows["error"]) if not e):
        if (tag, kinds[item]) in first:
            copies[item] = first[tag, kinds[item]]
        else:
            first[tag, kinds[item]] = item
    return RunSummary(
        items=len(rows["key"]) - len(errors),
        skipped=len(done),
        frames=int(sum(rows["frames"])),
        longest=int(max(rows["frames"], default=0)),
        bytes_in=int(sum(rows["bytes_in"])),
        bytes_out=int(sum(rows["bytes_out"])),
        seconds=seconds,
        privacy=layer.guarantee.report(3),
        errors=errors,
        copies=copies,
    )


def row_identity(value: object) -> int | str | bytes:
    """A Dataset key as the typed label of its stream: an int, a string or bytes (NumPy scalars included), so that
    ``1``, ``"1"`` and ``b"1"`` are three items. Null keys and other types raise."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"the key column holds a null key ({value!r}): every image needs its own key")
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        raise TypeError(f"keys must be ints, strings or bytes, got {type(value).__name__} {value!r}")
    return value


class _DatasetReleaser:
    """Actor for :func:`release_dataset`: images of a column (HWC or CHW uint8 arrays) to NoisyGrid bytes."""

    def __init__(self, layer, key: RunKey, image_column: str, key_column: str) -> None:
        self.layer, self.key, self.image_column, self.key_column = layer, key, image_column, key_column
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.settings = layer_id(layer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        keys, grids = [], []
        for value, image in zip(batch[self.key_column], batch[self.image_column]):
            identity = row_identity(value)
            x = torch.as_tensor(np.asarray(image))
            if x.ndim == 2:
                x = x[None]
            elif x.ndim == 3 and x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4):
                x = x.permute(2, 0, 1)  # HWC, as ray.data.read_images gives
            grid = release_item(self.layer, self.key, x.contiguous().to(self.device), settings=self.settings)
            keys.append(identity)
            grids.append(grid.to_bytes())
        return {"key": keys, "grid": grids}


def release_dataset(
    dataset,
    layer,
    key: RunKey,
    *,
    image_column: str = "image",
    key_column: str = "key",
    workers: int = 1,
    num_gpus: float = 0,
    batch_size: int = 8,
    retries: int = 3,
):
    """Release the images of a ``ray.data.Dataset``: a Dataset of ``key`` and ``grid`` (NoisyGrid bytes, read back
    with :meth:`NoisyGrid.from_bytes`), e.g. for ``.write_parquet(path)``.

    The key column is the items' identity (row order is not stable under retries and repartitioning): it must be
    stable across runs, unique, and made of ints, strings or bytes compared by type and value (``1`` and ``"1"`` are
    two items; a null key raises). That is checked with one pass over the key column. Each row's noise is keyed by
    its pixels: rows with equal pixels get the same release (one image, one release, whatever their keys), and rows
    with other pixels never share noise, in this dataset or another released under the same key. Sets
    ``actor_task_retry_on_errors`` in Ray's DataContext."""
    ray = import_ray()
    check_layer(layer)
    missing = {image_column, key_column} - set(dataset.columns())
    if missing:
        raise ValueError(f"the dataset has no column(s) {sorted(missing)}; it has {dataset.columns()}")
    keys = dataset.select_columns([key_column])
    unique = keys.unique(key_column)  # one pass over the keys
    distinct = {(type(k), k) for k in map(row_identity, unique)}
    if keys.count() != len(unique) or len(distinct) != len(unique):
        raise ValueError(
            f"the key column {key_column!r} holds duplicates: every image needs its own key, stable across runs"
        )
    ray.data.DataContext.get_current().actor_task_retry_on_errors = True
    return dataset.map_batches(
        _DatasetReleaser,
        fn_constructor_args=(layer, key, image_column, key_column),
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=num_gpus,
        max_restarts=retries,
        max_task_retries=retries,
    )
