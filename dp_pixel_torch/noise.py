"""Noise samplers and the randomness they draw on (SPEC §4).

Both samplers turn one random 64-bit word per value into noise by an inverse CDF. The words come from a
:class:`KeyStream` (a ChaCha20 keystream under a 256-bit key) or from an explicit :class:`torch.Generator`, so the same
key or generator state gives the same noise on the same device.

Precision. Each noise value uses 53 random bits of one int64 word (:func:`noise_words`): bit 52 is the sign, and bits
0-51 fill a float64 mantissa, which gives ``q`` uniform on (0, 1] in steps of ``2**-52`` with no rounding (float32
would truncate the tail at about 17 scales). ``q`` is never 0, so no log is infinite; the largest magnitude is about
36 scales, and the sampled law differs from the exact one only on events of probability below ``2**-52`` per value.
That is the only gap between the implementation and pure ε-DP. The inverse CDFs are pure tensor functions of the words
(:func:`laplace_from_words`, :func:`discrete_laplace_from_words`), shared by the eager and the fused paths.

* ``laplace_noise``: continuous Laplace in float64. Like every textbook floating-point Laplace sampler it is open to
  the attack of Mironov (CCS 2012) on the low-order bits; use it for reproduction and speed, not for hostile settings.
* ``discrete_laplace_noise``: the two-sided geometric law ``P(k) ∝ exp(-|k|/scale)`` on the integers, added to integer
  cell sums. The release lies on a lattice, which defeats that attack.

Entropy. torch's CPU generator keeps only the low 32 bits of a seed, so a torch generator seeded from OS entropy has 32
bits of it, and seeds derived per sample or per worker collide. Every stream this library makes itself is therefore a
:class:`KeyStream`: secure layers key one from 32 bytes of OS entropy per call, seeded layers hash their seed (of any
size) to a key, and streams per sample, worker or copy are keyed by BLAKE2b of their parent key and their labels.

Copies in other processes. A stream or source that reaches another process by any route knows it is a copy there:
forked, pickled while a process is being started (a DataLoader worker under fork, spawn or forkserver), or pickled at
any time and unpickled in another process (a task argument of ``multiprocessing.Pool``, ``ProcessPoolExecutor`` or
Ray, which pickle after their workers started). Every pickle names the process that made it (:data:`_PROCESS`, 128
random bits per process, drawn anew in every forked child), so an unpickle anywhere else is a copy. A :class:`KeyStream`
re-keys itself in a copy before its first draw there, so no copy ever draws the words of its maker or of another copy:

* a fork or a pickle for a process being started is counted by its maker, under one lock held across the fork (an
  object made by another thread meanwhile is counted before the fork or made after it); the copy re-keys from its
  number (and a DataLoader worker's seed), so a seeded program stays reproducible from run to run;
* any other pickle unpickled in another process re-keys from 256 bits of fresh OS entropy drawn at that unpickle: two
  tasks given the same stream, in two workers or one after the other in the same worker, draw unrelated words, which
  no run can reproduce. :meth:`KeyStream.derive` with a label per task, called inside the task, is the way to
  reproducible per-task streams.
"""

from __future__ import annotations

import hashlib
import multiprocessing.context
import os
import threading
import weakref

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from torch.utils.data import get_worker_info

from . import keystream_cuda

_MANTISSA = (1 << 52) - 1
_ONE = 0x3FF0000000000000  # the bits of 1.0: with 52 random mantissa bits, a float64 uniform on [1, 2)


def noise_words(
    shape: tuple[int, ...], device: torch.device | str = "cpu", generator: Randomness = None
) -> torch.Tensor:
    """int64 random words of the given shape whose low 53 bits are uniform: the only randomness a noise value uses.

    A :class:`KeyStream` gives 8 keystream bytes per word (``None``: a fresh OS-keyed stream); a torch generator
    gives ``random_(0, 2**53)``."""
    if isinstance(generator, torch.Generator):
        return torch.empty(shape, dtype=torch.int64, device=device).random_(0, 1 << 53, generator=generator)
    return (generator or KeyStream.from_os_entropy()).words(shape, device)


