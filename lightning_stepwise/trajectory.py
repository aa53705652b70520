"""Checked step axes and the crossings of noisy curves: what onset and loss-drop detection share.

Pure functions on NumPy arrays.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["OnsetInputWarning", "keep_finite_rows", "level_crossing", "optional_column", "running_median",
           "steps_array"]


class OnsetInputWarning(UserWarning):
    """Rows dropped from an onset or loss-drop detection because they held NaN or infinite values.

    Examples:
        >>> import warnings
        >>> warnings.simplefilter("error", OnsetInputWarning)  # refuse partial inputs
        >>> warnings.resetwarnings()
    """


def steps_array(steps: ArrayLike, rows: int, what: str) -> np.ndarray:
    """``steps`` as float64, checked: one-dimensional, one per row of ``what``, finite, strictly increasing.

    Examples:
        >>> steps_array([0, 10, 20], 3, "eigenvalues").tolist()
        [0.0, 10.0, 20.0]
    """
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


def optional_column(values: ArrayLike | None, rows: int, name: str) -> np.ndarray | None:
    """``values`` as a float64 column of ``rows`` entries (``None`` stays ``None``).

    Examples:
        >>> optional_column([1, 2], 2, "epochs").tolist()
        [1.0, 2.0]
    """
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) != rows:
        raise ValueError(f"{name} has {len(v)} entries but eigenvalues has {rows} rows: pass one per row")
    return v


def keep_finite_rows(finite: np.ndarray, what: str) -> np.ndarray:
    """``finite`` itself, after warning how many rows it leaves out; ``ValueError`` below 3 rows.

    Examples:
        >>> keep_finite_rows(np.array([True, True, True]), "loss").tolist()
        [True, True, True]
    """
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


def level_crossing(steps: np.ndarray, values: np.ndarray, level: float, first: int, last: int) -> float:
    """Where ``values[first..last]`` (a noisy rise) crosses ``level``: the best step split, interpolated.

    Examples:
        >>> level_crossing(np.arange(4.0), np.array([0.0, 0.0, 2.0, 2.0]), 1.0, 0, 3)
        1.5
    """
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
