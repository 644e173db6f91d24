"""When to record: every k steps, log-spaced, or at given steps.

Backdoors are learned in the first steps of fine-tuning, so the default
schedule is log-spaced: dense early, sparse late. Step 0 (before the first
optimisation step) is always recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from freqlens._checks import check_positive_int

KINDS = ("every", "log", "steps")


@dataclass(frozen=True)
class Schedule:
    """A recording schedule.

    Build one with :meth:`every`, :meth:`log` or :meth:`at`, or parse a string
    with :meth:`parse` (``"every:5"``, ``"log:60"``, ``"steps:0,10,100"``).

    Attributes:
        kind: ``"every"``, ``"log"`` or ``"steps"``.
        value: the interval (every), the number of snapshots (log), or the
            explicit steps.

    Example:
        >>> Schedule.log(8).steps(total_steps=100)
        [0, 1, 2, 4, 7, 14, 27, 52, 100]
        >>> Schedule.every(25).steps(total_steps=100)
        [0, 25, 50, 75, 100]
    """

    kind: str
    value: int | tuple[int, ...] = field(default=50)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Expected schedule `kind` to be one of {KINDS} but got {self.kind!r}.")
        if self.kind == "steps":
            steps = tuple(sorted({int(s) for s in self.value}))
            if not steps or steps[0] < 0:
                raise ValueError(
                    f"Expected schedule `steps` to be a non-empty list of steps >= 0 but got {self.value!r}."
                )
            object.__setattr__(self, "value", steps)
        else:
            check_positive_int(self.value, "every" if self.kind == "every" else "num")

    @classmethod
    def every(cls, interval: int) -> Schedule:
        """Record every ``interval`` optimisation steps (the paper's code: 5)."""
        return cls("every", interval)

    @classmethod
    def log(cls, num: int = 50) -> Schedule:
        """Record about ``num`` snapshots, log-spaced over the run (needs the run length)."""
        return cls("log", num)

    @classmethod
    def log_fitting(cls, total_steps: int, snapshots: int) -> Schedule:
        """The densest log schedule that takes at most ``snapshots`` snapshots
        (step 0 included) in a run of ``total_steps``.

        Example:
            >>> Schedule.log_fitting(126, 30)
            Schedule(kind='log', value=29)
        """
        check_positive_int(total_steps, "total_steps")
        check_positive_int(snapshots, "snapshots", minimum=3)  # log:1 takes 0, 1 and the last step
        num = 1
        while num < total_steps and len(_log_steps(total_steps, num + 1)) <= snapshots:
            num += 1
        return cls.log(num)

    @classmethod
    def at(cls, steps) -> Schedule:
        """Record at the given steps."""
        return cls("steps", tuple(steps))

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Parse ``"every:5"``, ``"log:60"`` or ``"steps:0,10,100"``."""
        kind, _, value = str(text).partition(":")
        try:
            if kind == "steps":
                return cls.at(int(v) for v in value.split(","))
            return cls(kind, int(value))
        except ValueError as error:
            raise ValueError(
                f"Expected `schedule` like 'every:5', 'log:60' or 'steps:0,10,100' but got {text!r} "
                f"({error})."
            ) from error

    def __str__(self) -> str:
        if self.kind == "steps":
            return "steps:" + ",".join(map(str, self.value))
        return f"{self.kind}:{self.value}"

    def steps(self, total_steps: int | None = None) -> list[int]:
        """The steps to record, for a run of ``total_steps`` optimisation steps.

        ``"every"`` without ``total_steps`` is open-ended; call :meth:`due`.
        """
        if self.kind == "steps":
            kept = [s for s in self.value if total_steps is None or s <= total_steps]
            return sorted({0, *kept})
        if total_steps is None:
            raise ValueError(f"Expected `total_steps` for the {self.kind!r} schedule but got None.")
        total = check_positive_int(total_steps, "total_steps")
        if self.kind == "every":
            return sorted({*range(0, total + 1, self.value), total})
        return _log_steps(total, self.value)

    def due(self, step: int, total_steps: int | None = None) -> bool:
        """Whether ``step`` is to be recorded."""
        if self.kind == "every" and total_steps is None:
            return step % self.value == 0
        return step in self.steps(total_steps)


def _log_steps(total: int, num: int) -> list[int]:
    """``num`` distinct steps in 1..total, log-spaced, with 0 and ``total`` added."""
    if num >= total:
        return list(range(total + 1))
    count = num
    while True:
        steps = np.unique(np.round(np.geomspace(1, total, count)).astype(int))
        if steps.size >= num or count > 100 * num:
            return sorted({0, *steps.tolist(), total})
        count += max(1, num - steps.size)
