"""When measurement windows open: every ``n`` steps, or dense early and sparse later at the same count.

Pure functions, no Lightning. The first modes of a run often rise within its first hundred steps, faster
than a fixed 50-step interval resolves; the late, slow modes need far fewer measurements. ``"auto"`` spends
the measurements a fixed interval would spend over the run (``total_steps / every_n_steps``) as a third
log-spaced over the first tenth of the run and two thirds evenly over the rest.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["AUTO_EARLY_FRACTION", "AUTO_EARLY_SHARE", "MeasurementSchedule", "auto_measurement_steps"]

AUTO_EARLY_FRACTION = 0.1
"""``"auto"``: the part of the run measured densely (its first tenth)."""
AUTO_EARLY_SHARE = 1 / 3
"""``"auto"``: the share of the measurements spent in the dense part (a third)."""


def auto_measurement_steps(total_steps: int, every_n_steps: int = 50) -> np.ndarray:
    """The steps at which ``"auto"`` opens a window in a run of ``total_steps`` steps (sorted, from 0).

    As many as every ``every_n_steps`` steps would give (at least 3): a third log-spaced over the first
    tenth of the run (step 0, 1, 2, ... growing geometrically), the rest evenly spaced over the remainder.

    Examples:
        >>> steps = auto_measurement_steps(3000, 50)
        >>> len(steps), steps[:8].tolist(), int(np.diff(steps)[-1])
        (60, [0, 1, 2, 3, 4, 5, 6, 8], 67)
    """
    if total_steps < 1 or every_n_steps < 1:
        raise ValueError(f"total_steps and every_n_steps must be >= 1, got {total_steps} and {every_n_steps}")
    budget = max((total_steps - 1) // every_n_steps + 1, 3)
    if budget >= total_steps:
        return np.arange(total_steps)
    early_end = max(int(AUTO_EARLY_FRACTION * total_steps), 1)
    early_count = max(int(round(AUTO_EARLY_SHARE * budget)), 1)
    # log-spaced from 1 to early_end, then made distinct (the first ones are every step)
    early = [0]
    for k in range(1, early_count):
        proposed = int(round(early_end ** (k / max(early_count - 1, 1))))
        early.append(max(proposed, early[-1] + 1))
    early = [s for s in early if s < early_end] or [0]
    late_count = budget - len(early)
    late = np.linspace(early_end, total_steps - 1, late_count).round().astype(np.int64) if late_count > 0 else []
    return np.unique(np.concatenate([np.asarray(early, dtype=np.int64), late]))


class MeasurementSchedule:
    """Whether a window is due at a step: every ``n`` steps, or the steps of `auto_measurement_steps`.

    Args:
        every_n_steps: an interval, or ``"auto"``.
        total_steps: the run's length, for ``"auto"`` (without it, ``"auto"`` ramps its interval up from 1
            to ``default_every`` over the first ``8 * default_every`` steps and keeps it there).
        default_every: the interval whose count ``"auto"`` matches.

    Examples:
        >>> MeasurementSchedule(50).due(100, last_opened=50), MeasurementSchedule(50).due(120, last_opened=100)
        (True, False)
        >>> schedule = MeasurementSchedule("auto", total_steps=3000)
        >>> [s for s in range(10) if schedule.due(s, last_opened=s - 1)]
        [0, 1, 2, 3, 4, 5, 6, 8]
    """

    def __init__(self, every_n_steps: int | str = 50, *, total_steps: int | None = None,
                 default_every: int = 50) -> None:
        if every_n_steps != "auto" and (not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool)
                                        or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be an integer >= 1 or 'auto', got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.default_every = default_every
        self.total_steps = total_steps if total_steps is not None and math.isfinite(total_steps) \
            and total_steps > 0 else None
        self.steps = auto_measurement_steps(int(self.total_steps), default_every) \
            if every_n_steps == "auto" and self.total_steps is not None else None

    @property
    def is_auto(self) -> bool:
        """Whether the interval changes over the run."""
        return self.every_n_steps == "auto"

    def interval(self, step: int) -> int:
        """The steps between the window opened at ``step`` and the next one (the nominal spacing there)."""
        if not self.is_auto:
            return int(self.every_n_steps)
        if self.steps is not None:
            i = int(np.searchsorted(self.steps, step, side="right"))
            if i < len(self.steps):
                return int(self.steps[i] - self.steps[i - 1]) if i > 0 else int(self.steps[0])
            return int(np.diff(self.steps)[-1]) if len(self.steps) > 1 else self.default_every
        return int(min(max(math.ceil(step / 8), 1), self.default_every))

    def due(self, step: int, *, last_opened: int) -> bool:
        """Whether a window should open at ``step`` (none being open), the last one having opened at ``last_opened``."""
        if step == last_opened:
            return False
        if not self.is_auto:
            return step % int(self.every_n_steps) == 0
        if last_opened < 0:
            return True
        if self.steps is not None:  # the next scheduled step after the last opening has come
            i = int(np.searchsorted(self.steps, last_opened, side="right"))
            if i < len(self.steps):
                return step >= self.steps[i]
        return step >= last_opened + self.interval(last_opened)

    def describe(self) -> str:
        """How the schedule reads in messages."""
        if not self.is_auto:
            return f"every {self.every_n_steps} steps"
        if self.steps is not None:
            return (f"at {len(self.steps)} points over {self.total_steps} steps, dense early "
                    f"(every_n_steps='auto')")
        return f"every 1 to {self.default_every} steps, ramping up (every_n_steps='auto')"
