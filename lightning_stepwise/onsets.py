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
   ``sqrt(min_rise)`` times the floor of the column above (a rank shift, see :func:`detect_onsets`);
5. onset, rise start and rise end are the crossings of ½, 0.1 and 0.9 of the plateau between the floor
   and the plateau row, placed where a step function fits the smoothed values best and interpolated
   linearly between the two rows around it.

Rows whose median window reaches past the last row are left out, so results are causal: an onset found
during training is the onset in the final table, whatever happens later (a slow decay, a later mode
overtaking it in the sorted order).

Rows as :class:`~lightning_stepwise.StepwiseMonitor` records them are sorted per row, so column ``j``
is the ``j``-th largest eigenvalue and ``mode = j`` is the ``j+1``-th mode learned: a mode that rises
enters at its rank and pushes the others down.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lightning_stepwise.trajectory import keep_finite_rows, level_crossing, optional_column, running_median, steps_array

__all__ = [
    "DEFAULT_ONSET_OPTIONS",
    "bulk_level",
    "ONSET_COLUMNS",
    "ONSET_OPTIONS",
    "OnsetTracker",
    "check_onset_options",
    "detect_onsets",
]

#: Columns of an onset record, in table order. ``NaN`` marks a value that was not available.
ONSET_COLUMNS: tuple[str, ...] = (
    "mode",
    "onset_step",
    "rise_start_step",
    "rise_end_step",
    "rise_steps",
    "floor",
    "plateau",
    "onset_epoch",
    "onset_time",
    "confirmed_step",
    "loss_drop_step",
    "loss_drop",
    "predicted_onset_step",
    "relative_error",
    "identity",
)

_TINY = np.finfo(np.float64).tiny
#: Eigenvalues below this fraction of the largest one in their row are below the resolution of float32
#: embeddings: their rises are round-off, not learning.
RESOLUTION = 1e-7

def _value_at(steps: np.ndarray, column: np.ndarray | None, step: float) -> float:
    if column is None or not np.isfinite(step):
        return math.nan
    finite = np.isfinite(column)
    if not finite.any():
        return math.nan
    return float(np.interp(step, steps[finite], column[finite]))


def _epoch_at(steps: np.ndarray, epochs: np.ndarray | None, step: float) -> float:
    if epochs is None:
        return math.nan
    i = int(np.searchsorted(steps, step, side="right")) - 1
    return float(epochs[max(i, 0)])


def _find_rise(m: np.ndarray, min_rise: float, plateau_rows: int,
               tolerance: np.ndarray | float = 0.02) -> tuple[int | None, int, int | None]:
    """Of a smoothed column: (row where it starts to leave its floor, floor row, plateau row).

    The rise levels off at the first row that none of the next ``plateau_rows`` rows exceeds by more than
    ``tolerance`` (relative; one per row, or one for all).

    The first is the last row within ``min_rise ** 0.1`` (1.26 for 10) of the running minimum before the
    column first rises by ``min_rise ** 0.3`` (2 for 10); None when it never does; the plateau row is None when
    no rise by ``min_rise`` is confirmed and leveled off (never risen, or still rising at the end).
    """
    floor = np.minimum.accumulate(m)
    leaving = np.flatnonzero(m >= min_rise**0.3 * floor)
    left_at = None
    if leaving.size:  # back to the last row still at the floor, where the departure began
        left_at = int(np.flatnonzero(m[: leaving[0] + 1] <= min_rise**0.1 * floor[: leaving[0] + 1])[-1])
    risen = m >= min_rise * floor
    windows = np.lib.stride_tricks.sliding_window_view(risen, plateau_rows) if len(m) >= plateau_rows else None
    confirmed = np.flatnonzero(windows.all(axis=1)) if windows is not None else np.array([], dtype=int)
    if not confirmed.size:
        return left_at, 0, None
    risen_at = int(confirmed[0])
    floor_row = int(np.flatnonzero(m[: risen_at + 1] == floor[risen_at])[-1])
    # the first row from risen_at on that none of the next plateau_rows rows exceeds
    ahead = np.lib.stride_tricks.sliding_window_view(m[risen_at + 1 :], plateau_rows) \
        if len(m) - risen_at - 1 >= plateau_rows else np.zeros((0, plateau_rows))
    # (within a tolerance, or a noiseless rise that approaches its plateau forever would never level off)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), m.shape)[risen_at : risen_at + len(ahead)]
    leveled = np.flatnonzero((1 + tol) * m[risen_at : risen_at + len(ahead)] >= ahead.max(axis=1, initial=-np.inf))
    if not leveled.size:
        return left_at, floor_row, None
    return left_at, floor_row, risen_at + int(leveled[0])


