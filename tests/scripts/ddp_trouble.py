"""Two DDP processes where rank 1 alone hits trouble: no rows in the first window, a width change,
non-finite embeddings, an odd number of rows for the cross-correlation, and a probe whose features fail.

A monitor or probe that skipped a collective on rank 1 only would leave rank 0 waiting forever; the run
must finish, and both ranks must hold the same records. Each rank writes what it holds.

Usage: python ddp_trouble.py OUT_DIR
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import make_ssl_module, pair_loader, pl_namespace  # noqa: E402

from lightning_stepwise import LinearProbe, StepwiseMonitor, StepwiseWarning  # noqa: E402

pl = pl_namespace("lightning.pytorch")
TROUBLE = {0: "no_rows", 4: "width", 8: "non_finite", 12: "odd_rows"}  # step -> what rank 1 returns


def with_trouble(pl_module, rows):
    """Rank 1 turns ``rows`` into the trouble of the step (see TROUBLE); other steps and ranks keep them."""
    if pl_module.global_rank == 1:
        trouble = TROUBLE.get(pl_module.global_step)
        if trouble == "no_rows":
            return rows[:0]
        if trouble == "width":
            return torch.cat([rows, rows[:, :1]], dim=1)
        if trouble == "non_finite":
            return rows * float("nan")
        if trouble == "odd_rows":
            return rows[:3]
    return rows


def embeddings(pl_module, batch):
    """The head's output for the first view (8 rows of width 8), with rank 1's trouble."""
    return with_trouble(pl_module, pl_module._embed(batch[0][0]))


def pair_embeddings(pl_module, batch):
    """Both views stacked (16 rows), as the cross-correlation needs, with rank 1's trouble."""
    return with_trouble(pl_module, torch.cat([pl_module._embed(batch[0][0]), pl_module._embed(batch[0][1])]))


def features(module, inputs):
    if module.global_rank == 1 and module.global_step > 0:  # set-up checks pass; the probes in training fail
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated on rank 1)")
    return module.backbone(inputs)


class Report(pl.Callback):
    def __init__(self, out_dir: Path, monitors: list[StepwiseMonitor], probe: LinearProbe) -> None:
        self.out_dir, self.monitors, self.probe = out_dir, monitors, probe

    def teardown(self, trainer, pl_module, stage):
        rank = trainer.global_rank
        for monitor in self.monitors:
            np.savez(self.out_dir / f"{monitor.name}_rank{rank}.npz", **monitor.history)
        (self.out_dir / f"problems_rank{rank}.json").write_text(json.dumps(
            {**{m.name: m.problems for m in self.monitors}, "probe": self.probe.problems.counts}))


def main(out_dir: str) -> None:
    warnings.simplefilter("ignore", StepwiseWarning)
    out = Path(out_dir)
    pl.seed_everything(0, verbose=False)
    model = make_ssl_module(lr=0.05)
    monitors = [
        StepwiseMonitor(embedding_fn=embeddings, every_n_steps=4, window=16, name="moments"),  # 1 batch (2 x 8)
        StepwiseMonitor(embedding_fn=embeddings, every_n_steps=4, window=4, name="gram"),      # 4 < 8: kept rows
        StepwiseMonitor(embedding_fn=pair_embeddings, every_n_steps=4, window=16, name="cross",
                        spectrum="cross_correlation"),
    ]
    g = torch.Generator().manual_seed(1)
    probe_data = TensorDataset(torch.randn(64, 12, generator=g), torch.arange(64) % 2)
    probe = LinearProbe(DataLoader(probe_data, batch_size=16), DataLoader(probe_data, batch_size=16),
                        feature_fn=features, every_n_epochs=1, at_fit_end=False, modes=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=16, callbacks=[*monitors, probe,
                                                                              Report(out, monitors, probe)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.fit(model, pair_loader(n=64, batch_size=8))


if __name__ == "__main__":
    main(sys.argv[1])
