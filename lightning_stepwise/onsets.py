"""Step onsets: when each mode of an eigenvalue trajectory was learned.

Pure functions on arrays, no Lightning. The definitions follow the linear theory (see the theory page):
a mode's *onset* is when its eigenvalue reaches half its plateau **in linear scale** (λ = ½ for a
plateau of 1); its rise starts at 10 % and ends at 90 % of the plateau. A log-scale midpoint would
land in the long exponential creep that precedes the turn into the plateau, far too early.

How a mode is found, per column of the (sorted) eigenvalue rows, in rank order:

1. smooth with a running median over ``smoothing`` rows (a median keeps a monotone rise intact and
   drops isolated outliers);
2. the *floor* is the running minimum; the column has *risen* once the smoothed value stays at least
   ``min_rise`` times the floor for ``plateau_rows`` rows. A top eigenvalue that starts enormous
   (partial collapse at initialisation) and falls never rises above its own running minimum;
3. the rise *levels off* at the first row that none of the next ``plateau_rows`` rows exceeds by more
   than 2 %: its value is the plateau;
4. it is not a learned mode when the plateau is below ``min_relative_plateau`` of the largest
   eigenvalue then (the whole spectrum often grows together early on), or no higher than
   ``sqrt(min_rise)`` times the floor of the column above (a rank shift, see
   [`detect_onsets`][lightning_stepwise.onsets.detect_onsets]);
5. onset, rise start and rise end are the crossings of ½, 0.1 and 0.9 of the plateau between the floor
   and the plateau row, placed where a step function fits the smoothed values best and interpolated
   linearly between the two rows around it.

Rows whose median window reaches past the last row are left out, so results are causal: an onset found
during training is the onset in the final table, whatever happens later (a slow decay, a later mode
overtaking it in the sorted order).

Rows as [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor] records them are sorted per row, so column ``j``
is the ``j``-th largest eigenvalue and ``mode = j`` is the ``j+1``-th mode learned: a mode that rises
enters at its rank and pushes the others down.

That is the *sorted route*, for spectra recorded without directions. When the monitor also records each
mode's identity (``mode_ids``; see [`lightning_stepwise.mode_identity`][lightning_stepwise.mode_identity]),
[`detect_onsets`][lightning_stepwise.onsets.detect_onsets] and
[`OnsetTracker`][lightning_stepwise.onsets.OnsetTracker] take the *identity route* instead: each identity's own
trajectory, examined by
[`IdentityOnsetTracker`][lightning_stepwise.identity_onsets.IdentityOnsetTracker], so crossing eigenvalues cannot
mislead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lightning_stepwise.identity_onsets import IdentityOnsetTracker
from lightning_stepwise.onset_core import (
    ONSET_OPTIONS,
    RESOLUTION,
    TINY,
    PreparedTrajectory,
    bulk_level,
    check_onset_options,
    find_rise,
    onset_record,
    prepare_trajectory,
)
from lightning_stepwise.trajectory import level_crossing, running_median, steps_array

__all__ = ["OnsetTracker", "detect_onsets"]


def detect_onsets(
    steps: ArrayLike,
    eigenvalues: ArrayLike,
    *,
    mode_ids: ArrayLike | None = None,
    epochs: ArrayLike | None = None,
    times: ArrayLike | None = None,
    min_rise: float = ONSET_OPTIONS["min_rise"][0],
    min_relative_plateau: float = ONSET_OPTIONS["min_relative_plateau"][0],
    smoothing: int = ONSET_OPTIONS["smoothing"][0],  # type: ignore[assignment]
    plateau_rows: int = ONSET_OPTIONS["plateau_rows"][0],  # type: ignore[assignment]
    per_mode: bool = False,
) -> list[dict[str, float]]:
    """Detect the step onset of every learned mode in an eigenvalue trajectory.

    Args:
        steps: (T,) optimizer step of each row, strictly increasing (any spacing).
        eigenvalues: (T, k) eigenvalues, descending in every row (as the monitor records them), or
            (T,) for a single mode. Columns that are entirely NaN (padding) are ignored; rows with
            other NaN or infinite values are left out with an
            [`OnsetInputWarning`][lightning_stepwise.trajectory.OnsetInputWarning].
        mode_ids: (T, m) identity of each of the first ``m <= k`` columns (``-1``: none), as
            [`ModeMatcher`][lightning_stepwise.mode_identity.ModeMatcher] gives them and the monitor records them
            (``mode_ids`` with ``mode_eigenvalues`` in its history). Each identity's trajectory is then
            examined on its own (the identity route, below); without them the columns are sorted ranks.
        epochs: (T,) epoch of each row; adds ``onset_epoch`` (the epoch in progress at the onset).
        times: (T,) effective time (learning rate × steps) of each row; adds ``onset_time``.
        min_rise: factor by which a mode must rise above its floor to count as learned.
        min_relative_plateau: smallest plateau, as a fraction of the largest eigenvalue in the plateau
            row, of a learned mode. Early in training the whole spectrum often grows together (the
            embedding's scale adapts); the small eigenvalues then rise tenfold without being learned.
        smoothing: rows of the running median applied first (odd; 1 turns it off).
        plateau_rows: rows after the plateau that must not exceed it before the rise counts as finished
            (the confirmation delay; also the rows the rise must stay above ``min_rise`` × floor).
        per_mode: the columns are each one mode's own trajectory (e.g. a theory's prediction), not
            sorted spectra; they are then analysed independently and rows need not be sorted.

    In sorted rows a column also rises when a mode below it is learned: as that mode climbs through
    the floors, each one it passes moves down a rank, so the column takes a larger floor value. These
    shifts are over once the column above has begun to leave its own floor, so the floor of column
    ``j`` is looked for only from there, and a plateau no higher than ``sqrt(min_rise)`` times the
    floor of the last learned column above is a shift, not a mode.

    With ``mode_ids`` (the identity route) no rank shift can occur: each identity's own trajectory must rise
    ``min_rise`` above its floor and ``sqrt(min_rise)`` times more than the *bulk* of the spectrum (the 10th
    percentile of each row: when the whole spectrum grows together, as the embedding's scale adapts early
    in training, nothing is learned), and its plateau must be at least ``min_relative_plateau`` of the
    largest plateau learned before it. A mode whose identity begins in the middle of the run takes its
    floor from the rank it appeared at in the rows before, and its onset must lie within its own rows
    (a direction renamed on its plateau is not a new mode).

    Returns:
        One record (a dict with the keys of [`ONSET_COLUMNS`][lightning_stepwise.onset_core.ONSET_COLUMNS]) per learned
        mode, by increasing
        ``mode``: on sorted rows the column index (the rank in the sorted spectrum); on the identity route
        the order in which the modes were learned (confirmed), with ``identity`` the mode's identity (NaN
        on sorted rows). Steps are interpolated between rows, so they need not be whole numbers.
        ``confirmed_step`` is the last row the detection needed: an online detector knows the onset from
        then on. ``loss_drop_*`` are NaN until
        [`match_loss_drops`][lightning_stepwise.loss_steps.match_loss_drops] fills them, ``predicted_onset_step`` and
        ``relative_error`` until
        [`annotate`][lightning_stepwise.theory.TheoryPrediction.annotate] does.

    Raises:
        ValueError: fewer than 3 usable rows, steps not increasing, shapes that do not match, rows
            not sorted (unless ``per_mode``), or options out of range.

    Examples:
        >>> steps = np.arange(0, 400, 10)
        >>> rise = lambda c: 1e-3 + 1 / (1 + np.exp(-(steps - c) / 8))      # logistic, half-way at c
        >>> eigs = np.sort(np.stack([rise(100), rise(250), np.full(40, 1e-3)], 1), axis=1)[:, ::-1]
        >>> [(r["mode"], round(r["onset_step"])) for r in detect_onsets(steps, eigs)]
        [(0, 100), (1, 250)]
    """
    options = check_onset_options(min_rise=min_rise, min_relative_plateau=min_relative_plateau, smoothing=smoothing,
                                  plateau_rows=plateau_rows)
    if mode_ids is not None:
        return IdentityOnsetTracker(**options).update(steps, eigenvalues, mode_ids, epochs=epochs, times=times,
                                                      quiet=False)
    prepared = prepare_trajectory(steps, eigenvalues, epochs=epochs, times=times, check_sorted=not per_mode)
    if prepared.values.shape[1] == 0:
        return []
    records, _ = _scan(prepared, prepared.values.max(axis=1), per_mode=per_mode, **options)
    return records



def _scan(
    prepared: PreparedTrajectory,
    row_max: np.ndarray,
    *,
    per_mode: bool,
    min_rise: float,
    min_relative_plateau: float,
    smoothing: int,
    plateau_rows: int,
    first_row: int = 0,
    previous_floor: float = 0.0,
) -> tuple[list[dict[str, float]], list[tuple[int, float]]]:
    """The detection proper, from ``first_row`` on.

    Also returns, per column scanned, the state the next column starts from: (row, floor of the last
    learned column).
    """
    s, values, columns = prepared.steps, prepared.values, prepared.columns
    # Rows whose median window runs past the end would change when more rows arrive: leave them out,
    # so that an onset found on a prefix of a trajectory is the onset found on all of it.
    usable = len(s) - smoothing // 2
    smoothed = running_median(np.maximum(values, TINY), smoothing)[:usable]
    bulk = running_median(bulk_level(values), smoothing)[:usable]
    last_row = len(s) - 1
    records: list[dict[str, float]] = []
    exits: list[tuple[int, float]] = []
    # In sorted rows a column also rises when a mode below it is learned: as that mode climbs through the
    # floors, each one it passes shifts down a rank, so the column takes a larger floor. The shifts of
    # column j are over once column j - 1 has clearly left its own floor, so (unless per_mode) the floor
    # of column j is looked for only from there.
    search_from = first_row
    for j in range(values.shape[1]):
        if search_from >= usable:
            break
        left_at, floor_row, plateau_row = find_rise(smoothed[search_from:, j], min_rise, plateau_rows)
        next_search_from = search_from + left_at if left_at is not None and not per_mode else search_from
        if plateau_row is None:
            search_from = next_search_from
            exits.append((search_from, previous_floor))
            continue
        floor_row, plateau_row = search_from + floor_row, search_from + plateau_row
        search_from = next_search_from
        m = smoothed[:, j]
        plateau = float(m[plateau_row])
        # no higher than the floor the column above left (a shift, not a learned mode), tiny beside the modes
        # learned before, or no more than the whole spectrum grew (the embedding's scale adapting)
        largest = max((r["plateau"] for r in records), default=plateau)
        bulk_rise = bulk[plateau_row] / bulk[floor_row] if bulk[floor_row] > 0 else 1.0
        grew_alone = per_mode or values.shape[1] < 8 or not np.isfinite(bulk_rise) or \
            plateau / float(m[floor_row]) >= math.sqrt(min_rise) * max(bulk_rise, 1.0)
        if plateau < math.sqrt(min_rise) * previous_floor or plateau < min_relative_plateau * largest \
                or plateau < RESOLUTION * row_max[plateau_row] or not grew_alone:
            exits.append((search_from, previous_floor))
            continue
        if not per_mode:
            previous_floor = float(m[floor_row])
        exits.append((search_from, previous_floor))
        rise = {"onset_step": level_crossing(s, m, 0.5 * plateau, floor_row, plateau_row),
                "rise_start_step": level_crossing(s, m, 0.1 * plateau, floor_row, plateau_row),
                "rise_end_step": level_crossing(s, m, 0.9 * plateau, floor_row, plateau_row),
                "floor": float(m[floor_row]), "plateau": plateau}
        confirmed_row = min(plateau_row + plateau_rows + smoothing // 2, last_row)
        records.append(onset_record(int(columns[j]), rise, prepared, float(s[confirmed_row])))
    return records, exits


class OnsetTracker:
    """`detect_onsets` for a trajectory that grows during training, at a cost that does not grow.

    Give [`update`][lightning_stepwise.onsets.OnsetTracker.update] the whole trajectory so far each time; it returns
    the modes newly confirmed.
    It scans only the columns from the first one not yet settled (learned, or passed over by
    ``settle_after`` learned modes above it) up to ``lookahead`` columns beyond the last learned mode,
    and only the rows from where that column's search starts. Detection is causal, so the records
    are those [`detect_onsets`][lightning_stepwise.onsets.detect_onsets] finds on the same rows, and a record never
    changes once made.

    Examples:
        >>> steps = np.arange(0, 400, 10)
        >>> rise = lambda c: 1e-3 + 1 / (1 + np.exp(-(steps - c) / 8))
        >>> eigs = np.sort(np.stack([rise(100), rise(250), np.full(40, 1e-3)], 1), axis=1)[:, ::-1]
        >>> tracker = OnsetTracker()
        >>> [r["mode"] for r in tracker.update(steps[:30], eigs[:30])]  # up to step 290
        [0]
        >>> [r["mode"] for r in tracker.update(steps, eigs)]  # up to step 390: only the new one
        [1]
    """

    def __init__(self, lookahead: int = 32, settle_after: int = 8, **options: Any) -> None:
        if lookahead < 1 or settle_after < 1:
            raise ValueError(f"lookahead and settle_after must be >= 1, got {lookahead} and {settle_after}")
        self.lookahead = lookahead
        self.settle_after = settle_after
        self.options = check_onset_options(**options)
        self.records: dict[int, dict[str, float]] = {}
        """Confirmed records by mode."""
        self._first = 0  # first column not settled
        self._resume_step = -math.inf  # where its search starts
        self._previous_floor = 0.0
        self._identities = IdentityOnsetTracker(self.records, **self.options)  # the identity route, same records

    def update(self, steps: ArrayLike, eigenvalues: ArrayLike, *, mode_ids: ArrayLike | None = None,
               epochs: ArrayLike | None = None, times: ArrayLike | None = None) -> list[dict[str, float]]:
        """Scan the trajectory so far; return the records of newly learned modes.

        Sorted rows, or with ``mode_ids`` the identity route (see
        [`detect_onsets`][lightning_stepwise.onsets.detect_onsets]): then only the
        identities present in the rows added since the last call are examined (the others cannot change),
        so the cost follows the live modes, not the length of the run.
        """
        if mode_ids is not None:
            return self._identities.update(steps, eigenvalues, mode_ids, epochs=epochs, times=times)
        values = np.asarray(eigenvalues, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        s = steps_array(steps, len(values), "eigenvalues")
        start = int(np.searchsorted(s, self._resume_step))
        lo = max(start - self.options["smoothing"] // 2, 0)  # rows the first medians need
        last = max(self.records, default=self._first - 1) + 1 + self.lookahead
        if len(s) - lo < 3 or self._first >= values.shape[1]:
            return []
        # only the rows and columns scanned are checked and converted: the cost stays flat as the run grows
        prepared = prepare_trajectory(
            s[lo:], values[lo:, self._first : last],
            epochs=None if epochs is None else np.asarray(epochs)[lo:],
            times=None if times is None else np.asarray(times)[lo:], check_sorted=False)
        kept_rows = np.isin(np.asarray(steps, dtype=np.float64)[lo:], prepared.steps)
        prepared = prepared._replace(columns=prepared.columns + self._first)
        s, scanned = prepared.steps, prepared.columns
        row_max = values[lo:][kept_rows].max(axis=1, initial=0.0)
        records, exits = _scan(prepared, row_max, per_mode=False, first_row=start - lo,
                               previous_floor=self._previous_floor, **self.options)
        new = [r for r in records if r["mode"] not in self.records]
        for r in new:
            self.records[int(r["mode"])] = r
        for i, (row, previous_floor) in enumerate(exits):
            column = int(scanned[i])
            passed = sum(1 for mode in self.records if mode > column)
            if column not in self.records and passed < self.settle_after:
                break
            self._first = column + 1
            self._resume_step = float(s[min(row, len(s) - 1)])
            self._previous_floor = previous_floor
        return new

    def state_dict(self) -> dict[str, Any]:
        """The scan position (the records are the caller's to keep)."""
        return {"first": self._first, "resume_step": self._resume_step, "previous_floor": self._previous_floor,
                "scanned_step": self._identities.scanned_step}

    def load_state_dict(self, state: Mapping[str, Any], records: Sequence[Mapping[str, float]]) -> None:
        """Restore from `state_dict` and the records it had (keyed by identity on the identity route)."""
        self._first = int(state["first"])
        self._resume_step = float(state["resume_step"])
        self._previous_floor = float(state["previous_floor"])
        self._identities = IdentityOnsetTracker(self.records, **self.options)
        self._identities.scanned_step = float(state.get("scanned_step", -math.inf))
        self.records.clear()
        for r in records:
            identity = float(r.get("identity", math.nan))
            self.records[int(identity) if math.isfinite(identity) else int(r["mode"])] = {**r, "mode": int(r["mode"])}
