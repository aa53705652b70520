"""The monitor's step path never makes the host wait for the device.

Counted inside the monitor's own hooks and embedding taps only (Lightning's logging has syncs of its
own, the same with or without the monitor). The CPU stand-in counts the operations that synchronise on
a GPU; on a CUDA machine the same test runs with ``torch.cuda.set_sync_debug_mode``.
"""

import math

import pytest
import torch
from helpers import make_ssl_module, pair_loader, trainer
from sync_counter import count_monitor_syncs

from lightning_stepwise import StepwiseMonitor

ROUTES = {  # (monitor options, rows per step = 2 views x 16)
    "moments": {"window": 64},                         # 64 >= d = 8: d x d sums
    "gram": {"window": 4},                             # 4 < d: kept rows, N x N Gram matrix
    "gram_normalized": {"window": 4, "normalize": True},
    "cross": {"window": 64, "spectrum": "cross_correlation"},
}


def fit_counting(monitor: StepwiseMonitor, cuda: bool = False, max_steps: int = 24):
    model = make_ssl_module(lr=0.01)
    with count_monitor_syncs(monitor, cuda=cuda) as counter:
        trainer(max_steps=max_steps, callbacks=[monitor], accelerator="gpu" if cuda else "cpu").fit(
            model, pair_loader(n=128))
    return counter


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_no_step_waits_on_the_device(route):
    monitor = StepwiseMonitor(every_n_steps=3, **ROUTES[route])
    counter = fit_counting(monitor)
    assert len(monitor.history["step"]) == 8  # steps 0, 3, ..., 21 measured: the path was exercised
    assert math.isfinite(monitor.history["effective_rank"][-1])
    assert counter.what == [], f"host-device synchronisations in the monitor's step path: {counter.what[:10]}"


class SyncingMonitor(StepwiseMonitor):
    """A monitor that reads a value to the host per captured batch, as a naive one would."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        in_window = self.tracker.window is not None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if in_window:
            float(outputs["loss"])


def test_the_counter_sees_host_reads_and_eigvalsh():
    # The detector can fail: a host read per batch, and the error check of torch.linalg.eigvalsh.
    monitor = SyncingMonitor(every_n_steps=3, window=64)
    counter = fit_counting(monitor, max_steps=9)
    assert set(counter.by_step) == {0, 1, 3, 4, 6, 7}  # two batches per window, each read once
    with count_monitor_syncs(StepwiseMonitor()) as counter, counter.watching():
        torch.linalg.eigvalsh(torch.eye(3, dtype=torch.float64))
        torch.ones(3).tolist()
    assert [what for _, what in counter.what] == ["_linalg_eigh", "tolist"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_no_step_waits_on_the_gpu(route):
    monitor = StepwiseMonitor(every_n_steps=3, **ROUTES[route])
    counter = fit_counting(monitor, cuda=True)
    assert len(monitor.history["step"]) == 8
    assert counter.what == [], f"synchronising CUDA calls in the monitor's step path: {counter.what[:10]}"
