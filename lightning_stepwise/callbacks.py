"""Lightning callbacks: thin glue between a Trainer and the capture / spectrum / history modules."""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_info
from lightning.pytorch.callbacks import Callback as _LightningCallback
from torch import Tensor

from lightning_stepwise.capture import (
    EmbeddingTap,
    TrackingPoint,
    find_tracking_points,
    to_embedding_rows,
)
from lightning_stepwise.distributed import all_reduce_sum
from lightning_stepwise.history import SpectrumHistory
from lightning_stepwise.onsets import (
    ONSET_COLUMNS,
    OnsetTracker,
    check_onset_options,
    detect_loss_steps,
    match_loss_drops,
)
from lightning_stepwise.probe import extract_features, fit_linear_probe, point_features, split_labelled_batch
from lightning_stepwise.report import plot_stepwise, save_onsets, save_probe, save_spectrum
from lightning_stepwise.spectrum import (
    CovarianceMoments,
    CovarianceRows,
    CrossCorrelationSums,
    SpectrumProblem,
    SpectrumSummary,
    _prepared_rows,
    _ProblemTemplate,
    accumulator_from_state,
    summarize_spectrum,
    uses_gram_route,
)
from lightning_stepwise.theory import TheoryPrediction

try:  # Lightly's examples use the `pytorch_lightning` namespace; its Trainer checks its own base class.
    from pytorch_lightning.callbacks import Callback as _PLCallback

    _CALLBACK_BASES: tuple[type, ...] = (_LightningCallback, _PLCallback)
except ImportError:  # pragma: no cover - pytorch_lightning is a dependency of lightly
    _CALLBACK_BASES = (_LightningCallback,)

__all__ = ["LinearProbe", "StepwiseMonitor", "StepwiseWarning"]

EmbeddingFn = Callable[[Any, Any], Tensor]
_STATE_VERSION = 2  # 2: accumulators' own state dicts (1 held torchmetrics states)


class StepwiseWarning(UserWarning):
    """Problems the monitor skipped over instead of interrupting training.

    Examples:
        >>> import warnings
        >>> warnings.simplefilter("error", StepwiseWarning)  # make them errors, e.g. in a test suite
        >>> warnings.resetwarnings()
    """


@dataclass
class _Point:
    """Per tracking point: its hook, its history and the accumulator of the open window."""

    point: TrackingPoint
    tap: EmbeddingTap
    normalize: bool
    history: SpectrumHistory
    dim: int | None = None
    accumulator: CovarianceMoments | CovarianceRows | CrossCorrelationSums | None = None
    batches_needed: int = 0
    batches_accumulated: int = 0
    skipped_counted: int = 0
    tracker: OnsetTracker = field(default_factory=OnsetTracker)
    #: Embedding rows per step over all ranks, agreed once per fit under DDP.
    global_rows_per_step: int | None = None

    @property
    def onsets(self) -> dict[int, dict[str, float]]:
        return self.tracker.records

    def onset_table(self) -> list[dict[str, float]]:
        return [self.tracker.records[m] for m in sorted(self.tracker.records)]


@dataclass
class _Window:
    """A measurement in progress: opened at ``step``, closed once enough samples are in."""

    step: int
    epoch: int
    time: float
    lr: float
    loss_sum: Tensor | None = None
    loss_count: int = 0
    partial_measurement: int | None = None


@dataclass
class _Solved:
    """One tracking point's spectrum of a window, solved on the host."""

    eigenvalues: np.ndarray
    samples: float
    skipped: float
    summary: SpectrumSummary


@dataclass
class _Pending:
    """A closed window whose eigensolve runs in the worker thread; recorded at the next window's start."""

    window: _Window
    measurement: int
    replaces_partial: bool
    keep_open: bool
    future: Future[tuple[dict[str, _Solved], float]] | None = None


