"""Files from a recorded run: ``spectrum.npz`` (all arrays) and ``spectrum.csv`` (scalar columns)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lightning_stepwise.history import SCALAR_COLUMNS

__all__ = ["load_spectrum", "save_spectrum"]


def save_spectrum(
    arrays: Mapping[str, np.ndarray], directory: str | os.PathLike[str], stem: str = "spectrum"
) -> tuple[Path, Path]:
    """Write ``<stem>.npz`` (every array) and ``<stem>.csv`` (the scalar columns); return both paths.

    Example:
        >>> import tempfile
        >>> from lightning_stepwise.history import SpectrumHistory
        >>> h = SpectrumHistory(); h.append(measurement=0, step=0, eigenvalues=np.ones(2))
        >>> npz, csv_path = save_spectrum(h.as_arrays(), tempfile.mkdtemp())
        >>> load_spectrum(npz)["eigenvalues"].shape
        (1, 2)
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    npz_path = out / f"{stem}.npz"
    csv_path = out / f"{stem}.csv"
    np.savez(npz_path, **{k: np.asarray(v) for k, v in arrays.items()})
    columns = [c for c in SCALAR_COLUMNS if c in arrays]
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(len(arrays[columns[0]]) if columns else 0):
            writer.writerow([arrays[c][i].item() for c in columns])
    return npz_path, csv_path


def load_spectrum(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``spectrum.npz`` written by :func:`save_spectrum` (or a run folder holding one).

    Example:
        >>> load_spectrum("missing-run")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no spectrum file at missing-run/spectrum.npz
    """
    p = Path(path)
    if p.is_dir() or p.suffix != ".npz":
        p = p / "spectrum.npz"
    if not p.exists():
        raise FileNotFoundError(f"no spectrum file at {p}")
    with np.load(p) as data:
        return {k: data[k] for k in data.files}
