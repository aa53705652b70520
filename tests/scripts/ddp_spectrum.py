"""Train the tiny SSL module with three monitors (two covariance routes, the cross-correlation).

Under DDP each rank saves what it recorded.

Usage: python ddp_spectrum.py OUT_DIR DEVICES BATCH_SIZE
"""

import sys
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import make_ssl_module, pair_loader, pl_namespace  # noqa: E402

from lightning_stepwise import StepwiseMonitor  # noqa: E402


def main(out_dir: str, devices: int, batch_size: int) -> None:
    pl = pl_namespace("lightning.pytorch")
    pl.seed_everything(0, verbose=False)
    model = make_ssl_module(lr=0.0)  # fixed embeddings: the global batch is the same either way
    dataset = pair_loader(n=96).dataset

    def shard(rank: int, world: int) -> DataLoader:
        # Step s of rank r gets samples [s*B*world + r*B, ... + B): together, the single process's batch s.
        indices = [s * batch_size * world + rank * batch_size + i
                   for s in range(len(dataset) // (batch_size * world)) for i in range(batch_size)]
        return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)

    model.train_dataloader = lambda: shard(model.trainer.global_rank, model.trainer.world_size)
    monitors = {
        "moments": StepwiseMonitor(every_n_steps=2, window=64, name="cov", dirpath=Path(out_dir) / "cov"),
        "gram": StepwiseMonitor(every_n_steps=2, window=4, name="gram", dirpath=Path(out_dir) / "gram"),
        "cross": StepwiseMonitor(every_n_steps=2, window=64, name="cross", spectrum="cross_correlation",
                                 dirpath=Path(out_dir) / "cross"),
    }
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=6,
        callbacks=list(monitors.values()), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
    )
    trainer.fit(model)
    for name, monitor in monitors.items():
        np.savez(Path(out_dir) / f"{name}_rank{trainer.global_rank}.npz", **monitor.history)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
