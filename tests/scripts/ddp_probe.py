"""Fit LinearProbe under DDP (each rank probes its own shard of the labelled data) or in one process.

A StepwiseMonitor without dirpath rides along: its default folder is resolved on every rank.

Usage: python ddp_probe.py OUT_DIR DEVICES
"""

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import make_ssl_module, pair_loader, pl_namespace  # noqa: E402

from lightning_stepwise import LinearProbe, StepwiseMonitor  # noqa: E402


class ShardedProbe(LinearProbe):
    """Gives each rank its own interleaved shard of the labelled data once the rank is known."""

    def __init__(self, data: tuple[torch.Tensor, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.data = data

    def setup(self, trainer, pl_module, stage):
        rank, world = trainer.global_rank, trainer.world_size
        x_train, y_train, x_val, y_val = self.data
        self.train_dataloader = DataLoader(TensorDataset(x_train[rank::world], y_train[rank::world]), batch_size=16)
        self.val_dataloader = DataLoader(TensorDataset(x_val[rank::world], y_val[rank::world]), batch_size=16)
        super().setup(trainer, pl_module, stage)


def main(out_dir: str, devices: int) -> None:
    pl = pl_namespace("lightning.pytorch")
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(1)
    y = torch.arange(120) % 3
    x = torch.randn(120, 12, generator=g) + torch.nn.functional.one_hot(y, 12).float() * 2
    probe = ShardedProbe((x[:80], y[:80], x[80:], y[80:]), modes=True)
    model = make_ssl_module(lr=0.0)  # fixed features: the probe is the same whatever the split
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=2,
                         callbacks=[StepwiseMonitor(every_n_steps=1, window=8), probe], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=out_dir)
    trainer.fit(model, pair_loader(n=64))
    result = probe.results[-1]
    Path(out_dir, f"probe_rank{trainer.global_rank}.json").write_text(json.dumps(
        {"top1": result["top1"], "train_size": result["train_size"], "val_size": result["val_size"],
         "modes": probe.modes_table}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
