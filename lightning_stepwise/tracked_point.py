"""One tracking point inside a `SpectrumTracker`: its shape, accumulator and records.

The tracker owns the schedule (when windows open and close); a
[`TrackedPoint`][lightning_stepwise.tracked_point.TrackedPoint] owns what is per point:
checking a batch's rows, agreeing across ranks on the width and rows per batch once, choosing the
accumulator for a window, the history, the onsets and their checkpoint state.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_stepwise.accumulators import (
    CovarianceMoments,
    CovarianceRows,
    CrossCorrelationSums,
    WindowAccumulator,
    accumulator_from_state,
)
from lightning_stepwise.capture import to_embedding_rows, two_view_problem
from lightning_stepwise.distributed import all_gather_floats
from lightning_stepwise.history import SpectrumHistory
from lightning_stepwise.mode_identity import ModeMatcher
from lightning_stepwise.onset_core import ONSET_COLUMNS
from lightning_stepwise.onsets import OnsetTracker
from lightning_stepwise.problems import ProblemCounter
from lightning_stepwise.spectrum import uses_gram_route

__all__ = ["PointSpec", "TrackedPoint"]


@dataclass(frozen=True)
class PointSpec:
    """A tracking point as the tracker knows it: its name and whether rows are L2-normalised first.

    Examples:
        >>> PointSpec("criterion", normalize=True)
        PointSpec(name='criterion', normalize=True)
    """

    name: str
    normalize: bool = False


class TrackedPoint:
    """The per-point state of a tracker: agreed shape, the open window's accumulator, history and onsets.

    Args:
        spec: the point's name and normalisation.
        max_history: rows of history kept before it thins itself.
        onset_options: options of [`OnsetTracker`][lightning_stepwise.onsets.OnsetTracker].
        problems: the tracker's counter, where skipped batches and empty windows are reported.

    Examples:
        >>> from lightning_stepwise.problems import ProblemCounter
        >>> point = TrackedPoint(PointSpec("head"), problems=ProblemCounter("example"))
        >>> rows = point.usable_rows([torch.randn(8, 4)], window_step=0, spectrum="covariance")
        >>> point.begin(rows, window_size=32, spectrum="covariance")
        >>> point.dim, point.rows_per_batch, point.batches_needed(32)
        (4, 8, 4)
    """

    def __init__(self, spec: PointSpec, *, max_history: int = 10_000,
                 onset_options: Mapping[str, Any] | None = None, problems: ProblemCounter) -> None:
        self.spec = spec
        self.history = SpectrumHistory(max_history)
        self.onset_options = dict(onset_options or {})
        self.onsets = OnsetTracker(**self.onset_options)
        #: Identities of the eigen-directions, followed from measurement to measurement.
        self.matcher = ModeMatcher()
        #: The direction of each learned mode at its onset, by identity (float32, embedding space).
        self.onset_directions: dict[int, np.ndarray] = {}
        self.problems = problems
        # agreed across ranks at the first batch that brought rows anywhere
        self.dim: int | None = None
        self.rows_per_batch = 0
        self.rank_rows = 0
        self.float64 = False
        self.disabled = False
        self.accumulator: WindowAccumulator | None = None
        self.skipped_counted = 0
        self.skipped_not_two_views = False
        """Whether the last batch's rows were skipped for not being two views (cross-correlation)."""

    @property
    def name(self) -> str:
        """The point's name."""
        return self.spec.name

    def batches_needed(self, window_size: int) -> int:
        """Whole batches (all ranks) a window of ``window_size`` samples takes at the agreed rows per batch."""
        return math.ceil(window_size / max(self.rows_per_batch, 1))

    def usable_rows(self, tensors: Sequence[Tensor], *, window_step: int, spectrum: str,
                    batch_size: int | None = None) -> Tensor | None:
        """The batch's rows, or None (counted) when it brought none or unusable ones.

        For the cross-correlation the rows must be two stacked views (see
        [`two_view_problem`][lightning_stepwise.capture.two_view_problem]; ``batch_size``, the samples of the
        training batch when known, tells one forward pass of one view from one of both views concatenated).
        """
        name = self.name
        self.skipped_not_two_views = False
        if self.disabled:
            return None
        rows, notes = to_embedding_rows(tensors) if tensors else (None, [])
        for key, message in notes:
            if key != "no_rows":
                self.problems.warn(f"{name}:{key}", f"{name}: {message}")
        if rows is None:
            if self.dim is not None:
                self.problems.report("empty_batches", f"`{name}` captured no embeddings in a batch of the window "
                                     f"at step {window_step}", key=f"{name}:empty")
            return None
        if self.dim is not None and rows.shape[1] != self.dim:
            self.problems.report("malformed_batches", f"`{name}`: embedding width changed from {self.dim} to "
                                 f"{rows.shape[1]}; batch skipped", key=f"{name}:width")
            return None
        if spectrum == "cross_correlation":
            width = rows.shape[1]
            counts = [int(t.shape[0]) for t in tensors
                      if torch.is_floating_point(t) and t.ndim >= 2 and math.prod(t.shape[1:]) == width]
            problem = two_view_problem(counts, batch_size)
            if problem is not None:
                self.skipped_not_two_views = True
                self.problems.report("malformed_batches", (
                    f"`{name}` captured rows that are not two views of equal size ({problem}), so there is no "
                    "cross-correlation between views for this batch; its rows are skipped. "
                    "spectrum='cross_correlation' needs a training step that embeds two views of the same samples "
                    "(both views through the tracked module, one forward each or concatenated). For a model "
                    "trained on one view, use spectrum='covariance' (the default); or point the monitor at both "
                    "views' embeddings stacked with embedding_fn=lambda pl_module, batch: "
                    "torch.cat([pl_module(x) for x in batch[0][:2]]) (for Lightly's ((view0, view1), labels) "
                    "batches)"), key=f"{name}:two_views")
                return None
        if self.problems.strict and not bool(torch.isfinite(rows).all()):
            raise RuntimeError(f"{self.problems.owner} (strict=True): non-finite embeddings at `{name}`")
        return rows

    def begin(self, rows: Tensor | None, *, window_size: int, spectrum: str, window_step: int = 0,
              device: torch.device | None = None) -> None:
        """A window's first batch: agree on the shape once (all ranks), make and start the accumulator."""
        if self.disabled:
            return
        if self.dim is None:
            self._agree(rows, device)
            if self.dim is None:
                if self.skipped_not_two_views:  # counted, not warned again: the two-view warning said why
                    self.problems.report("empty_windows", f"`{self.name}`: no spectrum for the window at step "
                                         f"{window_step}: its rows were not two views", key=f"{self.name}:two_views")
                elif not self.disabled:
                    self.problems.report(
                        "empty_windows", f"`{self.name}` produced no embeddings in the first batch of the window "
                        f"at step {window_step}: it was not called in the training step, or its output is not a "
                        "(batch, dim) floating tensor; no spectrum for this window. Point the monitor at the "
                        "embeddings with module=... or embedding_fn=...", key=f"{self.name}:no_rows")
                return
        device = device or (rows.device if rows is not None else torch.device("cpu"))
        acc: WindowAccumulator
        if spectrum == "cross_correlation":
            acc = CrossCorrelationSums(self.dim, normalize=self.spec.normalize, device=device)
        elif uses_gram_route(window_size, self.dim):
            # whole batches, as the other routes take them: the rows one process seeing the global batch has
            acc = CovarianceRows(self.dim, capacity=self.batches_needed(window_size) * self.rank_rows,
                                 normalize=self.spec.normalize,
                                 dtype=torch.float64 if self.float64 else torch.float32, device=device)
        else:
            acc = CovarianceMoments(self.dim, normalize=self.spec.normalize, device=device)
        acc.begin(rows)
        if rows is not None:
            acc.update(rows)
        self.accumulator = acc

    def add(self, rows: Tensor | None, device: torch.device | None = None) -> None:
        """A later batch of the open window."""
        if self.accumulator is None:
            return
        if device is not None and self.accumulator.device != device:
            self.accumulator.to(device)  # restored from a checkpoint on the CPU
        if rows is not None:
            self.accumulator.update(rows)

    def _agree(self, rows: Tensor | None, device: torch.device | None) -> None:
        """Rows per batch over all ranks, the most on one rank, the width and precision (a host read under DDP)."""
        local = [float(rows.shape[0]), float(rows.shape[1]), float(rows.dtype == torch.float64)] if rows is not None \
            else [0.0, 0.0, 0.0]
        table = all_gather_floats(local, device or (rows.device if rows is not None else "cpu"))
        dims = {int(d) for n, d, _ in table if n > 0}
        if len(dims) > 1:
            self.disabled = True
            self.problems.warn(f"{self.name}:ranks", f"`{self.name}`: processes captured embeddings of different "
                               f"widths {sorted(dims)}; this point is not measured")
            return
        if dims:
            self.dim = dims.pop()
            self.rows_per_batch = int(sum(n for n, _, _ in table))
            self.rank_rows = int(max(n for n, _, _ in table))
            self.float64 = any(f > 0 for n, _, f in table if n > 0)

    def identify_modes(self, eigenvalues: np.ndarray, directions: np.ndarray | None, *,
                       commit: bool = True) -> dict[str, np.ndarray] | None:
        """The per-mode columns of one measurement (identities, eigenvalues, overlaps), or None without directions.

        ``commit=False`` (a partial window, measured again later) leaves the identities as they were.
        """
        if directions is None or not directions.shape[1]:
            return None
        matcher = self.matcher if commit else copy.deepcopy(self.matcher)
        try:
            ids, values, overlaps = matcher.update(eigenvalues[: directions.shape[1]], directions)
        except Exception as err:
            if self.problems.strict:
                raise
            self.problems.report("failed_onset_updates", f"`{self.name}`: mode identities could not be followed "
                                 f"({type(err).__name__}: {err}); this measurement has none")
            return None
        return {"mode_ids": ids, "mode_eigenvalues": values, "mode_overlap": overlaps}

    def update_onsets(self) -> list[dict[str, float]]:
        """Run onset detection on the history; the modes newly learned (a failure is counted, not raised).

        Per identity when the history has identity-tracked modes; on the sorted eigenvalues otherwise.
        """
        arrays = self.history.as_arrays()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if "mode_ids" in arrays and arrays["mode_ids"].shape[1]:
                    new = self.onsets.update(arrays["step"], arrays["mode_eigenvalues"], mode_ids=arrays["mode_ids"],
                                             epochs=arrays["epoch"], times=arrays["time"])
                else:
                    new = self.onsets.update(arrays["step"], arrays["eigenvalues"], epochs=arrays["epoch"],
                                             times=arrays["time"])
            for record in new:
                direction = self.matcher.direction(int(record["identity"]))
                if direction is not None:
                    self.onset_directions[int(record["identity"])] = direction
            return new
        except Exception as err:
            if self.problems.strict:
                raise
            self.problems.report("failed_onset_updates", f"onset detection failed ({err}); modes_learned is not "
                                 "updated")
            return []

    def state_dict(self) -> dict[str, Any]:
        """History, onsets, agreed shape and every rank's partial window (a collective under DDP)."""
        records = sorted(self.onsets.records.values(), key=lambda r: r["mode"])
        return {
            "history": self.history.state_dict(),
            "onsets": torch.tensor([[float(r[c]) for c in ONSET_COLUMNS] for r in records],
                                   dtype=torch.float64).reshape(-1, len(ONSET_COLUMNS)),
            "onset_columns": list(ONSET_COLUMNS), "onset_tracker": self.onsets.state_dict(),
            "dim": self.dim, "rows_per_batch": self.rows_per_batch, "rank_rows": self.rank_rows,
            "float64": self.float64, "disabled": self.disabled, "skipped_counted": self.skipped_counted,
            "accumulators": None if self.accumulator is None else self.accumulator.rank_state_dicts(),
            "matcher": {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                        for k, v in self.matcher.state_dict().items()},
            "onset_directions": {str(i): torch.from_numpy(d) for i, d in self.onset_directions.items()},
        }

    def load_state_dict(self, saved: Mapping[str, Any], *, same_world: bool, rank: int) -> bool:
        """Restore `state_dict`; returns False when a partial window had to be dropped (world changed)."""
        self.history.load_state_dict(saved["history"])
        records = [dict(zip(saved["onset_columns"], row, strict=True)) for row in saved["onsets"].tolist()]
        self.onsets = OnsetTracker(**self.onset_options)
        self.onsets.load_state_dict(saved["onset_tracker"], records)
        self.matcher = ModeMatcher()
        if "matcher" in saved:
            self.matcher.load_state_dict({k: v.numpy() if isinstance(v, torch.Tensor) else v
                                          for k, v in saved["matcher"].items()})
        self.onset_directions = {int(i): d.numpy() for i, d in saved.get("onset_directions", {}).items()}
        self.skipped_counted = int(saved["skipped_counted"])
        self.accumulator = None
        if not same_world:  # the agreement holds for the same ranks; a new world agrees again
            return saved["accumulators"] is None
        self.dim, self.rows_per_batch = saved["dim"], int(saved["rows_per_batch"])
        self.rank_rows = int(saved["rank_rows"])
        self.float64, self.disabled = bool(saved["float64"]), bool(saved["disabled"])
        if saved["accumulators"] is not None:
            self.accumulator = accumulator_from_state(saved["accumulators"][rank])
        return True
