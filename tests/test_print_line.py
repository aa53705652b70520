"""Lines printed by the callbacks reach the terminal whether Lightning's progress bar is open or closed."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest

from lightning_stepwise.data import digits_dataloader
from lightning_stepwise.demo import DigitsBarlowTwins
from lightning_stepwise.lightning_compat import print_line
from lightning_stepwise.monitor import StepwiseMonitor


class _Lines(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        print_line(trainer, f"LINE during batch {trainer.global_step}")

    def on_fit_end(self, trainer, pl_module):  # every progress bar is closed by now
        print_line(trainer, "LINE at fit end")


@pytest.mark.parametrize("bar", [True, False])
def test_lines_show_during_training_and_at_fit_end_with_or_without_the_bar(bar, tmp_path, capsys):
    monitor = StepwiseMonitor(every_n_steps=1, window=32, dirpath=tmp_path / "stepwise")
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=bar, callbacks=[_Lines(), monitor], default_root_dir=tmp_path)
    trainer.fit(DigitsBarlowTwins(width=8, embedding_dim=16), digits_dataloader(batch_size=32))
    out = capsys.readouterr().out.replace("\r", "\n")
    assert "LINE during batch 2" in out
    assert "LINE at fit end" in out
    assert "StepwiseMonitor: no mode learned" in out  # the monitor's own fit-end line, printed after the bar closed