def _tail_and_sign(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From the low 53 bits of each word: ``q`` uniform on (0, 1] in steps of ``2**-52`` (bits 0-51, through the
    float64 mantissa: exact, no rounding) and an independent fair sign (bit 52, True for minus)."""
    q = torch.sub(2.0, (words & _MANTISSA).bitwise_or_(_ONE).view(torch.float64))
    return q, (words >> 52).bitwise_and_(1).bool()


def laplace_from_words(words: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Continuous Laplace(0, ``scale``) noise, float64, one value per word: ``±scale·(-log q)``.

    A pure function of the words: :func:`laplace_noise` and the fused kernels of :mod:`.kernels` both call it (their
    float64 ``log`` implementations may differ in the last bit)."""
    q, negative = _tail_and_sign(words)
    magnitude = q.log_().mul_(-scale)
    return torch.where(negative, -magnitude, magnitude)


def discrete_laplace_from_words(
    words: torch.Tensor, scale: float | torch.Tensor, half_one_plus_a: float | torch.Tensor
) -> torch.Tensor:
    """Discrete Laplace noise (exact integers in float64), one value per word, for ``half_one_plus_a = (1+a)/2``,
    ``a = exp(-1/scale)``: ``±floor(-scale·log(q(1+a)/2))``. A pure function of the words, like
    :func:`laplace_from_words`."""
    q, negative = _tail_and_sign(words)
    # q(1+a)/2 < 1, so the magnitude is >= 0; clamp only guards rounding at absurd scales.
    magnitude = q.mul_(half_one_plus_a).log_().mul_(-scale).floor_().clamp_(min=0.0)
    return torch.where(negative, -magnitude, magnitude)


def laplace_noise(
    shape: tuple[int, ...],
    scale: float,
    *,
    device: torch.device | str = "cpu",
    generator: Randomness = None,
) -> torch.Tensor:
    """Continuous Laplace(0, ``scale``) noise, float64 of the given shape: ``±scale·(-log q)``, q uniform on (0, 1]."""
    return laplace_from_words(noise_words(tuple(shape), device, generator), scale)


def discrete_laplace_noise(
    shape: tuple[int, ...],
    scale: float,
    *,
    device: torch.device | str = "cpu",
    generator: Randomness = None,
) -> torch.Tensor:
    """Discrete Laplace noise ``P(k) = (1-a)/(1+a)·a^|k|``, ``a = exp(-1/scale)``: exact integers held in float64.

    Inverse CDF of the magnitude: ``P(|K| >= k) = 2a^k/(1+a)`` for k >= 1, so ``|K| = floor(-scale·log(q(1+a)/2))``
    for q uniform on (0, 1]; an independent fair sign completes it. The variance is ``2a/(1-a)^2`` (≈ 2·scale²).
    """
    return discrete_laplace_from_words(noise_words(tuple(shape), device, generator), scale, half_one_plus_a(scale))


def half_one_plus_a(scale: float) -> float:
    """``(1 + a)/2`` for ``a = exp(-1/scale)``, the constant of :func:`discrete_laplace_from_words`."""
    return (1.0 + float(np.exp(-1.0 / scale))) / 2.0


def discrete_laplace_variance(scale: float | torch.Tensor) -> float | torch.Tensor:
    """Exact variance ``2a/(1-a)²`` of :func:`discrete_laplace_noise` at ``scale`` (a float, or a float64 tensor of
    scales, elementwise)."""
    if isinstance(scale, torch.Tensor):
        a, one_minus_a = torch.exp(-1.0 / scale), -torch.expm1(-1.0 / scale)
    else:
        a, one_minus_a = float(np.exp(-1.0 / scale)), -float(np.expm1(-1.0 / scale))
    return 2.0 * a / one_minus_a**2


#: Bytes of a stream key: 256 bits, so that derived keys collide with probability ~n²·2^-257.
KEY_BYTES = 32
_PERSON = b"dp_pixel_torch"  # BLAKE2b personalisation: this library's keys are apart from any other use of the hash
_ZEROS = bytes(1 << 20)  # ChaCha20 encrypts zeros into its keystream, a MiB at a time
_MAX_WORDS = 8 << 32  # 2^32 blocks of 64 bytes per nonce


class _Copied:
    """An object that counts the processes it is copied into: each fork (``os.register_at_fork``) and each pickle
    for a process being started (spawn, forkserver). ``_sent`` is that count so far; a copy is told its number by
    :meth:`_forked` (a fork) or finds it in its pickled state. The count of a fork is taken under :data:`_REGISTRY`,
    held from before the fork until after it in both processes: an object made by another thread meanwhile is
    registered (and counted) before the fork, or made after it, and then is not in the child at all."""

    _sent: int

    def _track(self) -> None:
        with _REGISTRY:
            _COPIED.add(self)

    def _sent_to_new_process(self) -> int | None:
        """In ``__getstate__``: the number of the copy being pickled, if it is for a process being started."""
        if multiprocessing.context.get_spawning_popen() is None:  # a plain pickle or deepcopy: not another process
            return None
        with _REGISTRY:
            self._before_copy()
            self._sent += 1
            return self._sent

    def _before_copy(self) -> None:
        """Called (under the lock) just before this object is copied into another process."""

    def _forked(self) -> None:
        """Called in the child of a fork, for every object the parent held; ``_sent`` is this copy's number."""


#: This process's identity, named in every pickle of a stream or source: 128 random bits (pids repeat across machines
#: and over time), drawn anew in every forked child. An unpickle in a process with another identity is a copy.
_PROCESS = os.urandom(16)


def _foreign(maker: bytes | None) -> bool:
    """Whether a pickle whose state names ``maker`` was made by another process (naming none counts as foreign)."""
    return maker != _PROCESS


#: Every live :class:`_Copied` object of this process.
_COPIED: weakref.WeakSet[_Copied] = weakref.WeakSet()
#: Guards :data:`_COPIED` and the counts; held across every fork (reentrant: fork hooks of this thread may make streams).
_REGISTRY = threading.RLock()


def _before_fork() -> None:
    _REGISTRY.acquire()
    for copied in list(_COPIED):
        copied._before_copy()
        copied._sent += 1


def _after_fork_in_parent() -> None:
    _REGISTRY.release()


def _after_fork_in_child() -> None:
    global _PROCESS
    try:
        _PROCESS = os.urandom(16)  # a forked child is another process: the pickles it makes say so
        for copied in list(_COPIED):
            copied._forked()
    finally:
        _REGISTRY.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)

