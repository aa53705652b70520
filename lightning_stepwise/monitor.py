"""StepwiseMonitor: the Lightning callback that feeds a [`SpectrumTracker`][lightning_stepwise.tracker.SpectrumTracker].

The callback finds and hooks the embeddings, tells the tracker the step, learning rate and loss of each
batch, and sends what the tracker records to the loggers, the progress bar and the run's files. All the
measuring (windows, statistics, eigensolves, history, onsets, checkpoint state) is the tracker's.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from lightning_stepwise.capture import (
    ModuleSpec,
    NoEmbeddingFoundError,
    TrackingPoint,
    batch_size_of,
    find_tracking_points,
)
from lightning_stepwise.embedding_suggestion import describe_batch, suggest_embedding_fn
from lightning_stepwise.embedding_tap import EmbeddingTap
from lightning_stepwise.history import SpectrumHistory
from lightning_stepwise.lightning_compat import (
    Callback,
    cuda_devices,
    default_output_dir,
    log_figure,
    logging_step,
    module_loss,
    optimizer_lr,
    print_line,
    total_steps,
)
from lightning_stepwise.monitor_options import _given, check_monitor_options
from lightning_stepwise.problems import StepwiseWarning
from lightning_stepwise.report import final_onset_table, save_problems, write_run_files
from lightning_stepwise.theory import TheoryPrediction
from lightning_stepwise.tracker import Measurement, PointSpec, SpectrumTracker

__all__ = ["StepwiseMonitor", "StepwiseWarning", "find_monitor"]

EmbeddingFn = Callable[[Any, Any], Tensor]


def find_monitor(trainer: Any) -> StepwiseMonitor | None:
    """The Trainer's first [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor], if any.

    Examples:
        >>> from types import SimpleNamespace
        >>> find_monitor(SimpleNamespace(callbacks=[StepwiseMonitor()])) is not None
        True
    """
    return next((cb for cb in trainer.callbacks if isinstance(cb, StepwiseMonitor)), None)


def learned_since(trainer: Any, seen: int) -> int | None:
    """The Trainer's monitor's count of learned modes when it has grown past ``seen``, else None.

    What callbacks that act on each newly learned mode (the probe, the atlas) check after a batch.

    Examples:
        >>> from types import SimpleNamespace
        >>> learned_since(SimpleNamespace(callbacks=[]), 0) is None  # no monitor: never
        True
    """
    monitor = find_monitor(trainer)
    return monitor.modes_learned if monitor is not None and monitor.modes_learned > seen else None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _module_key(module: Any) -> Any:
    """``module=`` in the checkpoint's state key: paths as given, a submodule by its class (its repr is long)."""
    if isinstance(module, nn.Module):
        return f"<{type(module).__name__}>"
    if isinstance(module, (list, tuple)) and any(isinstance(m, nn.Module) for m in module):
        return [_module_key(m) for m in module]
    return module


