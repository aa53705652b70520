"""What both onset routes share: the options, the record's columns, one trajectory's rise, the bulk level.

Pure functions on arrays. [`lightning_stepwise.onsets`][lightning_stepwise.onsets] detects onsets on sorted spectra and
[`lightning_stepwise.identity_onsets`][lightning_stepwise.identity_onsets] on identity-tracked ones; both build on
these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from lightning_stepwise.trajectory import keep_finite_rows, optional_column, steps_array

__all__ = [
    "DEFAULT_ONSET_OPTIONS",
    "ONSET_COLUMNS",
    "ONSET_OPTIONS",
    "RESOLUTION",
    "PreparedTrajectory",
    "bulk_level",
    "check_onset_options",
    "epoch_at",
    "find_rise",
    "onset_record",
    "prepare_trajectory",
    "value_at",
]

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
"""Columns of an onset record, in table order. ``NaN`` marks a value that was not available."""

TINY = np.finfo(np.float64).tiny
RESOLUTION = 1e-7
"""Eigenvalues below this fraction of the largest one in their row are below the resolution of float32
embeddings: their rises are round-off, not learning."""


def value_at(steps: np.ndarray, column: np.ndarray | None, step: float) -> float:
    """``column`` (one value per row) interpolated at ``step``; NaN without a column or a finite step.

    Examples:
        >>> value_at(np.array([0.0, 10.0]), np.array([0.0, 1.0]), 5.0)
        0.5
    """
    if column is None or not np.isfinite(step):
        return math.nan
    finite = np.isfinite(column)
    if not finite.any():
        return math.nan
    return float(np.interp(step, steps[finite], column[finite]))


def epoch_at(steps: np.ndarray, epochs: np.ndarray | None, step: float) -> float:
    """The epoch in progress at ``step``: that of the last row at or before it (NaN without epochs).

    Examples:
        >>> epoch_at(np.array([0.0, 10.0, 20.0]), np.array([0.0, 0.0, 1.0]), 15.0)
        0.0
    """
    if epochs is None:
        return math.nan
    i = int(np.searchsorted(steps, step, side="right")) - 1
    return float(epochs[max(i, 0)])


def find_rise(m: np.ndarray, min_rise: float, plateau_rows: int,
               tolerance: np.ndarray | float = 0.02) -> tuple[int | None, int, int | None]:
    """Of a smoothed column: (row where it starts to leave its floor, floor row, plateau row).

    The rise levels off at the first row that none of the next ``plateau_rows`` rows exceeds by more than
    ``tolerance`` (relative; one per row, or one for all).

    The first is the last row within ``min_rise ** 0.1`` (1.26 for 10) of the running minimum before the
    column first rises by ``min_rise ** 0.3`` (2 for 10); None when it never does; the plateau row is None when
    no rise by ``min_rise`` is confirmed and leveled off (never risen, or still rising at the end).

    Examples:
        >>> find_rise(np.array([1.0, 1.0, 1.0, 20.0, 50.0, 50.0, 50.0, 50.0]), 10.0, 3)
        (2, 2, 4)
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



ONSET_OPTIONS: dict[str, tuple[float, str]] = {
    "min_rise": (10.0, "factor by which a mode must rise above its floor to count as learned"),
    "min_relative_plateau": (0.01, "smallest plateau of a learned mode, as a fraction of the largest eigenvalue "
                                   "then"),
    "smoothing": (7, "rows of the running median applied first (odd; 1 turns it off)"),
    "plateau_rows": (5, "rows after the plateau that must confirm it"),
}
"""The detection options, ``{name: (default, meaning)}``: the one source for
[`detect_onsets`][lightning_stepwise.onsets.detect_onsets], [`OnsetTracker`][lightning_stepwise.onsets.OnsetTracker],
``StepwiseMonitor(onset_options=...)`` and the ``report`` command's flags."""
DEFAULT_ONSET_OPTIONS: dict[str, float] = {name: default for name, (default, _) in ONSET_OPTIONS.items()}
"""The default of each detection option (from [`ONSET_OPTIONS`][lightning_stepwise.onset_core.ONSET_OPTIONS])."""


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



class PreparedTrajectory(NamedTuple):
    """An eigenvalue trajectory checked and converted for detection (see `prepare_trajectory`)."""

    steps: np.ndarray
    values: np.ndarray
    mode_ids: np.ndarray | None
    epochs: np.ndarray | None
    times: np.ndarray | None
    columns: np.ndarray


def prepare_trajectory(
    steps: ArrayLike, eigenvalues: ArrayLike, *, mode_ids: ArrayLike | None = None, epochs: ArrayLike | None = None,
    times: ArrayLike | None = None, check_sorted: bool = True,
) -> PreparedTrajectory:
    """Checked float arrays, all-NaN columns and non-finite rows left out; ``columns``: the kept column indices.

    With ``mode_ids`` a column without an identity in a row may hold anything (padding), and only the
    identified columns must be sorted. ``ValueError`` names any shape, order or size problem.

    Examples:
        >>> prepared = prepare_trajectory([0, 1, 2], [[2.0, np.nan], [3.0, np.nan], [4.0, np.nan]])
        >>> prepared.values.ravel().tolist(), prepared.columns.tolist()
        ([2.0, 3.0, 4.0], [0])
    """
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
    return PreparedTrajectory(s, values, ids, epoch_column, time_column, columns)


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


def onset_record(
    mode: int, rise: Mapping[str, float], prepared: PreparedTrajectory, confirmed_step: float, identity: float =
        math.nan
) -> dict[str, float]:
    """A full onset record (the keys of `ONSET_COLUMNS`) from a rise's steps and levels.

    ``rise`` holds ``onset_step``, ``rise_start_step``, ``rise_end_step``, ``floor`` and ``plateau``; the
    epoch and effective time come from ``prepared``; the loss-drop and theory columns start as NaN.

    Examples:
        >>> rise = {"onset_step": 5.0, "rise_start_step": 4.0, "rise_end_step": 7.0, "floor": 0.01, "plateau": 1.0}
        >>> onset_record(0, rise, prepare_trajectory([0, 5, 10], [1.0, 2.0, 3.0]), 10.0)["rise_steps"]
        3.0
    """
    onset = float(rise["onset_step"])
    return {
        "mode": int(mode),
        "onset_step": onset,
        "rise_start_step": float(rise["rise_start_step"]),
        "rise_end_step": float(rise["rise_end_step"]),
        "rise_steps": float(rise["rise_end_step"]) - float(rise["rise_start_step"]),
        "floor": float(rise["floor"]),
        "plateau": float(rise["plateau"]),
        "onset_epoch": epoch_at(prepared.steps, prepared.epochs, onset),
        "onset_time": value_at(prepared.steps, prepared.times, onset),
        "confirmed_step": float(confirmed_step),
        "loss_drop_step": math.nan,
        "loss_drop": math.nan,
        "predicted_onset_step": math.nan,
        "relative_error": math.nan,
        "identity": float(identity),
    }
