"""Step onsets: when each mode of an eigenvalue trajectory was learned, and the drops of the loss.

Pure functions on arrays, no Lightning. The definitions follow the linear theory (DESIGN.md §1):
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
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DEFAULT_ONSET_OPTIONS",
    "LOSS_DROP_COLUMNS",
    "ONSET_COLUMNS",
    "OnsetInputWarning",
    "OnsetTracker",
    "check_onset_options",
    "closest_pairs",
    "detect_loss_steps",
    "detect_onsets",
    "match_loss_drops",
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
)

#: Columns of a loss-drop record.
LOSS_DROP_COLUMNS: tuple[str, ...] = ("drop_step", "drop_start_step", "drop_end_step", "loss_before",
                                      "loss_after", "drop")

_TINY = np.finfo(np.float64).tiny


class OnsetInputWarning(UserWarning):
    """Rows dropped from an onset or loss-drop detection because they held NaN or infinite values.

    Examples:
        >>> import warnings
        >>> warnings.simplefilter("error", OnsetInputWarning)  # refuse partial inputs
        >>> warnings.resetwarnings()
    """


def _steps_array(steps: ArrayLike, rows: int, what: str) -> np.ndarray:
    s = np.asarray(steps, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"steps must be one-dimensional (one step per {what} row), got shape {s.shape}")
    if len(s) != rows:
        raise ValueError(f"steps has {len(s)} entries but {what} has {rows} rows: pass one step per row")
    if not np.all(np.isfinite(s)):
        raise ValueError("steps contains NaN or infinite values")
    bad = np.flatnonzero(np.diff(s) <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"steps must be strictly increasing, but row {i + 1} (step {s[i + 1]:g}) does not come after row {i} "
            f"(step {s[i]:g}); sort the rows by step and drop repeated measurements (e.g. from concatenated "
            "resumed runs)")
    return s


def _optional_column(values: ArrayLike | None, rows: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) != rows:
        raise ValueError(f"{name} has {len(v)} entries but eigenvalues has {rows} rows: pass one per row")
    return v


def _keep_finite_rows(finite: np.ndarray, what: str) -> np.ndarray:
    dropped = int((~finite).sum())
    if dropped:
        warnings.warn(f"{dropped} of {len(finite)} {what} rows hold NaN or infinite values and were left out",
                      OnsetInputWarning, stacklevel=3)
    if finite.sum() < 3:
        raise ValueError(
            f"need at least 3 finite {what} rows to detect steps, got {int(finite.sum())} "
            f"(of {len(finite)}); measure more often (every_n_steps) or train longer")
    return finite


def running_median(values: np.ndarray, rows: int) -> np.ndarray:
    """Median over a centred window of ``rows`` rows (odd), along axis 0; edges repeat the end rows.

    Examples:
        >>> running_median(np.array([1.0, 9.0, 2.0, 3.0, 4.0]), 3).tolist()
        [1.0, 2.0, 3.0, 3.0, 4.0]
    """
    if rows <= 1:
        return np.array(values, dtype=np.float64)
    half = rows // 2
    pad = [(half, half)] + [(0, 0)] * (values.ndim - 1)
    padded = np.pad(values, pad, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, rows, axis=0)
    return np.median(windows, axis=-1)


def _crossing(steps: np.ndarray, values: np.ndarray, level: float, first: int, last: int) -> float:
    """Where ``values[first..last]`` (a noisy rise) crosses ``level``: the best step split, interpolated."""
    segment = values[first : last + 1]
    above = segment >= level
    if above[0]:
        return float(steps[first])
    # cost of splitting before position c: rows above the level before it plus rows below it from c on
    above_before = np.concatenate([[0], np.cumsum(above)])[:-1]
    below_from = np.cumsum((~above)[::-1])[::-1]
    cost = above_before + below_from
    cost[0] = len(segment) + 1  # the split must leave at least one row below the level
    c = first + int(np.flatnonzero(cost == cost.min())[-1])
    lo, hi = values[c - 1], values[c]
    if hi <= lo:
        return float(steps[c])
    fraction = min(max((level - lo) / (hi - lo), 0.0), 1.0)
    return float(steps[c - 1] + fraction * (steps[c] - steps[c - 1]))


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


def _find_rise(m: np.ndarray, min_rise: float, plateau_rows: int) -> tuple[int | None, int, int | None]:
    """Of a smoothed column: (row where it starts to leave its floor, floor row, plateau row).

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
    # (within 2 %, or a noiseless rise that approaches its plateau forever would never level off)
    leveled = np.flatnonzero(1.02 * m[risen_at : risen_at + len(ahead)] >= ahead.max(axis=1, initial=-np.inf))
    if not leveled.size:
        return left_at, floor_row, None
    return left_at, floor_row, risen_at + int(leveled[0])


