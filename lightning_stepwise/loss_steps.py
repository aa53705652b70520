"""Loss drops: where a staircase loss curve falls, and which mode onset each drop belongs to.

Pure functions on NumPy arrays, no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lightning_stepwise.trajectory import keep_finite_rows, level_crossing, running_median, steps_array

__all__ = ["LOSS_DROP_COLUMNS", "closest_pairs", "detect_loss_steps", "match_loss_drops"]

LOSS_DROP_COLUMNS: tuple[str, ...] = ("drop_step", "drop_start_step", "drop_end_step", "loss_before",
                                      "loss_after", "drop")
"""Columns of a loss-drop record."""


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
        One record per drop (keys [`LOSS_DROP_COLUMNS`][lightning_stepwise.loss_steps.LOSS_DROP_COLUMNS]), by
        increasing step: ``drop_step`` is
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
    s = steps_array(steps, len(values), "loss")
    keep = keep_finite_rows(np.isfinite(values), "loss")
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
        start, middle, end = (level_crossing(s, -smoothed, -(high - fraction * (high - low)), first, last)
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
        onsets: records from [`detect_onsets`][lightning_stepwise.onsets.detect_onsets].
        drops: records from [`detect_loss_steps`][lightning_stepwise.loss_steps.detect_loss_steps].
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
