"""A 20-step monitored fit with the installed package: what a user's first run does, in seconds.

Run from any folder: ``python scripts/fit_smoke.py``. It writes ``stepwise/`` there.
"""

import lightning.pytorch as pl

from lightning_stepwise import StepwiseMonitor
from lightning_stepwise.data import digits_dataloader
from lightning_stepwise.demo import DigitsBarlowTwins

monitor = StepwiseMonitor(every_n_steps=2, window=64)
trainer = pl.Trainer(max_steps=20, callbacks=[monitor], enable_progress_bar=False, enable_model_summary=False,
                     logger=False, enable_checkpointing=False)
trainer.fit(DigitsBarlowTwins(width=8, embedding_dim=16), digits_dataloader(batch_size=64, seed=0))
rows = len(monitor.history["step"])
assert rows >= 5, f"expected a spectrum every 2 steps, got {rows} rows"
print(f"fit_smoke: 20 steps, {rows} spectra measured, files in {monitor.output_dir}")
