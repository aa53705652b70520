"""Measurement schedules: a fixed interval, and "auto" (dense early, the same count over the run)."""

import warnings

import numpy as np
import pytest
import torch

from lightning_stepwise.schedule import MeasurementSchedule, auto_measurement_steps
from lightning_stepwise.tracker import SpectrumTracker


@pytest.mark.parametrize(("total", "every"), [(3000, 50), (800, 20), (100_000, 50), (120, 50), (7, 50)])
def test_auto_spends_the_fixed_interval_budget_dense_early(total, every):
    steps = auto_measurement_steps(total, every)
    fixed = np.arange(0, total, every)
    assert len(steps) == max(len(fixed), min(3, total))
    assert steps[0] == 0 and steps[-1] <= total - 1 and np.all(np.diff(steps) > 0)
    if total >= 10 * every:
        early = steps[steps < total // 10]
        assert len(early) >= len(fixed) // 4  # about a third of the budget in the first tenth
        assert np.diff(early)[:3].tolist() == [1, 1, 1]  # every step at the very start
        assert np.diff(steps)[-1] <= 2 * every  # the rest no sparser than twice the fixed interval


def test_fixed_schedule_is_the_multiples():
    schedule = MeasurementSchedule(25)
    due = [s for s in range(100) if schedule.due(s, last_opened=-1 if s == 0 else (s - 1) // 25 * 25)]
    assert due == [0, 25, 50, 75]


def test_auto_without_a_length_ramps_up_to_the_default_interval():
    schedule = MeasurementSchedule("auto")
    opened, last = [], -1
    for step in range(2000):
        if schedule.due(step, last_opened=last):
            opened.append(step)
            last = step
    gaps = np.diff(opened)
    assert opened[:4] == [0, 1, 2, 3] and gaps.max() == 50 and np.all(np.diff(gaps) >= 0)


def test_bad_intervals_are_refused():
    for bad in (0, -5, "often", 2.5, True):
        with pytest.raises(ValueError, match="every_n_steps"):
            MeasurementSchedule(bad)


def test_tracker_follows_the_auto_schedule_and_a_window_that_spans_steps_waits():
    tracker = SpectrumTracker(["head"], every_n_steps="auto", total_steps=3000, window=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3000):
            tracker.start_batch(step)
            tracker.end_batch({"head": [torch.randn(8, 4)]})  # two steps per window
        tracker.finish(3000)
    recorded = tracker.history("head")["step"]
    planned = auto_measurement_steps(3000, 50)
    # each planned step opens a window unless the previous one is still filling (one step each, early on)
    assert set(recorded.tolist()) <= set(planned.tolist()) | {s + 1 for s in planned.tolist()}
    assert len(planned) * 0.6 <= len(recorded) <= len(planned)
    assert not [w for w in caught if "spanned" in str(w.message)]  # early windows longer than 1 step are fine