#: Defaults of the detection options of :func:`detect_onsets` (also those of :class:`OnsetTracker`).
#: The detection options, their defaults and meaning: the one source for :func:`detect_onsets`,
#: :class:`OnsetTracker`, ``StepwiseMonitor(onset_options=...)`` and the ``report`` command's flags.
ONSET_OPTIONS: dict[str, tuple[float, str]] = {
    "min_rise": (10.0, "factor by which a mode must rise above its floor to count as learned"),
    "min_relative_plateau": (0.01, "smallest plateau of a learned mode, as a fraction of the largest eigenvalue "
                                   "then"),
    "smoothing": (7, "rows of the running median applied first (odd; 1 turns it off)"),
    "plateau_rows": (5, "rows after the plateau that must confirm it"),
}
DEFAULT_ONSET_OPTIONS: dict[str, float] = {name: default for name, (default, _) in ONSET_OPTIONS.items()}


def check_onset_options(**options: Any) -> dict[str, Any]:
    """The detection options with defaults filled in; ``ValueError`` naming any unknown or out of range.

    Examples:
        >>> check_onset_options(smoothing=4)
        Traceback (most recent call last):
        ...
        ValueError: smoothing must be an odd number of rows >= 1, got 4
    """
    unknown = set(options) - set(DEFAULT_ONSET_OPTIONS)
    if unknown:
        raise ValueError(f"unknown onset options {sorted(unknown)}; known: {', '.join(DEFAULT_ONSET_OPTIONS)}")
    merged = {**DEFAULT_ONSET_OPTIONS, **options}
    min_rise, min_relative_plateau = merged["min_rise"], merged["min_relative_plateau"]
    smoothing, plateau_rows = merged["smoothing"], merged["plateau_rows"]
    if not min_rise > 1:
        raise ValueError(f"min_rise must be > 1 (a factor above the floor), got {min_rise}")
    if not 0 <= min_relative_plateau <= 1:
        raise ValueError(f"min_relative_plateau must be in [0, 1], got {min_relative_plateau}")
    if not isinstance(smoothing, int) or smoothing < 1 or smoothing % 2 == 0:
        raise ValueError(f"smoothing must be an odd number of rows >= 1, got {smoothing}")
    if not isinstance(plateau_rows, int) or plateau_rows < 1:
        raise ValueError(f"plateau_rows must be an integer >= 1, got {plateau_rows}")
    return merged


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
            other NaN or infinite values are left out with an :class:`OnsetInputWarning`.
        mode_ids: (T, m) identity of each of the first ``m <= k`` columns (``-1``: none), as
            :class:`~lightning_stepwise.mode_identity.ModeMatcher` gives them and the monitor records them
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
        One record (a dict with the keys of :data:`ONSET_COLUMNS`) per learned mode, by increasing
        ``mode``: on sorted rows the column index (the rank in the sorted spectrum); on the identity route
        the order in which the modes were learned (confirmed), with ``identity`` the mode's identity (NaN
        on sorted rows). Steps are interpolated between rows, so they need not be whole numbers.
        ``confirmed_step`` is the last row the detection needed: an online detector knows the onset from
        then on. ``loss_drop_*`` are NaN until
        :func:`match_loss_drops` fills them, ``predicted_onset_step`` and ``relative_error`` until
        :meth:`~lightning_stepwise.theory.TheoryPrediction.annotate` does.

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
        return OnsetTracker(**options).update(steps, eigenvalues, mode_ids=mode_ids, epochs=epochs, times=times,
                                              _checked=True)
    s, values, epoch_column, time_column, columns = _prepare(steps, eigenvalues, epochs, times, per_mode)
    if values.shape[1] == 0:
        return []
    records, _ = _scan(s, values, values.max(axis=1), epoch_column, time_column, columns, per_mode=per_mode,
                       min_rise=min_rise, min_relative_plateau=min_relative_plateau, smoothing=smoothing,
                       plateau_rows=plateau_rows)
    return records