#: Defaults of the detection options of :func:`detect_onsets` (also those of :class:`OnsetTracker`).
DEFAULT_ONSET_OPTIONS: dict[str, float] = {"min_rise": 10.0, "min_relative_plateau": 0.01, "smoothing": 7,
                                           "plateau_rows": 5}


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
    epochs: ArrayLike | None = None,
    times: ArrayLike | None = None,
    min_rise: float = 10.0,
    min_relative_plateau: float = 0.01,
    smoothing: int = 7,
    plateau_rows: int = 5,
    per_mode: bool = False,
) -> list[dict[str, float]]:
    """Detect the step onset of every learned mode in an eigenvalue trajectory.

    Args:
        steps: (T,) optimizer step of each row, strictly increasing (any spacing).
        eigenvalues: (T, k) eigenvalues, descending in every row (as the monitor records them), or
            (T,) for a single mode. Columns that are entirely NaN (padding) are ignored; rows with
            other NaN or infinite values are left out with an :class:`OnsetInputWarning`.
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

    Returns:
        One record (a dict with the keys of :data:`ONSET_COLUMNS`) per learned mode, by increasing
        ``mode`` (the column index: the rank in the sorted spectrum). Steps are interpolated between
        rows, so they need not be whole numbers. ``confirmed_step`` is the last row the detection
        needed: an online detector knows the onset from then on. ``loss_drop_*`` are NaN until
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
    check_onset_options(min_rise=min_rise, min_relative_plateau=min_relative_plateau, smoothing=smoothing,
                        plateau_rows=plateau_rows)
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
    s = _steps_array(steps, rows, "eigenvalues")
    epoch_column = _optional_column(epochs, rows, "epochs")
    time_column = _optional_column(times, rows, "times")
    if rows < 3:
        raise ValueError(f"need at least 3 measurements to detect steps, got {rows}")
    columns = np.flatnonzero(~np.all(np.isnan(values), axis=0))
    values = values[:, columns]
    keep = _keep_finite_rows(np.all(np.isfinite(values), axis=1), "eigenvalue")
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
    top = running_median(row_max, smoothing)[:usable]
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
        # no higher than the floor the column above left (a shift, not a learned mode), or tiny
        if plateau < math.sqrt(min_rise) * previous_floor or plateau < min_relative_plateau * top[plateau_row]:
            exits.append((search_from, previous_floor))
            continue
        if not per_mode:
            previous_floor = float(m[floor_row])
        exits.append((search_from, previous_floor))
        onset = _crossing(s, m, 0.5 * plateau, floor_row, plateau_row)
        start = _crossing(s, m, 0.1 * plateau, floor_row, plateau_row)
        end = _crossing(s, m, 0.9 * plateau, floor_row, plateau_row)
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
        })
    return records, exits


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

    def update(self, steps: ArrayLike, eigenvalues: ArrayLike, *, epochs: ArrayLike | None = None,
               times: ArrayLike | None = None) -> list[dict[str, float]]:
        """Scan the trajectory so far (sorted rows); return the records of newly learned modes."""
        values = np.asarray(eigenvalues, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        s = _steps_array(steps, len(values), "eigenvalues")
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

    def state_dict(self) -> dict[str, Any]:
        """The scan position (the records are the caller's to keep)."""
        return {"first": self._first, "resume_step": self._resume_step, "previous_floor": self._previous_floor}

    def load_state_dict(self, state: Mapping[str, Any], records: Sequence[Mapping[str, float]]) -> None:
        """Restore from :meth:`state_dict` and the records it had."""
        self._first = int(state["first"])
        self._resume_step = float(state["resume_step"])
        self._previous_floor = float(state["previous_floor"])
        self.records = {int(r["mode"]): {**r, "mode": int(r["mode"])} for r in records}


def detect_loss_steps(
    steps: ArrayLike,
    loss: ArrayLike,
    *,
    window: int = 5,
    min_drop: float | None = None,
    significance: float = 8.0,
) -> list[dict[str, float]]:
    """Find the drops of a staircase loss curve.

    A drop is where the median loss of the ``window`` rows before a row exceeds that of the
    ``window`` rows from it on by a peak that stands out from the neighbouring decline (so a smooth
    decrease is not a staircase) by more than ``significance`` times its noise level (estimated from
    the row-to-row differences within ``4 * window`` rows), and by at least ``min_drop`` when given.

    Args:
        steps: (T,) strictly increasing steps.
        loss: (T,) loss at each step (non-finite rows are left out with a warning).
        window: rows on each side that define the levels before and after a drop.
        min_drop: smallest drop to report, in loss units (default: only the noise criterion).
        significance: how many noise standard deviations a drop must stand out by.

    Returns:
        One record per drop (keys :data:`LOSS_DROP_COLUMNS`), by increasing step: ``drop_step`` is
        where the loss crosses the middle between its levels before and after, ``drop_start_step`` and
        ``drop_end_step`` where 10 % and 90 % of the drop are done.

    Examples:
        >>> steps = np.arange(60)
        >>> loss = 3.0 - (steps >= 20) - (steps >= 40) + 0.01 * np.sin(steps)
        >>> [round(d["drop_step"]) for d in detect_loss_steps(steps, loss)]
        [20, 40]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 row, got {window}")
    values = np.asarray(loss, dtype=np.float64).reshape(-1) if np.ndim(loss) else np.asarray([loss], float)
    s = _steps_array(steps, len(values), "loss")
    keep = _keep_finite_rows(np.isfinite(values), "loss")
    values, s = values[keep], s[keep]
    rows = len(values)
    w = min(window, (rows - 1) // 2)
    if w < 1:
        return []
    smoothed = running_median(values, 2 * (w // 2) + 1)
    before = np.median(np.lib.stride_tricks.sliding_window_view(values, w), axis=1)
    # boundary b (between rows b-1 and b), for b in [w, rows - w]
    level_before = before[: rows - 2 * w + 1]
    level_after = before[w:]
    drop = level_before - level_after
    boundaries = np.arange(w, rows - w + 1)
    diffs = np.diff(values)
    # Noise from the row-to-row differences around each boundary (robust: median absolute deviation),
    # local because a loss is often much noisier early in training than late.
    reach = 4 * w
    noise = np.array([_mad_noise(diffs[max(b - reach, 0) : b + reach]) for b in boundaries])
    # a difference of two medians of w rows has a standard deviation of about 1.2533 σ sqrt(2 / w)
    threshold = significance * 1.2533 * noise * math.sqrt(2 / w)
    if min_drop is not None:
        threshold = np.maximum(threshold, float(min_drop))
    records: list[dict[str, float]] = []
    for i in range(len(drop)):
        neighbourhood = drop[max(i - w, 0) : i + w + 1]
        if drop[i] < neighbourhood.max() or np.any(drop[max(i - w, 0) : i] == drop[i]):
            continue  # not the first local maximum of its neighbourhood
        left = drop[max(i - 2 * w, 0) : i + 1].min()
        right = drop[i : i + 2 * w + 1].min()
        prominence = drop[i] - max(left, right, 0.0)
        if prominence <= threshold[i]:
            continue
        b = int(boundaries[i])
        high, low = float(level_before[i]), float(level_after[i])
        first, last = max(b - w, 0), min(b + w - 1, rows - 1)
        # crossings of a falling curve are the rises of its negative
        start, middle, end = (_crossing(s, -smoothed, -(high - fraction * (high - low)), first, last)
                              for fraction in (0.1, 0.5, 0.9))
        records.append({"drop_step": middle, "drop_start_step": start, "drop_end_step": end,
                        "loss_before": high, "loss_after": low, "drop": high - low})
    return records


def _mad_noise(differences: np.ndarray) -> float:
    """Standard deviation of the values behind row-to-row ``differences``, robust to a few jumps."""
    if differences.size == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(differences - np.median(differences)))) / math.sqrt(2)


def match_loss_drops(
    onsets: Sequence[dict[str, Any]], drops: Sequence[dict[str, float]], *, tolerance: float | None = None
) -> list[dict[str, Any]]:
    """Pair each mode onset with the loss drop nearest in step, one drop per onset at most.

    Args:
        onsets: records from :func:`detect_onsets`.
        drops: records from :func:`detect_loss_steps`.
        tolerance: largest onset-to-drop distance in steps; default: for each onset, its rise
            duration (``rise_steps``), but at least the distance to the confirmation row.

    Returns:
        Copies of ``onsets`` with ``loss_drop_step`` and ``loss_drop`` filled where a drop matched
        (NaN elsewhere). Closest pairs are matched first.

    Examples:
        >>> onsets = [{"mode": 0, "onset_step": 100.0, "rise_steps": 30.0}]
        >>> match_loss_drops(onsets, [{"drop_step": 95.0, "drop": 1.0}])[0]["loss_drop_step"]
        95.0
    """
    matched = [dict(o, loss_drop_step=math.nan, loss_drop=math.nan) for o in onsets]
    if tolerance is not None:
        limits = [float(tolerance)] * len(onsets)
    else:
        limits = [max(float(o.get("rise_steps", 0.0)), float(o.get("confirmed_step", o["onset_step"])) -
                      float(o["onset_step"])) for o in onsets]
    pairs = closest_pairs([float(o["onset_step"]) for o in onsets], [float(d["drop_step"]) for d in drops], limits)
    for i, j in pairs:
        matched[i]["loss_drop_step"] = float(drops[j]["drop_step"])
        matched[i]["loss_drop"] = float(drops[j]["drop"])
    return matched


def closest_pairs(
    xs: Sequence[float], ys: Sequence[float], tolerance: float | Sequence[float]
) -> list[tuple[int, int]]:
    """One-to-one pairs ``(i, j)`` of ``xs[i]`` and ``ys[j]`` within ``tolerance``, closest pairs first.

    ``tolerance`` is one number or one per ``x``. Used to match onsets with loss drops, and detected
    onsets with a known truth.

    Examples:
        >>> closest_pairs([10.0, 50.0], [12.0, 11.0, 90.0], 5.0)
        [(0, 1)]
    """
    limits = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (len(xs),))
    candidates = sorted((abs(x - y), i, j) for i, x in enumerate(xs) for j, y in enumerate(ys)
                        if abs(x - y) <= limits[i])
    used_x: set[int] = set()
    used_y: set[int] = set()
    pairs = []
    for _, i, j in candidates:
        if i not in used_x and j not in used_y:
            used_x.add(i)
            used_y.add(j)
            pairs.append((i, j))
    return pairs
