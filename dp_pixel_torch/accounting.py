"""Explicit privacy guarantees (SPEC §6): what one release promises, as an immutable object."""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import itertools
import json
import math
import os
import secrets
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ._validation import check_cells, check_choice, check_epsilon, check_positive_int
from .noise import discrete_laplace_variance

NOISE_KINDS = ("discrete", "laplace")
BORDERS = ("area", "zero_pad")
CHANNEL_RULES = ("joint", "per_channel")
#: Where the cells come from. Only "complexity" reads the private image, and it pays ``partition_epsilon`` for it.
PARTITIONS = ("uniform", "mask", "complexity", "previous")
_PARTITION_TEXT = {
    "uniform": "",
    "mask": "; partition: the given region mask, treated as PUBLIC (costs no budget)",
    "complexity": "; partition: noisy complexity scores of the image",
    "previous": "; partition: derived from the previous released frame (post-processing, no extra budget)",
}
#: Where a region map comes from: given from outside the image ("public"), found by a detector in the private image
#: itself ("detector"), which discloses the region positions, or both ("public+detector"): a public zone fixed in
#: advance, which the detectors never see, and detections in the rest of the image.
REGION_ORIGINS = ("public", "detector", "public+detector")


@dataclass(frozen=True)
class PrivacyGuarantee:
    """The guarantee of one release of one image (or one video frame) by a DP pixelization mechanism.

    Neighbouring images have the same shape and differ in at most ``m`` pixels, each by up to the full value range.

    Attributes:
        epsilon: the configured budget. With ``channel_rule="joint"`` it covers the whole image, all channels together;
            with ``"per_channel"`` (Fan's reading) it is per channel and the image costs ``C·epsilon``.
        m: pixels that may differ between neighbours (objects up to m pixels are hidden).
        b: cell side in pixels (uniform ``b×b`` cells), or None.
        grid: ``(rows, cols)`` of the output grid, or None.
        levels: aligned cell sizes of a region-adaptive release, or None.
        channel_rule: ``"joint"`` or ``"per_channel"``.
        noise: ``"discrete"`` (integer discrete Laplace) or ``"laplace"`` (float64 continuous Laplace).
        border: ``"area"`` (divide by the true cell area) or ``"zero_pad"`` (divide by b², the paper's choice).
        secure: whether each call draws a fresh seed from OS entropy.
        partition: where the cells come from: ``"uniform"``, or for ``levels`` ``"mask"`` (public region map),
            ``"complexity"`` (private scores, paid with ``partition_epsilon``) or ``"previous"`` (previous release).
        partition_epsilon: budget spent on choosing the partition (only ``"complexity"`` spends any).
        protect: the region map (``partition="mask"``) marks regions to *protect* (SPEC §3, "Protected regions"): the
            cells of the coarsest level ``b_L`` that meet a region are released whole with noise scale
            ``C·R·protect_m/ε``; every other cell is released at the finest level ``b_0`` with ``C·R·m/ε``. The release
            is then ε-DP for two relations at once: neighbours that differ in up to ``m`` pixels anywhere, and
            neighbours that differ in up to ``protect_m`` pixels inside the protected cells (which hold the regions).
            A change touching both costs up to 2ε. The protected cells and their scales are public.
        protect_m: ``m_r``, the pixels that may differ inside the protected cells (at least ``m``). None: all of
            them, so any change inside the protected cells of an image is hidden; the scale of each image then uses
            the pixel count of its own protected cells (at least ``m``).
        region_from: ``"public"`` (the map does not depend on the image: annotations, a fixed box) or
            ``"detector"`` (found in the private image): the guarantee then holds *conditional on the disclosed
            region positions*, and a region the detector misses gets only the ``m`` protection.
            ``"public+detector"`` (``protect`` only): a public zone drawn once for the camera, whose cells the
            detectors never see, plus detections in the rest of the image. A change inside the zone's cells is
            covered unconditionally (the map does not depend on it); elsewhere the guarantee is conditional.
    """

    epsilon: float
    m: int
    b: int | None
    grid: tuple[int, int] | None
    channel_rule: str
    noise: str
    border: str
    secure: bool
    levels: tuple[int, ...] | None = None
    partition: str = "uniform"
    partition_epsilon: float = 0.0
    protect: bool = False
    protect_m: int | None = None
    region_from: str = "public"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the validated fields once, here
        set_(self, "epsilon", check_epsilon(self.epsilon))
        set_(self, "m", check_positive_int(self.m, "m"))
        b, grid, levels = check_cells(self.b, self.grid, self.levels)
        set_(self, "b", b)
        set_(self, "grid", grid)
        set_(self, "levels", levels)
        check_choice(self.partition, "partition", PARTITIONS)
        if (self.partition == "uniform") != (levels is None):
            raise ValueError(f"partition {self.partition!r} does not fit cells b={b}, grid={grid}, levels={levels}")
        if self.partition == "complexity":
            set_(self, "partition_epsilon", check_epsilon(self.partition_epsilon, "partition_epsilon"))
        elif self.partition_epsilon != 0.0:
            raise ValueError(f"partition_epsilon is only spent by partition='complexity', not {self.partition!r}")
        check_choice(self.channel_rule, "channel_rule", CHANNEL_RULES)
        check_choice(self.noise, "noise", NOISE_KINDS)
        check_choice(self.border, "border", BORDERS)
        if self.border == "zero_pad" and self.grid is not None:
            raise ValueError('border="zero_pad" divides by b² and needs b or levels; use border="area" with grid=')
        if not isinstance(self.secure, bool):
            raise TypeError(f"secure must be a bool, got {type(self.secure).__name__}")
        if not isinstance(self.protect, bool):
            raise TypeError(f"protect must be a bool, got {type(self.protect).__name__}")
        check_choice(self.region_from, "region_from", REGION_ORIGINS)
        if self.region_from != "public" and self.partition != "mask":
            raise ValueError(f"region_from applies to a region map (partition='mask'), not {self.partition!r}")
        if self.region_from == "public+detector" and not self.protect:
            raise ValueError("region_from='public+detector' (a public zone and detections) needs protect=True")
        if self.protect and self.partition != "mask":
            raise ValueError(
                f"protect marks regions of a region map: it needs partition='mask', not {self.partition!r}"
            )
        if self.protect_m is not None:
            if not self.protect:
                raise ValueError("protect_m is the protected pixel count of protect=True; it has no meaning without it")
            set_(self, "protect_m", check_positive_int(self.protect_m, "protect_m"))
            if self.protect_m < self.m:
                raise ValueError(f"protect_m must be at least m = {self.m} (m_r >= m), got {self.protect_m}")
        if self.secure and self.noise != "discrete":
            raise ValueError(
                'secure=True requires noise="discrete": continuous floating-point Laplace is open to Mironov\'s attack'
            )

    def total_epsilon(self, channels: int) -> float:
        """ε for a whole image with ``channels`` channels: the cells' ε (× C under ``per_channel``) plus the
        partition's (sequential composition)."""
        cells = self.epsilon * channels if self.channel_rule == "per_channel" else self.epsilon
        return cells + self.partition_epsilon

    def noise_scale(self, channels: int, value_range: float, m: int | None = None) -> float:
        """Laplace scale on every cell sum: sensitivity ``C·R·m`` over ε (``C`` is 1 under ``per_channel``); give
        ``m`` for the protected cells' ``m_r``."""
        c = 1 if self.channel_rule == "per_channel" else channels
        return c * value_range * (self.m if m is None else m) / self.epsilon

    def sum_noise_variance(self, channels: int, value_range: float, m: int | torch.Tensor | None = None):
        """Variance of the noise on every released cell sum, in the units of the sums (the public noise law):
        ``2a/(1-a)²`` with ``a = exp(-1/scale)`` for discrete Laplace, ``2·scale²`` for continuous Laplace, at
        :meth:`noise_scale`. ``m`` may be a tensor of pixel counts (one ``m_r`` per image): a float64 tensor then."""
        m = self.m if m is None else m
        scale = self.noise_scale(channels, value_range, 1) * (m.double() if isinstance(m, torch.Tensor) else m)
        return discrete_laplace_variance(scale) if self.noise == "discrete" else 2.0 * scale**2

    def __str__(self) -> str:
        return self.report()

    def report(self, channels: int | None = None) -> str:
        """The guarantee in words, with the total ε that is charged for images of ``channels`` channels (given
        for a C-channel image, and for RGB, when ``channels`` is None)."""
        eps, pe = f"{self.epsilon:g}", f"{self.partition_epsilon:g}"
        per_channel = self.channel_rule == "per_channel"
        if not per_channel:
            budget = f"ε = {eps} per image (all channels jointly)"
        elif channels is None:
            budget = (
                f"ε = {eps} per channel (C·{eps} per image: {self.total_epsilon(3) - self.partition_epsilon:g} for RGB)"
            )
        else:
            budget = f"ε = {eps} per channel ({channels}·{eps} = {channels * self.epsilon:g} per image)"
        if self.b is not None:
            cells = f"b = {self.b}"
        elif self.grid is not None:
            cells = f"grid = {self.grid[0]}×{self.grid[1]} cells"
        else:
            cells = "region-adaptive cells b ∈ {" + ", ".join(map(str, self.levels)) + "}"
        partition = _PARTITION_TEXT[self.partition]
        if self.partition == "complexity":
            if not per_channel or channels == 1:
                total = f"{eps} + {pe} = {self.total_epsilon(1):g}"
            elif channels is None:
                total = f"C·{eps} + {pe} per image ({self.total_epsilon(3):g} for RGB)"
            else:
                total = f"{channels}·{eps} + {pe} = {self.total_epsilon(channels):g}"
            partition += f" with partition ε = {pe}; total ε = {total}"
        if self.protect:
            partition = self._protection_text()
        elif self.region_from == "detector":
            partition = (
                "; partition: a region map found by a detector in the private image; the guarantee holds CONDITIONAL "
                "on the disclosed region positions"
            )
        noise = {"discrete": "discrete Laplace on integer sums", "laplace": "continuous Laplace (float64)"}[self.noise]
        seed = ", a ChaCha20 stream keyed with fresh OS entropy per call" if self.secure else ""
        neighbours = f"neighbours differ in up to m = {self.m} pixel{'s' if self.m != 1 else ''}"
        if self.protect:
            m_r = "any number of" if self.protect_m is None else f"up to m_r = {self.protect_m}"
            neighbours += f" anywhere, or in {m_r} pixels inside the protected regions (each relation at ε)"
        return f"{budget}, δ = 0; {neighbours}; {cells}, border = {self.border}; noise: {noise}{seed}{partition}"

    def _protection_text(self) -> str:
        top, fine = self.levels[-1], self.levels[0]
        m_r = "m_r = all pixels of the image's protected cells" if self.protect_m is None else f"m_r = {self.protect_m}"
        if self.region_from == "detector":
            origin = (
                "found by a detector in the private image and DISCLOSED: the guarantee holds CONDITIONAL on the "
                "disclosed region positions, and a region the detector misses gets only the m protection"
            )
        elif self.region_from == "public+detector":
            origin = (
                "of two kinds: a PUBLIC zone fixed in advance (costs no budget), protected UNCONDITIONALLY: the "
                "detectors never see its cells, so the disclosed positions do not depend on them; and regions found by "
                "a detector in the rest of the private image and DISCLOSED: outside the zone's cells the guarantee "
                "holds CONDITIONAL on the disclosed region positions, and a region the detector misses there gets only "
                "the m protection"
            )
        else:
            origin = "given as PUBLIC (costs no budget)"
        return (
            f"; protected regions {origin}; cells meeting a region are released whole at b = {top} with noise scale "
            f"C·R·m_r/ε ({m_r}), all other cells at b = {fine} with C·R·m/ε; region positions and per-cell scales are "
            "public; a change of up to m_r pixels inside the regions and m outside costs up to 2ε"
        )


