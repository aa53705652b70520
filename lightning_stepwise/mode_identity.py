"""Mode identity: which eigen-direction of one measurement is which of the last, so a mode keeps its number.

Pure functions and a small stateful matcher on NumPy arrays, no Lightning.

Sorted eigenvalues say how many directions are large, not which: when two modes' eigenvalues cross, a
rank's column is stitched from both. Eigen-directions keep the identity.
[`ModeMatcher`][lightning_stepwise.mode_identity.ModeMatcher] follows a
set of unit directions, one per *identity* (an integer a mode keeps for the whole run), through each
measurement's top-k eigenvalues ``λ_j`` and eigen-directions ``v_j``:

- an identity's weights on the measured directions are its squared cosines ``w_j = (aᵀv_j)²`` (the sign of
  an eigenvector means nothing); its *value* is the weighted mean eigenvalue over the directions whose
  eigenvalue is near that of its best match (within ``band`` in log scale). For a mode with an
  eigenvalue of its own that is its eigenvalue; for modes sharing a plateau (nearly equal eigenvalues,
  whose directions the measurement noise mixes from one window to the next) it is the plateau. A tiny
  overlap with a huge eigenvalue elsewhere (a collapsed top mode) does not leak in.
- each identity's direction moves to its projection on those nearby directions (renormalised), so it
  follows a mode that rotates slowly, and stays inside a cluster of near-equal eigenvalues instead of
  jumping between its members;
- a measured direction that the known identities do not explain (less than ``min_overlap`` of its energy
  in their span) starts a new identity; identities that leave the measured span for more than
  ``patience`` measurements, or that become copies of an older one, are forgotten. Identities are
  therefore about ``k``, whatever the length of the run: memory ``(about 2k) x d``.

Matching uses the subspace structure, not the ranks, so a mode keeps its number when its eigenvalue
crosses another's, and a rising mode is not confused with the plateau it passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["FollowedModes", "ModeMatcher", "follow_modes", "identity_series"]


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
        self._prune_surplus(v)
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

    def _prune_surplus(self, v: np.ndarray) -> None:
        """No more identities inside the measured span than measured directions: drop the most redundant."""
        inside = np.flatnonzero(((self._anchors.T @ v) ** 2).sum(axis=1) >= self.min_overlap)
        surplus = len(inside) - v.shape[1]
        if surplus <= 0:
            return
        gram = (self._anchors[:, inside].T @ self._anchors[:, inside]) ** 2
        np.fill_diagonal(gram, 0.0)
        drop = []
        for _ in range(surplus):
            redundancy = gram.max(axis=1)
            # the most redundant (its direction is most nearly another's); among equals, the youngest
            worst = int(np.lexsort((-np.arange(len(inside)), -redundancy))[0])
            drop.append(inside[worst])
            gram[worst, :] = gram[:, worst] = -1.0
        keep = np.ones(len(self._ids), dtype=bool)
        keep[drop] = False
        self._ids, self._anchors, self._missed = self._ids[keep], self._anchors[:, keep], self._missed[keep]

    def state_dict(self) -> dict[str, Any]:
        """The known identities and their directions (NumPy arrays and numbers)."""
        return {"min_overlap": self.min_overlap, "band": self.band, "patience": self.patience,
                "max_identities": -1 if self.max_identities is None else self.max_identities,
                "next_identity": self.next_identity, "ids": self._ids.copy(),
                "anchors": self._anchors.astype(np.float32), "missed": self._missed.copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore [`state_dict`][lightning_stepwise.mode_identity.ModeMatcher.state_dict]."""
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


class FollowedModes(NamedTuple):
    """Identity-tracked trajectories, as the monitor records them.

    What [`follow_modes`][lightning_stepwise.mode_identity.follow_modes] returns.

    Examples:
        >>> followed = follow_modes(np.array([[2.0, 1.0]]), np.eye(2)[None])  # one row, two directions
        >>> followed.mode_ids.tolist(), followed.mode_eigenvalues.tolist()
        ([[0, 1]], [[2.0, 1.0]])
    """

    mode_ids: np.ndarray
    """(T, k) identity of each value (-1: none), by value descending in each row."""
    mode_eigenvalues: np.ndarray
    """(T, k) each identity's eigenvalue (NaN: none)."""
    mode_overlap: np.ndarray
    """(T, k) each identity's overlap with its best-matching measured direction (NaN: none)."""
    directions: list[dict[int, np.ndarray]] | None
    """Per row, ``{identity: direction}`` after that row (only with ``keep_directions=True``)."""


def follow_modes(eigenvalues: ArrayLike, directions: ArrayLike, *, matcher: ModeMatcher | None = None,
                 keep_directions: bool = False) -> FollowedModes:
    """Follow identities through measurements: (T, k) eigenvalues and (T, d, k) directions, row by row.

    What the monitor does at each measurement, for a whole recorded or generated run at once. ``matcher``
    continues an existing matcher (a new ``ModeMatcher()`` by default); ``keep_directions`` also returns each
    live identity's direction after every row (``d x k`` floats per row).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> basis, _ = np.linalg.qr(rng.standard_normal((4, 4)))
        >>> eigenvalues = np.array([[3.0, 2.0], [4.0, 3.0]])  # the second direction overtakes the first
        >>> followed = follow_modes(eigenvalues, np.stack([basis[:, :2], basis[:, [1, 0]]]))
        >>> followed.mode_ids.tolist()
        [[0, 1], [1, 0]]
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    v = np.asarray(directions)
    if lam.ndim != 2 or v.ndim != 3 or v.shape[0] != lam.shape[0] or v.shape[2] != lam.shape[1]:
        raise ValueError(f"need (T, k) eigenvalues and (T, d, k) directions, got shapes {lam.shape} and {v.shape}")
    matcher = matcher if matcher is not None else ModeMatcher()
    rows, k = lam.shape
    ids = np.full((rows, k), -1, dtype=np.int64)
    values, overlaps = np.full((rows, k), np.nan), np.full((rows, k), np.nan)
    kept: list[dict[int, np.ndarray]] | None = [] if keep_directions else None
    for t in range(rows):
        i, value, overlap = matcher.update(lam[t], v[t])
        n = min(len(i), k)
        ids[t, :n], values[t, :n], overlaps[t, :n] = i[:n], value[:n], overlap[:n]
        if kept is not None:
            kept.append({int(n_): direction for n_ in i[:n] if (direction := matcher.direction(int(n_))) is not None})
    return FollowedModes(ids, values, overlaps, kept)