class StepwiseMonitor(Callback):
    """Track the covariance eigenvalues of a module's embeddings during training.

    Works with an unchanged Lightly or plain Lightning SSL module, under ``lightning.pytorch`` and
    ``pytorch_lightning`` Trainers. Every ``every_n_steps`` steps a measurement window opens; the
    embeddings of the following training batches are accumulated on their device until ``window``
    samples are in (all ranks together), however many steps that takes. The eigenvalues of their
    covariance (float64) are then solved in a worker thread, without the training loop waiting for the
    GPU, and recorded in ``history``, the loggers and the progress bar when the next window opens. At fit
    end ``spectrum.npz``, ``spectrum.csv``, the onset tables, ``problems.json`` and ``stepwise.png`` are
    written to ``dirpath`` (default ``<trainer.log_dir>/stepwise``).

    *Steps* are Lightning's logging steps (the x axis of ``self.log`` and ``LearningRateMonitor``):
    optimizer steps under automatic optimization, gradient accumulation included; training batches under
    manual optimization, however many optimizers step in them. *Effective time* (``time``) is the sum
    over the steps of the learning rate of ``trainer.optimizers[lr_optimizer]`` (its first parameter
    group). The recorded ``loss`` is the loss the module computed (Lightning's division by
    ``accumulate_grad_batches`` undone), averaged over the window's batches and the ranks.

    Fitting the same monitor again continues its history when the run continues (the same module, and
    a step not before the last one recorded, as with a larger ``max_steps`` or a resumed checkpoint) and
    starts a new one otherwise (a new Trainer from step 0, or another module).

    Args:
        module: dotted path of the submodule to track (its output, or its online inputs when it is a
            ``lightly.loss`` loss), or the submodule itself (``model.projection_head``), or a list of them to track
            several points. A path that names no submodule stops ``fit`` at set-up with the close matches
            ("Did you mean `backbone`?"). ``None``: auto-detect (a Lightly
            prototype layer's or loss's online inputs, else ``projection_head``, else ``backbone``; see
            ``lightning_stepwise.capture``).
        embedding_fn: ``embedding_fn(pl_module, batch) -> Tensor`` instead of a hook; called under
            ``no_grad`` before the training step, with the RNG and the module's buffers restored after.
        normalize: L2-normalise each embedding before the covariance. ``None``: do what the hooked
            loss does (True for NT-Xent, DCL, ... inputs; False otherwise).
        every_n_steps: steps between the openings of two measurement windows, or ``"auto"`` (the default):
            as many measurements as every 50 steps would give over the run, a third of them log-spaced over its
            first tenth (step 0, 1, 2, 3, 4, 6, 8, ...: the first modes often rise within a hundred steps) and
            the rest evenly spaced after it (see
            [`MeasurementSchedule`][lightning_stepwise.schedule.MeasurementSchedule]).
        window: samples (embedding rows, all views and ranks together) per measurement.
        top_k: eigenvalues kept per measurement (the summaries use all of them).
        mode_directions: leading eigen-directions obtained at each measurement and followed by identity, so a
            mode keeps its number when its eigenvalue crosses another's; onsets are then detected per
            identity. 0 turns identity tracking off (onsets from the sorted eigenvalues).
        log_top_k: leading eigenvalues also sent to the loggers as scalars.
        max_history: rows kept in memory; beyond it the history thins itself evenly.
        dirpath: folder for the files; default ``<trainer.log_dir>/stepwise``.
        name: prefix of logged metric names.
        prog_bar: show the effective rank and the number of learned modes in the progress bar.
        strict: raise instead of warning, counting and skipping (bad embeddings, failed eigensolves).
        onset_options: options of [`detect_onsets`][lightning_stepwise.onsets.detect_onsets] (``min_rise``,
            ``min_relative_plateau``, ``smoothing``, ``plateau_rows``) for the online detection of learned modes.
        verbose: print one line per newly learned mode (global rank zero only).
        plot_x: x axis of ``stepwise.png``: ``"step"`` or ``"time"`` (effective time).
        save_figure: write ``stepwise.png`` at fit end and send it to loggers that take images
            (TensorBoard, W&B).
        spectrum: ``"covariance"`` (the covariance of all captured rows) or ``"cross_correlation"``
            (the eigenvalues of ``C = (Z0ᵀZ1 + Z1ᵀZ0)/2n`` between the two views of each step, uncentred:
            the linear theory's matrix; the captured rows of a step must be the two views stacked).
        theory: a [`TheoryPrediction`][lightning_stepwise.theory.TheoryPrediction] to hold the run against: its
            curves are drawn dashed in ``stepwise.png`` and the onset table gets
            ``predicted_onset_step`` and ``relative_error``.
        lr_optimizer: index in ``trainer.optimizers`` of the optimizer whose learning rate makes effective time.

    Examples:
        >>> import lightning.pytorch as pl
        >>> monitor = StepwiseMonitor(every_n_steps=10, window=512)
        >>> trainer = pl.Trainer(callbacks=[monitor], max_steps=100, logger=False)  # doctest: +SKIP
        >>> trainer.fit(model, dataloader)                                          # doctest: +SKIP
        >>> monitor.history["eigenvalues"].shape                                    # doctest: +SKIP
        (10, 64)
    """

    explain_empty_runs: bool = True
    """At fit end, when a tracking point learned no mode, print why and what to change (with ``verbose``)."""

    def __init__(
        self,
        module: ModuleSpec | Sequence[ModuleSpec] | None = None,
        *,
        embedding_fn: EmbeddingFn | None = None,
        normalize: bool | None = None,
        every_n_steps: int | str = "auto",
        window: int = 1024,
        top_k: int = 256,
        mode_directions: int = 64,
        log_top_k: int = 16,
        max_history: int = 10_000,
        dirpath: str | os.PathLike[str] | None = None,
        name: str = "stepwise",
        prog_bar: bool = True,
        strict: bool = False,
        onset_options: dict[str, Any] | None = None,
        verbose: bool = True,
        plot_x: str = "step",
        save_figure: bool = True,
        spectrum: str = "covariance",
        theory: TheoryPrediction | None = None,
        lr_optimizer: int = 0,
    ) -> None:
        super().__init__()
        self.module = module
        self.embedding_fn = embedding_fn
        self.normalize = normalize
        self.every_n_steps = every_n_steps
        self.window = window
        self.top_k = top_k
        self.mode_directions = mode_directions
        self.log_top_k = log_top_k
        self.max_history = max_history
        self.dirpath: Path | None = dirpath  # type: ignore[assignment]  # a Path once checked
        self.name = name
        self.prog_bar = prog_bar
        self.strict = strict
        self.onset_options: dict[str, Any] = onset_options  # type: ignore[assignment]  # a dict once checked
        self.verbose = verbose
        self.plot_x = plot_x
        self.save_figure = save_figure
        self.spectrum = spectrum
        self.theory = theory
        self.lr_optimizer = lr_optimizer
        check_monitor_options(self)
        self.output_dir: Path | None = None
        """Folder the files were written to, once written."""
        self.tracker: SpectrumTracker | None = None
        self._points: list[TrackingPoint] = []
        self._taps: list[EmbeddingTap] = []
        self._module_ref: Any = None
        self._pending_state: dict[str, Any] | None = None
        self._default_dir: Path | None = None
        self._progress: dict[str, float] = {}
        self._progress_epoch = -1
        self._reported_left_out = False
        self._problem_totals: dict[str, int] | None = None
        self._found = False  # whether set-up found the embeddings

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks: hooks and the module are made again at set-up
        state = dict(self.__dict__)
        state.update(_taps=[], _points=[], _module_ref=None)
        return state

    # ------------------------------------------------------------------ public records

    @property
    def state_key(self) -> str:
        spec = "embedding_fn" if self.embedding_fn is not None else _module_key(self.module)
        return self._generate_state_key(module=spec, name=self.name)

    @property
    def history(self) -> dict[str, np.ndarray]:
        """The first tracking point's measurements as NumPy arrays.

        Keys: ``step``, ``epoch``, ``time`` (sum of the learning rate over the steps taken),
        ``lr_x_step``, ``lr``, ``samples``, ``loss``, ``trace``, ``effective_rank``,
        ``participation_ratio``, ``measurement`` and ``eigenvalues`` (rows x k, descending); with identity
        tracking (``mode_directions > 0``) also ``mode_ids``, ``mode_eigenvalues`` and ``mode_overlap``
        (rows x m: each row's tracked modes by eigenvalue, their identities and overlaps; see
        [`MODE_COLUMNS`][lightning_stepwise.history.MODE_COLUMNS]).
        """
        if self.tracker is None:
            return SpectrumHistory().as_arrays()
        return self.tracker.history(self.tracker.point_names[0])

    @property
    def histories(self) -> dict[str, dict[str, np.ndarray]]:
        """Every tracking point's history, by point name."""
        return {} if self.tracker is None else {n: self.tracker.history(n) for n in self.tracker.point_names}

    @property
    def onsets(self) -> list[dict[str, float]]:
        """The learned modes of the first tracking point: one record per mode, by mode.

        Columns as [`ONSET_COLUMNS`][lightning_stepwise.onset_core.ONSET_COLUMNS]; see
        [`detect_onsets`][lightning_stepwise.onsets.detect_onsets]. Each has its matching loss drop (and the
        theory's prediction when ``theory`` is given); a mode's onset does not change once found.
        """
        return self.onsets_of(self.tracker.point_names[0]) if self.tracker is not None else []

    def onsets_of(self, point: str) -> list[dict[str, float]]:
        """The onset table of one tracking point, by point name (see `histories`)."""
        if self.tracker is None:
            raise KeyError(f"no tracking point {point!r}: the monitor has not been set up by a fit yet")
        theory = self.theory if point == self.tracker.point_names[0] else None
        table, _ = final_onset_table(self.tracker.history(point), self.tracker.onset_records(point), theory)
        return table

    def latest_measurement(self, point: str | None = None) -> Measurement | None:
        """The last recorded spectrum of a tracking point (default: the first), with its leading directions.

        What callbacks that act on the current spectrum read (the
        [`ModeEqualizer`][lightning_stepwise.equalizer_callback.ModeEqualizer]): ``eigenvalues`` and, with
        ``mode_directions > 0``, ``directions`` (``d x k``). None before the first measurement (and after
        a resume, until the next); every DDP rank records the same one, at the same batch.

        Examples:
            >>> StepwiseMonitor().latest_measurement() is None  # not fitted yet
            True
        """
        if self.tracker is None:
            return None
        return self.tracker.latest_measurement(point if point is not None else self.tracker.point_names[0])

    @property
    def tracking_points(self) -> list[TrackingPoint]:
        """Where the embeddings are captured (known after set-up): name, source, ``describe()``."""
        return list(self._points)

    @property
    def modes_learned(self) -> int:
        """Number of learned modes so far (first tracking point)."""
        return 0 if self.tracker is None else self.tracker.modes_learned(self.tracker.point_names[0])

    @property
    def problems(self) -> dict[str, int]:
        """Counts of skipped work by kind (see `lightning_stepwise.problems`); summed over ranks at fit end."""
        if self._problem_totals is not None:
            return dict(self._problem_totals)
        return {} if self.tracker is None else dict(self.tracker.problems.counts)

    @property
    def skipped_batches(self) -> int:
        """Batches whose embeddings were skipped because they were not finite (all ranks)."""
        return self.problems.get("non_finite_batches", 0)

    # ------------------------------------------------------------------ set-up

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        # trainer.log_dir is a collective under DDP: resolve it here, where every rank comes
        self._default_dir = default_output_dir(trainer)
        self._found = self._attach(trainer, pl_module)

    def _attach(self, trainer: Any, pl_module: Any) -> bool:
        """Find and hook the tracking points, make (or keep) the tracker; False when none is found (yet)."""
        for tap in self._taps:
            tap.remove()
        self._taps = []
        if self.embedding_fn is not None:
            self._points = [TrackingPoint("embedding_fn", "embedding_fn")]
        else:
            try:
                self._points = find_tracking_points(pl_module, self.module)
            except NoEmbeddingFoundError:
                self._points = []
                return False
        self._taps = [EmbeddingTap(p).attach() for p in self._points]
        names = [p.name for p in self._points]
        continues = (self.tracker is not None and pl_module is self._module_ref and self.tracker.point_names == names
                     and logging_step(trainer) >= self.tracker.last_step)
        if not continues:
            if self.tracker is not None:
                self.tracker.close()
            self.tracker = SpectrumTracker(
                [PointSpec(p.name, self.normalize if self.normalize is not None else p.loss_normalizes)
                 for p in self._points],
                every_n_steps=self.every_n_steps, window=self.window, top_k=self.top_k,
                mode_directions=self.mode_directions, max_history=self.max_history,
                spectrum=self.spectrum, onset_options=self.onset_options, strict=self.strict, owner="StepwiseMonitor")
            self._problem_totals = None
        self._module_ref = pl_module
        self._reported_left_out = False
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None
        return True

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._found:  # submodules made in configure_model exist by now
            self._found = self._attach(trainer, pl_module)
        if not self._found:
            if self.module is not None:
                find_tracking_points(pl_module, self.module)  # raises: no such submodule, with the close matches
            return  # auto-detection found nothing: raised at the first training batch, with an embedding_fn for it
        self._start(trainer, pl_module)

    def _start(self, trainer: Any, pl_module: Any) -> None:
        assert self.tracker is not None
        if self.theory is not None and self.spectrum != "cross_correlation":
            self.tracker.problems.warn("theory_spectrum", "the theory predicts the eigenvalues of the views' "
                                       "cross-correlation C; pass spectrum='cross_correlation' to compare like with "
                                       "like (the covariance has the same step times only when the two views' noise "
                                       "is small)")
        self.tracker.device = getattr(pl_module, "device", None)
        self.tracker.set_total_steps(total_steps(trainer))
        for point, spec in zip(self._points, self.tracker.specs, strict=True):
            normalized = ", L2-normalised" if spec.normalize else ""
            rank_zero_info(f"StepwiseMonitor: tracking {point.describe()}{normalized}; a spectrum of "
                           f"{self.window} samples {self.tracker.schedule.describe()}.")

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            for tap in self._taps:
                tap.remove()
            if self.tracker is not None:
                self.tracker.close()

    # ------------------------------------------------------------------ per batch

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self._found:
            # raises NoEmbeddingFoundError, now with an embedding_fn that fits this batch
            find_tracking_points(pl_module, self.module, batch=batch, two_views=self.spectrum == "cross_correlation")
            self._found = self._attach(trainer, pl_module)  # found after all (made in the first step): start now
            self._start(trainer, pl_module)
        assert self.tracker is not None
        open_window = self.tracker.start_batch(logging_step(trainer), epoch=trainer.current_epoch,
                                               lr=optimizer_lr(trainer, self.lr_optimizer))
        self._log_recorded(trainer, pl_module)
        if self._progress and trainer.current_epoch != self._progress_epoch:
            self._log_progress(trainer, pl_module)  # Lightning clears the bar's values at each new epoch
        if not open_window:
            return
        for tap in self._taps:
            tap.active = True
        if self.embedding_fn is not None:
            self._call_embedding_fn(pl_module, batch)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert self.tracker is not None
        if self.tracker.window is None:
            return
        captured = {}
        for point, tap in zip(self._points, self._taps, strict=True):
            tap.active = False
            captured[point.name] = tap.take()
        # the batch size tells the cross-correlation one view's forward pass from both views concatenated
        batch_size = batch_size_of(batch) if self.spectrum == "cross_correlation" else None
        self.tracker.end_batch(captured, loss=module_loss(trainer, pl_module, outputs), batch_size=batch_size)
        self._report_left_out()
        self._log_recorded(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._found:  # no training batch came to raise at
            find_tracking_points(pl_module, self.module)
            return
        assert self.tracker is not None
        self.tracker.finish(logging_step(trainer))
        self._problem_totals = self.tracker.problems.totals(self.tracker.device or "cpu")  # a collective
        self._log_recorded(trainer, None)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._write_files(trainer)
        summary = self.tracker.problems.summary(self.problems) if self.tracker is not None else ""
        if summary and trainer.is_global_zero:
            where = f" (see {self.output_dir / 'problems.json'})" if self.output_dir is not None else ""
            print_line(trainer, summary + where)
        if self.verbose and self.explain_empty_runs and trainer.is_global_zero and self.tracker is not None:
            self._explain_no_modes(trainer)

    def _explain_no_modes(self, trainer: Any) -> None:
        """Say why a tracking point learned no mode, and what to change, rather than leave a silent zero."""
        from lightning_stepwise.report import explain_no_onsets

        for name in self.tracker.point_names:
            if self.tracker.modes_learned(name):
                continue
            history = self.tracker.history(name)
            if not len(history.get("step", ())):
                continue
            try:
                reason = explain_no_onsets(history, self.onset_options)
            except Exception as err:  # never fail a finished fit over an explanation
                reason = f"the history could not be examined ({type(err).__name__}: {err})"
            if reason:
                point = f" at `{name}`" if len(self.tracker.point_names) > 1 else ""
                print_line(trainer, f"StepwiseMonitor: no mode learned{point}. Why: {reason}")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        try:
            if self.tracker is not None:
                self.tracker.record_pending()  # no collective here: other ranks may not come
            self._write_files(trainer)
        except Exception as err:  # never mask the user's exception with ours
            warnings.warn(f"StepwiseMonitor could not save its files: {err}", StepwiseWarning, stacklevel=2)
        finally:
            if self.tracker is not None:
                self.tracker.close()  # Lightning does not call teardown after an exception

    # ------------------------------------------------------------------ internals

    def _call_embedding_fn(self, pl_module: Any, batch: Any) -> None:
        assert self.embedding_fn is not None and self.tracker is not None
        buffers = [b.detach().clone() for b in pl_module.buffers()]
        try:
            with torch.random.fork_rng(devices=cuda_devices(pl_module)), torch.no_grad():
                out = self.embedding_fn(pl_module, batch)
        except Exception as err:
            if self.strict:
                raise
            self.tracker.problems.report("embedding_fn_errors", f"embedding_fn raised {type(err).__name__}: {err}; "
                                         f"batch skipped. {self._embedding_fn_hint(pl_module, batch)}")
            return
        finally:
            with torch.no_grad():
                for b, saved in zip(pl_module.buffers(), buffers, strict=True):
                    b.copy_(saved)
        if isinstance(out, Tensor) and torch.is_floating_point(out) and out.ndim >= 2:
            self._taps[0].add([out])
        else:
            got = (f"a {str(out.dtype).removeprefix('torch.')} Tensor of shape {tuple(out.shape)}"
                   if isinstance(out, Tensor) else _given(out))
            self.tracker.problems.report("malformed_batches", f"embedding_fn returned {got}, not a floating Tensor "
                                         "of (batch, dim) embeddings; batch skipped. "
                                         f"{self._embedding_fn_hint(pl_module, batch)}", key="embedding_fn_type")

    def _embedding_fn_hint(self, pl_module: Any, batch: Any) -> str:
        snippet = suggest_embedding_fn(batch, pl_module, two_views=self.spectrum == "cross_correlation")
        indented = "\n".join(f"    {line}" if line else "" for line in snippet.splitlines())
        return (f"It is called as embedding_fn(pl_module, batch), with batches like {describe_batch(batch)}; one "
                f"that fits them:\n\n{indented}\n")

    def _report_left_out(self) -> None:
        """Once per fit: which inputs of a loss were left out as not online, so users see what is measured."""
        if self._reported_left_out:
            return
        for tap in self._taps:
            note = tap.left_out_note()
            if note is not None:
                rank_zero_info(f"StepwiseMonitor: {note}")
                self._reported_left_out = True
        if any(tap.kept for tap in self._taps):
            self._reported_left_out = True

    def _log_recorded(self, trainer: Any, pl_module: Any) -> None:
        """Send what the tracker recorded to the loggers (at each measurement's step) and the progress bar."""
        assert self.tracker is not None
        single = len(self._points) == 1
        first = self.tracker.point_names[0]
        for m in self.tracker.take_recorded():
            prefix = self.name if single else f"{self.name}/{m.point}"
            logged = {f"{prefix}/modes_learned": float(m.modes_learned),
                      f"{prefix}/effective_rank": m.summary.effective_rank,
                      f"{prefix}/participation_ratio": m.summary.participation_ratio,
                      f"{prefix}/trace": m.summary.trace,
                      **{f"{prefix}/eigenvalue_{k:03d}": float(m.eigenvalues[k])
                         for k in range(min(self.log_top_k, len(m.eigenvalues)))}}
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=m.step)
            if m.point == first:
                self._announce(trainer, m)
                if self.prog_bar:
                    self._progress = {"erank": m.summary.effective_rank, "modes": float(m.modes_learned)}
                    if pl_module is not None:
                        self._log_progress(trainer, pl_module)

    def _announce(self, trainer: Any, m: Measurement) -> None:
        if not (self.verbose and trainer.is_global_zero):
            return
        before = m.modes_learned - len(m.new_onsets)
        for i, record in enumerate(m.new_onsets):
            epoch = "" if math.isnan(record["onset_epoch"]) else f", epoch {record['onset_epoch']:.0f}"
            # numbered from 1 in the order learned, so that "#3" and "3 learned so far" agree, also when one
            # measurement confirms several modes at once
            print_line(trainer, f"StepwiseMonitor: mode #{int(record['mode']) + 1} learned at step "
                                 f"{record['onset_step']:.0f}{epoch} ({before + i + 1} learned so far)")

    def _log_progress(self, trainer: Any, pl_module: Any) -> None:
        # Host tensors: logging a float would copy it to the device, a synchronisation.
        for key, value in self._progress.items():
            pl_module.log(f"{self.name}/{key}", torch.tensor(value), prog_bar=True, logger=False, on_step=True,
                          on_epoch=False, batch_size=1)
        self._progress_epoch = trainer.current_epoch

    def _write_files(self, trainer: Any) -> None:
        if self.tracker is None or not trainer.is_global_zero:
            return
        directory = self.dirpath or self._default_dir or default_output_dir(trainer)
        first = self.tracker.point_names[0]
        for point in self._points:
            arrays = self.tracker.history(point.name)
            theory = self.theory if point.name == first else None
            table, drops = final_onset_table(arrays, self.tracker.onset_records(point.name), theory)
            predicted = None
            if theory is not None and len(arrays["step"]):
                grid = np.linspace(float(arrays["step"][0]), float(arrays["step"][-1]), 400)
                predicted = {"step": grid, "eigenvalues": theory.eigenvalue_trajectories(grid),
                             "loss": theory.loss_curve(grid)}
            try:
                files = write_run_files(
                    directory, arrays, table, drops, suffix="" if len(self._points) == 1 else f"_{point.name}",
                    figure=self.save_figure, x=self.plot_x, predicted=predicted,
                    title=f"{point.describe()}: {_count(len(table), 'mode')} learned",
                    ylabel="covariance eigenvalue" if self.spectrum == "covariance"
                    else "eigenvalue of C (views' cross-correlation)")
            except Exception as err:  # files are never worth a failed run
                self.tracker.problems.warn("files", f"could not write the files of `{point.name}`: {err}")
                continue
            if files.figure is not None:
                tag = f"{self.name}/stepwise" if len(self._points) == 1 else f"{self.name}/{point.name}/stepwise"
                for error in log_figure(trainer, tag, files.figure, files.figure_path):
                    self.tracker.problems.warn(f"figure_logger:{error.split(':')[0]}", error)
        save_problems(self.problems, directory)
        self.output_dir = directory

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        return {} if self.tracker is None else {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.tracker is not None and self._points:
            self._apply_state(state_dict)
        else:  # restored before setup: applied once the tracking points exist
            self._pending_state = dict(state_dict)

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        assert self.tracker is not None
        if "tracker" not in state:
            self.tracker.problems.warn("state_version", "the checkpoint holds no monitor state this version can read "
                                       "(written by an older version, or before the first fit); starting a fresh "
                                       "history")
            return
        try:
            self.tracker.load_state_dict(state["tracker"])
        except ValueError as err:
            self.tracker.problems.warn("state_version", f"cannot restore the checkpoint's monitor state ({err}); "
                                       "starting a fresh history")
