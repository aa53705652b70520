"""Synthetic stepwise trajectories with known onsets, shaped like the linear theory.

Used by the onset-accuracy benchmark and the tests: the truth comes from the generator's parameters,
not from the detector under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MODE_FAMILIES", "SyntheticModeRun", "SyntheticRun", "mode_family_run", "stepwise_trajectories"]


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


MODE_FAMILIES: dict[str, str] = {
    "baseline": "plateaus 0.8-1.25, onsets spread over 10-85 % of the run",
    "collapse": "a top mode 1e3-1e6 above the plateaus that decays to its floor over 10-50 % of the run",
    "early": "half the modes rise within the first 10 % of the run, the rest over the remainder",
    "spread": "plateaus log-uniform over 0.3-3: later modes overtake earlier ones",
    "all": "collapse, early and spread together",
}
"""The families of [`mode_family_run`][lightning_stepwise.synthetic.mode_family_run]: what makes each hard for a
detector of sorted spectra."""


@dataclass(frozen=True)
class SyntheticModeRun(SyntheticRun):
    """A generated run measured through finite windows, with eigen-directions (see `mode_family_run`).

    Attributes (besides those of [`SyntheticRun`][lightning_stepwise.synthetic.SyntheticRun]):
        directions: (T, d, k) float32 eigen-directions of each row's measured covariance, column ``j`` for
            eigenvalue ``j`` of the row (descending), as the monitor obtains them.
        onset_directions: (d, n) the true direction of each learned mode at its onset, in onset order.
        family: the family generated.

    Examples:
        >>> run = mode_family_run("spread", 8, rows=40, seed=0)
        >>> run.directions.shape, run.onset_directions.shape[0]
        ((40, 8, 8), 8)
    """

    directions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.float32))
    onset_directions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    family: str = "baseline"


def _rotation_path(dim: int, angle: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Q0, eigenvalues w, eigenvectors V) of a slow rotation Q(s) = Q0 expm(s A), ``A`` skew with size ``angle``."""
    q0, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    skew = rng.standard_normal((dim, dim)) * angle / np.sqrt(dim)
    skew = (skew - skew.T) / 2
    w, v = np.linalg.eigh(1j * skew)  # A = -i H with H = iA Hermitian: expm(sA) = V exp(-i s w) V^H
    return q0, w, v


