"""The demo: a small Lightly Barlow Twins model on the embedded digits, with ``StepwiseMonitor()``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

from lightning_stepwise.data import digits_dataloader, digits_probe_loaders
from lightning_stepwise.linear_probe import LinearProbe
from lightning_stepwise.monitor import StepwiseMonitor
from lightning_stepwise.probe import format_probe_table
from lightning_stepwise.report import format_onset_table

__all__ = ["DigitsBarlowTwins", "format_summary", "run_demo", "small_conv_backbone"]


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


def run_demo(max_steps: int = 800, output: str | os.PathLike[str] = "stepwise-demo", seed: int = 0,
             batch_size: int = 256, init_scale: float = 0.5, every_n_steps: int = 20,
             quiet: bool = False) -> StepwiseMonitor:
    """Train `DigitsBarlowTwins` on the digits on the CPU with ``StepwiseMonitor()``.

    Returns the monitor (its ``history`` and ``output_dir``). Files go to
    ``<output>/logs/version_N/stepwise`` (the CSV logger's folder).

    Examples:
        >>> monitor = run_demo(max_steps=20, output="/tmp/demo", every_n_steps=10, quiet=True)  # doctest: +SKIP
        >>> sorted(p.name for p in monitor.output_dir.iterdir())                              # doctest: +SKIP
        ['onsets.csv', 'onsets.json', 'probe.csv', 'probe_modes.csv', 'probe_modes.png', 'spectrum.csv', ...]
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    loader = digits_dataloader(batch_size=batch_size, seed=seed)
    model = DigitsBarlowTwins(init_scale=init_scale)
    monitor = StepwiseMonitor(every_n_steps=every_n_steps)
    probe = LinearProbe(*digits_probe_loaders(size=16), on_new_mode=True)
    output = Path(output)
    trainer = pl.Trainer(
        max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1,
        callbacks=[monitor, probe, pl.callbacks.ModelCheckpoint(dirpath=output / "checkpoints", save_last=True,
                                                                save_top_k=0)],
        logger=pl.loggers.CSVLogger(output, name="logs"), default_root_dir=output,
        enable_checkpointing=True, enable_progress_bar=not quiet, enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, loader)
    if not quiet:
        history = monitor.history
        epochs = math.ceil(max_steps / len(loader))
        print(f"\nSpectrum of the {history['eigenvalues'].shape[1]}-d embeddings (inputs of the Barlow Twins loss), "
              f"{len(history['step'])} measurements over {max_steps} steps (~{epochs} epochs). Modes are learned "
              "one after another: each eigenvalue in turn rises by one to two orders of magnitude.")
        print(format_summary(history, max_rows=20))
        print(f"\n{monitor.modes_learned} modes learned (onset: the step at which a mode's eigenvalue reaches "
              "half its plateau; loss drop: the drop of the loss matched to it):")
        print(format_onset_table(monitor.onsets))
        print("\nLinear probe of the backbone features on the digits' labels (1,258 train / 539 validation "
              "images, un-augmented), each time a mode was learned and at the end; then using only the top-k "
              "eigen-directions of the features' covariance:")
        print(format_probe_table(probe.results, probe.modes_table))
        print(f"\nFiles: {monitor.output_dir}/ spectrum.npz, spectrum.csv, onsets.csv, onsets.json, stepwise.png, "
              f"probe.csv, probe_modes.csv, probe_modes.png; logger: {trainer.log_dir}; checkpoint: "
              f"{output / 'checkpoints' / 'last.ckpt'} (lightning-stepwise probe CHECKPOINT probes it again)")
    return monitor
