"""A run whose embedding spectrum rises in designed steps, under DDP, ddp_spawn or one process.

The module is Lightly-shaped (backbone with BatchNorm, projection_head, BarlowTwinsLoss) but does not
learn (lr = 0): the projection head scales coordinate j of the normalised input by a logistic in the step
that is half-way at ONSETS[j], so the truth is known. Under DDP without sync_batchnorm (which needs GPUs)
each rank's BatchNorm normalises its own part of the batch; one process reproduces that with ``ghost``
BatchNorm (statistics per half batch), so the two see the same embeddings. Each rank writes what its
monitors and its probe hold once the fit is over (under ddp_spawn the script's own process never sees
the workers' callbacks).

Usage: python ddp_onsets.py OUT_DIR DEVICES STRATEGY gather|local ghost|bn
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import pl_namespace  # noqa: E402
from sync_counter import count_monitor_syncs  # noqa: E402

from lightning_stepwise import LinearProbe, StepwiseMonitor  # noqa: E402

ONSETS = (16, 32, 48)
DIM, N, BATCH, STEPS, EVERY = 8, 512, 32, 90, 2
pl = pl_namespace("lightning.pytorch")


class Staircase(nn.Module):
    """Coordinate j scaled by sqrt(floor + σ((step - ONSETS[j]) / 2)): variance rises one mode at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variances = torch.full((DIM,), 1e-3)
        for j, onset in enumerate(ONSETS):
            variances[j] += 1 / (1 + math.exp(-(self.step - onset) / 2))
        return x * variances.sqrt()


class GhostBatchNorm(nn.BatchNorm1d):
    """Batch statistics per half of the batch: what two DDP ranks' own BatchNorms compute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([super(GhostBatchNorm, self).forward(half) for half in x.chunk(2)])


class Stairs(pl.LightningModule):
    def __init__(self, gather: bool, ghost: bool) -> None:
        super().__init__()
        from lightly.loss import BarlowTwinsLoss

        self.backbone = nn.Sequential(nn.Linear(DIM, DIM), GhostBatchNorm(DIM) if ghost else nn.BatchNorm1d(DIM))
        self.projection_head = Staircase()
        self.criterion = BarlowTwinsLoss(gather_distributed=gather)

    def training_step(self, batch, batch_idx):
        (x0, x1), _ = batch
        self.projection_head.step = self.global_step
        return self.criterion(self.projection_head(self.backbone(x0)), self.projection_head(self.backbone(x1)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def before_batchnorm(module: Stairs, inputs: torch.Tensor) -> torch.Tensor:
    return module.backbone[0](inputs)


class PairsOf(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return (self.x[i], self.x[i] + 0.05), self.y[i]


class Shards(pl.Callback):
    """Gives each rank its shard of the pairs and of the probe's data once the rank is known, and writes
    what every rank recorded once the fit is over."""

    def __init__(self, out_dir: str, probe: LinearProbe, data: tuple[torch.Tensor, ...]) -> None:
        self.out_dir, self.probe, self.data = Path(out_dir), probe, data

    def setup(self, trainer, pl_module, stage):
        rank, world = trainer.global_rank, trainer.world_size
        x, y, x_probe, y_probe = self.data
        local = BATCH // world
        # Step s of rank r gets samples [s*B + r*B/world, ...): together, the single process's batch s.
        indices = [s * BATCH + rank * local + i for s in range(N // BATCH) for i in range(local)]
        pl_module.train_dataloader = lambda: DataLoader(Subset(PairsOf(x, y), indices), batch_size=local)
        self.probe.train_dataloader = DataLoader(TensorDataset(x_probe[:96][rank::world], y_probe[:96][rank::world]),
                                                 batch_size=16)
        self.probe.val_dataloader = DataLoader(TensorDataset(x_probe[96:][rank::world], y_probe[96:][rank::world]),
                                               batch_size=16)

    def teardown(self, trainer, pl_module, stage):  # after every callback's on_fit_end
        rank = trainer.global_rank
        for monitor in trainer.callbacks:
            if isinstance(monitor, StepwiseMonitor):
                np.savez(self.out_dir / f"{monitor.name}_rank{rank}.npz", **monitor.history)
                (self.out_dir / f"{monitor.name}_onsets_rank{rank}.json").write_text(json.dumps(monitor.onsets))
        result = self.probe.results[-1]
        (self.out_dir / f"probe_rank{rank}.json").write_text(json.dumps(
            {"top1": result["top1"], "train_size": result["train_size"], "modes": self.probe.modes_table}))


def main(out_dir: str, devices: int, strategy: str, gather: bool, ghost: bool) -> None:
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % 4
    x = torch.randn(N, DIM, generator=g) + nn.functional.one_hot(y, DIM).float()
    y_probe = torch.arange(160) % 4
    x_probe = torch.randn(160, DIM, generator=g) + 2 * nn.functional.one_hot(y_probe, DIM).float()
    # probed before the BatchNorm, whose running statistics DDP takes from rank 0 alone
    probe = LinearProbe(at_fit_end=True, modes=True, feature_fn=before_batchnorm)
    monitors = [StepwiseMonitor(every_n_steps=EVERY, window=64, name="cov", dirpath=Path(out_dir) / "cov"),
                StepwiseMonitor(every_n_steps=EVERY, window=4, name="gram", dirpath=Path(out_dir) / "gram")]
    model = Stairs(gather, ghost)
    torch.nn.init.eye_(model.backbone[0].weight)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=STEPS,
        callbacks=[Shards(out_dir, probe, (x, y, x_probe, y_probe)), *monitors, probe], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False,
    )
    if strategy == "ddp_spawn":  # the counter's patches do not travel to spawned workers
        trainer.fit(model)
        return
    with count_monitor_syncs(monitors[0]) as counter:
        trainer.fit(model)
    Path(out_dir, f"syncs_rank{trainer.global_rank}.json").write_text(json.dumps(counter.what))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "gather", sys.argv[5] == "ghost")
