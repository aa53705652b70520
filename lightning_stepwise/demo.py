"""The demo: a small Lightly Barlow Twins model on the embedded digits, with ``StepwiseMonitor()``."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

from lightning_stepwise.atlas_callback import ModeAtlas
from lightning_stepwise.data import digits_dataloader, digits_probe_loaders
from lightning_stepwise.linear_probe import LinearProbe
from lightning_stepwise.monitor import StepwiseMonitor
from lightning_stepwise.probe import format_probe_table
from lightning_stepwise.report import MODE_NUMBERING, explain_no_onsets, format_onset_table, largest_rise

__all__ = ["DigitsBarlowTwins", "format_summary", "quiet_lightning", "run_demo", "small_conv_backbone"]

#: Lightning's loggers: their info lines (devices, tips, "fit stopped") stay off the demo's screen.
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
#: Where ``rank_zero_info`` writes, the package's callbacks' own lines included: filtered, not silenced.
_RANK_ZERO_LOGGERS = tuple(f"{name}.utilities.rank_zero" for name in _LIGHTNING_LOGGERS)
#: Modules whose warnings the demo hides: Lightning's and Lightly's own (deprecations, logging-interval hints).
_THIRD_PARTY_WARNINGS = r"(lightning|pytorch_lightning|lightning_fabric|lightly)(\.|$)"


class _OwnLinesOnly(logging.Filter):
    """Lets through warnings and errors, and the info lines of the package's callbacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.getMessage().startswith(("StepwiseMonitor", "LinearProbe"))


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within the block, Lightning's info lines and Lightning's and Lightly's own warnings stay off the screen.

    The package's own lines (``StepwiseMonitor: ...``, ``LinearProbe: ...``), Lightning's warnings logged
    as such, and every other library's warnings still show. Logger levels, filters and warning filters
    are as before once the block ends: nothing changes at import or outside the demo.

    Examples:
        >>> with quiet_lightning():
        ...     logging.getLogger("lightning.pytorch").getEffectiveLevel() == logging.WARNING
        True
    """
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS + _RANK_ZERO_LOGGERS]
    levels = [logger.level for logger in loggers]
    own_lines = _OwnLinesOnly()
    try:
        for logger in loggers:
            if logger.name in _RANK_ZERO_LOGGERS:
                logger.setLevel(logging.INFO)
                logger.addFilter(own_lines)
            else:
                logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=_THIRD_PARTY_WARNINGS)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
            logger.removeFilter(own_lines)


class _Announce(pl.Callback):
    """Prints a line at fit end, before the callbacks after it (the files, the final probe) do their slow work."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        print(self.line, flush=True)


