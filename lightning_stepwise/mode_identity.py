"""Mode identity: which eigen-direction of one measurement is which of the last, so a mode keeps its number.

Pure functions and a small stateful matcher on NumPy arrays, no Lightning.

Sorted eigenvalues say how many directions are large, not which: when two modes' eigenvalues cross, a
rank's column is stitched from both. Eigen-directions keep the identity. :class:`ModeMatcher` takes each
measurement's top-k directions and gives each one an *identity*, an integer kept from measurement to
measurement while the direction stays the same:

- the overlap of a new direction ``v`` with a known identity's direction ``a`` is ``(aᵀv)²`` (1: the same
  direction, 0: orthogonal; the sign of an eigenvector means nothing);
- pairs are taken greedily, largest overlap first, and accepted above ``min_overlap`` (0.5 by default:
  more than half of the direction's energy; two orthonormal directions cannot both pass it for the
  same new direction, so a match is never ambiguous);
- a direction with no partner gets a new identity. In the bulk of the spectrum, where eigenvalues are
  nearly equal, directions are not defined and get new identities at nearly every measurement: they
  never last long enough to look learned.
- an identity's direction is updated only when matched, so two modes whose eigenvalues cross (for a
  measurement their directions mix) are found again when they separate; an identity unmatched for more
  than ``patience`` measurements is forgotten, which bounds the memory to ``(k + patience * k) x d``.

For sorted spectra recorded without directions, :func:`continuity_identities` gives identities from the
eigenvalues alone by following each curve's trend through crossings: a weaker guess, used as a fallback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["ModeMatcher", "continuity_identities", "identity_series"]


class ModeMatcher:
    """Identities for the top-k eigen-directions of successive measurements (see the module docs).

    Args:
        min_overlap: energy (sum of squared cosines) a direction must have in the span of the known
            identities to be explained by them; a measured direction with less is a new identity. Also the
            energy an identity must keep in the measured top-k span to stay alive.
        band: width, in log-eigenvalue, of the soft cluster of near-equal eigenvalues an identity's direction
            may move within from one measurement to the next (0.5: about a factor 1.6).
        patience: measurements an identity may stay outside the measured span before it is forgotten.
        max_identities: identities kept at most (the smallest values are dropped first); default ``2 k``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> basis, _ = np.linalg.qr(rng.standard_normal((6, 6)))
        >>> matcher = ModeMatcher()
        >>> ids, values, overlaps = matcher.update([3.0, 2.0, 1.0], basis[:, :3])
        >>> ids.tolist(), values.round(3).tolist()
        ([0, 1, 2], [3.0, 2.0, 1.0])
        >>> ids, values, _ = matcher.update([4.0, 3.0, 2.0], basis[:, [2, 0, 3]])  # 2 overtook 0; 1 left
        >>> ids.tolist(), values.round(3).tolist()
        ([2, 0, 3], [4.0, 3.0, 2.0])
    """

    def __init__(self, min_overlap: float = 0.5, band: float = 0.5, patience: int = 2,
                 max_identities: int | None = None) -> None:
        if not 0.0 < min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
        if not band > 0:
            raise ValueError(f"band must be > 0, got {band}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.min_overlap = min_overlap
        self.band = band
        self.patience = patience
        self.max_identities = max_identities
        self.next_identity = 0
        self._ids = np.zeros(0, dtype=np.int64)  # known identities, oldest first
        self._anchors = np.zeros((0, 0), dtype=np.float64)  # (d, n) their directions
        self._missed = np.zeros(0, dtype=np.int64)  # measurements each has been outside the measured span

    def __len__(self) -> int:
        return len(self._ids)

    def direction(self, identity: int) -> np.ndarray | None:
        """The current direction of ``identity`` (a copy), or None when it is not known (any more)."""
        where = np.flatnonzero(self._ids == identity)
        return None if not where.size else self._anchors[:, where[0]].astype(np.float32)

    def update(self, eigenvalues: ArrayLike, directions: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Follow the identities into one measurement: its top-k eigenvalues and directions (``d x k``).

        Returns ``(identities, values, overlaps)`` of the identities inside the measured span, by value
        descending: each one's eigenvalue (the Rayleigh quotient of its direction in the measured spectrum:
        inside a cluster of near-equal eigenvalues, the cluster's value) and its largest squared cosine with
        a measured eigen-direction (1: an eigen-direction of its own; lower: inside a cluster).
        """
        lam = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
        v = np.asarray(directions, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != len(lam):
            raise ValueError(f"directions must be (dim, k) with k = {len(lam)} eigenvalues, got shape {v.shape}")
        if self._anchors.size and self._anchors.shape[0] != v.shape[0]:
            raise ValueError(f"directions have dimension {v.shape[0]}, but earlier ones had {self._anchors.shape[0]}")
        finite = np.isfinite(lam) & np.all(np.isfinite(v), axis=0)
        lam, v = lam[finite], v[:, finite]
        norms = np.linalg.norm(v, axis=0)
        v = v / np.where(norms > 0, norms, 1.0)
        log_lam = np.log(np.maximum(lam, np.finfo(np.float64).tiny))
        if self._anchors.size:
            cos = self._anchors.T @ v  # (known, measured)
            weights = cos**2
            captured = weights.sum(axis=1)
            # move each direction within its cluster of near-equal eigenvalues (a soft projection)
            near = self._near(weights, log_lam)
            moved = v @ (cos * near).T
            moved_norms = np.linalg.norm(moved, axis=0)
            inside = captured >= self.min_overlap
            ok = inside & (moved_norms > 1e-6)
            self._anchors[:, ok] = moved[:, ok] / moved_norms[ok]
            self._missed = np.where(inside, 0, self._missed + 1)
            explained = weights.sum(axis=0) if len(self._ids) else np.zeros(v.shape[1])
        else:
            inside = np.zeros(0, dtype=bool)
            explained = np.zeros(v.shape[1])
        # measured directions the known identities do not explain are new identities
        fresh = np.flatnonzero(explained < self.min_overlap)
        if fresh.size:
            new_ids = self.next_identity + np.arange(fresh.size)
            self.next_identity += fresh.size
            self._ids = np.concatenate([self._ids, new_ids])
            self._anchors = np.concatenate([self._anchors.reshape(v.shape[0], -1), v[:, fresh]], axis=1)
            self._missed = np.concatenate([self._missed, np.zeros(fresh.size, dtype=np.int64)])
        self._forget(v.shape[1])
        cos = self._anchors.T @ v
        weights = cos**2
        captured = weights.sum(axis=1)
        alive = captured >= self.min_overlap
        # the value of the cluster around the best-matching direction: a tiny overlap with a huge eigenvalue
        # elsewhere (a collapsed top mode) must not leak into it
        clustered = weights * self._near(weights, np.log(np.maximum(lam, np.finfo(np.float64).tiny)))
        values = (clustered @ lam) / np.maximum(clustered.sum(axis=1), 1e-300)
        overlaps = weights.max(axis=1, initial=0.0)
        order = np.flatnonzero(alive)[np.argsort(-values[alive], kind="stable")]
        return self._ids[order].copy(), values[order], overlaps[order]

    def _near(self, weights: np.ndarray, log_lam: np.ndarray) -> np.ndarray:
        """(known, measured) closeness of each measured eigenvalue to that of each identity's best match."""
        if not weights.size:
            return weights
        reference = log_lam[np.argmax(weights, axis=1)]
        return np.exp(-0.5 * ((log_lam[None, :] - reference[:, None]) / self.band) ** 2)

    def _forget(self, k: int) -> None:
        """Drop identities gone too long, duplicates (the younger of two that became one) and the surplus."""
        keep = self._missed <= self.patience
        gram = (self._anchors.T @ self._anchors) ** 2
        np.fill_diagonal(gram, 0.0)
        duplicate = np.triu(gram > 1 - self.min_overlap / 2, 1).any(axis=0)  # column l duplicates an older i
        keep &= ~duplicate
        limit = self.max_identities if self.max_identities is not None else 2 * max(k, 1)
        if keep.sum() > limit:
            extra = np.flatnonzero(keep)[limit:]
            keep[extra] = False  # the youngest beyond the limit
        self._ids, self._anchors, self._missed = self._ids[keep], self._anchors[:, keep], self._missed[keep]

    def state_dict(self) -> dict[str, Any]:
        """The known identities and their directions (NumPy arrays and numbers)."""
        return {"min_overlap": self.min_overlap, "band": self.band, "patience": self.patience,
                "max_identities": -1 if self.max_identities is None else self.max_identities,
                "next_identity": self.next_identity, "ids": self._ids.copy(),
                "anchors": self._anchors.astype(np.float32), "missed": self._missed.copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.min_overlap, self.band = float(state["min_overlap"]), float(state["band"])
        self.patience = int(state["patience"])
        self.max_identities = None if int(state["max_identities"]) < 0 else int(state["max_identities"])
        self.next_identity = int(state["next_identity"])
        self._ids = np.asarray(state["ids"], dtype=np.int64).copy()
        self._anchors = np.asarray(state["anchors"], dtype=np.float64).copy()
        self._missed = np.asarray(state["missed"], dtype=np.int64).copy()


def identity_series(identities: ArrayLike) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Where each identity is, from a (T, k) array of identities (-1: none): ``{identity: (rows, columns)}``.

    Examples:
        >>> identity_series([[0, 1], [1, 0], [1, 2]])[1]
        (array([0, 1, 2]), array([1, 0, 0]))
    """
    ids = np.asarray(identities, dtype=np.int64)
    rows, columns = np.nonzero(ids >= 0)
    flat = ids[rows, columns]
    order = np.lexsort((rows, flat))
    flat, rows, columns = flat[order], rows[order], columns[order]
    bounds = np.flatnonzero(np.diff(flat)) + 1
    return {int(flat[chunk[0]]): (r, c) for chunk, r, c in
            zip(np.split(np.arange(len(flat)), bounds), np.split(rows, bounds), np.split(columns, bounds),
                strict=True) if len(chunk)}


def continuity_identities(steps: ArrayLike, eigenvalues: ArrayLike, *, smoothing: int = 5) -> np.ndarray:
    """Identities for sorted spectra without directions, by following each curve's trend (a fallback).

    Each row's sorted values are given to the curves of the row before in the order of their
    *predicted* values: the last value moved on by the curve's recent log-slope. A curve that is rising
    fast is predicted above a level one it is about to pass, so it takes the larger value and keeps its
    identity through the crossing; a decaying top mode goes down through the ranks the same way. The
    slopes come from the values after a trailing running median over ``smoothing`` rows (noise would otherwise
    swap curves at random). Returns a (T, k) int64 array of identities, ``-1`` where the value is NaN.

    Examples:
        >>> steps = np.arange(6.0)
        >>> rising, flat = np.array([0.01, 0.05, 0.2, 0.8, 2.0, 3.0]), np.ones(6)
        >>> rows = -np.sort(-np.stack([rising, flat], 1), axis=1)
        >>> continuity_identities(steps, rows).tolist()   # identity 1 is the rising curve throughout
        [[0, 1], [0, 1], [0, 1], [0, 1], [1, 0], [1, 0]]
    """
    s = np.asarray(steps, dtype=np.float64)
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    rows, k = values.shape
    ids = np.full((rows, k), -1, dtype=np.int64)
    if rows == 0:
        return ids
    logs = np.log(np.maximum(np.where(np.isfinite(values), values, np.nan), np.finfo(np.float64).tiny))
    filled = np.where(np.isfinite(logs), logs, np.nanmin(logs, initial=0.0) if np.isfinite(logs).any() else 0.0)
    # a trailing median: the identities of a row depend on the rows up to it only (detection stays causal)
    padded = np.concatenate([np.repeat(filled[:1], max(smoothing - 1, 0), axis=0), filled])
    smooth = np.median(np.lib.stride_tricks.sliding_window_view(padded, max(smoothing, 1), axis=0), axis=-1)
    # per curve (in the order of the previous row's values): its smoothed log value and log-slope
    width = int(np.isfinite(logs[0]).sum())
    ids[0, :width] = np.arange(width)
    level = smooth[0, :width].copy()
    slope = np.zeros(width)
    curve_ids = np.arange(width)
    for t in range(1, rows):
        width = int(np.isfinite(logs[t]).sum())
        dt = s[t] - s[t - 1]
        predicted = level + slope * dt
        n = min(width, len(predicted))
        order = np.argsort(-predicted[:n], kind="stable")  # curves by predicted value, largest first
        new_level = smooth[t, :n]
        new_slope = np.zeros(n)
        assigned = curve_ids[:n][order]
        prev = level[:n][order]
        new_slope = np.clip((new_level - prev) / dt, -np.inf, np.inf)
        # damp the slope estimate: one noisy row must not throw a curve across the spectrum
        new_slope = 0.5 * new_slope + 0.5 * slope[:n][order]
        ids[t, :n] = assigned
        extra = width - n
        fresh = np.arange(extra) + (curve_ids.max(initial=-1) + 1)
        ids[t, n:width] = fresh
        curve_ids = np.concatenate([assigned, fresh])
        level = np.concatenate([new_level, smooth[t, n:width]])
        slope = np.concatenate([new_slope, np.zeros(extra)])
    return ids
