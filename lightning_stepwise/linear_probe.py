"""LinearProbe: the linear-probe accuracy of a module's frozen features during and after training.

The probe maths is [`lightning_stepwise.probe`][lightning_stepwise.probe]; this callback decides when to probe, gathers
the
features across DDP ranks, and logs and writes the results.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_stepwise.distributed import all_reduce_sum
from lightning_stepwise.lightning_compat import Callback, cuda_devices, default_output_dir, logging_step
from lightning_stepwise.monitor import find_monitor, learned_since
from lightning_stepwise.probe import extract_features, fit_linear_probe, point_features, split_labelled_batch
from lightning_stepwise.problems import ProblemCounter
from lightning_stepwise.report import save_probe, save_problems

__all__ = ["LinearProbe"]


class LinearProbe(Callback):
    """Linear-probe accuracy of a module's frozen features, during and at the end of training.

    Extracts features from labelled ``train_dataloader`` and ``val_dataloader`` (default: the
    datamodule's) without gradients and with BatchNorm/Dropout in eval mode (the module's previous mode
    is restored), fits [`fit_linear_probe`][lightning_stepwise.probe.fit_linear_probe] and logs ``probe_top1``,
    ``probe_top5`` to every logger. Runs at fit end, every ``every_n_epochs`` epochs, and, with
    ``on_new_mode=True`` and a [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor] in the same Trainer,
    each time it learns a mode.
    Under DDP each rank extracts its own loader's batches and the features are gathered, so every rank
    fits the same probe. Results survive checkpoint resume and go to ``probe.csv`` (and the accuracy per
    number of modes to ``probe_modes.csv`` / ``probe_modes.png``) next to the monitor's files.

    Args:
        train_dataloader: labelled batches ``(inputs, labels)`` to fit the probe on.
        val_dataloader: labelled batches to measure it on.
        feature_fn: ``fn(module, inputs) -> features``; default: the ``backbone`` output, flattened.
        point: instead of ``feature_fn``, a dotted submodule path whose output ``forward`` produces, e.g.
            ``"projection_head"`` (see [`point_features`][lightning_stepwise.probe.point_features]).
        every_n_epochs: also probe at the end of every n-th epoch.
        on_new_mode: also probe whenever the Trainer's StepwiseMonitor learns a new mode.
        at_fit_end: probe when training ends.
        method: ``"logistic"`` or ``"ridge"``; ``c``: inverse regularisation (see
            [`fit_linear_probe`][lightning_stepwise.probe.fit_linear_probe]).
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
        self.results: list[dict[str, float]] = []
        """One dict per probe run: step, epoch, modes_learned, trigger, top1, top5, train_top1, sizes."""
        self.modes_table: list[tuple[int, float]] = []
        """Accuracy per number of covariance eigen-directions, ``[(k, top1)]``, of the last fit-end probe."""
        self.output_dir: Path | None = None
        """Folder the files were written to, once written."""
        self._loaders: tuple[Any, Any] | None = None
        self._default_dir: Path | None = None
        self._modes_seen = 0
        self.problems = ProblemCounter("LinearProbe", strict=strict, kinds=["failed_probes"])
        """Probes that failed (counted, warned once per kind of error; ``strict=True`` raises instead)."""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    # ------------------------------------------------------------------ set-up: fail early, with guidance

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._default_dir = default_output_dir(trainer)  # a collective under DDP: every rank comes here
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
        with torch.random.fork_rng(devices=cuda_devices(pl_module)):
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
        learned = learned_since(trainer, self._modes_seen)
        if learned is not None:
            self._modes_seen = learned
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
        monitor = find_monitor(trainer)
        learned = monitor.modes_learned if monitor is not None else None
        step = logging_step(trainer)
        failure: Exception | None = None
        try:
            # iterating a DataLoader draws from the global RNG: fork it, so training's randomness is untouched
            with torch.random.fork_rng(devices=cuda_devices(pl_module)):
                train_rows = extract_features(pl_module, self._loaders[0], feature_fn=self.feature_fn)
                val_rows = extract_features(pl_module, self._loaders[1], feature_fn=self.feature_fn)
        except Exception as err:
            if self.strict:
                raise
            failure = err
        # every rank learns whether any failed before the gathers, which all ranks must enter or none
        if self._any_rank_failed(trainer, pl_module, failure is not None):
            self.problems.report("failed_probes", f"the probe at step {step} failed "
                                 f"({failure if failure is not None else 'on another process'}); training goes on",
                                 key=f"probe:{type(failure).__name__}")
            return
        try:
            train = self._gathered(trainer, *train_rows)
            val = self._gathered(trainer, *val_rows)
            modes: bool | list[int] = False
            if with_modes:
                modes = [learned] if learned else True
            result = fit_linear_probe(*train, *val, modes=modes, **self.fit_options)
        except Exception as err:
            if self.strict:
                raise
            self.problems.report("failed_probes", f"the probe at step {step} failed ({err}); training goes on",
                                 key=f"probe:{type(err).__name__}")
            return
        row = {"step": float(step), "epoch": float(trainer.current_epoch),
               "modes_learned": math.nan if learned is None else float(learned), "trigger": trigger,
               "top1": result.top1, **{f"top{k}": v for k, v in result.topk.items()},
               "train_top1": result.train_top1, "train_size": float(result.train_size),
               "val_size": float(result.val_size), "width": float(result.width)}
        self.results.append(row)
        if result.modes:
            self.modes_table = list(result.modes)
        metrics = {f"{self.name}_top1": result.top1, **{f"{self.name}_top{k}": v for k, v in result.topk.items()}}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    @staticmethod
    def _any_rank_failed(trainer: Any, pl_module: Any, failed: bool) -> bool:
        if getattr(trainer, "world_size", 1) <= 1:
            return failed
        flag = torch.tensor([float(failed)], dtype=torch.float64, device=pl_module.device)
        return bool(all_reduce_sum(flag).item() > 0)  # a probe already waits on the device

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
        if not trainer.is_global_zero or not (self.results or any(self.problems.counts.values())):
            return
        monitor = find_monitor(trainer)
        directory = self.dirpath or (monitor.output_dir if monitor is not None and monitor.output_dir else None) \
            or self._default_dir
        learned = monitor.modes_learned if monitor is not None else None
        try:
            if self.results:
                save_probe(self.results, self.modes_table, directory, learned_modes=learned)
            save_problems(self.problems.counts, directory)
        except Exception as err:  # files are never worth a failed run
            self.problems.warn("files", f"could not write its files: {err}")
            return
        self.output_dir = Path(directory)
        summary = self.problems.summary()
        if summary:
            print(f"{summary} (see {self.output_dir / 'problems.json'})")

    def state_dict(self) -> dict[str, Any]:
        keys = sorted({k for r in self.results for k in r if k != "trigger"})
        return {
            "columns": keys,
            "rows": torch.tensor([[float(r.get(k, math.nan)) for k in keys] for r in self.results],
                                 dtype=torch.float64).reshape(len(self.results), len(keys)),
            "triggers": [r["trigger"] for r in self.results],
            "modes_table": torch.tensor(self.modes_table, dtype=torch.float64).reshape(-1, 2),
            "modes_seen": self._modes_seen,
            "problems": self.problems.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        columns = state_dict["columns"]
        self.results = [{**dict(zip(columns, row, strict=True)), "trigger": trigger}
                        for row, trigger in zip(state_dict["rows"].tolist(), state_dict["triggers"], strict=True)]
        self.modes_table = [(int(k), float(a)) for k, a in state_dict["modes_table"].tolist()]
        self._modes_seen = int(state_dict["modes_seen"])
        self.problems.load_state_dict(state_dict.get("problems", {}))