#: BLAKE2b personalisation of the key a stream takes in a copy: apart from every key of :meth:`KeyStream.derive`.
_COPY_PERSON = b"dp_pixel_torch.c"


class KeyStream(_Copied):
    """Uniforms from a ChaCha20 keystream (RFC 8439, OpenSSL through ``cryptography``) under a 256-bit key.

    Call i of :meth:`uniform` reads the keystream of nonce i from block 0, so calls never share keystream, and a stream
    with the same key and position replays the same calls. Each uniform takes 8 keystream bytes and keeps 53 bits.
    It pickles with its key and position, like a torch generator with its state: whoever holds a stream (or its
    seed) can recompute its noise. :meth:`derive` gives independent child streams keyed by a PRF of the labels.

    In another process a stream draws its own words: a copy that reaches another process by any route re-keys itself
    before its first draw there, and the stream it came from keeps its own words.

    * Forked, or pickled while a process is being started (a DataLoader worker under fork, spawn or forkserver,
      persistent or not, a ``multiprocessing.Process``): the new key is keyed BLAKE2b of the copy's number (the
      parent counts the processes it sends the stream to), its position and, in a DataLoader worker, the worker's
      seed (drawn anew for every worker of every epoch). ``dp_pixelize(x, ..., generator=stream)`` in two workers,
      or in two epochs of workers, draws independent noise; a seeded program stays reproducible from run to run.
    * Pickled at any other time and unpickled in another process (a task argument of ``multiprocessing.Pool``,
      ``ProcessPoolExecutor`` or Ray, under fork or spawn): the new key is keyed BLAKE2b of 256 bits of OS entropy
      drawn at that unpickle. Every task that receives the stream, in any worker, draws unrelated words; no run
      reproduces them. For reproducible per-task streams, call ``stream.derive(task_label)`` inside the task (a
      derived stream sent as it is re-keys like any other).

    A copy made in the same process (``pickle``, ``copy.deepcopy``) replays the stream, and :meth:`derive` gives the
    same children in every process (what :class:`~dp_pixel_torch.training_data.ReleasedOnce` and the Ray run keys
    rely on).

    Args:
        key: 32 bytes. :meth:`from_os_entropy` draws them from the operating system's CSPRNG; :meth:`from_seed` hashes
            an integer seed of any size into them.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            got = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
            raise TypeError(f"a KeyStream key is {KEY_BYTES} bytes, got {got}")
        self._key = key  # what the draws use; re-keyed in a copy in another process
        self._root = key  # what derive uses: the same children in every process
        self._calls = 0
        self._lock = threading.Lock()
        self._sent = 0
        # In a process this stream was copied into, until it re-keys: the copy's number (counted by its maker), or
        # 32 bytes of OS entropy (a pickle unpickled in another process).
        self._copy: int | bytes | None = None
        self._track()

    @classmethod
    def from_os_entropy(cls) -> KeyStream:
        """A stream keyed with 256 bits of fresh OS entropy (``os.urandom``)."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_seed(cls, seed: int) -> KeyStream:
        """A stream keyed by BLAKE2b of the whole integer ``seed`` (no bits are dropped): distinct seeds, distinct
        streams. Anyone who knows the seed can subtract the noise; ``secrets.randbits(128)`` makes a seed that is
        also a secret."""
        return cls(hashlib.blake2b(_encode("seed", check_seed(seed)), digest_size=KEY_BYTES, person=_PERSON).digest())

    @property
    def key(self) -> bytes:
        """The key of this stream's draws (in a copy in another process: the key it re-keyed itself to)."""
        if self._copy is not None:
            with self._lock:
                self._settle()
        return self._key

    def _settle(self) -> None:
        """In a copy in another process, under ``_lock``: re-key before the first draw (see the class doc)."""
        if self._copy is None:
            return
        info = get_worker_info()
        labels = _encode("copy", self._copy, self._calls, "-" if info is None else info.seed)
        self._key = hashlib.blake2b(labels, key=self._key, digest_size=KEY_BYTES, person=_COPY_PERSON).digest()
        self._copy = None

    def _before_copy(self) -> None:
        with self._lock:  # waits for another thread's reserve; a copy settles before it is copied further
            self._settle()

    def _forked(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it across the fork
        self._copy = self._sent

    @property
    def position(self) -> int:
        """Calls drawn so far: the next call reads the keystream of this nonce."""
        return self._calls

    def derive(self, *labels: int | str | bytes) -> KeyStream:
        """An independent stream for ``labels`` (a sample index, a worker seed, …): keyed BLAKE2b of the labels under
        this stream's key, a PRF, so distinct labels give unrelated 256-bit keys."""
        return KeyStream(
            hashlib.blake2b(_encode(*labels), key=self._root, digest_size=KEY_BYTES, person=_PERSON).digest()
        )

    def words(self, shape: tuple[int, ...] | int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The next call's keystream as int64 words (8 bytes each, little-endian) of the given shape, on ``device``."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = int(np.prod(shape, dtype=np.int64))
        return self.words_at(self.reserve(n), 0, n, device).reshape(shape)

    def reserve(self, n: int) -> int:
        """Take the next call for ``n`` words and return its number; :meth:`words_at` reads it in pieces."""
        if n > _MAX_WORDS:
            raise ValueError(f"one call draws at most {_MAX_WORDS} words (a 32-bit ChaCha20 block counter), got {n}")
        with self._lock:
            self._settle()
            call, self._calls = self._calls, self._calls + 1
        return call

    def words_at(self, call: int, start: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Words ``start .. start+n-1`` of call ``call``'s keystream (nonce ``call``, from block ``start // 8``): any
        split of a call into pieces reads the same words as one piece.

        On the CPU OpenSSL writes them; on a CUDA device with Triton a ChaCha20 kernel writes them on the GPU
        (:mod:`dp_pixel_torch.keystream_cuda`), bit for bit the same words. Words read twice are the same noise twice:
        take every call from :meth:`reserve` and read each of its words once."""
        if start < 0 or n < 0 or start + n > _MAX_WORDS:
            raise ValueError(f"words {start}..{start + n - 1} lie outside one call's {_MAX_WORDS} words")
        device = torch.device(device)
        first, skip = divmod(start, 8)
        key = self.key
        if device.type == "cuda" and keystream_cuda.available():
            words = keystream_cuda.chacha20_words(key, call, first, skip + n, device)
            if words is not None:
                return words[skip:]
        words = torch.empty(skip + n + 8, dtype=torch.int64)  # 64 spare bytes: update_into's slack for the last block
        out = memoryview(words.numpy()).cast("B")
        nonce = first.to_bytes(4, "little") + call.to_bytes(12, "little")
        encryptor = Cipher(algorithms.ChaCha20(key, nonce), None).encryptor()
        size = 8 * (skip + n)
        for offset in range(0, size, len(_ZEROS)):
            encryptor.update_into(memoryview(_ZEROS)[: min(len(_ZEROS), size - offset)], out[offset:])
        return words[skip : skip + n].to(device)

    def uniform(self, shape: tuple[int, ...] | int, device: torch.device | str = "cpu") -> torch.Tensor:
        """float64 uniforms on ``[0, 1)``, multiples of ``2**-53``, from the next call's :meth:`words`."""
        # An arithmetic shift keeps 53 uniform bits as a signed integer in [-2^52, 2^52): scaled and shifted by 1/2,
        # exactly the lattice uniform on [0, 1).
        return self.words(shape, device).bitwise_right_shift_(11).double().mul_(2.0**-53).add_(0.5)

    def __getstate__(self) -> dict:
        copy = self._sent_to_new_process()
        state = {"key": self._root, "calls": self._calls, "sent": self._sent, "maker": _PROCESS}
        if self._key != self._root:
            state["drawn"] = self._key
        if copy is not None:
            state["copy"] = copy  # counted for the one process being started
        elif self._copy is not None:
            state["pending"] = self._copy  # a copy not yet re-keyed here
        return state

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["key"])
        self._key = state.get("drawn", self._key)
        self._calls = state["calls"]
        self._sent = state.get("sent", 0)
        if not _foreign(state.get("maker")):  # a pickle of this process (pickle, deepcopy): replays the stream
            self._copy = state.get("copy", state.get("pending"))
        elif "copy" in state:  # counted by its maker for this process, at its start: re-keys from its number
            self._copy = state["copy"]
        else:  # any other pickle made elsewhere (a pool or Ray task argument): one fresh key per unpickle
            self._copy = os.urandom(KEY_BYTES)

    def __repr__(self) -> str:
        return f"KeyStream(<{8 * KEY_BYTES}-bit key>, calls={self._calls})"


#: Where noise comes from: a keyed stream, an explicit torch generator, or (None) a fresh OS-keyed stream.
Randomness = KeyStream | torch.Generator | None


def _encode(*labels: int | str | bytes) -> bytes:
    """An injective encoding of a label sequence: each label tagged with its type and length."""
    parts = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, (int, str, bytes)):
            raise TypeError(f"stream labels are ints, strings or bytes, got {type(label).__name__}")
        if isinstance(label, int):
            tag, data = b"i", label.to_bytes(label.bit_length() // 8 + 1, "big", signed=True)
        elif isinstance(label, str):
            tag, data = b"s", label.encode()
        else:
            tag, data = b"b", label
        parts.append(tag + len(data).to_bytes(8, "big") + data)
    return b"".join(parts)


def image_digest(x: torch.Tensor) -> bytes:
    """BLAKE2b of an image's shape, dtype and values: a derivation label that tells different images apart (SPEC §4).

    Paths, indices and key columns repeat across runs and datasets; a digest of the content does not. It is only ever
    hashed again under a secret key (a label of :meth:`KeyStream.derive`), never kept or written: a bare digest would
    let whoever holds it confirm a guessed image exactly."""
    data = x.detach().cpu().contiguous()
    meta = f"{tuple(data.shape)}{data.dtype}".encode()
    digest = hashlib.blake2b(meta, digest_size=32, person=b"image-digest")
    digest.update(data.view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.digest()


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TypeError(f"seed must be a non-negative int (of any size), got {seed!r}")
    return seed


def _generator_key(generator: torch.Generator) -> KeyStream:
    """A stream keyed by the whole state of a torch generator (its device included)."""
    state = generator.get_state().numpy().tobytes()
    digest = hashlib.blake2b(_encode("generator", str(generator.device), state), digest_size=KEY_BYTES, person=_PERSON)
    return KeyStream(digest.digest())


class NoiseSource(_Copied):
    """Where a layer's randomness comes from, resolved per call, per process and per DataLoader worker.

    * ``secure=True``: a :class:`KeyStream` keyed with fresh OS entropy for every call; no generator or seed is
      accepted, and nothing in the layer can replay a past call's noise.
    * ``seed``: one :class:`KeyStream` keyed by the whole seed (``generator=`` a KeyStream works the same way); it
      advances with every call. Anyone who knows the seed can subtract the noise: seeds are for experiments.
    * ``generator``: the caller's torch generator, used as it is (its device must match the input's). On the CPU its
      seed has 32 bits: that is the caller's choice.
    * neither: a :class:`KeyStream` keyed from OS entropy in the process that first draws from it. A copy (pickle,
      deepcopy, a forked or spawned process) never carries the key and keys itself anew, so no two copies draw the same
      noise, and a pickled layer does not reveal the noise of its past calls.

    A seed or generator is copied with the **same state** into every DataLoader worker. In a worker the layer
    therefore switches to a stream derived from its own key (for a torch generator: a hash of its state), its
    position, how many processes it was sent to before this one (counted at each fork and each pickle for a spawned
    process), and the worker's seed, which DataLoader draws anew for every worker of every epoch. Workers then draw
    independent streams, also when one layer serves two loaders seeded alike, and stay reproducible from run to run
    of a seeded program. Copies of a seeded layer in the same process (``copy.deepcopy``, ``pickle``) replay its
    stream, as a copied seed would. In another process its :class:`KeyStream` re-keys itself (see there), and a torch
    generator is replaced by the stream keyed by its state, re-keyed alike: a layer sent to pool or Ray tasks never
    replays its maker's noise (a generator is used as given only in the process that made the layer).
    """

    def __init__(self, *, generator: Randomness = None, seed: int | None = None, secure: bool = False):
        if not isinstance(secure, bool):
            raise TypeError(f"secure must be a bool, got {type(secure).__name__}")
        if secure and (generator is not None or seed is not None):
            raise ValueError("secure=True keys every call from OS entropy and refuses a generator or seed")
        if generator is not None and seed is not None:
            raise ValueError("give at most one of generator and seed")
        check_randomness(generator)
        self.secure = secure
        self._fresh = not secure and generator is None and seed is None
        self._stream = KeyStream.from_seed(seed) if seed is not None else generator
        self._worker_seed: int | None = None
        self._pid: int | None = None  # the process that keyed a fresh stream
        self._generator_copy: int | bytes | None = None  # a copy of a torch generator in another process, see below
        self._sent = 0  # processes this source was forked or pickled into (for a process being started)
        self._track()

    def __getstate__(self) -> dict:
        copy = self._sent_to_new_process()
        state = self.__dict__.copy()
        state["_maker"], state["_counted"] = _PROCESS, copy
        if self._fresh:
            state["_stream"], state["_pid"] = None, None  # never travels: a copy keys itself
        elif isinstance(self._stream, torch.Generator):
            # As plain bytes: torch's own pickling of a generator's state tensor goes through shared memory under
            # multiprocessing and fails in spawned DataLoader workers.
            state["_stream"] = _freeze(self._stream)
        return state

    def __setstate__(self, state: dict) -> None:
        maker, counted = state.pop("_maker", None), state.pop("_counted", None)
        if isinstance(state["_stream"], tuple):
            state["_stream"] = _thaw(state["_stream"])
        self.__dict__.update(state)
        self._track()
        if _foreign(maker):  # as a KeyStream copy: from its number, or fresh entropy per unpickle
            self._generator_copied(os.urandom(KEY_BYTES) if counted is None else counted)

    def _forked(self) -> None:
        self._generator_copied(self._sent)

    def _generator_copied(self, copy: int | bytes) -> None:
        """In a copy in another process, a torch generator would replay: mark it to become the stream keyed by its
        state, re-keyed as copy ``copy``, at the first draw here (not in the fork hook: reading a CUDA generator's
        state there would initialise CUDA in a forked child). A copy of a copy that has not drawn yet chains the two
        marks: a task's fresh entropy is kept when the task forks or spawns a worker before its first draw."""
        if isinstance(self._stream, torch.Generator):
            pending = self._generator_copy
            self._generator_copy = copy if pending is None else _encode("then", pending, copy)

    def generator_for(self) -> KeyStream | torch.Generator:
        """The randomness of this call's noise."""
        if self.secure:
            return KeyStream.from_os_entropy()
        if self._fresh:
            if self._pid != os.getpid():  # first use, or a forked process that inherited the key
                self._stream, self._pid = KeyStream.from_os_entropy(), os.getpid()
            return self._stream
        if self._generator_copy is not None:
            self._stream, self._stream._copy = _generator_key(self._stream), self._generator_copy
            self._generator_copy = None
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            # From the key the parent draws with here (re-keyed if it is a copy: a layer sent to pool tasks that each
            # run a DataLoader gets other worker streams in every task), not from its root.
            parent = self._stream if isinstance(self._stream, KeyStream) else _generator_key(self._stream)
            self._stream = KeyStream(parent.key).derive("worker", info.seed, parent.position, self._sent)
            self._worker_seed = info.seed
        return self._stream


def check_randomness(generator: object) -> None:
    if generator is not None and not isinstance(generator, (torch.Generator, KeyStream)):
        raise TypeError(f"generator must be a torch.Generator, a KeyStream or None, got {type(generator).__name__}")


def check_call_randomness(generator: object) -> None:
    """The randomness given for one call (not to a layer): refuse a torch generator inside a DataLoader worker.

    DataLoader copies it into every worker with the same state, and on the CPU it keeps 32 bits of its seed; nothing
    tells a per-call generator apart from the copy of another worker, so workers would draw the same noise. A
    :class:`KeyStream` re-keys itself per worker, and a layer splits its own seed or generator per worker."""
    check_randomness(generator)
    if isinstance(generator, torch.Generator) and get_worker_info() is not None:
        raise ValueError(
            "a torch.Generator given for one call in a DataLoader worker is refused: DataLoader copies it into every "
            "worker with the same state (and on the CPU it keeps only 32 bits of its seed), so the workers would draw "
            "the same noise. Pass a KeyStream (KeyStream.from_seed(seed): it re-keys itself in each worker), or give "
            "the seed or generator to the layer (DPPixelize(..., seed=...)), which splits it per worker"
        )


def _freeze(generator: torch.Generator) -> tuple[str, bytes]:
    return str(generator.device), generator.get_state().numpy().tobytes()


def _thaw(frozen: tuple[str, bytes]) -> torch.Generator:
    device, state = frozen
    generator = torch.Generator(device=device)
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return generator
