"""Synthetic stepwise trajectories with known onsets, shaped like the linear theory.

Used by the onset-accuracy benchmark and the tests: the truth comes from the generator's parameters,
not from the detector under test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SyntheticRun", "stepwise_trajectories"]


@dataclass(frozen=True)
class SyntheticRun:
    """A generated run: what a monitor would record, and the truth behind it.

    Attributes:
        steps: (T,) measurement steps (non-uniformly spaced).
        eigenvalues: (T, k) noisy eigenvalues, sorted descending per row, as the monitor records them.
        loss: (T,) a staircase loss: Σ_j (1 − λ_j / P_j)² over the true modes, plus noise.
        onset_steps: true onsets (step where each mode reaches half its plateau in linear scale) of the
            modes that reach it within the run, ascending.
        rise_end_steps: where each of those modes reaches 90 % of its plateau, in the same order.
        plateaus: plateau of each of those modes, in the same order.
        interval: mean spacing of ``steps``.

    Examples:
        >>> run = stepwise_trajectories(8, rows=60, seed=0)
        >>> len(run.onset_steps) == len(run.plateaus) == len(run.rise_end_steps)
        True
    """

    steps: np.ndarray
    eigenvalues: np.ndarray
    loss: np.ndarray
    onset_steps: np.ndarray
    rise_end_steps: np.ndarray
    plateaus: np.ndarray
    interval: float


def stepwise_trajectories(
    modes: int = 32,
    *,
    rows: int = 300,
    interval: float = 10.0,
    rising_fraction: float = 0.75,
    noise: float = 0.1,
    rise_rows: tuple[float, float] = (2.0, 15.0),
    plateau_range: tuple[float, float] = (0.8, 1.25),
    floor_range: tuple[float, float] = (1e-4, 1e-2),
    collapse: bool = True,
    seed: int = 0,
) -> SyntheticRun:
    """Generate one run of ``modes`` eigenvalue trajectories with known onsets.

    Each rising mode is a logistic curve in linear scale from its own floor (log-uniform in
    ``floor_range``) to its own plateau (uniform in ``plateau_range``), half-way at its onset; onsets
    are random (uniform over 10–85 % of the run, so some fall close together, and every rise ends
    inside the run); a rise (10 % → 90 %)
    lasts a random number of measurement intervals in ``rise_rows``. The other modes never rise (they
    stay at their floor). With ``collapse``, a top mode starts at 1e2–1e4 and falls to its floor within
    the first 3 % of the run (partial collapse at initialisation). Every value gets multiplicative
    log-normal noise of relative size ``noise``; rows are then sorted, as a monitor records them.

    Examples:
        >>> run = stepwise_trajectories(16, rows=100, seed=1)
        >>> run.eigenvalues.shape, bool(np.all(np.diff(run.eigenvalues, axis=1) <= 0))
        ((100, 16), True)
    """
    rng = np.random.default_rng(seed)
    steps = np.cumsum(rng.uniform(0.5, 1.5, rows) * interval)
    steps -= steps[0]
    span = steps[-1]
    rising = int(round(rising_fraction * modes)) - (1 if collapse else 0)
    rising = max(min(rising, modes - (1 if collapse else 0)), 0)
    floors = np.exp(rng.uniform(np.log(floor_range[0]), np.log(floor_range[1]), modes))
    plateaus = rng.uniform(*plateau_range, rising)
    onsets = np.sort(rng.uniform(0.1, 0.85, rising)) * span
    rates = 2 * np.log(9) / (rng.uniform(*rise_rows, rising) * interval)  # 10 %→90 % takes 2 ln 9 / rate
    clean = np.tile(floors, (rows, 1))
    for j in range(rising):
        clean[:, j] = floors[j] + (plateaus[j] - floors[j]) / (1 + np.exp(np.minimum(-rates[j] * (steps - onsets[j]),
                                                                                 700)))
    loss = ((1 - (clean[:, :rising] - floors[:rising]) / (plateaus - floors[:rising])) ** 2).sum(axis=1)
    if collapse:
        start = 10 ** rng.uniform(2, 4)
        decay = np.log(start / floors[-1]) / (0.03 * span)
        clean[:, -1] = floors[-1] + start * np.exp(-decay * steps)
    # the crossing of a fraction q of the plateau by F + (P - F) σ(r (t - c)) is where σ = (qP - F) / (P - F)
    def crossing(q: float) -> np.ndarray:
        sigma = (q * plateaus - floors[:rising]) / (plateaus - floors[:rising])
        return onsets + np.log(sigma / (1 - sigma)) / rates

    true_onsets = crossing(0.5)
    inside = true_onsets <= span
    noisy = clean * np.exp(noise * rng.standard_normal(clean.shape))
    loss = loss + noise * 0.05 * rng.standard_normal(rows)
    order = np.argsort(true_onsets[inside])
    return SyntheticRun(
        steps=steps,
        eigenvalues=-np.sort(-noisy, axis=1),
        loss=loss,
        onset_steps=true_onsets[inside][order],
        rise_end_steps=crossing(0.9)[inside][order],
        plateaus=plateaus[inside][order],
        interval=float(span / (rows - 1)),
    )
