"""Explicit privacy guarantees (SPEC §6): what one release promises, as an immutable object."""

from __future__ import annotations

from dataclasses import dataclass

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
