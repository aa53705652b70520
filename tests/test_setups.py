"""The training set-ups real pipelines use: each records the right numbers, or says why not.

Gradient accumulation, manual optimization with several optimizers, windows that outlast
``every_n_steps``, fitting one monitor twice, a ``torch.compile``d module, a point that never yields
embeddings, failures that are counted and summarised, and the report of a very short run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_ssl_module, pair_loader, pl_namespace, reference_eigenvalues, trainer

from lightning_stepwise import StepwiseMonitor, StepwiseWarning
from lightning_stepwise.cli import main

pl = pl_namespace("lightning.pytorch")


def module_loss(model, batch) -> float:
    x0, x1 = batch[0]
    with torch.no_grad():
        return float(model.criterion(model._embed(x0), model._embed(x1)))


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_gradient_accumulation_records_the_module_loss_at_optimizer_steps(accumulate):
    model = make_ssl_module(lr=0.0)  # fixed: the loss of a batch is known
    loader = pair_loader(n=64, batch_size=16)  # 4 batches an epoch
    monitor = StepwiseMonitor(every_n_steps=2, window=32)  # one batch a window
    trainer(max_steps=6, accumulate_grad_batches=accumulate, callbacks=[monitor]).fit(model, loader)
    h = monitor.history
    assert h["step"].tolist() == [0, 2, 4]  # optimizer steps, not batches
    batches = list(loader)
    # the window of step s takes the first batch of that step: batch s * accumulate of the run
    expected = [module_loss(model, batches[(s * accumulate) % 4]) for s in (0, 2, 4)]
    np.testing.assert_allclose(h["loss"], expected, rtol=1e-6)


class TwoOptimizers(pl.LightningModule):
    """Manual optimization: the backbone and the head each have an optimizer, both stepping every batch."""

    def __init__(self) -> None:
        super().__init__()
        base = make_ssl_module(lr=0.0)
        self.backbone, self.projection_head, self.criterion = base.backbone, base.projection_head, base.criterion
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x0, x1 = batch[0]
        loss = self.criterion(self.projection_head(self.backbone(x0)), self.projection_head(self.backbone(x1)))
        first, second = self.optimizers()
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()
        return loss

    def configure_optimizers(self):
        return [torch.optim.SGD(self.backbone.parameters(), lr=0.1),
                torch.optim.SGD(self.projection_head.parameters(), lr=0.01)]


@pytest.mark.parametrize("lr_optimizer,lr", [(0, 0.1), (1, 0.01)])
def test_manual_optimization_with_two_optimizers_counts_batches_and_one_learning_rate(lr_optimizer, lr):
    monitor = StepwiseMonitor(every_n_steps=2, window=32, lr_optimizer=lr_optimizer)
    t = trainer(max_steps=12, callbacks=[monitor])  # global_step counts both optimizers: 6 batches
    t.fit(TwoOptimizers(), pair_loader())
    assert t.global_step == 12
    h = monitor.history
    assert h["step"].tolist() == [0, 2, 4]  # batches that stepped: Lightning's logging step
    np.testing.assert_allclose(h["time"], [0.0, 2 * lr, 4 * lr])
    np.testing.assert_allclose(h["lr"], lr)


def test_a_window_longer_than_every_n_steps_is_kept_open_and_says_so():
    model = make_ssl_module(lr=0.0)
    loader = pair_loader(n=64, batch_size=16)  # 32 rows a step
    monitor = StepwiseMonitor(every_n_steps=1, window=96)  # 3 steps a window
    with pytest.warns(StepwiseWarning, match=r"spanned 3 steps, more than the 1 steps between measurements") as caught:
        trainer(max_steps=9, callbacks=[monitor]).fit(model, loader)
    assert sum("spanned" in str(w.message) for w in caught) == 1
    h = monitor.history
    assert h["step"].tolist() == [0, 3, 6]
    assert (h["samples"] == 96).all()  # what was asked, never a cut window
    batches = list(loader)
    rows = torch.cat([model._embed(x).detach() for b in (batches[3], batches[0], batches[1]) for x in b[0]])
    np.testing.assert_allclose(h["eigenvalues"][1], reference_eigenvalues(rows.double().numpy()), rtol=1e-6)


def test_fitting_the_same_monitor_again_continues_or_restarts():
    model = make_ssl_module()
    monitor = StepwiseMonitor(every_n_steps=4, window=32)
    first = trainer(max_steps=8, callbacks=[monitor])
    first.fit(model, pair_loader())
    assert monitor.history["step"].tolist() == [0, 4]
    first.fit_loop.epoch_loop.max_steps = 16  # the same run, continued
    first.fit(model, pair_loader())
    assert monitor.history["step"].tolist() == [0, 4, 8, 12]
    trainer(max_steps=8, callbacks=[monitor]).fit(model, pair_loader())  # a new Trainer from step 0: restart
    assert monitor.history["step"].tolist() == [0, 4]

    other = make_ssl_module(lr=0.0)
    trainer(max_steps=4, callbacks=[monitor]).fit(other, pair_loader())  # a new model: hooks move to it
    assert not model.criterion._forward_pre_hooks and not other.criterion._forward_pre_hooks  # removed after fit
    rows = torch.cat([other._embed(x).detach() for x in next(iter(pair_loader()))[0]])
    np.testing.assert_allclose(monitor.history["eigenvalues"][0], reference_eigenvalues(rows.double().numpy()),
                               rtol=1e-6)


def test_a_short_last_batch_of_an_epoch_is_measured_as_it_is():
    model = make_ssl_module(lr=0.0)
    loader = pair_loader(n=40, batch_size=16)  # batches of 16, 16 and 8 pairs: 32, 32 and 16 rows
    monitor = StepwiseMonitor(every_n_steps=2, window=32)  # one batch a window
    trainer(max_steps=6, callbacks=[monitor]).fit(model, loader)
    h = monitor.history
    assert h["step"].tolist() == [0, 2, 4]
    assert h["samples"].tolist() == [32, 16, 32]  # the short batch is what it is, not padded or dropped
    short = list(loader)[2]
    rows = torch.cat([model._embed(x).detach() for x in short[0]])
    np.testing.assert_allclose(h["eigenvalues"][1], reference_eigenvalues(rows.double().numpy()), rtol=1e-6)
    assert monitor.problems.get("partial_windows", 0) == 0


@pytest.mark.parametrize("module", [None, "projection_head"])
def test_a_compiled_module_is_measured(module):
    model = make_ssl_module(lr=0.0)
    compiled = torch.compile(model, backend="eager")
    monitor = StepwiseMonitor(module, every_n_steps=2, window=32)
    trainer(max_steps=4, callbacks=[monitor]).fit(compiled, pair_loader())
    rows = torch.cat([model._embed(x).detach() for x in next(iter(pair_loader()))[0]])
    assert monitor.history["step"].tolist() == [0, 2]
    np.testing.assert_allclose(monitor.history["eigenvalues"][0], reference_eigenvalues(rows.double().numpy()),
                               rtol=1e-6)


class EncodesWithoutForward(pl.LightningModule):
    """SimMIM's shape: a plain loss, and a backbone used through a method other than ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Linear(12, 8)
        self.decoder = torch.nn.Linear(8, 12)
        self.criterion = torch.nn.L1Loss()

    def training_step(self, batch, batch_idx):
        x0, _ = batch[0]
        encoded = torch.nn.functional.linear(x0, self.backbone.weight, self.backbone.bias)
        return self.criterion(self.decoder(encoded), x0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_point_that_yields_nothing_says_so_counts_and_summarises(tmp_path, capsys):
    monitor = StepwiseMonitor(every_n_steps=2, window=32, dirpath=tmp_path)
    with pytest.warns(StepwiseWarning, match=r"`backbone` produced no embeddings.*module=\.\.\. or embedding_fn="):
        trainer(max_steps=6, callbacks=[monitor]).fit(EncodesWithoutForward(), pair_loader())
    assert monitor.problems["empty_windows"] == 3
    assert json.loads((tmp_path / "problems.json").read_text())["empty_windows"] == 3
    assert "StepwiseMonitor: 3 windows without usable embeddings" in capsys.readouterr().out


def test_embedding_fn_errors_are_counted_not_lost(tmp_path, capsys):
    def sometimes(pl_module, batch):
        if pl_module.global_step % 4 == 2:
            raise RuntimeError("no embeddings today")
        return pl_module._embed(batch[0][0])

    monitor = StepwiseMonitor(embedding_fn=sometimes, every_n_steps=2, window=16, dirpath=tmp_path)
    with pytest.warns(StepwiseWarning, match="no embeddings today"):
        trainer(max_steps=12, callbacks=[monitor]).fit(make_ssl_module(), pair_loader())
    assert monitor.problems["embedding_fn_errors"] == 3  # steps 2, 6, 10
    assert monitor.history["step"].tolist() == [0, 4, 8]
    counts = json.loads((tmp_path / "problems.json").read_text())
    assert counts["embedding_fn_errors"] == 3 and counts["empty_windows"] == 3  # those windows had no rows
    assert "3 embedding_fn calls that raised" in capsys.readouterr().out


def test_a_clean_run_prints_no_summary_and_writes_zero_counts(tmp_path, capsys):
    monitor = StepwiseMonitor(every_n_steps=2, window=32, dirpath=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepwiseWarning)
        trainer(max_steps=4, callbacks=[monitor]).fit(make_ssl_module(), pair_loader())
    assert not any(json.loads((tmp_path / "problems.json").read_text()).values())
    # no problem summary: the only lines are what it tracks and why 4 steps learned no mode
    printed = [line for line in capsys.readouterr().out.splitlines() if "StepwiseMonitor:" in line]
    assert printed and all(line.startswith(("StepwiseMonitor: tracking", "StepwiseMonitor: no mode learned. Why:"))
                           for line in printed), printed


@pytest.mark.parametrize("max_steps", [2, 4])
def test_report_of_a_run_with_one_or_two_measurements_draws_it_and_says_why_no_onsets(tmp_path, capsys, max_steps):
    monitor = StepwiseMonitor(every_n_steps=2, window=32, dirpath=tmp_path / "run")
    trainer(max_steps=max_steps, callbacks=[monitor]).fit(make_ssl_module(), pair_loader())
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run"), "--output", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    rows = max_steps // 2
    assert "0 modes learned" in out and f"Why none: too few measurements: {rows} (" in out
    assert (tmp_path / "again" / "stepwise.png").stat().st_size > 0
    assert json.loads((tmp_path / "again" / "onsets.json").read_text()) == []


def test_a_dict_output_under_accumulation_records_the_module_loss():
    base = make_ssl_module(lr=0.0)

    class ReturnsDict(type(base)):
        def training_step(self, batch, batch_idx):
            return {"loss": super().training_step(batch, batch_idx), "extra": torch.ones(3)}

    model = ReturnsDict()
    monitor = StepwiseMonitor(every_n_steps=2, window=32)
    trainer(max_steps=4, accumulate_grad_batches=2, callbacks=[monitor]).fit(model, pair_loader())
    first = list(pair_loader())[0]  # steps 0 and 2 both start with the first batch of an epoch
    np.testing.assert_allclose(monitor.history["loss"], [module_loss(model, first)] * 2, rtol=1e-6)


def test_files_land_under_the_given_folder(tmp_path):
    monitor = StepwiseMonitor(every_n_steps=2, window=32, dirpath=tmp_path / "deep" / "folder")
    trainer(max_steps=2, callbacks=[monitor]).fit(make_ssl_module(), pair_loader())
    assert Path(monitor.output_dir) == tmp_path / "deep" / "folder"
    assert (tmp_path / "deep" / "folder" / "spectrum.npz").exists()