def _prepare(
    steps: ArrayLike, eigenvalues: ArrayLike, epochs: ArrayLike | None, times: ArrayLike | None, per_mode: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Checked float arrays, all-NaN columns and non-finite rows left out; the kept column indices."""
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"eigenvalues must be (T, k) or (T,), got shape {values.shape}")
    rows = values.shape[0]
    s = steps_array(steps, rows, "eigenvalues")
    epoch_column = optional_column(epochs, rows, "epochs")
    time_column = optional_column(times, rows, "times")
    if rows < 3:
        raise ValueError(f"need at least 3 measurements to detect steps, got {rows}")
    columns = np.flatnonzero(~np.all(np.isnan(values), axis=0))
    values = values[:, columns]
    keep = keep_finite_rows(np.all(np.isfinite(values), axis=1), "eigenvalue")
    values, s = values[keep], s[keep]
    epoch_column = epoch_column[keep] if epoch_column is not None else None
    time_column = time_column[keep] if time_column is not None else None
    if not per_mode and values.shape[1] > 1:
        tolerance = 1e-9 * np.abs(values[:, :-1])
        unsorted = np.flatnonzero(np.any(values[:, 1:] > values[:, :-1] + tolerance, axis=1))
        if unsorted.size:
            raise ValueError(
                f"eigenvalue rows must be sorted in descending order (as StepwiseMonitor records them), but "
                f"{unsorted.size} rows are not (first: row {int(unsorted[0])}); sort them with "
                "np.sort(eigenvalues, axis=1)[:, ::-1], or pass per_mode=True if each column is one mode's own "
                "trajectory")
    return s, values, epoch_column, time_column, columns


def _scan(
    s: np.ndarray,
    values: np.ndarray,
    row_max: np.ndarray,
    epoch_column: np.ndarray | None,
    time_column: np.ndarray | None,
    columns: np.ndarray,
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
    # Rows whose median window runs past the end would change when more rows arrive: leave them out,
    # so that an onset found on a prefix of a trajectory is the onset found on all of it.
    usable = len(s) - smoothing // 2
    smoothed = running_median(np.maximum(values, _TINY), smoothing)[:usable]
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
        left_at, floor_row, plateau_row = _find_rise(smoothed[search_from:, j], min_rise, plateau_rows)
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
        onset = level_crossing(s, m, 0.5 * plateau, floor_row, plateau_row)
        start = level_crossing(s, m, 0.1 * plateau, floor_row, plateau_row)
        end = level_crossing(s, m, 0.9 * plateau, floor_row, plateau_row)
        confirmed_row = min(plateau_row + plateau_rows + smoothing // 2, last_row)
        records.append({
            "mode": int(columns[j]),
            "onset_step": onset,
            "rise_start_step": start,
            "rise_end_step": end,
            "rise_steps": end - start,
            "floor": float(m[floor_row]),
            "plateau": plateau,
            "onset_epoch": _epoch_at(s, epoch_column, onset),
            "onset_time": _value_at(s, time_column, onset),
            "confirmed_step": float(s[confirmed_row]),
            "loss_drop_step": math.nan,
            "loss_drop": math.nan,
            "predicted_onset_step": math.nan,
            "relative_error": math.nan,
            "identity": math.nan,
        })
    return records, exits


def _prepare_identities(
    steps: ArrayLike, eigenvalues: ArrayLike, mode_ids: ArrayLike | None, epochs: ArrayLike | None,
    times: ArrayLike | None, check_sorted: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Checked float arrays, all-NaN columns and non-finite rows left out."""
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"eigenvalues must be (T, k) or (T,), got shape {values.shape}")
    rows = values.shape[0]
    s = steps_array(steps, rows, "eigenvalues")
    epoch_column = optional_column(epochs, rows, "epochs")
    time_column = optional_column(times, rows, "times")
    ids = None
    if mode_ids is not None:
        ids = np.asarray(mode_ids, dtype=np.int64)
        ids = ids[:, None] if ids.ndim == 1 else ids
        if ids.ndim != 2 or ids.shape[0] != rows or ids.shape[1] > values.shape[1]:
            raise ValueError(f"mode_ids must be (T, m) with T = {rows} rows and m <= {values.shape[1]} columns (one "
                             f"identity per eigenvalue column), got shape {ids.shape}")
    if rows < 3:
        raise ValueError(f"need at least 3 measurements to detect steps, got {rows}")
    columns = np.flatnonzero(~np.all(np.isnan(values), axis=0))
    if ids is not None:
        columns = columns[columns < ids.shape[1]] if columns.size else columns
        extra = np.flatnonzero(~np.all(np.isnan(values[:, ids.shape[1]:]), axis=0)) + ids.shape[1]
        columns = np.concatenate([columns, extra])
    values = values[:, columns]
    if ids is not None:  # a column without an identity in a row may hold anything (padding)
        finite = np.all(np.isfinite(values[:, : ids.shape[1]]) | (ids < 0), axis=1)
    else:
        finite = np.all(np.isfinite(values), axis=1)
    keep = keep_finite_rows(finite, "eigenvalue")
    values, s = values[keep], s[keep]
    if ids is not None:
        ids = ids[keep]
    epoch_column = epoch_column[keep] if epoch_column is not None else None
    time_column = time_column[keep] if time_column is not None else None
    if check_sorted and values.shape[1] > 1:
        head = values[:, : ids.shape[1]] if ids is not None else values
        tolerance = 1e-9 * np.abs(head[:, :-1])
        unsorted = np.flatnonzero(np.any(head[:, 1:] > head[:, :-1] + tolerance, axis=1))
        if unsorted.size:
            raise ValueError(
                f"eigenvalue rows must be sorted in descending order (as StepwiseMonitor records them), but "
                f"{unsorted.size} rows are not (first: row {int(unsorted[0])}); sort them with "
                "np.sort(eigenvalues, axis=1)[:, ::-1], or pass per_mode=True if each column is one mode's own "
                "trajectory")
    return s, values, ids, epoch_column, time_column