class BudgetExceededError(RuntimeError):
    """A release would exceed the accountant's cap; it was refused before any noise was drawn.

    ``final`` is False when only the w-event window refused it: a smaller chunk may fit now, and frames skipped with
    :meth:`PrivacyAccountant.skip` slide the window so that later frames fit. It is True when nothing later fits: the
    total cap is reached, or one frame alone passes the window cap.
    """

    def __init__(self, message: str, *, final: bool = True) -> None:
        super().__init__(message)
        self.final = final


class LedgerIntegrityError(RuntimeError):
    """The ledger file is not the history this accountant (or the lock file beside it) knew: it was deleted, replaced,
    reset or rolled back to an older copy. Charging it would restart the budget, so nothing is charged; see
    :meth:`PrivacyAccountant.reset_ledger` to start over deliberately."""


class PrivacyAccountant:
    """Sequential composition over a stream of releases (video frames), with an optional cap (SPEC §6).

    Every released frame is charged its total ε (:meth:`PrivacyGuarantee.total_epsilon`), and all frames are taken to
    show the same people: a person visible in T frames is covered at the sum of those T frames' ε. A frame of the
    stream that goes out with nothing released (refused by the window, dropped) is recorded by :meth:`skip` as a
    frame of ε = 0, so that windows and :meth:`epsilon_for` count frames of the stream, not only released ones. The
    history is kept as runs of equal ε, so a day of video at one ε is one run.

    Args:
        cap: the most ε the whole stream may spend; the release that would pass it raises :class:`BudgetExceededError`.
        window: w-event mode: at most ``window_cap`` over any ``window`` consecutive frames of the stream (released or
            skipped). Every charge and skip keeps this true of the whole history: a skip adds frames of ε = 0, which
            raise no window's sum, and a charge is refused unless every window that holds one of its frames (the
            last ``window - 1`` frames before it and at most ``window`` of its own) stays within the cap, checked
            and recorded in one step. A refused charge records nothing, so that retrying the same frame cannot
            pass for a later one: the caller that drops the frame calls :meth:`skip`.
        window_cap: the budget of every window of ``window`` frames.
        fps: frame rate, to give windows and queries in seconds.
        ledger: a SQLite file that holds the history, shared by every process and DataLoader worker that charges this
            budget and kept across restarts. Each charge is one committed transaction (WAL, synchronous=FULL) before
            the release draws its noise, so a crash loses no charge and no release goes uncharged. A ledger keeps the
            settings it was created with; opening it with others raises. It holds a random identity and a count of
            its charges and skips that only grows; ``<ledger>.lock`` beside it remembers both. A charge or query
            raises :class:`LedgerIntegrityError` when the file this accountant opened was deleted, replaced or reset,
            or its count went back (a restored older copy); so does opening a ledger that is missing, another one or
            behind what the lock file remembers. Not detected: a ledger deleted or rolled back together with its lock
            file, or a ledger at a new path; keep ledgers where only the operator can write, and never copy or move
            one in use. :meth:`reset_ledger` starts a budget over on purpose.

    Without a ledger the history lives in this object, and only this object in this process may charge it: a copy
    (pickled into a DataLoader worker, forked, deep-copied) refuses to charge, because its charges would never reach
    the original. Attach it to a layer (``accountant=``) to have every call charged before noise is drawn; each
    leading index of the input (``[..., C, H, W]``) is one frame. The state saves to JSON so a job can resume.
    """

    def __init__(
        self,
        cap: float | None = None,
        *,
        window: int | None = None,
        window_seconds: float | None = None,
        window_cap: float | None = None,
        fps: float | None = None,
        ledger: str | Path | None = None,
    ) -> None:
        self.cap = None if cap is None else check_epsilon(cap, "cap")
        self.fps = None if fps is None else check_epsilon(fps, "fps")
        if window_seconds is not None:
            if self.fps is None or window is not None:
                raise ValueError("window_seconds needs fps= and replaces window=")
            window = max(1, round(check_epsilon(window_seconds, "window_seconds") * self.fps))
        if (window is None) != (window_cap is None):
            raise ValueError("w-event mode needs both window (or window_seconds) and window_cap")
        self.window = None if window is None else check_positive_int(window, "window")
        self.window_cap = None if window_cap is None else check_epsilon(window_cap, "window_cap")
        self.ledger = None if ledger is None else Path(ledger)
        self._history = _Runs() if ledger is None else _Ledger(self.ledger, self._settings())
        self._owner: int | None = os.getpid()  # the one process whose in-memory charges count

    @staticmethod
    def reset_ledger(path: str | Path) -> None:
        """Deliberately discard the history of the ledger at ``path`` (and the lock file's memory of it): the next
        accountant opened on it starts a new budget at 0, with its own settings. Every accountant still open on the
        old history refuses to charge from then on (:class:`LedgerIntegrityError`). The privacy spent so far is
        not undone: releases made under the old history still count against anyone they showed."""
        _Ledger.reset(Path(path))

    def _settings(self) -> dict:
        return {"cap": self.cap, "window": self.window, "window_cap": self.window_cap, "fps": self.fps}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_owner": None}  # an in-memory copy may read but never charge

    def charge(self, epsilon: float, frames: int = 1) -> None:
        """Record ``frames`` consecutive releases of ``epsilon`` each, or raise before recording any of them."""
        epsilon = check_epsilon(epsilon)
        if self._may_record(frames):
            with self._history.transaction() as history:
                self._check(history, epsilon, frames)
                history.append(epsilon, frames)

    def skip(self, frames: int = 1) -> None:
        """Record ``frames`` consecutive frames of the stream that went out with nothing released (refused by the
        window, or dropped): they cost 0 and slide the w-event window, so that later frames fit again.

        Call it only for frames of the stream that really passed: frames recorded that the stream never had would
        stretch a window of ``window`` recorded frames over more than ``window`` frames of real time."""
        if self._may_record(frames):
            with self._history.transaction() as history:
                history.append(0.0, frames)

    def _may_record(self, frames: int) -> bool:
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise TypeError(f"frames must be an int >= 0, got {frames!r}")
        if self.ledger is None and self._owner != os.getpid():
            raise RuntimeError(
                "this PrivacyAccountant is a copy (pickled into a DataLoader worker or another process, forked or "
                "deep-copied): its charges would never reach the original, so it refuses to charge. Share one "
                "budget across processes with a ledger: PrivacyAccountant(cap=..., ledger='budget.sqlite')"
            )
        return frames > 0

    def _check(self, history: _Runs | _Ledger, epsilon: float, frames: int) -> None:
        spent = history.spent
        if self.cap is not None and spent + epsilon * frames > self.cap * (1 + 1e-12):
            raise BudgetExceededError(
                f"releasing {frames} frame(s) at ε = {epsilon:g} would spend {spent + epsilon * frames:g}, "
                f"over the cap of {self.cap:g} (spent so far: {spent:g})"
            )
        if self.window is None:
            return
        most = self._largest_chunk(epsilon)
        if most == 0:
            raise BudgetExceededError(
                f"one frame at ε = {epsilon:g} passes the window cap of {self.window_cap:g}: no frame at this ε can "
                "ever be released"
            )
        if frames > most:
            raise BudgetExceededError(
                f"a chunk of {frames} frames at ε = {epsilon:g} would spend {epsilon * min(frames, self.window):g} "
                f"within {self.window} consecutive frames, over the window cap of {self.window_cap:g} even when "
                f"the frames before it cost nothing: the largest chunk that fits is {most} frame(s)",
                final=False,
            )
        # Windows that hold a new frame lie in the last w-1 old frames followed by (at most w) new ones.
        recent = history.tail(self.window - 1) + [(epsilon, min(frames, self.window))]
        worst = _worst_window(recent, self.window)
        if worst > self.window_cap * (1 + 1e-12):
            raise BudgetExceededError(
                f"releasing {frames} frame(s) at ε = {epsilon:g} would spend {worst:g} within {self.window} "
                f"consecutive frames, over the window cap of {self.window_cap:g}; frames skipped with skip() slide the "
                "window",
                final=False,
            )

    def _largest_chunk(self, epsilon: float) -> int | float:
        """The most frames at ``epsilon`` that one charge may hold when the last ``window`` frames cost nothing."""
        limit = self.window_cap * (1 + 1e-12)
        if epsilon * self.window <= limit:
            return math.inf
        most = math.floor(limit / epsilon)
        while most > 0 and epsilon * most > limit:  # the division may round up
            most -= 1
        return most

    def charge_release(self, guarantee: PrivacyGuarantee, channels: int, frames: int = 1) -> None:
        """Charge ``frames`` releases described by ``guarantee`` for images with ``channels`` channels."""
        self.charge(guarantee.total_epsilon(channels), frames)

    @property
    def frames(self) -> int:
        """Frames charged so far (by every process, with a ledger)."""
        return self._history.frames

    @property
    def skipped(self) -> int:
        """Frames recorded with nothing released (:meth:`skip`)."""
        return self._history.skipped

    @property
    def spent(self) -> float:
        """ε of everything released so far: the cover of a person visible in every frame."""
        return self._history.spent

    def epsilon_for(self, frames: int | None = None, *, seconds: float | None = None) -> float:
        """ε for a person visible in ``frames`` consecutive frames of the stream, skipped ones included (or
        ``seconds`` at ``fps``): the worst such run."""
        if (frames is None) == (seconds is None):
            raise ValueError("give exactly one of frames and seconds")
        if seconds is not None:
            if self.fps is None:
                raise ValueError("seconds need the accountant's fps")
            frames = max(1, math.ceil(check_epsilon(seconds, "seconds") * self.fps - 1e-9))
        return _worst_window(self._history.runs(), check_positive_int(frames, "frames"))

    def to_json(self) -> str:
        runs = [[eps, n] for eps, n in self._history.runs()]
        return json.dumps({"version": 1, **self._settings(), "frames": runs})

    @classmethod
    def from_json(cls, text: str) -> PrivacyAccountant:
        """A new in-memory accountant with the settings and history of :meth:`to_json` (of either kind), to resume a
        job. It is independent of the accountant that was saved: charges to one never reach the other (only a
        ledger shares a budget)."""
        state = json.loads(text)
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("not a saved PrivacyAccountant (version 1)")
        accountant = cls(state["cap"], window=state["window"], window_cap=state["window_cap"], fps=state["fps"])
        for eps, n in state["frames"]:
            skipped = type(eps) in (int, float) and eps == 0
            accountant._history.append(0.0 if skipped else check_epsilon(eps), check_positive_int(n, "frames"))
        return accountant

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> PrivacyAccountant:
        return cls.from_json(Path(path).read_text())

    def __str__(self) -> str:
        skipped = f" ({self.skipped} skipped: nothing released)" if self.skipped else ""
        text = f"{self.frames} frames released{skipped}, ε spent = {self.spent:g}"
        if self.cap is not None:
            text += f" of a cap of {self.cap:g}"
        if self.window is not None:
            text += f"; at most {self.window_cap:g} per {self.window} consecutive frames"
        if self.ledger is not None:
            text += f" (ledger {self.ledger})"
        return text