def _copy_to_host(flat: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
    """Start copying ``flat`` to the host without waiting; the event marks when the copy is done."""
    if flat.device.type != "cuda":
        return flat, None
    host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
    host.copy_(flat, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _solve_on_host(templates: dict[str, _ProblemTemplate], flat: Tensor,
                   event: torch.cuda.Event | None) -> tuple[dict[str, _Solved], float]:
    """Worker-thread side of a measurement: wait for the copy, then eigensolve each point's matrix."""
    if event is not None:
        event.synchronize()  # this thread waits; the training loop does not
    solved: dict[str, _Solved] = {}
    offset = 0
    for name, template in templates.items():
        problem = template.from_flat(flat[offset: offset + template.flat_size])
        offset += template.flat_size
        eigenvalues = problem.solve()
        solved[name] = _Solved(eigenvalues=eigenvalues.numpy(), samples=float(problem.samples),
                               skipped=float(problem.skipped if problem.skipped is not None else 0.0),
                               summary=summarize_spectrum(eigenvalues))
    return solved, float(flat[offset])


def _default_output_dir(trainer: Any) -> Path:
    """``<trainer.log_dir>/stepwise`` (``default_root_dir`` without a logger); a collective under DDP."""
    return Path(trainer.log_dir or trainer.default_root_dir) / "stepwise"


def _monitor_of(trainer: Any) -> StepwiseMonitor | None:
    """The Trainer's first StepwiseMonitor, if any."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, StepwiseMonitor)), None)


def _cuda_devices(pl_module: Any) -> list[torch.device]:
    device = getattr(pl_module, "device", torch.device("cpu"))
    return [device] if device.type == "cuda" else []


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _current_lr(trainer: Any) -> float:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError, TypeError):
        return math.nan


def _loss_of(outputs: Any) -> Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(loss, Tensor) and loss.numel() == 1:
        return loss.detach().reshape(()).to(torch.float64)
    return None


class StepwiseMonitor(*_CALLBACK_BASES):  # type: ignore[misc]
    """Track the covariance eigenvalues of a module's embeddings during training.

    Works with an unchanged Lightly or plain Lightning SSL module, under ``lightning.pytorch`` and
    ``pytorch_lightning`` Trainers. Every ``every_n_steps`` optimizer steps a measurement window opens;
    the embeddings of the following training batches are accumulated on their device until ``window``
    samples are in (all ranks together). The eigenvalues of their covariance (float64) are then solved
    in a worker thread, without the training loop waiting for the GPU, and recorded in ``history``,
    the loggers and the progress bar when the next window opens. At fit end ``spectrum.npz``,
    ``spectrum.csv``, the onset tables and ``stepwise.png`` are written to ``dirpath`` (default
    ``<trainer.log_dir>/stepwise``).

    Args:
        module: dotted path of the submodule to track (its output, or its inputs when it is a
            ``lightly.loss`` loss), or a list of paths to track several points. ``None``: auto-detect
            (the inputs of a Lightly loss, else ``projection_head``, else ``backbone``).
        embedding_fn: ``embedding_fn(pl_module, batch) -> Tensor`` instead of a hook; called under
            ``no_grad`` before the training step, with the RNG and the module's buffers restored after.
        normalize: L2-normalise each embedding before the covariance. ``None``: do what the hooked
            loss does (True for NT-Xent, DCL, ... inputs; False otherwise).
        every_n_steps: optimizer steps between the starts of two measurements.
        window: samples (embedding rows, all views and ranks together) per measurement.
        top_k: eigenvalues kept per measurement (the summaries use all of them).
        log_top_k: leading eigenvalues also sent to the loggers as scalars.
        max_history: rows kept in memory; beyond it the history thins itself evenly.
        dirpath: folder for the files; default ``<trainer.log_dir>/stepwise``.
        name: prefix of logged metric names.
        prog_bar: show the effective rank and the number of learned modes in the progress bar.
        strict: raise instead of warning and skipping on bad embeddings.
        onset_options: options of :func:`~lightning_stepwise.onsets.detect_onsets` (``min_rise``,
            ``min_relative_plateau``, ``smoothing``, ``plateau_rows``) for the online detection of learned modes.
        verbose: print one line per newly learned mode (global rank zero only).
        plot_x: x axis of ``stepwise.png``: ``"step"`` or ``"time"`` (effective time).
        save_figure: write ``stepwise.png`` at fit end and send it to loggers that take images
            (TensorBoard, W&B).
        spectrum: ``"covariance"`` (the covariance of all captured rows) or ``"cross_correlation"``
            (the eigenvalues of ``C = (Z0ᵀZ1 + Z1ᵀZ0)/2n`` between the two views of each step, uncentred:
            the linear theory's matrix; the captured rows of a step must be the two views stacked).
        theory: a :class:`~lightning_stepwise.theory.TheoryPrediction` to hold the run against: its
            curves are drawn dashed in ``stepwise.png`` and the onset table gets
            ``predicted_onset_step`` and ``relative_error``.

    Examples:
        >>> import lightning.pytorch as pl
        >>> monitor = StepwiseMonitor(every_n_steps=10, window=512)
        >>> trainer = pl.Trainer(callbacks=[monitor], max_steps=100, logger=False)  # doctest: +SKIP
        >>> trainer.fit(model, dataloader)                                          # doctest: +SKIP
        >>> monitor.history["eigenvalues"].shape                                    # doctest: +SKIP
        (10, 64)
    """

    def __init__(
        self,
        module: str | Sequence[str] | None = None,
        *,
        embedding_fn: EmbeddingFn | None = None,
        normalize: bool | None = None,
        every_n_steps: int = 50,
        window: int = 1024,
        top_k: int = 256,
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
    ) -> None:
        super().__init__()
        for arg, value, low in (("every_n_steps", every_n_steps, 1), ("window", window, 2),
                                ("top_k", top_k, 1), ("log_top_k", log_top_k, 0), ("max_history", max_history, 2)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"StepwiseMonitor: {arg} must be an integer >= {low}, got {value!r}")
        if module is not None and embedding_fn is not None:
            raise ValueError("StepwiseMonitor: give either `module` or `embedding_fn`, not both")
        if embedding_fn is not None and not callable(embedding_fn):
            raise TypeError("StepwiseMonitor: embedding_fn must be callable as embedding_fn(pl_module, batch)")
        self.module = module
        self.embedding_fn = embedding_fn
        self.normalize = normalize
        self.every_n_steps = every_n_steps
        self.window = window
        self.top_k = top_k
        self.log_top_k = log_top_k
        self.max_history = max_history
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.name = name
        self.prog_bar = prog_bar
        self.strict = strict
        if plot_x not in {"step", "time"}:
            raise ValueError(f"StepwiseMonitor: plot_x must be 'step' or 'time', got {plot_x!r}")
        self.onset_options = dict(onset_options or {})
        try:
            check_onset_options(**self.onset_options)
        except ValueError as err:
            raise ValueError(f"StepwiseMonitor: onset_options: {err}") from None
        self.verbose = verbose
        self.plot_x = plot_x
        self.save_figure = save_figure
        if spectrum not in {"covariance", "cross_correlation"}:
            raise ValueError(f"StepwiseMonitor: spectrum must be 'covariance' or 'cross_correlation', got {spectrum!r}")
        self.spectrum = spectrum
        if theory is not None and not isinstance(theory, TheoryPrediction):
            raise TypeError("StepwiseMonitor: theory must be a TheoryPrediction, e.g. "
                            "LinearSSLTheory.from_views(x0, x1).predict(lr=..., W0=...)")
        self.theory = theory

        #: Batches whose embeddings were skipped because they were not finite (all ranks).
        self.skipped_batches = 0
        #: Folder the files were written to, once written.
        self.output_dir: Path | None = None
        self._points: list[_Point] = []
        self._window: _Window | None = None
        self._time = 0.0
        self._counted_step = 0
        self._lr = math.nan
        self._measurements = 0
        self._last_opened_step = -1
        self._warned: set[str] = set()
        self._pending_state: dict[str, Any] | None = None
        self._default_dir: Path | None = None
        self._pending: _Pending | None = None
        self._solver: ThreadPoolExecutor | None = None
        self._trainer: Any = None
        self._progress: dict[str, float] = {}
        self._progress_epoch = -1

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks: a thread pool, a future and the trainer do not travel.
        state = dict(self.__dict__)
        state.update(_pending=None, _solver=None, _trainer=None)
        return state

    # ------------------------------------------------------------------ public records

    @property
    def state_key(self) -> str:
        spec = "embedding_fn" if self.embedding_fn is not None else self.module
        return self._generate_state_key(module=spec, name=self.name)

    @property
    def history(self) -> dict[str, np.ndarray]:
        """The first tracking point's measurements as NumPy arrays.

        Keys: ``step``, ``epoch``, ``time`` (sum of the learning rate over the steps taken),
        ``lr_x_step``, ``lr``, ``samples``, ``loss``, ``trace``, ``effective_rank``,
        ``participation_ratio``, ``measurement`` and ``eigenvalues`` (rows x k, descending).
        """
        if not self._points:
            return SpectrumHistory().as_arrays()
        return self._points[0].history.as_arrays()

    @property
    def histories(self) -> dict[str, dict[str, np.ndarray]]:
        """Every tracking point's history, by point name."""
        return {p.point.name: p.history.as_arrays() for p in self._points}

    @property
    def onsets(self) -> list[dict[str, float]]:
        """The learned modes so far of the first tracking point: one record per mode, by mode.

        Columns as :data:`~lightning_stepwise.onsets.ONSET_COLUMNS`; see
        :func:`~lightning_stepwise.onsets.detect_onsets`. A mode enters once its rise is confirmed and
        its record does not change afterwards; the loss drops are matched at fit end.
        """
        return self.onsets_of(self._points[0].point.name) if self._points else []

    def onsets_of(self, point: str) -> list[dict[str, float]]:
        """The onset table of one tracking point, by point name (see :attr:`histories`)."""
        for p in self._points:
            if p.point.name == point:
                return [dict(r) for r in p.onset_table()]
        raise KeyError(f"no tracking point {point!r}; tracked: {[p.point.name for p in self._points]}")

    @property
    def tracking_points(self) -> list[TrackingPoint]:
        """Where the embeddings are captured (known after set-up): name, source, ``describe()``."""
        return [p.point for p in self._points]

    @property
    def modes_learned(self) -> int:
        """Number of learned modes so far (first tracking point)."""
        return len(self._points[0].onsets) if self._points else 0

    # ------------------------------------------------------------------ set-up

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            # trainer.log_dir is a collective under DDP: resolve it here, where every rank comes
            self._default_dir = _default_output_dir(trainer)
            self._trainer = trainer
        if stage != "fit" or self._points:
            return
        if self.embedding_fn is not None:
            points = [TrackingPoint("embedding_fn", "embedding_fn")]
        else:
            points = find_tracking_points(pl_module, self.module)
        self._points = [
            _Point(
                point=p,
                tap=EmbeddingTap(p).attach(),
                normalize=self.normalize if self.normalize is not None else p.loss_normalizes,
                history=SpectrumHistory(self.max_history),
                tracker=OnsetTracker(**self.onset_options),
            )
            for p in points
        ]
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            for p in self._points:
                p.tap.remove()
            self._stop_solver()

    def _stop_solver(self) -> None:
        if self._solver is not None:
            self._solver.shutdown(wait=True)
            self._solver = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.theory is not None and self.spectrum != "cross_correlation":
            self._warn_once("theory_spectrum", "the theory predicts the eigenvalues of the views' cross-correlation "
                            "C; pass spectrum='cross_correlation' to compare like with like (the covariance has "
                            "the same step times only when the two views' noise is small)")
        for p in self._points:
            p.tap.attach()  # again after a teardown, when the same monitor fits twice
            p.global_rows_per_step = None
            rank_zero_info(
                f"StepwiseMonitor: tracking {p.point.describe()}"
                f"{', L2-normalised' if p.normalize else ''}; a spectrum every {self.every_n_steps} steps "
                f"over {self.window} samples."
            )

    # ------------------------------------------------------------------ per batch

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._lr = _current_lr(trainer)
        step = trainer.global_step
        if self._window is None and step % self.every_n_steps == 0 and step != self._last_opened_step:
            # The previous measurement is recorded here, at the same step on every rank (the probe's
            # on_new_mode trigger is a collective), by when its eigensolve has long finished.
            self._record_pending(trainer, pl_module, in_step=True)
            self._last_opened_step = step
            self._window = _Window(step=step, epoch=trainer.current_epoch, time=self._time,
                                   lr=self._lr)
        if self._progress and trainer.current_epoch != self._progress_epoch:
            self._log_progress(trainer, pl_module)  # Lightning clears the bar's values at each new epoch
        if self._window is None:
            return
        for p in self._points:
            p.tap.active = True
        if self.embedding_fn is not None:
            self._call_embedding_fn(pl_module, batch)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step > self._counted_step:
            self._time += self._lr * (trainer.global_step - self._counted_step)
            self._counted_step = trainer.global_step
        window = self._window
        if window is None:
            return
        loss = _loss_of(outputs)
        if loss is not None:
            window.loss_sum = loss if window.loss_sum is None else window.loss_sum + loss
            window.loss_count += 1
        for p in self._points:
            p.tap.active = False
            self._accumulate(trainer, p)
        steps_open = trainer.global_step - window.step
        if steps_open >= self.every_n_steps or all(
            p.accumulator is not None and p.batches_accumulated >= p.batches_needed for p in self._points
        ):
            self._close_window(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._record_pending(trainer, pl_module, in_step=False)
        # Record a window the run ended in the middle of, but keep it open in the state: a run
        # resumed from a checkpoint taken now completes it instead of leaving a gap.
        if self._window is not None and any(p.accumulator is not None for p in self._points):
            self._close_window(trainer, keep_open=True)
            self._record_pending(trainer, pl_module, in_step=False)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._write_files(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        try:
            self._record_pending(trainer, pl_module, in_step=False)
            self._write_files(trainer)
        except Exception as err:  # never mask the user's exception with ours
            warnings.warn(f"StepwiseMonitor could not save its files: {err}", StepwiseWarning, stacklevel=2)
        finally:
            self._stop_solver()  # Lightning does not call teardown after an exception

    # ------------------------------------------------------------------ internals

    def _warn_once(self, key: str, message: str) -> None:
        if self.strict:
            raise RuntimeError(f"StepwiseMonitor (strict=True): {message}")
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"StepwiseMonitor: {message} (warned once)", StepwiseWarning, stacklevel=3)

    def _call_embedding_fn(self, pl_module: Any, batch: Any) -> None:
        assert self.embedding_fn is not None
        buffers = [b.detach().clone() for b in pl_module.buffers()]
        try:
            with torch.random.fork_rng(devices=_cuda_devices(pl_module)), torch.no_grad():
                out = self.embedding_fn(pl_module, batch)
        except Exception as err:
            if self.strict:
                raise
            self._warn_once("embedding_fn", f"embedding_fn raised {type(err).__name__}: {err}; batch skipped")
            return
        finally:
            with torch.no_grad():
                for b, saved in zip(pl_module.buffers(), buffers, strict=True):
                    b.copy_(saved)
        if isinstance(out, Tensor):
            self._points[0].tap.add([out])
        else:
            self._warn_once("embedding_fn_type", f"embedding_fn returned {type(out).__name__}, not a Tensor")

    def _accumulate(self, trainer: Any, p: _Point) -> None:
        # Counted whether or not this rank captured anything, so every rank closes the window together.
        if p.accumulator is not None:
            p.batches_accumulated += 1
        rows, problems = to_embedding_rows(p.tap.take())
        for key, message in problems:
            if key == "no_rows" and p.dim is not None:
                message = f"{p.point.describe()} produced no embeddings in a training step"
            self._warn_once(f"{p.point.name}:{key}", f"{p.point.name}: {message}")
        if rows is None:
            if p.dim is None or p.accumulator is not None:
                return
            # This rank has nothing but others may: it must still join the start-of-window reduce.
            rows = torch.zeros(0, p.dim, device=self._device_of(p))
        if p.dim is not None and rows.shape[1] != p.dim:
            self._warn_once(f"{p.point.name}:dim", f"{p.point.name}: embedding width changed from "
                            f"{p.dim} to {rows.shape[1]}; batch skipped")
            return
        p.dim = rows.shape[1]
        if self.strict and not bool(torch.isfinite(rows).all()):
            raise RuntimeError(f"StepwiseMonitor (strict=True): non-finite embeddings at {p.point.describe()}")
        if self.spectrum == "cross_correlation" and rows.shape[0] % 2:
            message = (f"{p.point.describe()} captured {rows.shape[0]} rows in a step, not two views of equal "
                       "size: no cross-correlation for this batch")
            if self.strict:
                raise RuntimeError(f"StepwiseMonitor (strict=True): {message}")
            self._warn_once(f"{p.point.name}:odd_views", message)
            return
        if p.accumulator is None:
            self._start_accumulator(trainer, p, rows)
            return
        if p.accumulator.device != rows.device:  # restored from a checkpoint before the model moved
            p.accumulator.to(rows.device)
        p.accumulator.update(rows)

    @staticmethod
    def _device_of(p: _Point) -> torch.device:
        module = p.point.module
        if module is not None:
            for tensor in (*module.parameters(), *module.buffers()):
                return tensor.device
        return torch.device("cpu")

    def _start_accumulator(self, trainer: Any, p: _Point, rows: Tensor) -> None:
        """First batch of a window: make the accumulator on the embeddings' device, without a host sync."""
        world = trainer.world_size
        global_rows = rows.shape[0] if world == 1 else self._agreed_rows_per_step(p, rows)
        if global_rows == 0:
            return
        dim, device = rows.shape[1], rows.device
        batches_needed = math.ceil(self.window / global_rows)
        acc: CovarianceMoments | CovarianceRows | CrossCorrelationSums
        if self.spectrum == "cross_correlation":
            acc = CrossCorrelationSums(dim, normalize=p.normalize, device=device)
        elif uses_gram_route(self.window, dim):
            # Whole batches, as the other routes take them: the same rows as one process seeing the global batch.
            capacity = batches_needed * math.ceil(global_rows / world)
            dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32  # holds bf16/fp16/fp32 exactly
            acc = CovarianceRows(dim, capacity=capacity, normalize=p.normalize, dtype=dtype, device=device)
        else:
            # Moments are sum-reducible only around one shift: the all-reduced mean of this first batch.
            x, ok = _prepared_rows(rows, p.normalize)
            sums = all_reduce_sum(torch.cat([(ok * x.shape[0]).reshape(1), x.sum(0) * ok]))
            acc = CovarianceMoments(dim, shift=sums[1:] / sums[0].clamp_min(1.0), normalize=p.normalize,
                                    device=device)
        p.accumulator = acc
        p.batches_needed = batches_needed
        p.batches_accumulated = 1
        acc.update(rows)

    @staticmethod
    def _agreed_rows_per_step(p: _Point, rows: Tensor) -> int:
        """Rows per step over all ranks, so every rank closes the window after the same batch.

        Read to the host once per fit (the only host-device synchronisation of the monitor's step path).
        """
        if p.global_rows_per_step is None:
            local = torch.full((1,), float(rows.shape[0]), dtype=torch.float64, device=rows.device)
            p.global_rows_per_step = int(all_reduce_sum(local).item())
        return p.global_rows_per_step

    def _count_skipped(self, batches: int) -> None:
        self.skipped_batches += batches
        self._warn_once("non_finite", "non-finite embeddings; those batches are skipped "
                        "(see monitor.skipped_batches)")

    def _close_window(self, trainer: Any, keep_open: bool = False) -> None:
        """Reduce the window across ranks and start its eigensolve; nothing here waits on the device."""
        window = self._window
        assert window is not None
        self._record_pending(trainer, None, in_step=False)  # at most one measurement in flight
        world = trainer.world_size
        problems: dict[str, SpectrumProblem] = {}
        for p in self._points:
            if p.accumulator is None:
                self._warn_once(f"{p.point.name}:empty_window",
                                f"no usable embeddings (none captured, or all non-finite) at {p.point.describe()} "
                                f"in the measurement window at step {window.step}; no spectrum recorded")
                continue
            # A window kept open at fit end must keep this rank's own statistics for a resumed run.
            acc = copy.deepcopy(p.accumulator) if keep_open and world > 1 else p.accumulator
            if world > 1:
                acc.reduce_across_ranks()
            problems[p.point.name] = acc.problem()
            if not keep_open:
                p.accumulator = None
        pending = _Pending(window=copy.copy(window), measurement=self._measurements,
                           replaces_partial=window.partial_measurement is not None, keep_open=keep_open)
        if problems:
            device = next(iter(problems.values())).matrix.device
            loss = torch.full((1,), math.nan, dtype=torch.float64, device=device)
            if window.loss_count:
                loss = all_reduce_sum((window.loss_sum / window.loss_count).reshape(1).to(device)) / world
            flat, event = _copy_to_host(torch.cat([*(q.flat().to(device) for q in problems.values()), loss]))
            templates = {name: q.template() for name, q in problems.items()}
            if self._solver is None:
                self._solver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepwise-eigensolve")
            pending.future = self._solver.submit(_solve_on_host, templates, flat, event)
        self._pending = pending
        if keep_open:
            window.partial_measurement = self._measurements
        else:
            self._window = None
            self._measurements += 1

    def _record_pending(self, trainer: Any, pl_module: Any, in_step: bool) -> None:
        """Record the measurement whose eigensolve is in flight: history, onsets, loggers, progress bar."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.replaces_partial:  # recorded partially at a fit end: replace that row
            for p in self._points:
                p.history.drop_measurement(pending.measurement)
        if pending.future is None:
            return
        try:
            solved, mean_loss = pending.future.result()
        except Exception as err:
            if self.strict:
                raise
            self._warn_once("eigensolve", f"the spectrum of the window at step {pending.window.step} could not be "
                            f"computed ({type(err).__name__}: {err}); no spectrum recorded")
            return
        window = pending.window
        logged: dict[str, float] = {}
        for i, p in enumerate(self._points):
            result = solved.get(p.point.name)
            if result is None:
                continue
            # A window kept open at fit end is computed again when complete: count each skip once.
            if int(result.skipped) > p.skipped_counted:
                self._count_skipped(int(result.skipped) - p.skipped_counted)
            p.skipped_counted = int(result.skipped) if pending.keep_open else 0
            if result.samples < 2:
                self._warn_once(f"{p.point.name}:too_few", f"fewer than 2 usable samples in the window at "
                                f"step {window.step}; no spectrum recorded")
                continue
            summary = result.summary
            top = result.eigenvalues[: self.top_k]
            p.history.append(
                measurement=pending.measurement, eigenvalues=top, step=window.step, epoch=window.epoch,
                time=window.time, lr=window.lr, lr_x_step=window.lr * window.step,
                samples=int(result.samples), loss=mean_loss, trace=summary.trace,
                effective_rank=summary.effective_rank, participation_ratio=summary.participation_ratio,
            )
            if not pending.keep_open:
                self._update_onsets(trainer, p, announce=i == 0)
            prefix = self.name if len(self._points) == 1 else f"{self.name}/{p.point.name}"
            logged[f"{prefix}/modes_learned"] = float(len(p.onsets))
            logged[f"{prefix}/effective_rank"] = summary.effective_rank
            logged[f"{prefix}/participation_ratio"] = summary.participation_ratio
            logged[f"{prefix}/trace"] = summary.trace
            for k in range(min(self.log_top_k, len(top))):
                logged[f"{prefix}/eigenvalue_{k:03d}"] = float(top[k])
            if i == 0 and self.prog_bar:
                self._progress = {"erank": summary.effective_rank, "modes": float(len(p.onsets))}
                if in_step and pl_module is not None:
                    self._log_progress(trainer, pl_module)
        if logged and trainer is not None:
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=window.step)

    def _log_progress(self, trainer: Any, pl_module: Any) -> None:
        # Host tensors: logging a float would copy it to the device, a synchronisation.
        for key, value in self._progress.items():
            pl_module.log(f"{self.name}/{key}", torch.tensor(value), prog_bar=True, logger=False, on_step=True,
                          on_epoch=False, batch_size=1)
        self._progress_epoch = trainer.current_epoch

    def _update_onsets(self, trainer: Any, p: _Point, announce: bool) -> None:
        """Add the modes whose rise is now confirmed; print a line for each (rank zero)."""
        arrays = p.history.as_arrays()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                records = p.tracker.update(arrays["step"], arrays["eigenvalues"], epochs=arrays["epoch"],
                                           times=arrays["time"])
        except Exception as err:
            if self.strict:
                raise
            self._warn_once("onsets", f"onset detection failed ({err}); modes_learned is not updated")
            return
        for record in records:
            if announce and self.verbose and trainer.is_global_zero:
                epoch = "" if math.isnan(record["onset_epoch"]) else f", epoch {record['onset_epoch']:.0f}"
                self._print(trainer, f"StepwiseMonitor: mode {record['mode']} learned at step "
                                     f"{record['onset_step']:.0f}{epoch} ({_count(len(p.onsets), 'mode')} learned)")

    @staticmethod
    def _print(trainer: Any, line: str) -> None:
        bar = getattr(trainer, "progress_bar_callback", None)
        if bar is not None and hasattr(bar, "print") and getattr(bar, "is_enabled", False):
            bar.print(line)  # above the bar instead of through it
        else:
            print(line)

    def _write_files(self, trainer: Any) -> None:
        if not self._points or not trainer.is_global_zero:
            return
        directory = self.dirpath or self._default_dir or _default_output_dir(trainer)
        for p in self._points:
            suffix = "" if len(self._points) == 1 else f"_{p.point.name}"
            arrays = p.history.as_arrays()
            save_spectrum(arrays, directory, stem=f"spectrum{suffix}")
            drops = self._loss_drops(arrays)
            table = match_loss_drops(p.onset_table(), drops)
            if self.theory is not None and p is self._points[0]:
                table = self.theory.annotate(table)
            for record in table:
                p.onsets[int(record["mode"])] = record
            save_onsets(p.onset_table(), directory, stem=f"onsets{suffix}")
            if self.save_figure and len(arrays["step"]) >= 1:
                self._save_figure(trainer, p, arrays, drops, directory / f"stepwise{suffix}.png")
        self.output_dir = directory

    def _loss_drops(self, arrays: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
        finite = np.isfinite(arrays["loss"])
        if finite.sum() < 3:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return detect_loss_steps(arrays["step"][finite], arrays["loss"][finite])

    def _save_figure(self, trainer: Any, p: _Point, arrays: Mapping[str, np.ndarray],
                     drops: Sequence[Mapping[str, float]], path: Path) -> None:
        try:
            x = self.plot_x if self.plot_x == "step" or np.all(np.isfinite(arrays["time"])) else "step"
            predicted = None
            if self.theory is not None and p is self._points[0] and len(arrays["step"]):
                grid = np.linspace(float(arrays["step"][0]), float(arrays["step"][-1]), 400)
                predicted = {"step": grid, "eigenvalues": self.theory.eigenvalue_trajectories(grid),
                             "loss": self.theory.loss_curve(grid)}
            ylabel = ("covariance eigenvalue" if self.spectrum == "covariance"
                      else "eigenvalue of C (views' cross-correlation)")
            fig = plot_stepwise(arrays, p.onset_table(), drops, x=x, predicted=predicted, ylabel=ylabel,
                                title=f"{p.point.describe()}: {len(p.onsets)} modes learned", path=path)
        except Exception as err:  # a figure is never worth a failed run
            self._warn_once("figure", f"could not draw {path.name}: {err}")
            return
        tag = f"{self.name}/stepwise" if len(self._points) == 1 else f"{self.name}/{p.point.name}/stepwise"
        for logger in trainer.loggers:
            try:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_figure"):  # TensorBoard
                    experiment.add_figure(tag, fig, global_step=trainer.global_step, close=False)
                elif hasattr(logger, "log_image"):  # W&B and others that take image files
                    logger.log_image(key=tag, images=[str(path)], step=trainer.global_step)
            except Exception as err:
                self._warn_once(f"figure_logger:{type(logger).__name__}",
                                f"could not send {path.name} to {type(logger).__name__}: {err}")

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        # A measurement still in the eigensolver belongs in the checkpoint's history: record it now.
        self._record_pending(self._trainer, None, in_step=False)
        window = self._window
        return {
            "version": _STATE_VERSION,
            "time": self._time,
            "counted_step": self._counted_step,
            "measurements": self._measurements,
            "last_opened_step": self._last_opened_step,
            "skipped_batches": self.skipped_batches,
            "points": {p.point.name: self._point_state(p) for p in self._points},
            "window": None if window is None else {
                "step": window.step, "epoch": window.epoch, "time": window.time, "lr": window.lr,
                "loss_count": window.loss_count,
                "loss_sum": None if window.loss_sum is None else float(window.loss_sum),
                "partial_measurement": window.partial_measurement,
            },
        }

    @staticmethod
    def _point_state(p: _Point) -> dict[str, Any]:
        onsets = [[float(r[c]) for c in ONSET_COLUMNS] for r in p.onset_table()]
        state: dict[str, Any] = {"history": p.history.state_dict(), "dim": p.dim,
                                 "onsets": torch.tensor(onsets, dtype=torch.float64).reshape(-1, len(ONSET_COLUMNS)),
                                 "onset_columns": list(ONSET_COLUMNS), "onset_tracker": p.tracker.state_dict(),
                                 "batches_needed": p.batches_needed,
                                 "batches_accumulated": p.batches_accumulated,
                                 "skipped_counted": p.skipped_counted, "accumulator": None}
        if p.accumulator is not None:
            state["accumulator"] = p.accumulator.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._points:
            self._apply_state(state_dict)
        else:  # restored before setup: apply once the tracking points exist
            self._pending_state = dict(state_dict)

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            self._warn_once("state_version", f"checkpoint state version {state.get('version')} is not "
                            f"{_STATE_VERSION}; starting a fresh history")
            return
        self._time = float(state["time"])
        self._counted_step = int(state["counted_step"])
        self._measurements = int(state["measurements"])
        self._last_opened_step = int(state["last_opened_step"])
        self.skipped_batches = int(state["skipped_batches"])
        saved_points = state["points"]
        for p in self._points:
            saved = saved_points.get(p.point.name)
            if saved is None:
                self._warn_once("state_points", f"the checkpoint has no history for `{p.point.name}` "
                                f"(it has {sorted(saved_points)}); that point starts fresh")
                continue
            p.history.load_state_dict(saved["history"])
            if "onsets" in saved:
                records = [dict(zip(saved["onset_columns"], row, strict=True)) for row in saved["onsets"].tolist()]
                p.tracker.load_state_dict(saved["onset_tracker"], records)
            p.dim = saved["dim"]
            p.batches_needed = int(saved["batches_needed"])
            p.batches_accumulated = int(saved["batches_accumulated"])
            p.skipped_counted = int(saved["skipped_counted"])
            p.accumulator = self._restore_accumulator(saved["accumulator"], p.dim)
        w = state["window"]
        self._window = None if w is None else _Window(
            step=int(w["step"]), epoch=int(w["epoch"]), time=float(w["time"]), lr=float(w["lr"]),
            loss_count=int(w["loss_count"]),
            loss_sum=None if w["loss_sum"] is None else torch.tensor(w["loss_sum"], dtype=torch.float64),
            partial_measurement=w["partial_measurement"],
        )

    @staticmethod
    def _restore_accumulator(
        saved: Mapping[str, Any] | None, dim: int | None
    ) -> CovarianceMoments | CovarianceRows | CrossCorrelationSums | None:
        """The open window's accumulator, on the CPU until the first batch shows the device."""
        if saved is None or dim is None:
            return None
        return accumulator_from_state(dict(saved))


class LinearProbe(*_CALLBACK_BASES):  # type: ignore[misc]
    """Linear-probe accuracy of a module's frozen features, during and at the end of training.

    Extracts features from labelled ``train_dataloader`` and ``val_dataloader`` (default: the
    datamodule's) without gradients and with BatchNorm/Dropout in eval mode (the module's previous mode
    is restored), fits :func:`~lightning_stepwise.probe.fit_linear_probe` and logs ``probe_top1``,
    ``probe_top5`` to every logger. Runs at fit end, every ``every_n_epochs`` epochs, and, with
    ``on_new_mode=True`` and a :class:`StepwiseMonitor` in the same Trainer, each time it learns a mode.
    Under DDP each rank extracts its own loader's batches and the features are gathered, so every rank
    fits the same probe. Results survive checkpoint resume and go to ``probe.csv`` (and the accuracy per
    number of modes to ``probe_modes.csv`` / ``probe_modes.png``) next to the monitor's files.

    Args:
        train_dataloader: labelled batches ``(inputs, labels)`` to fit the probe on.
        val_dataloader: labelled batches to measure it on.
        feature_fn: ``fn(module, inputs) -> features``; default: the ``backbone`` output, flattened.
        point: instead of ``feature_fn``, a dotted submodule path whose output ``forward`` produces, e.g.
            ``"projection_head"`` (see :func:`~lightning_stepwise.probe.point_features`).
        every_n_epochs: also probe at the end of every n-th epoch.
        on_new_mode: also probe whenever the Trainer's StepwiseMonitor learns a new mode.
        at_fit_end: probe when training ends.
        method: ``"logistic"`` or ``"ridge"``; ``c``: inverse regularisation (see :mod:`lightning_stepwise.probe`).
        c: inverse regularisation strength.
        top_k: accuracies reported besides top-1.
        modes: also report accuracy on the top-k covariance eigen-directions (at fit end).
        dirpath: folder for the files (default: the monitor's, or ``<log_dir>/stepwise``).
        name: metric prefix (``probe`` gives ``probe_top1``).
        strict: raise when a probe fails during training instead of warning.

    Examples:
        >>> probe = LinearProbe(train_loader, val_loader, every_n_epochs=5)    # doctest: +SKIP
        >>> trainer = pl.Trainer(callbacks=[StepwiseMonitor(), probe])          # doctest: +SKIP
        >>> probe.results[-1]["top1"]                                            # doctest: +SKIP
    """

    def __init__(
        self,
        train_dataloader: Any = None,
        val_dataloader: Any = None,
        *,
        feature_fn: Callable[[Any, Tensor], Tensor] | None = None,
        point: str | None = None,
        every_n_epochs: int | None = None,
        on_new_mode: bool = False,
        at_fit_end: bool = True,
        method: str = "logistic",
        c: float = 1.0,
        top_k: Sequence[int] = (1, 5),
        modes: bool = True,
        dirpath: str | os.PathLike[str] | None = None,
        name: str = "probe",
        strict: bool = False,
    ) -> None:
        super().__init__()
        if every_n_epochs is not None and (not isinstance(every_n_epochs, int) or every_n_epochs < 1):
            raise ValueError(f"LinearProbe: every_n_epochs must be an integer >= 1 or None, got {every_n_epochs!r}")
        if method not in {"logistic", "ridge"}:
            raise ValueError(f"LinearProbe: method must be 'logistic' or 'ridge', got {method!r}")
        if not c > 0:
            raise ValueError(f"LinearProbe: c must be > 0, got {c}")
        if feature_fn is not None and not callable(feature_fn):
            raise TypeError("LinearProbe: feature_fn must be callable as feature_fn(module, inputs)")
        if feature_fn is not None and point is not None:
            raise ValueError("LinearProbe: give either feature_fn or point, not both")
        if point is not None:
            feature_fn = point_features(point)
        self.train_dataloader = train_dataloader
        self.val_dataloader = val_dataloader
        self.feature_fn = feature_fn
        self.every_n_epochs = every_n_epochs
        self.on_new_mode = on_new_mode
        self.at_fit_end = at_fit_end
        self.fit_options = {"method": method, "c": c, "top_k": tuple(top_k)}
        self.modes = modes
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.name = name
        self.strict = strict
        #: One dict per probe run: step, epoch, modes_learned, trigger, top1, top5, train_top1, sizes.
        self.results: list[dict[str, float]] = []
        #: Accuracy per number of covariance eigen-directions, ``[(k, top1)]``, of the last fit-end probe.
        self.modes_table: list[tuple[int, float]] = []
        #: Folder the files were written to, once written.
        self.output_dir: Path | None = None
        self._loaders: tuple[Any, Any] | None = None
        self._default_dir: Path | None = None
        self._modes_seen = 0
        self._warned: set[str] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    # ------------------------------------------------------------------ set-up: fail early, with guidance

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._default_dir = _default_output_dir(trainer)  # a collective under DDP: every rank comes here
        train, val = self.train_dataloader, self.val_dataloader
        datamodule = getattr(trainer, "datamodule", None)
        if train is None and datamodule is not None and hasattr(datamodule, "train_dataloader"):
            train = datamodule.train_dataloader()
        if val is None and datamodule is not None and hasattr(datamodule, "val_dataloader"):
            val = datamodule.val_dataloader()
        if train is None or val is None:
            raise ValueError("LinearProbe needs labelled train and validation dataloaders: pass "
                             "LinearProbe(train_dataloader, val_dataloader), or fit with a datamodule that has "
                             "train_dataloader() and val_dataloader() yielding (inputs, labels)")
        with torch.random.fork_rng(devices=_cuda_devices(pl_module)):
            self._check_loaders(pl_module, train, val)
        self._loaders = (train, val)

    def _check_loaders(self, pl_module: Any, train: Any, val: Any) -> None:
        widths = []
        for what, loader in (("train", train), ("validation", val)):
            try:
                batch = next(iter(loader))
            except StopIteration:
                raise ValueError(f"LinearProbe: the {what} dataloader is empty") from None
            try:
                features, _ = extract_features(pl_module, [batch], feature_fn=self.feature_fn)
            except ValueError as err:
                raise ValueError(f"LinearProbe: the {what} dataloader: {err}") from None
            widths.append(features.shape[1])
        if widths[0] != widths[1]:
            raise ValueError(f"LinearProbe: train features have width {widths[0]} but validation features "
                             f"{widths[1]}; both loaders must feed the same inputs")
        classes: set[int] = set()
        for batch in train:  # labels only: one cheap pass, so a one-class loader fails here, not later
            classes.update(split_labelled_batch(batch)[1].unique().tolist())
            if len(classes) > 1:
                break
        if len(classes) < 2:
            raise ValueError(f"LinearProbe: the train dataloader holds a single class ({sorted(classes)}); "
                             "a probe needs at least two")

    # ------------------------------------------------------------------ when to probe

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.on_new_mode:
            return
        monitor = _monitor_of(trainer)
        if monitor is not None and monitor.modes_learned > self._modes_seen:
            self._modes_seen = monitor.modes_learned
            self._probe(trainer, pl_module, "new_mode", with_modes=False)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._probe(trainer, pl_module, "epoch", with_modes=False)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.at_fit_end:
            self._probe(trainer, pl_module, "fit_end", with_modes=self.modes)
        self._write_files(trainer)

    # ------------------------------------------------------------------ the probe

    def _probe(self, trainer: Any, pl_module: Any, trigger: str, with_modes: bool) -> None:
        if self._loaders is None:
            return
        monitor = _monitor_of(trainer)
        learned = monitor.modes_learned if monitor is not None else None
        try:
            # iterating a DataLoader draws from the global RNG: fork it, so training's randomness is untouched
            with torch.random.fork_rng(devices=_cuda_devices(pl_module)):
                train_rows = extract_features(pl_module, self._loaders[0], feature_fn=self.feature_fn)
                val_rows = extract_features(pl_module, self._loaders[1], feature_fn=self.feature_fn)
            train = self._gathered(trainer, *train_rows)
            val = self._gathered(trainer, *val_rows)
            modes: bool | list[int] = False
            if with_modes:
                modes = [learned] if learned else True
            result = fit_linear_probe(*train, *val, modes=modes, **self.fit_options)
        except Exception as err:
            if self.strict:
                raise
            key = f"probe:{type(err).__name__}"
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(f"LinearProbe: the probe at step {trainer.global_step} failed ({err}); training "
                              "goes on (warned once)", StepwiseWarning, stacklevel=2)
            return
        row = {"step": float(trainer.global_step), "epoch": float(trainer.current_epoch),
               "modes_learned": math.nan if learned is None else float(learned), "trigger": trigger,
               "top1": result.top1, **{f"top{k}": v for k, v in result.topk.items()},
               "train_top1": result.train_top1, "train_size": float(result.train_size),
               "val_size": float(result.val_size), "width": float(result.width)}
        self.results.append(row)
        if result.modes:
            self.modes_table = list(result.modes)
        metrics = {f"{self.name}_top1": result.top1, **{f"{self.name}_top{k}": v for k, v in result.topk.items()}}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @staticmethod
    def _gathered(trainer: Any, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's rows, in rank order, on every rank (padding to the largest shard)."""
        if getattr(trainer, "world_size", 1) <= 1:
            return features, labels
        strategy = trainer.strategy
        sizes = strategy.all_gather(torch.tensor([features.shape[0]], device=features.device)).reshape(-1)
        largest = int(sizes.max())
        pad = largest - features.shape[0]
        padded_f = torch.cat([features, features.new_zeros(pad, features.shape[1])])
        padded_l = torch.cat([labels, labels.new_zeros(pad)])
        all_f = strategy.all_gather(padded_f)
        all_l = strategy.all_gather(padded_l)
        keep = [slice(0, int(n)) for n in sizes]
        return (torch.cat([all_f[r][keep[r]] for r in range(len(keep))]),
                torch.cat([all_l[r][keep[r]] for r in range(len(keep))]))

    # ------------------------------------------------------------------ files and state

    def _write_files(self, trainer: Any) -> None:
        if not trainer.is_global_zero or not self.results:
            return
        monitor = _monitor_of(trainer)
        directory = self.dirpath or (monitor.output_dir if monitor is not None and monitor.output_dir else None) \
            or self._default_dir
        learned = monitor.modes_learned if monitor is not None else None
        try:
            save_probe(self.results, self.modes_table, directory, learned_modes=learned)
        except Exception as err:  # files are never worth a failed run
            warnings.warn(f"LinearProbe could not write its files: {err}", StepwiseWarning, stacklevel=2)
            return
        self.output_dir = Path(directory)

    def state_dict(self) -> dict[str, Any]:
        keys = sorted({k for r in self.results for k in r if k != "trigger"})
        return {
            "columns": keys,
            "rows": torch.tensor([[float(r.get(k, math.nan)) for k in keys] for r in self.results],
                                 dtype=torch.float64).reshape(len(self.results), len(keys)),
            "triggers": [r["trigger"] for r in self.results],
            "modes_table": torch.tensor(self.modes_table, dtype=torch.float64).reshape(-1, 2),
            "modes_seen": self._modes_seen,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        columns = state_dict["columns"]
        self.results = [{**dict(zip(columns, row, strict=True)), "trigger": trigger}
                        for row, trigger in zip(state_dict["rows"].tolist(), state_dict["triggers"], strict=True)]
        self.modes_table = [(int(k), float(a)) for k, a in state_dict["modes_table"].tolist()]
        self._modes_seen = int(state_dict["modes_seen"])