def bulk_level(eigenvalues: ArrayLike) -> np.ndarray:
    """The level of the bulk of each row's spectrum: the 10th percentile of its positive finite values.

    Examples:
        >>> bulk_level(np.array([[10.0, 1.0] + [0.01] * 8])).round(3).tolist()
        [0.01]
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    valid = np.isfinite(values) & (values > 0)
    ordered = np.sort(np.where(valid, values, np.inf), axis=1)
    count = valid.sum(axis=1)
    # the "lower" 10th percentile: an actual value of the row, so a missing value in a short row cannot move it
    index = np.floor(0.1 * np.maximum(count - 1, 0)).astype(np.int64)
    level = np.take_along_axis(ordered, index[:, None], axis=1)[:, 0] if values.shape[1] else np.full(len(values),
                                                                                                       np.inf)
    return np.where(count > 0, level, np.nan)


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
    raw = np.maximum(x, _TINY)
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
        _, floor_i, plateau_i = _find_rise(m[start:], min_rise, plateau_rows, tolerance[start:])
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


class OnsetTracker:
    """:func:`detect_onsets` for a trajectory that grows during training, at a cost that does not grow.

    Give :meth:`update` the whole trajectory so far each time; it returns the modes newly confirmed.
    It scans only the columns from the first one not yet settled (learned, or passed over by
    ``settle_after`` learned modes above it) up to ``lookahead`` columns beyond the last learned mode,
    and only the rows from where that column's search starts. Detection is causal, so the records
    are those :func:`detect_onsets` finds on the same rows, and a record never changes once made.

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
        #: Confirmed records by mode.
        self.records: dict[int, dict[str, float]] = {}
        self._first = 0  # first column not settled
        self._resume_step = -math.inf  # where its search starts
        self._previous_floor = 0.0
        self._scanned_step = -math.inf  # identity route: rows up to here were examined with all they need
        self._resume_steps: dict[int, float] = {}  # identity route: where each identity's next scan starts
        self._lowest: dict[int, float] = {}  # identity route: each live identity's lowest value (and backfill's)

    def update(self, steps: ArrayLike, eigenvalues: ArrayLike, *, mode_ids: ArrayLike | None = None,
               epochs: ArrayLike | None = None, times: ArrayLike | None = None,
               _checked: bool = False) -> list[dict[str, float]]:
        """Scan the trajectory so far; return the records of newly learned modes.

        Sorted rows, or with ``mode_ids`` the identity route (see :func:`detect_onsets`): then only the
        identities present in the rows added since the last call are examined (the others cannot change),
        so the cost follows the live modes, not the length of the run.
        """
        if mode_ids is not None:
            return self._update_identities(steps, eigenvalues, mode_ids, epochs, times, _checked)
        values = np.asarray(eigenvalues, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        s = steps_array(steps, len(values), "eigenvalues")
        start = int(np.searchsorted(s, self._resume_step))
        lo = max(start - self.options["smoothing"] // 2, 0)  # rows the first medians need
        last = max(self.records, default=self._first - 1) + 1 + self.lookahead
        if len(s) - lo < 3 or self._first >= values.shape[1]:
            return []
        # only the rows and columns scanned are checked and converted: the cost stays flat as the run grows
        s, window, epoch_column, time_column, columns = _prepare(
            s[lo:], values[lo:, self._first : last],
            None if epochs is None else np.asarray(epochs)[lo:], None if times is None else np.asarray(times)[lo:],
            False)
        kept_rows = np.isin(np.asarray(steps, dtype=np.float64)[lo:], s)
        scanned = columns + self._first
        row_max = values[lo:][kept_rows].max(axis=1, initial=0.0)
        records, exits = _scan(s, window, row_max, epoch_column, time_column, scanned,
                               per_mode=False, first_row=start - lo, previous_floor=self._previous_floor,
                               **self.options)
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

    def _update_identities(self, steps: ArrayLike, eigenvalues: ArrayLike, mode_ids: ArrayLike,
                           epochs: ArrayLike | None, times: ArrayLike | None, checked: bool) -> list[dict[str, float]]:
        from lightning_stepwise.mode_identity import identity_series

        if not checked and len(np.asarray(eigenvalues)) < 3:
            return []
        with warnings.catch_warnings():
            if not checked:
                warnings.simplefilter("ignore")
            s, values, ids, epoch_column, time_column = _prepare_identities(steps, eigenvalues, mode_ids, epochs,
                                                                            times, check_sorted=False)
        if ids is None or not ids.size:
            return []
        usable = len(s) - self.options["smoothing"] // 2
        first_new = int(np.searchsorted(s, self._scanned_step, side="right"))
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
            onset = c.record["onset_step"]
            record = {"mode": len(self.records), **c.record, "onset_epoch": _epoch_at(s, epoch_column, onset),
                      "onset_time": _value_at(s, time_column, onset), "confirmed_step": float(s[c.confirmed_row]),
                      "loss_drop_step": math.nan, "loss_drop": math.nan, "predicted_onset_step": math.nan,
                      "relative_error": math.nan, "identity": float(c.identity)}
            self.records[c.identity] = record
            new.append(record)
        if usable > 0:
            self._scanned_step = float(s[usable - 1])
        return new

    def state_dict(self) -> dict[str, Any]:
        """The scan position (the records are the caller's to keep)."""
        return {"first": self._first, "resume_step": self._resume_step, "previous_floor": self._previous_floor,
                "scanned_step": self._scanned_step}

    def load_state_dict(self, state: Mapping[str, Any], records: Sequence[Mapping[str, float]]) -> None:
        """Restore from :meth:`state_dict` and the records it had (keyed by identity on the identity route)."""
        self._first = int(state["first"])
        self._resume_step = float(state["resume_step"])
        self._previous_floor = float(state["previous_floor"])
        self._scanned_step = float(state.get("scanned_step", -math.inf))
        self.records = {}
        for r in records:
            identity = float(r.get("identity", math.nan))
            self.records[int(identity) if math.isfinite(identity) else int(r["mode"])] = {**r, "mode": int(r["mode"])}