def _worst_window(runs: list[tuple[float, int]], width: int) -> float:
    """The largest ε of ``width`` consecutive frames of a history given as runs ``(ε, frames)`` (all of it when it
    is shorter). A window's sum is piecewise linear in its position, with breaks where an end crosses a run boundary,
    so the maximum is at a window that starts at a run start or ends at a run end."""
    ends = list(itertools.accumulate(n for _, n in runs))
    sums = list(itertools.accumulate((eps * n for eps, n in runs), initial=0.0))
    total = ends[-1] if ends else 0
    if width >= total:
        return sums[-1]

    def prefix(t: int) -> float:  # ε of the first t frames
        i = bisect.bisect_right(ends, t)
        inside = t - (ends[i - 1] if i else 0)
        return sums[i] + (runs[i][0] * inside if inside else 0.0)

    starts = [0, *ends[:-1]]
    candidates = [s for s in starts if s + width <= total] + [e - width for e in ends if e >= width]
    return max(prefix(s + width) - prefix(s) for s in candidates)


class _Runs:
    """An in-memory history: runs ``(ε, frames)`` of equal ε in release order (ε = 0: skipped), and their totals."""

    def __init__(self) -> None:
        self._runs: list[tuple[float, int]] = []
        self.frames, self.skipped, self.spent = 0, 0, 0.0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Runs]:
        with self._lock:  # check and append are one step for the threads of this process
            yield self

    def append(self, epsilon: float, frames: int) -> None:
        if self._runs and self._runs[-1][0] == epsilon:
            self._runs[-1] = (epsilon, self._runs[-1][1] + frames)
        else:
            self._runs.append((epsilon, frames))
        if epsilon:
            self.frames += frames
            self.spent += epsilon * frames
        else:
            self.skipped += frames

    def tail(self, frames: int) -> list[tuple[float, int]]:
        """The runs of the last ``frames`` frames (the first one cut to fit), oldest first."""
        return _cut_tail(reversed(self._runs), frames)

    def runs(self) -> list[tuple[float, int]]:
        return list(self._runs)