def _describe_atlas(callback: ModeAtlas) -> str:
    """The atlas table of the final embeddings, with one sentence on how to read it."""
    if callback.atlas is None:
        return "Mode atlas: not drawn (the warning above says why)."
    return (f"Mode atlas of the final embeddings on the probe's {len(callback.images)} validation images (modes "
            "numbered from 0 by eigenvalue, their extreme images in atlas/atlas.png): the image statistic each "
            "mode follows most, its Pearson r, and the digit it separates best (one-vs-rest AUC: near 1 or 0, that "
            f"digit sits at one end of the mode).\n{callback.atlas.table()}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def small_conv_backbone(width: int = 32) -> nn.Sequential:
    """A three-layer conv net for 16x16 single-channel images, ``(B, 4*width)`` features.

    Examples:
        >>> small_conv_backbone(8)(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 32])
    """
    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*block(1, width, 1), *block(width, 2 * width, 2), *block(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class DigitsBarlowTwins(pl.LightningModule):
    """Barlow Twins as Lightly's examples write it: ``backbone``, ``projection_head``, ``criterion``.

    ``init_scale`` multiplies every conv and linear weight after the default initialisation (the
    paper's small-initialisation setting makes the steps sharper).

    Examples:
        >>> model = DigitsBarlowTwins(width=8, embedding_dim=16)
        >>> model(torch.zeros(4, 1, 16, 16)).shape
        torch.Size([4, 16])
    """

    def __init__(self, width: int = 32, hidden_dim: int = 256, embedding_dim: int = 64,
                 lr: float = 0.05, init_scale: float = 1.0) -> None:
        super().__init__()
        from lightly.loss import BarlowTwinsLoss
        from lightly.models.modules import BarlowTwinsProjectionHead

        self.save_hyperparameters()
        self.backbone = small_conv_backbone(width)
        self.projection_head = BarlowTwinsProjectionHead(4 * width, hidden_dim, embedding_dim)
        self.criterion = BarlowTwinsLoss()
        if init_scale != 1.0:
            with torch.no_grad():
                for m in self.modules():
                    if isinstance(m, (nn.Conv2d, nn.Linear)):
                        m.weight.mul_(init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x0, x1 = batch[0]
        loss = self.criterion(self(x0), self(x1))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def format_summary(history: dict[str, np.ndarray], max_rows: int = 12, top: int = 6) -> str:
    """A terminal table of the spectrum over time (evenly chosen rows of the history).

    Examples:
        >>> h = {"step": np.array([0, 10]), "epoch": np.array([0, 1]), "loss": np.array([3.0, 2.0]),
        ...      "effective_rank": np.array([1.5, 3.2]), "eigenvalues": np.array([[4.0, 1.0], [2.0, 2.0]])}
        >>> print(format_summary(h, top=2).splitlines()[0])
          step  epoch     loss  eff.rank   modes>1%  eigenvalue 1  eigenvalue 2
    """
    steps = history["step"]
    if len(steps) == 0:
        return "(no spectrum recorded)"
    eig = history["eigenvalues"]
    top = min(top, eig.shape[1])
    rows = np.unique(np.linspace(0, len(steps) - 1, min(max_rows, len(steps))).round().astype(int))
    header = f"{'step':>6} {'epoch':>6} {'loss':>8} {'eff.rank':>9} {'modes>1%':>10}" + "".join(
        f"  eigenvalue {k + 1:<1}" for k in range(top))
    lines = [header]
    for i in rows:
        above = int((eig[i] > 0.01 * eig[i, 0]).sum()) if eig[i, 0] > 0 else 0
        loss = history["loss"][i]
        lines.append(
            f"{steps[i]:>6d} {history['epoch'][i]:>6d} {loss:>8.3f} {history['effective_rank'][i]:>9.2f} "
            f"{above:>10d}" + "".join(f"  {eig[i, k]:>12.4g}" for k in range(top))
        )
    return "\n".join(lines)


def _describe_run(monitor: StepwiseMonitor, max_steps: int, batches_per_epoch: int,
                  every_n_steps: int | str) -> str:
    """What this run measured, in words: the measurements, the largest rise, the modes learned or why none."""
    history = monitor.history
    rows, width = len(history["step"]), history["eigenvalues"].shape[1]
    schedule = f"every {every_n_steps} steps" if every_n_steps != "auto" else "dense early (every_n_steps='auto')"
    lines = [f"Spectrum of the {width}-d embeddings (the inputs of the Barlow Twins loss): "
             f"{_count(rows, 'measurement')} over {max_steps} steps "
             f"(~{math.ceil(max_steps / batches_per_epoch)} epochs), {schedule}."]
    rise = largest_rise(history)
    if rise is not None:
        lines.append(f"Largest rise: eigenvalue {rise['eigenvalue']} grew {rise['factor']:.0f}x above its lowest "
                     f"value ({rise['floor']:.3g} at step {rise['floor_step']:.0f}, {rise['value']:.3g} at step "
                     f"{rise['step']:.0f}).")
    lines.append(format_summary(history, max_rows=20))
    onsets = monitor.onsets
    if onsets:
        at = [f"{r['onset_step']:.0f}" for r in onsets]
        when = at[0] if len(at) == 1 else ", ".join(at[:-1]) + f" and {at[-1]}"
        lines += [f"\n{_count(len(onsets), 'mode')} learned, at step{'s' if len(at) > 1 else ''} {when}.",
                  f"{MODE_NUMBERING}; onset: the step at which its eigenvalue reaches half its plateau; loss drop: the "
                  "drop of the loss matched to it.", format_onset_table(onsets, ordinal=True)]
    else:
        reason = explain_no_onsets(history, monitor.onset_options, onsets=onsets) or ""
        lines.append("\n" + textwrap.fill(f"0 modes learned. Why: {reason}", width=110))
    return "\n".join(lines)


def run_demo(max_steps: int = 800, output: str | os.PathLike[str] = "stepwise-demo", seed: int = 0,
             batch_size: int = 256, init_scale: float = 0.5, every_n_steps: int | str = 20,
             quiet: bool = False) -> StepwiseMonitor:
    """Train `DigitsBarlowTwins` on the digits on the CPU with ``StepwiseMonitor()`` and ``LinearProbe``.

    Prints what the run measured: the spectrum over time, its largest rise, the modes learned (or why none
    were and what to change, see [`explain_no_onsets`][lightning_stepwise.report.explain_no_onsets]), what
    each mode encodes ([`ModeAtlas`][lightning_stepwise.atlas_callback.ModeAtlas] at fit end, on the probe's
    validation images, written to ``atlas/modes.csv`` and ``atlas/atlas.png``) and the probe; ``quiet``
    prints nothing. Lightning's own info lines and warnings are kept off the screen
    ([`quiet_lightning`][lightning_stepwise.demo.quiet_lightning]).

    Args:
        max_steps: optimizer steps.
        output: folder of the logger, the files (``<output>/logs/version_N/stepwise``, the atlas in its
            ``atlas`` folder) and ``checkpoints/last.ckpt``.
        seed: seeds the initial weights, the augmentations and the batch order.
        batch_size: images per batch (two augmented views of each).
        init_scale: multiplies every initial conv and linear weight (the command's ``--small-init``).
        every_n_steps: steps between two measurements, or ``"auto"`` (as ``StepwiseMonitor`` takes it).
        quiet: no progress bar, no text.

    Returns:
        The monitor (its ``history``, ``onsets`` and ``output_dir``).

    Examples:
        >>> monitor = run_demo(max_steps=20, output="/tmp/demo", every_n_steps=10, quiet=True)  # doctest: +SKIP
        >>> sorted(p.name for p in monitor.output_dir.iterdir())                              # doctest: +SKIP
        ['atlas', 'onsets.csv', 'onsets.json', 'probe.csv', 'probe_modes.csv', 'probe_modes.png', ...]
        >>> sorted(p.name for p in (monitor.output_dir / "atlas").iterdir())                  # doctest: +SKIP
        ['atlas.png', 'modes.csv']
    """
    def say(line: str) -> None:  # progress before the slow parts
        if not quiet:
            print(line, flush=True)

    say("Preparing the data: scikit-learn's embedded digits as 16x16 images, two augmented views of each "
        "for training, a labelled split for the linear probe...")
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    loader = digits_dataloader(batch_size=batch_size, seed=seed)
    model = DigitsBarlowTwins(init_scale=init_scale)
    monitor = StepwiseMonitor(every_n_steps=every_n_steps)
    monitor.explain_empty_runs = False  # the demo's summary gives the reason, with the demo's own flags
    probe_train, probe_val = digits_probe_loaders(size=16)
    probe = LinearProbe(probe_train, probe_val, on_new_mode=True)
    # The probe's validation images: the atlas's per-digit AUCs then describe the images the probe's accuracy
    # is measured on, and 539 un-augmented images (about 54 per digit) are plenty for an AUC. Fit end only:
    # drawing at each new mode would add a figure per mode to a demo meant to be quick.
    val_images, val_labels = probe_val.dataset.tensors
    atlas = ModeAtlas(val_images, val_labels, point="projection_head", verbose=False)  # printed below
    output = Path(output)
    announce = _Announce("Writing the files, probing the final features (the linear probe with the k leading "
                         "eigen-directions, k = 1, 2, 4, ...) and drawing the mode atlas...")
    with quiet_lightning():
        trainer = pl.Trainer(
            max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1,
            callbacks=[*([] if quiet else [announce]), monitor, probe, atlas,
                       pl.callbacks.ModelCheckpoint(dirpath=output / "checkpoints", save_last=True, save_top_k=0)],
            logger=pl.loggers.CSVLogger(output, name="logs"), default_root_dir=output,
            enable_checkpointing=True, enable_progress_bar=not quiet, enable_model_summary=False,
            log_every_n_steps=min(10, len(loader)),
        )
        say(f"Training for {max_steps} steps on the CPU ({len(loader)} batches of {batch_size} per epoch), the "
            "spectrum measured by StepwiseMonitor, a linear probe each time a mode is learned...")
        trainer.fit(model, loader)
    if not quiet:
        print()
        print(_describe_run(monitor, max_steps, len(loader), every_n_steps))
        print("\n" + _describe_atlas(atlas))
        last = probe.results[-1] if probe.results else {}
        sizes = (f" ({last['train_size']:,.0f} train / {last['val_size']:,.0f} validation images, un-augmented)"
                 if "train_size" in last else "")
        print(f"\nLinear probe of the backbone features on the digits' labels{sizes}, each time a mode was learned "
              "and at the end; then using only the top-k eigen-directions of the features' covariance:")
        print(format_probe_table(probe.results, probe.modes_table))
        written = ", ".join(sorted(p.relative_to(monitor.output_dir).as_posix()
                                   for p in monitor.output_dir.rglob("*") if p.is_file())) \
            if monitor.output_dir is not None and monitor.output_dir.is_dir() else "none"
        print(f"\nFiles: {monitor.output_dir}/ {written}; logger: {trainer.log_dir}; checkpoint: "
              f"{output / 'checkpoints' / 'last.ckpt'} (lightning-stepwise probe CHECKPOINT probes it again; "
              f"lightning-stepwise report {output} detects the modes again)")
    return monitor
