"""Explicit privacy guarantees (SPEC §6): what one release promises, as an immutable object."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ._validation import check_cells, check_choice, check_epsilon, check_positive_int

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
        if self.secure and self.noise != "discrete":
            raise ValueError(
                'secure=True requires noise="discrete": continuous floating-point Laplace is open to Mironov\'s attack'
            )

    def total_epsilon(self, channels: int) -> float:
        """ε for a whole image with ``channels`` channels: the cells' ε (× C under ``per_channel``) plus the
        partition's (sequential composition)."""
        cells = self.epsilon * channels if self.channel_rule == "per_channel" else self.epsilon
        return cells + self.partition_epsilon

    def noise_scale(self, channels: int, value_range: float) -> float:
        """Laplace scale on every cell sum: sensitivity ``C·R·m`` over ε (``C`` is 1 under ``per_channel``)."""
        c = 1 if self.channel_rule == "per_channel" else channels
        return c * value_range * self.m / self.epsilon

    def __str__(self) -> str:
        if self.channel_rule == "per_channel":
            budget = f"ε = {self.epsilon:g} per channel (C·{self.epsilon:g} per image: {3 * self.epsilon:g} for RGB)"
        else:
            budget = f"ε = {self.epsilon:g} per image (all channels jointly)"
        if self.b is not None:
            cells = f"b = {self.b}"
        elif self.grid is not None:
            cells = f"grid = {self.grid[0]}×{self.grid[1]} cells"
        else:
            cells = "region-adaptive cells b ∈ {" + ", ".join(map(str, self.levels)) + "}"
        partition = _PARTITION_TEXT[self.partition]
        if self.partition == "complexity":
            partition += (
                f" with partition ε = {self.partition_epsilon:g}; "
                f"total ε = {self.epsilon:g} + {self.partition_epsilon:g} = {self.total_epsilon(1):g}"
            )
            if self.channel_rule == "per_channel":
                partition += " per channel of the cells"
        noise = {"discrete": "discrete Laplace on integer sums", "laplace": "continuous Laplace (float64)"}[self.noise]
        seed = ", fresh OS-entropy seed per call" if self.secure else ""
        return (
            f"{budget}, δ = 0; neighbours differ in up to m = {self.m} pixel{'s' if self.m != 1 else ''}; "
            f"{cells}, border = {self.border}; noise: {noise}{seed}{partition}"
        )


class BudgetExceededError(RuntimeError):
    """A release would exceed the accountant's cap; it was refused before any noise was drawn."""


class PrivacyAccountant:
    """Sequential composition over a stream of releases (video frames), with an optional cap (SPEC §6).

    Every released frame is charged its total ε (:meth:`PrivacyGuarantee.total_epsilon`), and all frames are taken to
    show the same people: a person visible in T frames is covered at the sum of those T frames' ε.

    Args:
        cap: the most ε the whole stream may spend; the release that would pass it raises :class:`BudgetExceededError`.
        window: w-event mode: at most ``window_cap`` over any ``window`` consecutive frames.
        window_cap: the budget of every window of ``window`` frames.
        fps: frame rate, to give windows and queries in seconds.

    Attach it to a layer (``accountant=``) to have every call charged before noise is drawn; each leading index of the
    input (``[..., C, H, W]``) is one frame. The state saves to JSON so a long job can resume.
    """

    def __init__(
        self,
        cap: float | None = None,
        *,
        window: int | None = None,
        window_seconds: float | None = None,
        window_cap: float | None = None,
        fps: float | None = None,
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
        self._frames: list[float] = []  # ε of every released frame, in order

    def charge(self, epsilon: float, frames: int = 1) -> None:
        """Record ``frames`` consecutive releases of ``epsilon`` each, or raise before recording any of them."""
        epsilon = check_epsilon(epsilon)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise TypeError(f"frames must be an int >= 0, got {frames!r}")
        if self.cap is not None and self.spent + epsilon * frames > self.cap * (1 + 1e-12):
            raise BudgetExceededError(
                f"releasing {frames} frame(s) at ε = {epsilon:g} would spend {self.spent + epsilon * frames:g}, "
                f"over the cap of {self.cap:g} (spent so far: {self.spent:g})"
            )
        if self.window is not None and frames:
            # Windows that hold a new frame lie in the last w-1 old frames followed by (at most w) new ones.
            old = self._frames[-(self.window - 1) :] if self.window > 1 else []
            prefix = list(itertools.accumulate(old + [epsilon] * min(frames, self.window), initial=0.0))
            worst = max(prefix[end] - prefix[max(0, end - self.window)] for end in range(len(old) + 1, len(prefix)))
            if worst > self.window_cap * (1 + 1e-12):
                raise BudgetExceededError(
                    f"releasing {frames} frame(s) at ε = {epsilon:g} would spend {worst:g} within {self.window} "
                    f"consecutive frames, over the window cap of {self.window_cap:g}"
                )
        self._frames.extend([epsilon] * frames)

    def charge_release(self, guarantee: PrivacyGuarantee, channels: int, frames: int = 1) -> None:
        """Charge ``frames`` releases described by ``guarantee`` for images with ``channels`` channels."""
        self.charge(guarantee.total_epsilon(channels), frames)

    @property
    def frames(self) -> int:
        return len(self._frames)

    @property
    def spent(self) -> float:
        """ε of everything released so far: the cover of a person visible in every frame."""
        return float(sum(self._frames))

    def epsilon_for(self, frames: int | None = None, *, seconds: float | None = None) -> float:
        """ε for a person visible in ``frames`` consecutive frames (or ``seconds`` at ``fps``): the worst such run."""
        if (frames is None) == (seconds is None):
            raise ValueError("give exactly one of frames and seconds")
        if seconds is not None:
            if self.fps is None:
                raise ValueError("seconds need the accountant's fps")
            frames = max(1, math.ceil(check_epsilon(seconds, "seconds") * self.fps - 1e-9))
        frames = check_positive_int(frames, "frames")
        if frames >= len(self._frames):
            return self.spent
        run = sum(self._frames[:frames])
        worst = run
        for i in range(frames, len(self._frames)):
            run += self._frames[i] - self._frames[i - frames]
            worst = max(worst, run)
        return float(worst)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "cap": self.cap,
                "window": self.window,
                "window_cap": self.window_cap,
                "fps": self.fps,
                "frames": [[eps, n] for eps, n in _runs(self._frames)],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PrivacyAccountant:
        state = json.loads(text)
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("not a saved PrivacyAccountant (version 1)")
        accountant = cls(state["cap"], window=state["window"], window_cap=state["window_cap"], fps=state["fps"])
        for eps, n in state["frames"]:
            accountant._frames.extend([check_epsilon(eps)] * check_positive_int(n, "frames"))
        return accountant

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> PrivacyAccountant:
        return cls.from_json(Path(path).read_text())

    def __str__(self) -> str:
        text = f"{self.frames} frames released, ε spent = {self.spent:g}"
        if self.cap is not None:
            text += f" of a cap of {self.cap:g}"
        if self.window is not None:
            text += f"; at most {self.window_cap:g} per {self.window} consecutive frames"
        return text


def _runs(values: list[float]) -> list[tuple[float, int]]:
    runs: list[tuple[float, int]] = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1] = (v, runs[-1][1] + 1)
        else:
            runs.append((v, 1))
    return runs
