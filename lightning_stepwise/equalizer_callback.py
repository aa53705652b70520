"""``ModeEqualizer``: rescale the gradient that reaches the monitored embeddings, so that slow modes learn faster.

Thin glue around [`lightning_stepwise.equalizer`][lightning_stepwise.equalizer]: the spectrum comes from the
Trainer's [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor] (nothing is computed twice), and a
gradient hook on the embedding tensors the monitor measures applies the rescaling.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_stepwise.capture import TrackingPoint, flatten_tensors, online_tensors
from lightning_stepwise.equalizer import (
    GRADIENT_PROBLEMS,
    DeviceCounts,
    check_equalizer_options,
    equalizer_gains,
    guarded_rescale,
)
from lightning_stepwise.lightning_compat import Callback, logging_step
from lightning_stepwise.monitor import StepwiseMonitor, find_monitor
from lightning_stepwise.problems import StepwiseWarning
from lightning_stepwise.tracker import Measurement

__all__ = ["ModeEqualizer"]

_PROBLEM_PHRASES = {
    "non_finite_spectra": "spectra with non-finite eigenvalues or directions (rescaling off until the next)",
    "non_finite_gradients": "embedding gradients (one per hooked tensor) that arrived non-finite, left untouched",
    "non_finite_rescaled": "embedding gradients whose rescaling was not finite, passed on unrescaled",
    "width_mismatch": "embedding tensors of another width than the spectrum's (not rescaled)",
}


class _Spectrum:
    """The rescaling in force, on the device: directions ``d x k`` and ``gain − 1`` per direction."""

    def __init__(self, directions: Tensor, gain_offsets: Tensor, counts: Tensor, preserve_norm: bool) -> None:
        self.directions = directions
        self.gain_offsets = gain_offsets
        self.counts = counts
        self.preserve_norm = preserve_norm
        self.width = directions.shape[0]


def _rescale_hook(spectrum: _Spectrum, grad: Tensor) -> Tensor:
    return guarded_rescale(grad, spectrum.directions, spectrum.gain_offsets, spectrum.counts, spectrum.preserve_norm)


class ModeEqualizer(Callback):
    """Speed up the slow modes: rescale the embedding gradient along the monitor's eigen-directions.

    With the leading eigen-directions ``u_r`` and eigenvalues ``λ_r`` of the embedding covariance measured by
    the Trainer's [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor] (its ``mode_directions``
    directions, ``λ_1`` the largest), the gradient ``g = ∂L/∂z`` of every embedding row at the monitor's
    tracking point becomes ``g + Σ_r (gain_r − 1)(g·u_r) u_r`` with ``gain_r = min((λ_1/λ_r)^alpha,
    max_gain)``; components outside those directions are untouched. Directions with a non-positive
    eigenvalue keep the gain 1. With ``preserve_norm`` (the default) the result is then scaled back to the
    norm of the gradient tensor it came from. Without it, in the linear model, this multiplies mode ``r``'s
    growth rate by ``gain_r`` (see "Equalising the modes" in the theory docs).

    Which tensors: exactly those the monitor measures. For a loss's inputs (the default for a Lightly
    module), every online input of each call of the loss during a training step (both views, separate or
    concatenated, get the same rescaling); for a module's output, its output. Hooks are registered only
    during training batches, only with gradients on, and only once a spectrum exists. A prototype layer's
    inputs are all rescaled, including calls whose output does not reach the loss (which the monitor
    leaves out of its spectrum). An ``embedding_fn`` point cannot be rescaled (it is computed outside the
    training step's graph): that raises at fit start.

    When: off (the gradient untouched) until the monitor's first spectrum and for ``warmup_steps``; then the
    directions and gains are replaced at every ``update_every_n_measurements``-th new measurement,
    copied to the device without the host waiting. The training step runs tensor operations only.

    Safety: a spectrum with non-finite values switches the rescaling off until the next; a gradient that
    arrives non-finite, or whose rescaling is not finite, is left as it was. Each kind warns once (a
    [`StepwiseWarning`][lightning_stepwise.problems.StepwiseWarning]) and is counted in `problems`. Under
    DDP every rank solves the same reduced spectrum at the same batch, so every rank applies the same
    rescaling without a broadcast (were they to differ in the last bits, DDP's averaging of the parameter
    gradients still keeps the replicas identical).

    The measured spectrum is that of the embeddings as the monitor sees them (L2-normalised for NT-Xent-style
    losses, or the views' cross-correlation with ``spectrum="cross_correlation"``); the gradient rescaled is
    that of the tensor the hook is on.

    Args:
        alpha: the strength in ``[0, 1]``. 0 registers no hook at all (training unchanged bit for bit); 1
            gives every direction up to the cap the rate of the top one.
        max_gain: the cap on every gain, ``>= 1`` (``float("inf")``: none; not advised, small directions are
            mostly noise in a real network).
        update_every_n_measurements: take every n-th new spectrum of the monitor (1: each).
        warmup_steps: logging steps trained unchanged before the rescaling may start.
        point: the monitor's tracking point to rescale, by name (``monitor.tracking_points``); None: its first.
        preserve_norm: scale each rescaled gradient tensor back to the norm it arrived with, so that the
            gains tilt the gradient towards the small directions without lengthening the step (the default:
            early in training most directions sit at the cap, and without it a real network's step can grow
            up to ``max_gain`` times and diverge). False: the linear theory's equaliser, every gain a pure
            speed-up of its direction.

    Raises ``RuntimeError`` at set-up when the Trainer has no ``StepwiseMonitor`` or the monitor keeps no
    directions (``mode_directions=0``), and ``ValueError`` for an unknown ``point`` or an ``embedding_fn``
    point.

    Examples:
        >>> from lightning_stepwise import StepwiseMonitor
        >>> equalizer = ModeEqualizer(alpha=0.5, max_gain=10)
        >>> equalizer.gains is None  # before the first spectrum: off
        True
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[StepwiseMonitor(), equalizer], max_steps=1000)  # doctest: +SKIP
        >>> trainer.fit(model, dataloader)                                                  # doctest: +SKIP
    """

    def __init__(
        self,
        alpha: float = 0.5,
        max_gain: float = 10.0,
        *,
        update_every_n_measurements: int = 1,
        warmup_steps: int = 0,
        point: str | None = None,
        preserve_norm: bool = True,
    ) -> None:
        super().__init__()
        check_equalizer_options(alpha, max_gain, update_every_n_measurements, warmup_steps, point, preserve_norm)
        self.preserve_norm = preserve_norm
        self.alpha = float(alpha)
        self.max_gain = float(max_gain)
        self.update_every_n_measurements = update_every_n_measurements
        self.warmup_steps = warmup_steps
        self.point = point
        #: The gains in force (host copy, one per direction), or None while the rescaling is off.
        self.gains: np.ndarray | None = None
        #: Updates of the rescaling so far (new spectra taken).
        self.updates = 0
        self._problems: dict[str, int] = dict.fromkeys(_PROBLEM_PHRASES, 0)
        self._warned: set[str] = set()
        self._monitor: StepwiseMonitor | None = None
        self._point: TrackingPoint | None = None
        self._handles: list[Any] = []
        self._spectrum: _Spectrum | None = None
        self._counts: DeviceCounts | None = None
        self._counted = np.zeros(len(GRADIENT_PROBLEMS), dtype=np.int64)
        self._seen: Measurement | None = None
        self._measurements_seen = 0
        self._restored: dict[str, np.ndarray] | None = None
        self._host_spectrum: dict[str, np.ndarray] | None = None  # the rescaling in force, as host arrays
        self._armed = False
        self._hooked: list[Tensor] = []  # this step's hooked tensors: kept alive so ids stay unique

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks: hooks, device tensors and the monitor are found again at set-up
        state = dict(self.__dict__)
        state.update(_handles=[], _spectrum=None, _counts=None, _monitor=None, _point=None, _seen=None, _hooked=[],
                     _armed=False)
        if self._restored is None and self._host_spectrum is not None:
            state["_restored"] = dict(self._host_spectrum)
        return state

    # ------------------------------------------------------------------ public records

    @property
    def problems(self) -> dict[str, int]:
        """Counts of what was left untouched, by kind (this process; gradient counts up to the last update)."""
        return dict(self._problems)

    # ------------------------------------------------------------------ set-up

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        monitor = find_monitor(trainer)
        if monitor is None:
            raise RuntimeError("ModeEqualizer rescales along the eigen-directions that a StepwiseMonitor measures, "
                               "and the Trainer has none: add one, e.g. Trainer(callbacks=[StepwiseMonitor(), "
                               "ModeEqualizer()])")
        if monitor.mode_directions <= 0:
            raise RuntimeError("ModeEqualizer needs the monitor's eigen-directions, and StepwiseMonitor("
                               "mode_directions=0) keeps none: leave mode_directions at its default (64) or set it "
                               "to the number of directions to rescale")
        self._monitor = monitor

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.alpha > 0:
            self._attach()

    def _attach(self) -> bool:
        """Hook the monitor's tracking point once the monitor has found it; False while it has not."""
        if self._handles:
            return True
        assert self._monitor is not None
        points = self._monitor.tracking_points
        if not points:
            return False  # found at a later hook (configure_model, or the first batch)
        if self.point is None:
            point = points[0]
        else:
            point = next((p for p in points if p.name == self.point), None)
            if point is None:
                raise ValueError(f"ModeEqualizer(point={self.point!r}): the monitor tracks no such point; it tracks "
                                 f"{[p.name for p in points]}. Pass one of these names, or point=None for the first")
        if point.source == "embedding_fn" or point.module is None:
            raise ValueError("ModeEqualizer cannot rescale the gradient of embeddings that StepwiseMonitor("
                             "embedding_fn=...) computes outside the training step; point the monitor at a module "
                             "instead (StepwiseMonitor(module='projection_head'), or a loss)")
        if point.source in ("loss_inputs", "module_inputs"):
            handle = point.module.register_forward_pre_hook(self._on_inputs, with_kwargs=True)
        else:
            handle = point.module.register_forward_hook(self._on_output)
        self._handles = [handle]
        self._point = point
        return True

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._armed = False
        self._hooked = []

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._detach()  # Lightning does not call teardown after an exception

    # ------------------------------------------------------------------ per batch

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.alpha == 0 or self._monitor is None or not self._attach():
            return
        device = getattr(pl_module, "device", torch.device("cpu"))
        if self._restored is not None:
            restored, self._restored = self._restored, None
            self._set_spectrum(restored["eigenvalues"], restored["directions"], device)
        measurement = self._monitor.latest_measurement(self._point.name if self._point is not None else None)
        if measurement is not None and measurement is not self._seen:
            self._seen = measurement
            self._measurements_seen += 1
            if (self._measurements_seen - 1) % self.update_every_n_measurements == 0:
                self._take(measurement, device)
        self._armed = self._spectrum is not None and logging_step(trainer) >= self.warmup_steps

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._armed = False
        self._hooked = []

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._counts is not None:  # after the last step: reading the device counters may wait now
            self._note_gradient_counts(self._counts.read())

    # ------------------------------------------------------------------ the spectrum

    def _take(self, measurement: Measurement, device: torch.device) -> None:
        """Replace the rescaling with the one of a new measurement (no host-device wait)."""
        if self._counts is not None:
            ready = self._counts.ready()
            if ready is not None:
                self._note_gradient_counts(ready)
            self._counts.snapshot()
        if measurement.directions is not None and measurement.directions.shape[1]:
            self._set_spectrum(measurement.eigenvalues, measurement.directions, device)
        elif not np.isfinite(measurement.eigenvalues).all():
            self._switch_off()
        # else: a spectrum without directions (too few samples): the rescaling in force stays

    def _set_spectrum(self, eigenvalues: np.ndarray, directions: np.ndarray, device: torch.device) -> None:
        k = min(directions.shape[1], len(eigenvalues))
        values, vectors = np.asarray(eigenvalues[:k], dtype=np.float64), np.asarray(directions[:, :k])
        if not (np.isfinite(values).all() and np.isfinite(vectors).all()):
            self._switch_off()
            return
        gains = equalizer_gains(values, self.alpha, self.max_gain)
        if self._counts is None or self._counts.values.device != torch.device(device):
            self._counts = DeviceCounts(len(GRADIENT_PROBLEMS), device)
            self._counted[:] = 0
        self._spectrum = _Spectrum(_to_device(vectors.astype(np.float32), device),
                                   _to_device((gains - 1.0).astype(np.float32), device), self._counts.values,
                                   self.preserve_norm)
        self.gains = gains
        self._host_spectrum = {"eigenvalues": values, "directions": vectors}
        self.updates += 1

    def _switch_off(self) -> None:
        self._spectrum, self.gains, self._host_spectrum = None, None, None
        self._problem("non_finite_spectra", "the monitor's spectrum has non-finite eigenvalues or directions; "
                      "the gradient is left untouched until a finite one")

    def _note_gradient_counts(self, counts: np.ndarray) -> None:
        new = counts - self._counted
        self._counted = counts.copy()
        for kind, n in zip(GRADIENT_PROBLEMS, new.tolist(), strict=True):
            if n > 0:
                self._problem(kind, _PROBLEM_PHRASES[kind], count=int(n))

    def _problem(self, kind: str, message: str, count: int = 1) -> None:
        self._problems[kind] += count
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"ModeEqualizer: {message} (warned once; see ModeEqualizer.problems)", StepwiseWarning,
                          stacklevel=3)

    # ------------------------------------------------------------------ hooks

    def _on_inputs(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._armed or not torch.is_grad_enabled():
            return
        online = online_tensors(flatten_tensors((args, kwargs)))
        ndim = online[0].ndim if online else 0
        # as the monitor's tap: tensors of another rank than the first (feature maps) are not embeddings
        for tensor in online:
            if tensor.ndim == ndim:
                self._hook(tensor, rows_along_last=True)

    def _on_output(self, _module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        if not self._armed or not torch.is_grad_enabled():
            return
        first = flatten_tensors(output)[:1]
        if first and first[0].requires_grad and torch.is_floating_point(first[0]) and first[0].ndim >= 2:
            self._hook(first[0], rows_along_last=False)

    def _hook(self, tensor: Tensor, *, rows_along_last: bool) -> None:
        spectrum = self._spectrum
        if spectrum is None or any(tensor is seen for seen in self._hooked):
            return  # a tensor given twice (or to two calls) is rescaled once
        width = tensor.shape[-1] if rows_along_last else math.prod(tensor.shape[1:])
        if width != spectrum.width:
            self._problem("width_mismatch", f"an embedding of width {width} reached the hooked point, the spectrum "
                          f"has width {spectrum.width}; its gradient is left untouched")
            return
        self._hooked.append(tensor)
        tensor.register_hook(partial(_rescale_hook, spectrum))

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """The spectrum in force (host arrays) and the problem counts, so a resumed run rescales at once."""
        state: dict[str, Any] = {"problems": dict(self._problems), "updates": self.updates}
        if self._host_spectrum is not None:
            state.update(self._host_spectrum)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._problems.update({k: int(v) for k, v in state_dict.get("problems", {}).items() if k in self._problems})
        self.updates = int(state_dict.get("updates", self.updates))
        if "eigenvalues" in state_dict and "directions" in state_dict:
            # made into device tensors at the next batch, on the module's device
            self._restored = {"eigenvalues": np.asarray(state_dict["eigenvalues"]),
                              "directions": np.asarray(state_dict["directions"])}


def _to_device(array: np.ndarray, device: torch.device | str) -> Tensor:
    """A host array on ``device``: from pinned memory without waiting, on a GPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
