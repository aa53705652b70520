"""Onsets on identity-tracked trajectories: each mode examined along its own eigen-direction.

Pure functions on arrays, no Lightning. [`ModeMatcher`][lightning_stepwise.mode_identity.ModeMatcher] gives every
measured direction an identity that survives eigenvalue crossings; here each identity's own eigenvalue
trajectory is examined for a rise (the rules are those of [`detect_onsets`][lightning_stepwise.onsets.detect_onsets],
which uses this route when given ``mode_ids``):

- a running median, a running-minimum floor and a rise of ``min_rise`` above it, held for ``plateau_rows``;
- the plateau is confirmed when the next rows stop exceeding it by more than twice the local noise left after
  the median (at least 2 %);
- a rise no bigger than ``sqrt(min_rise)`` times the growth of the spectrum's bulk is the whole spectrum
  growing, and the search continues after it;
- a plateau below ``min_relative_plateau`` of the largest plateau learned before, or below
  `RESOLUTION` of its row's largest value, is not a mode;
- an identity born mid-run takes its floor from the rank it appeared at; an onset before its birth is a
  direction renamed on its plateau, not a new mode.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lightning_stepwise.mode_identity import identity_series
from lightning_stepwise.onset_core import (
    RESOLUTION,
    TINY,
    bulk_level,
    check_onset_options,
    find_rise,
    onset_record,
    prepare_trajectory,
)
from lightning_stepwise.trajectory import level_crossing, running_median

__all__ = ["IdentityOnsetTracker"]


@dataclass
class _Candidate:
    identity: int
    confirmed_row: int
    record: dict[str, float]


def _identity_rise(
    s: np.ndarray, values: np.ndarray, rows: np.ndarray, columns: np.ndarray, bulk: np.ndarray, usable: int,
    options: Mapping[str, Any], *, born: bool = True,
) -> tuple[tuple[int, dict[str, float]] | None, int]:
    """One identity's first confirmed rise: ((confirmed row, record without mode/identity) or None, floor row).

    ``rows`` may start after the identity's first row (``born=False``): a scan resumed from the row of its
    lowest value so far, which finds the same rise as a scan of all its rows. The floor row returned is
    where the next scan may resume.
    """
    smoothing, plateau_rows, min_rise = options["smoothing"], options["plateau_rows"], options["min_rise"]
    half = smoothing // 2
    own = rows < usable + half  # rows the median windows may use; their centres stop at `usable`
    rows, columns = rows[own], columns[own]
    if len(rows) < 3:
        return None, int(rows[0]) if len(rows) else 0
    birth = int(rows[0])
    # where it came from: the rank it appeared at, in the rows before (a floor for a mode that left the bulk)
    before = np.arange(max(birth - 4 * smoothing, 0), birth) if born else np.zeros(0, dtype=np.int64)
    before = before[np.isfinite(values[before, columns[0]])]
    all_rows = np.concatenate([before, rows])
    x = np.concatenate([values[before, columns[0]], values[rows, columns]])
    # a median whose window runs past the identity's last row would change when more rows arrive: left out
    raw = np.maximum(x, TINY)
    m = running_median(raw, smoothing)[: len(x) - half]
    all_rows, raw = all_rows[: len(m)], raw[: len(m)]
    if not born:  # a resumed scan: its first medians are cut short by the edge
        m, all_rows, raw = m[half:], all_rows[half:], raw[half:]
    if not len(m):
        return None, birth
    # a later scan may start from the lowest value so far (less the median's reach): nothing before it matters
    lowest = len(m) - 1 - int(np.argmin(m[::-1]))
    resume = int(all_rows[lowest - smoothing]) if lowest >= smoothing else birth  # never past the lowest
    tolerance = _plateau_tolerance(raw, m, smoothing, plateau_rows)
    start = 0
    while len(m) - start >= plateau_rows + 2:
        _, floor_i, plateau_i = find_rise(m[start:], min_rise, plateau_rows, tolerance[start:])
        if plateau_i is None:
            return None, resume
        floor_i, plateau_i = floor_i + start, plateau_i + start
        plateau, floor = float(m[plateau_i]), float(m[floor_i])
        floor_row, plateau_row = int(all_rows[floor_i]), int(all_rows[plateau_i])
        bulk_rise = bulk[plateau_row] / bulk[floor_row] if bulk[floor_row] > 0 else 1.0
        if np.isfinite(bulk_rise) and plateau / floor >= math.sqrt(min_rise) * max(bulk_rise, 1.0):
            break
        start = plateau_i  # the whole spectrum grew, not this mode: look for a rise of its own after it
        resume = max(resume, int(all_rows[max(plateau_i - smoothing, 0)]))
    else:
        return None, resume
    steps = s[all_rows]
    onset = level_crossing(steps, m, 0.5 * plateau, floor_i, plateau_i)
    if before.size and onset < s[before[-1]]:
        return None, resume  # the rise happened before this identity existed: a direction renamed on its plateau
    confirmed_i = min(plateau_i + plateau_rows + half, len(all_rows) - 1)
    rise_start = level_crossing(steps, m, 0.1 * plateau, floor_i, plateau_i)
    end = level_crossing(steps, m, 0.9 * plateau, floor_i, plateau_i)
    return (int(all_rows[confirmed_i]), {
        "onset_step": onset, "rise_start_step": rise_start, "rise_end_step": end, "rise_steps": end - rise_start,
        "floor": floor, "plateau": plateau}), resume


def _plateau_tolerance(raw: np.ndarray, m: np.ndarray, smoothing: int, plateau_rows: int) -> np.ndarray:
    """Per row, how much a plateau may still wander up: twice the local noise left after the median, >= 2 %.

    The noise is the robust scatter (1.48 MAD) of ``log raw - log m`` over the rows from ``smoothing`` before
    to ``plateau_rows`` after, divided by ``sqrt(smoothing)``: all rows the confirmation waits for anyway.
    """
    residual = np.abs(np.log(raw) - np.log(m))
    padded = np.pad(residual, (smoothing, plateau_rows), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, smoothing + plateau_rows + 1)[: len(m)]
    noise = 1.4826 * np.median(windows, axis=1)
    return np.maximum(0.02, 2 * noise / math.sqrt(smoothing))


class IdentityOnsetTracker:
    """Onsets of identity-tracked modes in a trajectory that grows during training.

    Give [`update`][lightning_stepwise.identity_onsets.IdentityOnsetTracker.update] the whole trajectory so far each
    time; it returns the modes newly confirmed, with
    ``mode`` the order in which they were learned and ``identity`` the mode's identity. Only the identities
    present in the rows added since the last call are examined, each from its lowest point so far, and one is
    skipped when no new row exceeds ``min_rise`` times its lowest value (no new rise is possible): the cost
    follows the live modes, not the length of the run, and the records equal those of a scan of all rows.

    Args:
        records: the dict to keep the records in, by identity (shared with a caller that keeps them).
        **options: the detection options (see [`ONSET_OPTIONS`][lightning_stepwise.onset_core.ONSET_OPTIONS]).

    Examples:
        >>> from lightning_stepwise.mode_identity import follow_modes
        >>> from lightning_stepwise.synthetic import mode_family_run
        >>> run = mode_family_run("spread", 4, rows=120, noise=0.05, seed=0)
        >>> followed = follow_modes(run.eigenvalues, run.directions)
        >>> tracker = IdentityOnsetTracker()
        >>> first = tracker.update(run.steps[:60], followed.mode_eigenvalues[:60], followed.mode_ids[:60])
        >>> later = tracker.update(run.steps, followed.mode_eigenvalues, followed.mode_ids)  # only the new ones
        >>> len(first) + len(later) == len(tracker.records) == len(run.onset_steps)
        True
    """

    def __init__(self, records: dict[int, dict[str, float]] | None = None, **options: Any) -> None:
        self.options = check_onset_options(**options)
        self.records: dict[int, dict[str, float]] = records if records is not None else {}
        """Confirmed records by identity."""
        self.scanned_step = -math.inf  # rows up to here were examined with all they need
        self._resume_steps: dict[int, float] = {}  # where each identity's next scan starts
        self._lowest: dict[int, float] = {}  # each live identity's lowest value (and its backfill's)

    def update(self, steps: ArrayLike, eigenvalues: ArrayLike, mode_ids: ArrayLike, *,
               epochs: ArrayLike | None = None, times: ArrayLike | None = None,
               quiet: bool = True) -> list[dict[str, float]]:
        """Scan the trajectory so far; return the records of newly learned modes.

        ``eigenvalues`` (T, k) and ``mode_ids`` (T, m <= k) as the monitor records them (``mode_eigenvalues``
        and ``mode_ids``). ``quiet``: fewer than 3 rows give no records, and rows dropped for non-finite
        values give no warning (an online caller sees the same rows again and again).
        """
        if quiet and len(np.asarray(eigenvalues)) < 3:
            return []
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            prepared = prepare_trajectory(steps, eigenvalues, mode_ids=mode_ids, epochs=epochs, times=times,
                                    check_sorted=False)
        s, values, ids = prepared.steps, prepared.values, prepared.mode_ids
        if ids is None or not ids.size:
            return []
        usable = len(s) - self.options["smoothing"] // 2
        first_new = int(np.searchsorted(s, self.scanned_step, side="right"))
        since = max(first_new - self.options["smoothing"], 0)
        smoothing = self.options["smoothing"]
        present = set(np.unique(ids[since:usable]).tolist()) - {-1} - set(self.records)
        # An identity seen before cannot show a new rise unless a new row exceeds min_rise times its lowest
        # value (a median is never above the largest value in its window, nor its floor below the lowest):
        # those identities keep their state and are not scanned (the bulk, a decaying top mode).
        recent_rows, recent_columns = np.nonzero(ids[since:] >= 0)
        recent_ids = ids[since:][recent_rows, recent_columns]
        recent_values = values[since:][recent_rows, recent_columns]
        lowest, scan = {}, set()
        for identity in present:
            mine = recent_values[recent_ids == identity]
            low = min(self._lowest.get(identity, math.inf), float(mine.min(initial=math.inf)))
            lowest[identity] = low
            if identity not in self._resume_steps or float(mine.max(initial=-math.inf)) >= \
                    self.options["min_rise"] * low:
                scan.add(identity)
        self._lowest = lowest
        # only the rows the scans need: from each identity's resume row (its first row, for a new one)
        starts = {}
        for identity in scan:
            if identity in self._resume_steps:
                starts[identity] = int(np.searchsorted(s, self._resume_steps[identity]))
            else:
                first_row = int(np.argmax((ids == identity).any(axis=1)))
                starts[identity] = first_row
                own = values[first_row:][np.nonzero(ids[first_row:] == identity)]
                birth_column = int(np.argmax(ids[first_row] == identity))
                before = values[max(first_row - 4 * smoothing, 0):first_row, birth_column]  # its backfill
                self._lowest[identity] = min(lowest[identity], float(own.min(initial=math.inf)),
                                             float(np.nanmin(before, initial=math.inf)))
        lo = min(starts.values(), default=len(s))
        series = {i: (r + lo, c) for i, (r, c) in identity_series(ids[lo:]).items()}
        bulk = np.full(len(s), np.nan)
        margin = max(lo - 5 * smoothing, 0)  # the backfill before a birth, and the median's reach
        bulk[margin:] = running_median(bulk_level(values[margin:]), smoothing)
        candidates = []
        resume_steps = {i: step for i, step in self._resume_steps.items() if i in present and i not in scan}
        for identity in sorted(scan):
            rows, columns = series[identity]
            first = starts[identity] if identity in self._resume_steps else 0
            born = first <= rows[0]
            if not born:
                keep = rows >= first
                rows, columns = rows[keep], columns[keep]
            found, resume = _identity_rise(s, values, rows, columns, bulk, usable, self.options, born=born)
            resume_steps[identity] = float(s[min(resume, len(s) - 1)])
            if found is not None:
                candidates.append(_Candidate(identity, found[0], found[1]))
        self._resume_steps = resume_steps  # identities not present any more are not scanned again
        candidates.sort(key=lambda c: (c.confirmed_row, c.record["onset_step"], c.identity))
        new = []
        row_max = np.nanmax(np.where(np.isfinite(values), values, np.nan), axis=1, initial=0.0)
        for c in candidates:
            largest = max((r["plateau"] for r in self.records.values()), default=0.0)
            if c.record["plateau"] < self.options["min_relative_plateau"] * largest:
                continue
            if c.record["plateau"] < RESOLUTION * row_max[c.confirmed_row]:
                continue
            record = onset_record(len(self.records), c.record, prepared, float(s[c.confirmed_row]), c.identity)
            self.records[c.identity] = record
            new.append(record)
        if usable > 0:
            self.scanned_step = float(s[usable - 1])
        return new
