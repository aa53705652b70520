"""SpectrumTracker: measurement windows, their statistics, the eigensolve, the history and the onsets.

No Lightning in here: the tracker is fed step numbers, captured embeddings and losses, so it runs (and is
tested) without a Trainer. [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor] feeds it from Lightning's
hooks.

Per training batch, every DDP rank makes the same two calls, so every collective is entered by all:

    tracker.start_batch(step, epoch=epoch, lr=lr)         # opens a window when one is due
    ...                                                   # the training step; hooks capture embeddings
    tracker.end_batch({"criterion": tensors}, loss=loss)  # accumulates; closes the window once full
    tracker.take_recorded()                               # measurements recorded since the last call

and ``tracker.finish(step)`` at the end. A window opens at every step that is a multiple of
``every_n_steps``, or at the steps of the ``"auto"`` schedule (when none is open), and takes whole
batches until it holds ``window`` samples (all ranks together), however many steps that takes. Its
statistics stay on the embeddings' device; the eigensolve runs in a worker thread and is recorded when
the next window opens (the same batch on every rank), at [`finish`][lightning_stepwise.tracker.SpectrumTracker.finish]
and at
[`state_dict`][lightning_stepwise.tracker.SpectrumTracker.state_dict].

Collectives under DDP, all in lockstep: the first batch of a window agrees on the rows per batch and the
width once (the one host read of a fit) and starts the accumulators; closing a window reduces them and
the loss; a checkpoint gathers every rank's partial window.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_stepwise.accumulators import CovarianceRows
from lightning_stepwise.distributed import all_gather_floats, all_reduce_sum, distributed_rank, distributed_world_size
from lightning_stepwise.problems import PROBLEM_KINDS, ProblemCounter
from lightning_stepwise.schedule import MeasurementSchedule
from lightning_stepwise.solver import HostSolver, SolvedSpectrum
from lightning_stepwise.spectrum import SpectrumSummary
from lightning_stepwise.tracked_point import PointSpec, TrackedPoint

__all__ = ["SPECTRA", "Measurement", "PointSpec", "SpectrumTracker"]

#: What a tracker can measure: the covariance of all rows, or the two views' cross-correlation.
SPECTRA = ("covariance", "cross_correlation")
STATE_VERSION = 4  # 4: mode identities; 3: per-rank window statistics, problem counts (2: one rank's window)


@dataclass(frozen=True)
class Measurement:
    """One recorded spectrum of one tracking point (what loggers and the progress bar are sent).

    Examples:
        >>> tracker = SpectrumTracker(["head"], every_n_steps=1, window=8)
        >>> for step in range(2):
        ...     _ = tracker.start_batch(step)
        ...     tracker.end_batch({"head": [torch.randn(8, 3)]})
        >>> tracker.finish(2)
        >>> [(m.point, m.step, m.samples) for m in tracker.take_recorded()]
        [('head', 0, 8), ('head', 1, 8)]
    """

    point: str
    step: int
    epoch: int
    time: float
    lr: float
    samples: int
    loss: float
    eigenvalues: np.ndarray
    summary: SpectrumSummary
    modes_learned: int
    new_onsets: list[dict[str, float]]
    partial: bool
    directions: np.ndarray | None = None
    """The leading eigen-directions (``d x k`` float32 columns, in the order of ``eigenvalues``; ``k`` is at most
    ``mode_directions`` and the rank), or None without identity tracking."""


@dataclass
class _Window:
    step: int
    epoch: int
    time: float
    lr: float
    last_step: int
    loss_sum: Tensor | None = None
    loss_count: int = 0
    batches: int = 0
    partial_measurement: int | None = None


@dataclass
class _Pending:
    window: _Window
    measurement: int
    replaces_partial: bool
    partial: bool
    future: Future[tuple[dict[str, SolvedSpectrum], np.ndarray]] | None = None


class SpectrumTracker:
    """Covariance (or cross-correlation) spectra of embedding windows, their history and learned modes.

    Args:
        points: the tracking points, by name (plain names, or ``PointSpec(name, normalize=True)`` from
            ``lightning_stepwise.tracked_point`` to L2-normalise a point's rows first).
        every_n_steps: steps between the openings of two windows, or ``"auto"``: dense early, sparse later,
            as many as every 50 steps over ``total_steps`` (see
            [`MeasurementSchedule`][lightning_stepwise.schedule.MeasurementSchedule]).
        total_steps: the run's length in steps, for ``"auto"`` (also
            [`set_total_steps`][lightning_stepwise.tracker.SpectrumTracker.set_total_steps]).
        window: samples (embedding rows, all ranks) a window gathers before it is solved.
        top_k: eigenvalues kept per measurement (the summaries use all of them).
        mode_directions: eigen-directions obtained per measurement and followed by identity (see
            [`ModeMatcher`][lightning_stepwise.mode_identity.ModeMatcher]); 0 records sorted eigenvalues only.
        max_history: rows kept per point; beyond it the history thins itself evenly.
        spectrum: ``"covariance"`` or ``"cross_correlation"`` (rows must be two stacked views).
        onset_options: options of [`detect_onsets`][lightning_stepwise.onsets.detect_onsets].
        strict: raise on bad embeddings and failures instead of warning, counting and skipping.
        device: where the window statistics live (default: the embeddings' device); ranks that capture
            nothing in a batch still need it for the collectives.
        owner: name used in warnings.

    Examples:
        >>> tracker = SpectrumTracker(["head"], every_n_steps=2, window=32)
        >>> for step in range(6):
        ...     _ = tracker.start_batch(step, epoch=0, lr=0.1)
        ...     tracker.end_batch({"head": [torch.randn(32, 4)]}, loss=torch.tensor(1.0))
        >>> tracker.finish(6)
        >>> tracker.history("head")["step"].tolist(), tracker.history("head")["samples"].tolist()
        ([0, 2, 4], [32, 32, 32])
    """

    def __init__(
        self,
        points: Sequence[PointSpec | str],
        *,
        every_n_steps: int | str = 50,
        total_steps: int | None = None,
        window: int = 1024,
        top_k: int = 256,
        mode_directions: int = 64,
        max_history: int = 10_000,
        spectrum: str = "covariance",
        onset_options: Mapping[str, Any] | None = None,
        strict: bool = False,
        device: torch.device | str | None = None,
        owner: str = "SpectrumTracker",
    ) -> None:
        specs = [p if isinstance(p, PointSpec) else PointSpec(p) for p in points]
        if not specs or len({p.name for p in specs}) != len(specs):
            raise ValueError(f"points must be one or more distinct names, got {[p.name for p in specs]}")
        if spectrum not in SPECTRA:
            raise ValueError(f"spectrum must be one of {SPECTRA}, got {spectrum!r}")
        self.every_n_steps = every_n_steps
        self.schedule = MeasurementSchedule(every_n_steps, total_steps=total_steps)
        self.window_size = window
        self.top_k = top_k
        self.mode_directions = mode_directions
        self.spectrum = spectrum
        self.device = torch.device(device) if device is not None else None
        self.problems = ProblemCounter(owner, strict=strict,
                                       kinds=[kind for kind in PROBLEM_KINDS if kind != "failed_probes"])
        options = dict(onset_options or {})
        self._points = {s.name: TrackedPoint(s, max_history=max_history, onset_options=options,
                                             problems=self.problems) for s in specs}
        self._solver = HostSolver()
        self._pending: _Pending | None = None
        self._recorded: list[Measurement] = []
        self._latest: dict[str, Measurement] = {}
        self.window: _Window | None = None
        self.time = 0.0
        """Effective time: the sum of the learning rate over the steps counted so far."""
        self._lr = math.nan
        self.counted_step: int | None = None
        self.measurements = 0
        self.last_opened_step = -1

    # ------------------------------------------------------------------ records

    @property
    def point_names(self) -> list[str]:
        """The tracking points, in order."""
        return list(self._points)

    @property
    def specs(self) -> list[PointSpec]:
        """The tracking points as given, in order."""
        return [p.spec for p in self._points.values()]

    def __getstate__(self) -> dict[str, Any]:
        # pickled by ddp_spawn with the callbacks: what is in flight is recorded, the worker is not carried
        self.record_pending()
        return {**self.__dict__, "_solver": HostSolver()}

    def history(self, point: str) -> dict[str, np.ndarray]:
        """One point's measurements as arrays (see [`SpectrumHistory`][lightning_stepwise.history.SpectrumHistory])."""
        return self._point(point).history.as_arrays()

    def onset_records(self, point: str) -> list[dict[str, float]]:
        """One point's learned modes so far, by mode (copies: nothing outside changes the tracker's)."""
        records = self._point(point).onsets.records
        return sorted((dict(r) for r in records.values()), key=lambda r: r["mode"])

    def modes_learned(self, point: str) -> int:
        """How many modes of one point have been learned so far."""
        return len(self._point(point).onsets.records)

    def take_recorded(self) -> list[Measurement]:
        """Measurements recorded since the last call, oldest first (for loggers)."""
        recorded, self._recorded = self._recorded, []
        return recorded

    def latest_measurement(self, point: str) -> Measurement | None:
        """One point's last recorded measurement (kept by `take_recorded` too), or None before the first.

        Examples:
            >>> tracker = SpectrumTracker(["head"], every_n_steps=1, window=8, mode_directions=2)
            >>> tracker.latest_measurement("head") is None
            True
            >>> _ = tracker.start_batch(0)
            >>> tracker.end_batch({"head": [torch.randn(8, 3)]})
            >>> tracker.finish(1)
            >>> tracker.latest_measurement("head").directions.shape
            (3, 2)
        """
        self._point(point)  # an unknown name raises, naming the tracked ones
        return self._latest.get(point)

    def _point(self, name: str) -> TrackedPoint:
        if name not in self._points:
            raise KeyError(f"no tracking point {name!r}; tracked: {list(self._points)}")
        return self._points[name]

    @property
    def last_step(self) -> int:
        """The step of the last batch seen (-1 before any)."""
        return -1 if self.counted_step is None else self.counted_step

    def set_total_steps(self, total_steps: int | None) -> None:
        """The run's length, for ``every_n_steps="auto"`` (a fit that continues a run gets its new length)."""
        self.schedule = MeasurementSchedule(self.every_n_steps, total_steps=total_steps)

    # ------------------------------------------------------------------ per batch

    def start_batch(self, step: int, *, epoch: int = 0, lr: float = math.nan) -> bool:
        """Before a training batch of ``step`` (the steps completed so far); opens a window when one is due.

        Returns whether a window is open for this batch (the hooks need only capture then).
        """
        self._advance_time(step)
        self._lr = lr
        if self.window is None and self.schedule.due(step, last_opened=self.last_opened_step):
            self.record_pending()  # long finished by now: the previous window closed steps ago
            self.last_opened_step = step
            self.window = _Window(step=step, epoch=epoch, time=self.time, lr=lr, last_step=step)
        if self.window is not None:
            self.window.last_step = step
        return self.window is not None

    def _advance_time(self, step: int) -> None:
        if self.counted_step is not None and step > self.counted_step and math.isfinite(self._lr):
            self.time += self._lr * (step - self.counted_step)
        if self.counted_step is None or step > self.counted_step:
            self.counted_step = step

    def end_batch(self, captured: Mapping[str, Sequence[Tensor]], *, loss: Tensor | None = None,
                  batch_size: int | None = None) -> None:
        """After a training batch: add its captured tensors (per point) and loss to the open window.

        ``batch_size`` (the samples of the training batch, when known) lets the cross-correlation tell one
        forward pass of one view from one of both views concatenated.
        """
        window = self.window
        if window is None:
            return
        if loss is not None:
            loss = loss.detach().reshape(()).to(torch.float64)
            window.loss_sum = loss if window.loss_sum is None else window.loss_sum + loss
            window.loss_count += 1
        first = window.batches == 0
        window.batches += 1
        for p in self._points.values():
            rows = p.usable_rows(captured.get(p.name, ()), window_step=window.step, spectrum=self.spectrum,
                                 batch_size=batch_size)
            if first:
                p.begin(rows, window_size=self.window_size, spectrum=self.spectrum, window_step=window.step,
                        device=self.device)
            else:
                p.add(rows, self.device)
        active = [p for p in self._points.values() if p.accumulator is not None]
        if not active:
            self.window = None  # nothing to measure in this window (reported by the points)
        elif all(window.batches >= p.batches_needed(self.window_size) for p in active):
            self._close(partial=False)

    def _close(self, partial: bool) -> None:
        """Reduce the window across ranks and start its eigensolve; nothing here waits on the device."""
        window = self.window
        assert window is not None
        self.record_pending()  # at most one measurement in flight
        world = distributed_world_size()
        problems = {}
        for p in self._points.values():
            if p.accumulator is None:
                continue
            acc = p.accumulator
            if not partial and isinstance(acc, CovarianceRows) and acc.dropped_rows:
                self.problems.report("dropped_rows", f"`{p.spec.name}`: {acc.dropped_rows} rows arrived after the "
                                     "window's buffer was full (a batch brought more rows than the window's first: "
                                     "a larger batch, or more calls of the tracked module)",
                                     count=acc.dropped_rows, key=f"{p.spec.name}:dropped")
            if world > 1:
                if partial:  # a window kept open must keep this rank's own statistics for a resumed run
                    acc = copy.deepcopy(acc)
                acc.reduce_across_ranks()
            problems[p.spec.name] = acc.problem(directions=self.mode_directions)
            if not partial:
                p.accumulator = None
        spanned = window.last_step - window.step + 1
        # "auto" asks for windows every step early on: only a window longer than the late interval is slow
        allowed = self.schedule.interval(window.step)
        if self.schedule.is_auto:
            allowed = max(allowed, self.schedule.default_every)
        if spanned > allowed and not partial:
            self.problems.warn("slow_window", (
                f"the window opened at step {window.step} needed {window.batches} batches to gather "
                f"{self.window_size} samples, so it spanned {spanned} steps, more than the {allowed} steps "
                f"between measurements (every_n_steps={self.every_n_steps!r}): measurements are further apart than "
                "asked (the window is kept open until full, and `samples` says how many it holds). Lower `window` "
                "or raise `every_n_steps` to measure on schedule"))
        pending = _Pending(window=copy.copy(window), measurement=self.measurements,
                           replaces_partial=window.partial_measurement is not None, partial=partial)
        if problems:
            device = next(iter(problems.values())).matrix.device
            local = torch.zeros(2, dtype=torch.float64, device=device)
            if window.loss_count:
                local = torch.stack([window.loss_sum.to(device) / window.loss_count,
                                     torch.ones((), dtype=torch.float64, device=device)])
            loss_sums = all_reduce_sum(local)
            pending.future = self._solver.submit(problems, extra=loss_sums[:1] / loss_sums[1:])
        self._pending = pending
        if partial:
            window.partial_measurement = self.measurements
        else:
            self.window = None
            self.measurements += 1

    def record_pending(self) -> None:
        """Record the measurement whose eigensolve is in flight (waits for it): history, onsets."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.replaces_partial:  # recorded partially at a fit end: replace that row
            for p in self._points.values():
                p.history.drop_measurement(pending.measurement)
            self.problems.counts["partial_windows"] -= 1
        if pending.future is None:
            return
        try:
            solved, extra = pending.future.result()
        except Exception as err:
            if self.problems.strict:
                raise
            self.problems.report("failed_solves", f"the spectrum of the window at step {pending.window.step} could "
                                 f"not be computed ({type(err).__name__}: {err}); no spectrum recorded")
            return
        if pending.partial:
            self.problems.counts["partial_windows"] += 1
        for p in self._points.values():
            result = solved.get(p.spec.name)
            if result is not None:
                self._record(p, result, pending, float(extra[0]))

    def _record(self, p: TrackedPoint, result: SolvedSpectrum, pending: _Pending, loss: float) -> None:
        window = pending.window
        if int(result.skipped) > p.skipped_counted:  # a window kept open at fit end: count each skip once
            self.problems.report("non_finite_batches", "non-finite embeddings; those batches are skipped",
                                 count=int(result.skipped) - p.skipped_counted)
        p.skipped_counted = int(result.skipped) if pending.partial else 0
        if result.samples < 2:
            self.problems.report("empty_windows", f"`{p.spec.name}`: fewer than 2 usable samples in the window at "
                                 f"step {window.step}; no spectrum recorded", key=f"{p.spec.name}:too_few")
            return
        top = result.eigenvalues[: self.top_k]
        modes = p.identify_modes(result.eigenvalues, result.directions, commit=not pending.partial)
        p.history.append(
            measurement=pending.measurement, eigenvalues=top, modes=modes, step=window.step, epoch=window.epoch,
            time=window.time,
            lr=window.lr, lr_x_step=window.lr * window.step, samples=int(result.samples), loss=loss,
            trace=result.summary.trace, effective_rank=result.summary.effective_rank,
            participation_ratio=result.summary.participation_ratio)
        new = [] if pending.partial else p.update_onsets()
        measurement = Measurement(
            point=p.spec.name, step=window.step, epoch=window.epoch, time=window.time, lr=window.lr,
            samples=int(result.samples), loss=loss, eigenvalues=top, summary=result.summary,
            modes_learned=len(p.onsets.records), new_onsets=new, partial=pending.partial,
            directions=result.directions)
        self._recorded.append(measurement)
        self._latest[p.spec.name] = measurement

    def finish(self, step: int | None = None) -> None:
        """At the end of training: record what is in flight, and a window still open as a partial measurement.

        The open window stays open in [`state_dict`][lightning_stepwise.tracker.SpectrumTracker.state_dict]: a run
        resumed from a checkpoint taken now
        completes it and replaces the partial row. A collective under DDP (every rank calls it).
        """
        if step is not None:
            self._advance_time(step)
        self.record_pending()
        if self.window is not None and any(p.accumulator is not None for p in self._points.values()):
            self._close(partial=True)
            self.record_pending()

    def close(self) -> None:
        """End the worker thread (after recording what is in flight); the tracker stays usable."""
        try:
            self.record_pending()
        finally:
            self._solver.shutdown()

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, with every rank's partial window (a collective under DDP)."""
        self.record_pending()  # a measurement still in the eigensolver belongs in the checkpoint's history
        window = self.window
        return {
            "version": STATE_VERSION,
            "world_size": distributed_world_size(),
            "time": self.time,
            "lr": self._lr,
            "counted_step": self.counted_step,
            "measurements": self.measurements,
            "last_opened_step": self.last_opened_step,
            "problems": self.problems.totals(self.device or "cpu"),
            "points": {name: p.state_dict() for name, p in self._points.items()},
            "window": None if window is None else {
                "step": window.step, "epoch": window.epoch, "time": window.time, "lr": window.lr,
                "last_step": window.last_step, "batches": window.batches,
                "rank_losses": self._rank_losses(window),  # [loss sum, batches] of every rank
                "partial_measurement": window.partial_measurement,
            },
        }

    def _rank_losses(self, window: _Window) -> list[list[float]]:
        local = [math.nan if window.loss_sum is None else float(window.loss_sum), float(window.loss_count)]
        return all_gather_floats(local, self.device or "cpu")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`; ``ValueError`` for a state of another version."""
        if state.get("version") not in (3, STATE_VERSION):  # 3: no identities yet; they start afresh
            raise ValueError(f"state version {state.get('version')} is not {STATE_VERSION}")
        world, rank = distributed_world_size(), distributed_rank()
        same_world = int(state["world_size"]) == world
        self.time, self._lr = float(state["time"]), float(state["lr"])
        self.counted_step = None if state["counted_step"] is None else int(state["counted_step"])
        self.measurements = int(state["measurements"])
        self.last_opened_step = int(state["last_opened_step"])
        # rank zero's counts are the totals over ranks at the checkpoint; the others start from zero
        self.problems.load_state_dict(state["problems"], keep_rank_local=rank == 0)
        window_kept = same_world
        for name, p in self._points.items():
            saved = state["points"].get(name)
            if saved is None:
                self.problems.warn(f"{name}:state", f"the checkpoint has no history for `{name}` (it has "
                                   f"{sorted(state['points'])}); that point starts fresh")
                continue
            window_kept = p.load_state_dict(saved, same_world=same_world, rank=rank) and window_kept
        w = state["window"]
        if w is not None and not window_kept:
            self.problems.warn("resume_world", f"the checkpoint was taken in the middle of a measurement window by "
                               f"{state['world_size']} processes and is resumed by {world}: that window starts again")
            w = None
            self.last_opened_step = -1
            for p in self._points.values():
                p.accumulator = None
        self.window = None
        if w is not None:
            loss_sum, loss_count = w["rank_losses"][rank]
            self.window = _Window(
                step=int(w["step"]), epoch=int(w["epoch"]), time=float(w["time"]), lr=float(w["lr"]),
                last_step=int(w["last_step"]), batches=int(w["batches"]), loss_count=int(loss_count),
                loss_sum=None if math.isnan(loss_sum) else torch.tensor(loss_sum, dtype=torch.float64),
                partial_measurement=w["partial_measurement"])
