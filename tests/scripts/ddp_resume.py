"""Two DDP processes train with three monitors (moments, Gram rows, cross-correlation); run whole, or to a
checkpoint taken at the end of the first epoch while every monitor's window is half full, then resumed.

Each rank sees its own half of the data (Lightning's DistributedSampler), so the ranks' partial window
statistics differ: a checkpoint that kept only rank zero's would make the resumed window wrong.

Usage: python ddp_resume.py OUT_DIR whole|first|resumed
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import make_ssl_module, pair_loader, pl_namespace  # noqa: E402

from lightning_stepwise import StepwiseMonitor  # noqa: E402

pl = pl_namespace("lightning.pytorch")
# 96 pairs, 8 per rank and batch: 6 steps an epoch, 32 rows (2 views x 2 ranks x 8) a step; projector width 80
MONITORS = {  # window: batches it needs; all windows open every 5 steps, so the one of step 5 spans epochs 0 and 1
    "moments": {"window": 96},                            # 96 >= 80: d x d sums, 3 batches
    "gram": {"window": 48},                               # 48 < 80: kept rows, 2 batches
    "cross": {"window": 64, "spectrum": "cross_correlation"},  # 2 batches
}


class SaveHistories(pl.Callback):
    def __init__(self, out_dir: Path, monitors: dict[str, StepwiseMonitor]) -> None:
        self.out_dir, self.monitors = out_dir, monitors

    def teardown(self, trainer, pl_module, stage):
        for name, monitor in self.monitors.items():
            np.savez(self.out_dir / f"{name}_rank{trainer.global_rank}.npz", **monitor.history)


def main(out_dir: str, mode: str) -> None:
    out = Path(out_dir)
    pl.seed_everything(0, verbose=False)
    model = make_ssl_module(out_dim=80, batchnorm=True, lr=0.05)
    monitors = {name: StepwiseMonitor(every_n_steps=5, name=name, **options) for name, options in MONITORS.items()}
    # each mode its own folder: Lightning names a second last.ckpt in one folder last-v1.ckpt, and the resumed run
    # must load the first run's checkpoint, not the end of the whole run
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_epochs=1, save_top_k=0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1 if mode == "first" else 3,
        callbacks=[*monitors.values(), checkpoint, SaveHistories(out, monitors)], logger=False,
        enable_checkpointing=True, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=out, deterministic=True,
    )
    ckpt_path = None
    if mode == "resumed":
        ckpt_path = out.parent / "first" / "ckpt" / "last.ckpt"
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        assert saved["global_step"] == 6, f"expected the first run's checkpoint at step 6, got {saved['global_step']}"
    trainer.fit(model, pair_loader(n=96, batch_size=8), ckpt_path=ckpt_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