def _cut_tail(newest_first: Iterable[tuple[float, int]], frames: int) -> list[tuple[float, int]]:
    tail: list[tuple[float, int]] = []
    for eps, n in newest_first:
        if frames <= 0:
            break
        tail.append((eps, min(n, frames)))
        frames -= n
    return tail[::-1]


class _Ledger:
    """A durable history in SQLite (WAL): settings, runs of equal ε and totals, shared by every process.

    A charge is ``BEGIN IMMEDIATE`` (which takes the database's write lock, so concurrent charges queue), a read of the
    totals and recent runs, the checks, the update and ``COMMIT``: check and record are one atomic step for all
    processes together. With ``synchronous=FULL`` the commit is on disk when the charge returns. SQLite connections
    must never cross a fork: before this process forks, every open ledger waits for its current use by other threads,
    closes its connection and stays locked until the fork is done, so the child inherits neither a connection nor a
    held lock (each process opens its own connection). A lock file next to the ledger serialises the opening of a
    connection, when the schema may still be made.

    Integrity: the ledger holds a random identity and a count of the charges and skips committed to it, which only
    grows. This object remembers the file it opened (device, inode) and the identity and highest count it saw (a
    pickled copy carries the identity and count), and every charge and query first checks, inside its transaction,
    that the file at ``path`` is still that file, with that identity, and that the count has not gone back. The lock
    file remembers the identity and the highest count committed (raised after each commit, so after a crash it may
    lag by the last charge but never leads), and a new object refuses a ledger that does not match it. Lock order:
    the lock file, then the database; a charge takes the lock file only after its commit.
    """

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS settings (
            id INTEGER PRIMARY KEY CHECK (id = 0), cap REAL, window INTEGER, window_cap REAL, fps REAL);
        CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, epsilon REAL NOT NULL, frames INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS totals (
            id INTEGER PRIMARY KEY CHECK (id = 0), frames INTEGER NOT NULL, spent REAL NOT NULL);
        CREATE TABLE IF NOT EXISTS identity (
            id INTEGER PRIMARY KEY CHECK (id = 0), ledger TEXT NOT NULL, charges INTEGER NOT NULL);
    """

    def __init__(self, path: Path, settings: dict | None, seen: tuple[str, int] | None = None) -> None:
        self.path = Path(os.path.abspath(path))  # the same file whatever the working directory becomes
        self._connection: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file this object opened
        self._seen = seen  # (identity, highest charge count seen)
        self._committing: int | None = None  # the charge count a transaction in progress will commit
        self._lock = threading.RLock()
        with _REGISTRY:
            _OPEN_LEDGERS.add(self)
        with self.transaction() as ledger:
            ledger._write_settings(settings)

    def __getstate__(self) -> dict:
        return {"path": self.path, "seen": self._seen}  # each process opens its own connection

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], None, state["seen"])

    @staticmethod
    def reset(path: Path) -> None:
        """Empty the ledger at ``path`` and its lock file's memory (see :meth:`PrivacyAccountant.reset_ledger`)."""
        path = Path(os.path.abspath(path))
        with open(f"{path}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # no accountant opens the ledger meanwhile
            if path.exists():
                db = sqlite3.connect(path, timeout=120, isolation_level=None)
                try:
                    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    if not {"settings", "runs", "totals"} <= tables:
                        raise ValueError(f"path {str(path)!r} is not a PrivacyAccountant ledger")
                    db.execute("PRAGMA synchronous=FULL")
                    db.executescript(_Ledger.SCHEMA)
                    db.execute("BEGIN IMMEDIATE")
                    for table in ("settings", "runs", "totals", "identity"):
                        db.execute(f"DELETE FROM {table}")
                    db.execute("COMMIT")
                finally:
                    db.close()
            lock.truncate(0)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the modules it needs may be gone
            self.close()

    def close(self) -> None:
        """Close this process's connection (the next use opens a new one)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection, self._pid = None, None

    def _db(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            with open(f"{self.path}.lock", "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                db = sqlite3.connect(self.path, timeout=120, isolation_level=None, check_same_thread=False)
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(self.SCHEMA)
                    if self._file is None:
                        stat = os.stat(self.path)
                        self._file = (stat.st_dev, stat.st_ino)
                    if self._seen is None:
                        self._adopt(db, lock)
                except BaseException:
                    db.close()
                    raise
            db.execute("PRAGMA synchronous=FULL")
            # Checkpoint the write-ahead log every 64 pages and cut it back to 256 KiB: the files stay small.
            db.execute("PRAGMA wal_autocheckpoint=64")
            db.execute(f"PRAGMA journal_size_limit={256 * 1024}")
            self._connection, self._pid = db, os.getpid()
        return self._connection

    def _adopt(self, db: sqlite3.Connection, lock) -> None:
        """Take the ledger at ``path`` as it is (giving it an identity if it has none), unless the lock file remembers
        another ledger, or more charges than it holds: it was then deleted, replaced or rolled back."""
        lock.seek(0)
        memory = lock.read().split()
        if memory and (len(memory) != 2 or not memory[1].isdigit()):
            raise LedgerIntegrityError(f"{lock.name} does not hold a ledger's identity and count; {self._reset_hint()}")
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT ledger, charges FROM identity").fetchone()
            if memory:
                known, charges = memory[0], int(memory[1])
                if row is None or row[0] != known:
                    found = "holds no history" if row is None else f"is ledger {row[0]}"
                    self._refuse(
                        f"{found}, but {lock.name} remembers ledger {known} after {charges} charges: it was deleted or "
                        "replaced"
                    )
                if row[1] < charges:
                    self._refuse(f"holds {row[1]} charges, but {lock.name} remembers {charges}: an older copy")
            if row is None:
                row = (secrets.token_hex(16), 0)
                db.execute("INSERT INTO identity VALUES (0, ?, ?)", row)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._seen = tuple(row)
        if memory != [row[0], str(row[1])]:
            _write_memory(lock, *row)

    def _verify(self, db: sqlite3.Connection) -> None:
        """Refuse a ledger that is no longer the file and history this object opened, or whose count went back."""
        try:
            stat = os.stat(self.path)
            file = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            file = None
        row = db.execute("SELECT ledger, charges FROM identity").fetchone()
        if file != self._file or row is None or row[0] != self._seen[0]:
            self._refuse(f"is not the ledger {self._seen[0]} this accountant opened: it was deleted, replaced or reset")
        if row[1] < self._seen[1]:
            self._refuse(f"went back from {self._seen[1]} to {row[1]} charges: it was rolled back to an older copy")
        self._seen = tuple(row)

    def _refuse(self, what: str) -> None:
        raise LedgerIntegrityError(
            f"ledger {str(self.path)!r} {what}. Charging it would restart the budget, so nothing is charged; "
            f"{self._reset_hint()}"
        )

    def _reset_hint(self) -> str:
        return (
            "restore the ledger, or start a new budget deliberately with "
            f"PrivacyAccountant.reset_ledger({str(self.path)!r})"
        )

    def _remember(self, charges: int) -> None:
        """Raise the lock file's count to ``charges`` (after the commit, so that it never leads the ledger), when it
        remembers this ledger."""
        with open(f"{self.path}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lock.seek(0)
            memory = lock.read().split()
            if len(memory) == 2 and memory[0] == self._seen[0] and memory[1].isdigit() and int(memory[1]) < charges:
                _write_memory(lock, self._seen[0], charges)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Ledger]:
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                self._verify(db)
                yield self
            except BaseException:
                self._committing = None
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            if self._committing is not None:
                self._seen, self._committing = (self._seen[0], self._committing), None
                self._remember(self._seen[1])

    def _write_settings(self, settings: dict | None) -> None:
        db = self._db()
        stored = db.execute("SELECT cap, window, window_cap, fps FROM settings").fetchone()
        if settings is None:  # unpickled: the ledger exists and keeps its settings
            return
        if stored is None:
            db.execute("INSERT INTO settings VALUES (0, :cap, :window, :window_cap, :fps)", settings)
            db.execute("INSERT INTO totals VALUES (0, 0, 0.0)")
            stored = tuple(settings.values())
        stored = dict(zip(settings, stored))
        if stored != settings:
            raise ValueError(
                f"ledger {str(self.path)!r} was created with {stored}, not {settings}: a ledger keeps its budget; "
                "open it with the same settings, or start a new ledger"
            )

    def _query(self, sql: str) -> list[tuple]:
        with self._lock:
            db = self._db()
            self._verify(db)
            return [tuple(row) for row in db.execute(sql)]

    @property
    def frames(self) -> int:
        return self._query("SELECT frames FROM totals")[0][0]

    @property
    def skipped(self) -> int:
        return self._query("SELECT COALESCE(SUM(frames), 0) FROM runs WHERE epsilon = 0")[0][0]

    @property
    def spent(self) -> float:
        return self._query("SELECT spent FROM totals")[0][0]

    def append(self, epsilon: float, frames: int) -> None:
        db = self._db()
        last = db.execute("SELECT id, epsilon FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if last is not None and last[1] == epsilon:
            db.execute("UPDATE runs SET frames = frames + ? WHERE id = ?", (frames, last[0]))
        else:
            db.execute("INSERT INTO runs (epsilon, frames) VALUES (?, ?)", (epsilon, frames))
        if epsilon:
            db.execute("UPDATE totals SET frames = frames + ?, spent = spent + ?", (frames, epsilon * frames))
        db.execute("UPDATE identity SET charges = charges + 1")
        self._committing = self._seen[1] + 1  # _verify read the count under this transaction's write lock

    def tail(self, frames: int) -> list[tuple[float, int]]:
        return _cut_tail(self._db().execute("SELECT epsilon, frames FROM runs ORDER BY id DESC"), frames)

    def runs(self) -> list[tuple[float, int]]:
        return self._query("SELECT epsilon, frames FROM runs ORDER BY id")


def _write_memory(lock, ledger: str, charges: int) -> None:
    """Replace the content of the lock file ``lock`` (open in "a+" mode, locked) with a ledger's identity and count."""
    lock.truncate(0)
    lock.write(f"{ledger} {charges}\n")


_OPEN_LEDGERS: weakref.WeakSet[_Ledger] = weakref.WeakSet()
_REGISTRY = threading.Lock()  # guards _OPEN_LEDGERS, and is held with every ledger's lock across a fork
_HELD: list[_Ledger] = []


def _lock_ledgers_for_fork() -> None:
    _REGISTRY.acquire()
    for ledger in list(_OPEN_LEDGERS):
        ledger._lock.acquire()  # waits for another thread's charge or query to finish
        ledger._close_locked()
        _HELD.append(ledger)


def _unlock_ledgers_after_fork() -> None:
    while _HELD:
        _HELD.pop()._lock.release()
    _REGISTRY.release()


os.register_at_fork(
    before=_lock_ledgers_for_fork, after_in_parent=_unlock_ledgers_after_fork, after_in_child=_unlock_ledgers_after_fork
)
