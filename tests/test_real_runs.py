"""Onset detection on real recorded runs with identities, against rise windows found without the detector.

``tests/data/digits_<method>_paper.npz`` are the histories StepwiseMonitor recorded for the method
examples' ``--paper`` setting (Barlow Twins 4,000 steps, SimCLR and VICReg 2,000; the tiny backbone on 2
CPU cores, embedded digits, a measurement every 10 steps). The reference rise of each identity comes from its raw
trajectory alone (see :func:`reference_rises`): where its log grows fastest, and where it first reaches
90 % of its highest value. The onset (half the plateau, in linear scale) lies between the two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lightning_stepwise.mode_identity import identity_series
from lightning_stepwise.onsets import detect_onsets

DATA = Path(__file__).parent / "data"
METHODS = ("barlow_twins", "simclr", "vicreg")


def reference_rises(arrays: dict[str, np.ndarray], min_factor: float = 10.0, min_rows: int = 10,
                    settle_rows: int = 12) -> dict[int, tuple[float, float]]:
    """Per identity with a clear rise: (step of its steepest log-slope, step it first reaches 90 % of its top).

    A clear rise: at least ``min_rows`` rows, a top at least ``min_factor`` times the lowest value before it
    (a 3-row median first) and above 1e-3 of the run's largest value, reached ``settle_rows`` rows before the
    end (a plateau must be seen to be known). No detector is involved.
    """
    steps, ids, values = arrays["step"].astype(float), arrays["mode_ids"], arrays["mode_eigenvalues"]
    largest = np.nanmax(values)
    rises = {}
    for identity, (rows, columns) in identity_series(ids).items():
        if len(rows) < min_rows:
            continue
        raw, s = values[rows, columns], steps[rows]
        smooth = np.median(np.lib.stride_tricks.sliding_window_view(np.pad(raw, 1, mode="edge"), 3), axis=1)
        top = int(np.argmax(smooth))
        if top < 2 or smooth[top] < min_factor * smooth[: top + 1].min() or smooth[top] < 1e-3 * largest:
            continue
        slope = np.diff(np.log(smooth[: top + 1])) / np.diff(s[: top + 1])
        steepest = int(np.argmax(slope))
        reached = int(np.flatnonzero(smooth >= 0.9 * smooth[top])[0])
        if rows[reached] >= len(steps) - settle_rows:
            continue
        rises[int(identity)] = (float(s[steepest]), float(s[reached]))
    return rises


@pytest.fixture(scope="module", params=METHODS)
def run(request) -> tuple[str, dict[str, np.ndarray]]:
    with np.load(DATA / f"digits_{request.param}_paper.npz") as data:
        return request.param, {k: data[k] for k in data.files}


def test_every_clear_rise_has_its_onset_inside_its_reference_window(run):
    name, arrays = run
    interval = float(np.median(np.diff(arrays["step"])))
    onsets = {int(r["identity"]): r for r in detect_onsets(arrays["step"], arrays["mode_eigenvalues"],
                                                           mode_ids=arrays["mode_ids"])}
    rises = reference_rises(arrays)
    assert rises, f"{name}: the recording should hold clear rises"
    found = [i for i in rises if i in onsets]
    assert len(found) >= 0.9 * len(rises), f"{name}: {sorted(set(rises) - set(onsets))} not detected"
    for identity in found:
        start, end = rises[identity]
        onset = onsets[identity]["onset_step"]
        assert start - interval <= onset <= end + interval, (name, identity, start, onset, end)


def test_detections_are_rises_and_learned_in_order(run):
    name, arrays = run
    onsets = detect_onsets(arrays["step"], arrays["mode_eigenvalues"], mode_ids=arrays["mode_ids"])
    assert onsets
    for r in onsets:
        assert r["plateau"] >= 10 * r["floor"]
        assert r["rise_start_step"] <= r["onset_step"] <= r["rise_end_step"] <= r["confirmed_step"]
    # learned one after another: onsets in the order of learning, up to the confirmation delay
    onset_steps = np.array([r["onset_step"] for r in onsets])
    delay = 12 * float(np.median(np.diff(arrays["step"])))
    assert np.all(np.diff(onset_steps) >= -delay)


def test_identity_route_finds_at_least_what_the_sorted_route_finds(run):
    name, arrays = run
    by_identity = detect_onsets(arrays["step"], arrays["mode_eigenvalues"], mode_ids=arrays["mode_ids"])
    by_rank = detect_onsets(arrays["step"], arrays["eigenvalues"])
    assert len(by_identity) >= len(by_rank) - 1, name