def _rotation_at(q0: np.ndarray, w: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    return q0 @ ((v * np.exp(-1j * s * w)) @ v.conj().T).real


def mode_family_run(
    family: str,
    modes: int = 32,
    *,
    noise: float = 0.15,
    rows: int = 300,
    interval: float = 10.0,
    window: int = 1024,
    rising_fraction: float = 0.75,
    rise_rows: tuple[float, float] = (2.0, 15.0),
    floor_range: tuple[float, float] = (1e-4, 1e-2),
    rotation: float = 0.5,
    seed: int = 0,
) -> SyntheticModeRun:
    """One run of a family of [`MODE_FAMILIES`][lightning_stepwise.synthetic.MODE_FAMILIES]: rotating modes, in windows.

    ``modes`` orthonormal directions in ``d = modes`` dimensions rotate slowly (``rotation`` radians over
    the run, a random skew generator). Each has an eigenvalue trajectory as in
    [`stepwise_trajectories`][lightning_stepwise.synthetic.stepwise_trajectories]
    (logistic rises in linear scale from a floor to a plateau, half-way at the onset; the others stay at
    their floor), with multiplicative log-normal noise of relative size ``noise``. Each row is then the
    sample covariance of a window of ``window`` embeddings drawn from that covariance (a Wishart draw), and
    its eigenvalues (descending) and eigen-directions are what is recorded: sampling noise in the values
    and mixing of the directions of near-equal eigenvalues, as a monitor sees them. Every rise starts
    inside the run (its 10 % crossing at least 3 intervals after the first row).

    Examples:
        >>> run = mode_family_run("collapse", 16, rows=60, seed=2)
        >>> bool(run.eigenvalues[0, 0] > 100 * run.plateaus.max())
        True
    """
    if family not in MODE_FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(MODE_FAMILIES)}")
    rng = np.random.default_rng(seed)
    steps = np.cumsum(rng.uniform(0.5, 1.5, rows) * interval)
    steps -= steps[0]
    span = steps[-1]
    collapse = family in ("collapse", "all")
    rising = max(min(int(round(rising_fraction * modes)), modes - (1 if collapse else 0)), 0)
    floors = np.exp(rng.uniform(np.log(floor_range[0]), np.log(floor_range[1]), modes))
    if family in ("spread", "all"):
        plateaus = np.exp(rng.uniform(np.log(0.3), np.log(3.0), rising))
    else:
        plateaus = rng.uniform(0.8, 1.25, rising)
    rates = 2 * np.log(9) / (rng.uniform(*rise_rows, rising) * interval)
    if family in ("early", "all"):
        early = rising // 2
        fractions = np.concatenate([rng.uniform(0.02, 0.1, early), rng.uniform(0.12, 0.85, rising - early)])
    else:
        fractions = rng.uniform(0.1, 0.85, rising)
    # the 10 % crossing is about ln 9 / rate before the onset: keep it 3 intervals inside the run
    onsets = np.maximum(fractions * span, np.log(9) / rates + 3 * interval)
    clean = np.tile(floors, (rows, 1))
    for j in range(rising):
        clean[:, j] = floors[j] + (plateaus[j] - floors[j]) / (1 + np.exp(np.minimum(-rates[j] * (steps - onsets[j]),
                                                                                 700)))
    if collapse:
        start = plateaus.max(initial=1.0) * 10 ** rng.uniform(3, 6)
        decay = np.log(start / floors[-1]) / (rng.uniform(0.1, 0.5) * span)
        clean[:, -1] = floors[-1] + start * np.exp(-decay * steps)

    def crossing(q: float) -> np.ndarray:
        sigma = (q * plateaus - floors[:rising]) / (plateaus - floors[:rising])
        return onsets + np.log(sigma / (1 - sigma)) / rates

    loss = ((1 - (clean[:, :rising] - floors[:rising]) / (plateaus - floors[:rising])) ** 2).sum(axis=1)
    loss = loss + noise * 0.05 * rng.standard_normal(rows)
    noisy = clean * np.exp(noise * rng.standard_normal(clean.shape))
    q0, w, v = _rotation_path(modes, rotation, rng)
    eigenvalues = np.empty((rows, modes))
    directions = np.empty((rows, modes, modes), dtype=np.float32)
    for t in range(rows):
        q = _rotation_at(q0, w, v, steps[t] / span)
        # Bartlett: A A^T / n is the sample covariance of n standard normal rows (Wishart), A lower triangular
        bartlett = np.tril(rng.standard_normal((modes, modes)), -1)
        bartlett[np.diag_indices(modes)] = np.sqrt(rng.chisquare(window - np.arange(modes)))
        root = q * np.sqrt(noisy[t])
        sample = root @ (bartlett @ bartlett.T / window) @ root.T
        values, vectors = np.linalg.eigh(0.5 * (sample + sample.T))
        eigenvalues[t] = values[::-1]
        directions[t] = vectors[:, ::-1]
    true_onsets = crossing(0.5)
    inside = np.flatnonzero(true_onsets <= span)
    order = inside[np.argsort(true_onsets[inside])]
    onset_directions = np.stack([_rotation_at(q0, w, v, true_onsets[j] / span)[:, j] for j in order], axis=1) \
        if order.size else np.zeros((modes, 0))
    return SyntheticModeRun(
        steps=steps, eigenvalues=eigenvalues, loss=loss, onset_steps=true_onsets[order],
        rise_end_steps=crossing(0.9)[order], plateaus=plateaus[order], interval=float(span / (rows - 1)),
        directions=directions, onset_directions=onset_directions, family=family)
