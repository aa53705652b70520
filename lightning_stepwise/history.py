"""A bounded, self-thinning record of spectrum measurements."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["MODE_COLUMNS", "SCALAR_COLUMNS", "SpectrumHistory"]

SCALAR_COLUMNS: tuple[str, ...] = (
    "measurement",
    "step",
    "epoch",
    "time",
    "lr_x_step",
    "lr",
    "samples",
    "loss",
    "trace",
    "effective_rank",
    "participation_ratio",
)
"""Columns holding one number per measurement, in the order they are written to CSV."""
_INTEGER_COLUMNS = frozenset({"measurement", "step", "epoch", "samples"})

MODE_COLUMNS: dict[str, float] = {"mode_ids": -1, "mode_eigenvalues": math.nan, "mode_overlap": math.nan}
"""Per-mode columns (one value per identity-tracked mode in a row, by eigenvalue descending), with their
padding: the identity of each mode (see [`ModeMatcher`][lightning_stepwise.mode_identity.ModeMatcher]), its
eigenvalue, and its largest squared cosine with a measured eigen-direction."""


class SpectrumHistory:
    """Rows of (scalars, top-k eigenvalues, identity-tracked modes), at most ``max_rows`` of them.

    When full, every other row is dropped and only every second measurement is kept from then on
    (``stride`` doubles), so the history stays an evenly thinned record of the whole run, whatever
    its length. A row is identified by its ``measurement`` index (0, 1, 2, ... over the run).

    Examples:
        >>> h = SpectrumHistory(max_rows=4)
        >>> for i in range(10):
        ...     h.append(measurement=i, step=10 * i, eigenvalues=np.ones(3))
        >>> h.as_arrays()["step"].tolist(), h.stride
        ([0, 40, 80], 4)
    """

    def __init__(self, max_rows: int = 10_000) -> None:
        if max_rows < 2:
            raise ValueError(f"max_rows must be >= 2, got {max_rows}")
        self.max_rows = max_rows
        self.stride = 1
        self._rows: list[dict[str, Any]] = []
        self._arrays: dict[str, np.ndarray] | None = None  # as_arrays(), kept up to date by append

    def __len__(self) -> int:
        return len(self._rows)

    def wants(self, measurement: int) -> bool:
        """Whether a row for this measurement index would be kept."""
        return measurement % self.stride == 0

    def append(self, *, measurement: int, eigenvalues: np.ndarray, modes: Mapping[str, np.ndarray] | None = None,
               **scalars: float) -> None:
        """Record one measurement (ignored when thinning has dropped its index).

        ``modes`` holds the columns of [`MODE_COLUMNS`][lightning_stepwise.history.MODE_COLUMNS].
        """
        if not self.wants(measurement):
            return
        if self._rows and measurement <= self._rows[-1]["measurement"]:
            raise ValueError(
                f"measurement {measurement} is not after the last recorded one "
                f"({self._rows[-1]['measurement']})"
            )
        unknown = set(scalars) - set(SCALAR_COLUMNS)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}; known: {SCALAR_COLUMNS}")
        row = {name: scalars.get(name, -1 if name in _INTEGER_COLUMNS else math.nan) for name in SCALAR_COLUMNS}
        row["measurement"] = measurement
        row["eigenvalues"] = np.asarray(eigenvalues, dtype=np.float64).copy()
        for name in MODE_COLUMNS:
            if modes is not None and name in modes:
                row[name] = np.asarray(modes[name], dtype=np.int64 if name == "mode_ids" else np.float64).copy()
        self._rows.append(row)
        if len(self._rows) >= self.max_rows:
            self.stride *= 2
            self._rows = [r for r in self._rows if r["measurement"] % self.stride == 0]
            self._arrays = None
        elif self._arrays is not None:
            self._extend_arrays(row)

    def _extend_arrays(self, row: Mapping[str, Any]) -> None:
        """Add one row to the cached arrays (a C-level copy: the monitor reads them after every measurement)."""
        arrays = self._arrays
        assert arrays is not None
        if ("mode_ids" in row) != ("mode_ids" in arrays) and "mode_ids" in row:
            self._arrays = None  # the first row with identities: rebuild with their columns
            return
        for name in SCALAR_COLUMNS:
            arrays[name] = np.append(arrays[name], np.asarray(row[name], dtype=arrays[name].dtype))
        vectors = [("eigenvalues", math.nan)] + (list(MODE_COLUMNS.items()) if "mode_ids" in arrays else [])
        for name, pad in vectors:
            old = arrays[name]
            new = np.asarray(row.get(name, ()), dtype=old.dtype)
            width = max(old.shape[1], len(new))
            grown = np.full((old.shape[0] + 1, width), pad, dtype=old.dtype)
            grown[:-1, : old.shape[1]] = old
            grown[-1, : len(new)] = new
            arrays[name] = grown

    def drop_measurement(self, measurement: int) -> None:
        """Forget the row of one measurement index, if present (to re-record it)."""
        self._rows = [r for r in self._rows if r["measurement"] != measurement]
        self._arrays = None

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The history as NumPy arrays: one per scalar column plus ``eigenvalues`` (rows x k)."""
        if self._arrays is None:
            self._arrays = self._build_arrays()
        return {name: a.copy() for name, a in self._arrays.items()}

    def _build_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for name in SCALAR_COLUMNS:
            dtype = np.int64 if name in _INTEGER_COLUMNS else np.float64
            arrays[name] = np.array([r[name] for r in self._rows], dtype=dtype)
        arrays["eigenvalues"] = self._vectors("eigenvalues", math.nan, np.float64)
        if any("mode_ids" in r for r in self._rows):
            for name, pad in MODE_COLUMNS.items():
                arrays[name] = self._vectors(name, pad, np.int64 if name == "mode_ids" else np.float64)
        return arrays

    def _vectors(self, name: str, pad: float, dtype: type) -> np.ndarray:
        width = max((len(r[name]) for r in self._rows if name in r), default=0)
        out = np.full((len(self._rows), width), pad, dtype=dtype)
        for i, r in enumerate(self._rows):
            if name in r:
                out[i, : len(r[name])] = r[name]
        return out

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain numbers only, so checkpoints load with ``weights_only=True``."""
        arrays = self.as_arrays()
        return {
            "max_rows": self.max_rows,
            "stride": self.stride,
            "columns": {name: torch.from_numpy(a) for name, a in arrays.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from [`state_dict`][lightning_stepwise.history.SpectrumHistory.state_dict]."""
        self.stride = int(state["stride"])
        self._arrays = None
        columns = {name: np.asarray(t.numpy() if isinstance(t, torch.Tensor) else t)
                   for name, t in state["columns"].items()}
        self._rows = []
        for i in range(len(columns["measurement"])):
            row: dict[str, Any] = {name: columns[name][i].item() for name in SCALAR_COLUMNS}
            row["eigenvalues"] = columns["eigenvalues"][i].copy()
            if "mode_ids" in columns:
                ids = columns["mode_ids"][i]
                width = int((ids >= 0).sum())  # rows are padded to the widest: keep this row's own width
                for name in MODE_COLUMNS:
                    row[name] = columns[name][i][:width].copy()
            self._rows.append(row)
