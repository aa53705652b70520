"""StepwiseMonitor inside real Trainers (both namespaces), against independently computed spectra."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import NAMESPACES, make_ssl_module, pair_loader, pl_namespace, reference_eigenvalues, trainer

from lightning_stepwise import NoEmbeddingFoundError, StepwiseMonitor, StepwiseWarning, load_spectrum


def window_rows(model, loader, batch_indices, point="loss_inputs"):
    """The rows a window over these batches holds, computed directly from the (fixed) model."""
    batches = list(loader)
    rows = []
    with torch.no_grad():
        for i in batch_indices:
            x0, x1 = batches[i % len(batches)][0]
            if point == "backbone":
                rows += [model.backbone(x0), model.backbone(x1)]
            else:
                rows += [model._embed(x0), model._embed(x1)]
    return torch.cat(rows).double().numpy()


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("concat_views", [False, True])
@pytest.mark.parametrize("window", [64, 4])  # 64 >= d: covariance route; 4 < d: Gram route
def test_recorded_spectrum_equals_reference(tmp_path, namespace, concat_views, window):
    model = make_ssl_module(namespace, concat_views=concat_views, lr=0.0)  # fixed model: a known answer
    loader = pair_loader(n=64, batch_size=16)  # 4 batches an epoch, 32 rows (two views) a batch
    monitor = StepwiseMonitor(every_n_steps=4, window=window, dirpath=tmp_path)
    trainer(namespace, max_steps=12, callbacks=[monitor]).fit(model, loader)

    h = monitor.history
    np.testing.assert_array_equal(h["step"], [0, 4, 8])
    np.testing.assert_array_equal(h["epoch"], [0, 1, 2])
    batches = 2 if window == 64 else 1
    assert (h["samples"] == 32 * batches).all()
    expected = reference_eigenvalues(window_rows(model, loader, range(batches)))
    for row in h["eigenvalues"]:
        np.testing.assert_allclose(row, expected, rtol=1e-6, atol=1e-12)
    assert h["eigenvalues"].shape == (3, 8)
    p = expected / expected.sum()
    np.testing.assert_allclose(h["effective_rank"], math.exp(-(p * np.log(p)).sum()), rtol=1e-6)
    np.testing.assert_allclose(h["participation_ratio"], expected.sum() ** 2 / (expected**2).sum(), rtol=1e-6)
    np.testing.assert_allclose(h["trace"], expected.sum(), rtol=1e-6)
    assert np.isfinite(h["loss"]).all()

    saved = load_spectrum(tmp_path)
    for key in ("step", "epoch", "time", "eigenvalues", "effective_rank", "loss"):
        np.testing.assert_array_equal(saved[key], h[key])
    with (tmp_path / "spectrum.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [int(r["step"]) for r in table] == [0, 4, 8]


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_training_is_unchanged_by_the_monitor(namespace):
    def train(with_monitor: bool):
        pl_namespace(namespace).seed_everything(7, verbose=False)
        model = make_ssl_module(namespace, batchnorm=True)
        callbacks = [StepwiseMonitor(every_n_steps=2, window=32)] if with_monitor else []
        trainer(namespace, max_steps=10, callbacks=callbacks).fit(model, pair_loader())
        return [p.detach().clone() for p in model.parameters()], [b.clone() for b in model.buffers()]

    params_with, buffers_with = train(True)
    params_without, buffers_without = train(False)
    for a, b in zip(params_with + buffers_with, params_without + buffers_without, strict=True):
        assert torch.equal(a, b)


def test_embedding_fn_leaves_training_unchanged_and_is_measured():
    def train(monitor):
        pl_namespace("lightning.pytorch").seed_everything(3, verbose=False)
        model = make_ssl_module(batchnorm=True)
        trainer(max_steps=6, callbacks=[monitor] if monitor else []).fit(model, pair_loader())
        return model, [t.detach().clone() for t in (*model.parameters(), *model.buffers())]

    # The embedding_fn runs an extra forward through BatchNorm in train mode and draws random numbers.
    monitor = StepwiseMonitor(
        embedding_fn=lambda m, batch: m.backbone(batch[0][0]) + 0 * torch.rand(1), every_n_steps=3, window=16)
    _, with_fn = train(monitor)
    _, without = train(None)
    assert all(torch.equal(a, b) for a, b in zip(with_fn, without, strict=True))
    assert monitor.history["eigenvalues"].shape == (2, 16) and (monitor.history["samples"] == 16).all()


def test_only_training_batches_are_measured():
    # Validation data 1e6 times larger: if the monitor saw it, the trace would explode.
    model = make_ssl_module(lr=0.0)
    monitor = StepwiseMonitor(every_n_steps=2, window=32)
    pl_trainer = trainer(max_steps=8, callbacks=[monitor], num_sanity_val_steps=2, val_check_interval=1,
                         check_val_every_n_epoch=None)
    pl_trainer.fit(model, pair_loader(), pair_loader(scale=1e6))
    steps = monitor.history["step"]
    assert list(steps) == [0, 2, 4, 6]
    expected = [reference_eigenvalues(window_rows(model, pair_loader(), [s])).sum() for s in steps]
    np.testing.assert_allclose(monitor.history["trace"], expected, rtol=1e-6)


def test_ntxent_inputs_are_l2_normalised_by_default():
    model = make_ssl_module(loss="ntxent", lr=0.0)
    monitor = StepwiseMonitor(every_n_steps=4, window=16)
    trainer(max_steps=4, callbacks=[monitor]).fit(model, pair_loader())
    rows = window_rows(model, pair_loader(), [0])
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    np.testing.assert_allclose(monitor.history["eigenvalues"][0], reference_eigenvalues(unit), rtol=1e-6, atol=1e-14)

    raw = StepwiseMonitor(every_n_steps=4, window=16, normalize=False)
    trainer(max_steps=4, callbacks=[raw]).fit(model, pair_loader())
    np.testing.assert_allclose(raw.history["eigenvalues"][0], reference_eigenvalues(rows), rtol=1e-6, atol=1e-14)


def test_several_tracking_points(tmp_path):
    model = make_ssl_module(lr=0.0)
    monitor = StepwiseMonitor(module=["backbone", "projection_head"], every_n_steps=4, window=32, dirpath=tmp_path)
    trainer(max_steps=4, callbacks=[monitor]).fit(model, pair_loader())
    assert set(monitor.histories) == {"backbone", "projection_head"}
    np.testing.assert_allclose(monitor.histories["backbone"]["eigenvalues"][0],
                               reference_eigenvalues(window_rows(model, pair_loader(), [0], "backbone")),
                               rtol=1e-6, atol=1e-12)
    assert monitor.histories["projection_head"]["eigenvalues"].shape == (1, 8)
    assert {p.name for p in tmp_path.iterdir()} == {
        f"{kind}_{point}.{ext}" for point in ("backbone", "projection_head")
        for kind, ext in (("spectrum", "npz"), ("spectrum", "csv"), ("onsets", "csv"), ("onsets", "json"),
                          ("stepwise", "png"))} | {"problems.json"}


def test_missing_embeddings_fail_at_fit_start_with_guidance():
    pl = pl_namespace("lightning.pytorch")

    class NoHeads(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(12, 4)

        def training_step(self, batch, batch_idx):
            return self.encoder(batch[0][0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(NoEmbeddingFoundError, match=r"(?s)encoder: Linear.*module=.*embedding_fn="):
        trainer(max_steps=2, callbacks=[StepwiseMonitor()]).fit(NoHeads(), pair_loader())


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_loggers_receive_scalars_and_progress_bar_shows_effective_rank(tmp_path, namespace):
    pl = pl_namespace(namespace)
    csv_logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    tb_logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    monitor = StepwiseMonitor(every_n_steps=3, window=32)
    pl_trainer = trainer(namespace, max_steps=9, callbacks=[monitor], logger=[csv_logger, tb_logger])
    pl_trainer.fit(make_ssl_module(namespace), pair_loader())
    assert "stepwise/erank" in pl_trainer.progress_bar_metrics
    with open(Path(csv_logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("stepwise/effective_rank")]
    assert [int(r["step"]) for r in rows] == [0, 3, 6]
    assert all(float(r["stepwise/eigenvalue_000"]) >= float(r["stepwise/eigenvalue_007"]) for r in rows)
    assert list(Path(tb_logger.log_dir).glob("events.out.tfevents.*"))
    # Files go next to the first logger's output by default.
    assert (Path(pl_trainer.log_dir) / "stepwise" / "spectrum.npz").exists()


def test_effective_time_sums_a_learning_rate_schedule():
    pl = pl_namespace("lightning.pytorch")
    base = make_ssl_module(lr=0.1)

    class Scheduled(type(base)):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    assert pl  # the namespace of the module
    monitor = StepwiseMonitor(every_n_steps=4, window=32)
    trainer(max_steps=12, callbacks=[monitor]).fit(Scheduled(), pair_loader())
    lrs = [0.1 * 0.5 ** (s // 3) for s in range(12)]
    h = monitor.history
    np.testing.assert_allclose(h["time"], [sum(lrs[:s]) for s in h["step"]])
    np.testing.assert_allclose(h["lr"], [lrs[s] for s in h["step"]])
    np.testing.assert_allclose(h["lr_x_step"], [lrs[s] * s for s in h["step"]])


def test_resume_continues_the_same_history(tmp_path):
    pl = pl_namespace("lightning.pytorch")

    def run(max_epochs, ckpt_path=None, root=None):
        pl.seed_everything(0, verbose=False)
        monitor = StepwiseMonitor(every_n_steps=3, window=48)  # 2 batches a window, windows straddle epochs
        checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        t = trainer(max_epochs=max_epochs, callbacks=[monitor, checkpoint], enable_checkpointing=True,
                    default_root_dir=root or tmp_path)
        t.fit(make_ssl_module(batchnorm=True), pair_loader(n=80), ckpt_path=ckpt_path)
        return monitor

    continuous = run(4, root=tmp_path / "a")
    run(2, root=tmp_path / "b")
    resumed = run(4, ckpt_path=tmp_path / "ckpt" / "last.ckpt", root=tmp_path / "c")
    a, b = continuous.history, resumed.history
    np.testing.assert_array_equal(b["step"], a["step"])
    assert list(a["step"]) == list(range(0, 20, 3))
    for key in ("epoch", "samples", "time", "eigenvalues", "effective_rank", "loss"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-9, err_msg=key)


def test_history_thins_itself_in_a_long_run():
    monitor = StepwiseMonitor(every_n_steps=1, window=2, max_history=8)
    trainer(max_steps=60, callbacks=[monitor]).fit(make_ssl_module(), pair_loader())
    steps = monitor.history["step"]
    assert len(steps) < 8 and steps[0] == 0 and steps[-1] >= 60 - 16
    assert len(set(np.diff(steps))) == 1


def test_non_finite_embeddings_warn_once_count_and_skip():
    pl = pl_namespace("lightning.pytorch")
    base = make_ssl_module(lr=0.0)

    class SometimesNaN(type(base)):
        def training_step(self, batch, batch_idx):
            if self.global_step in (2, 3):  # the loss module sees non-finite embeddings; training does not
                x0, x1 = batch[0]
                self.criterion(self._embed(x0) * math.nan, self._embed(x1))
            return super().training_step(batch, batch_idx)

    assert pl
    monitor = StepwiseMonitor(every_n_steps=2, window=32)
    with pytest.warns(StepwiseWarning, match="non-finite") as record:
        trainer(max_steps=8, callbacks=[monitor]).fit(SometimesNaN(), pair_loader())
    assert sum("non-finite embeddings;" in str(w.message) for w in record) == 1
    # The window opened at step 2 needs one batch (32 rows) and that batch is non-finite: skipped, no row.
    # Step 3 is outside any window, so its non-finite embeddings are never looked at.
    assert monitor.skipped_batches == 1
    assert list(monitor.history["step"]) == [0, 4, 6]

    with pytest.raises(RuntimeError, match="strict=True.*non-finite"):
        trainer(max_steps=8, callbacks=[StepwiseMonitor(every_n_steps=2, window=32, strict=True)]).fit(
            SometimesNaN(), pair_loader())


def test_batch_size_one_and_width_one():
    monitor = StepwiseMonitor(every_n_steps=4, window=6, normalize=False)
    model = make_ssl_module(out_dim=1, loss="ntxent")  # Barlow Twins cannot train on batches of 1
    trainer(max_steps=8, callbacks=[monitor]).fit(model, pair_loader(batch_size=1))
    h = monitor.history
    assert list(h["step"]) == [0, 4] and h["eigenvalues"].shape == (2, 1)
    assert (h["samples"] == 6).all() and (h["effective_rank"] == 1.0).all()


def test_four_d_embeddings_are_flattened_with_one_warning():
    monitor = StepwiseMonitor(embedding_fn=lambda m, batch: m(batch[0][0]), every_n_steps=2, window=16)
    with pytest.warns(StepwiseWarning, match="flattened") as record:
        trainer(max_steps=6, callbacks=[monitor]).fit(make_ssl_module(head_output_ndim=4), pair_loader())
    assert sum("flattened" in str(w.message) for w in record) == 1
    assert monitor.history["eigenvalues"].shape == (3, 8)


def test_bf16_embeddings_are_accumulated_in_float64():
    base = make_ssl_module(lr=0.0)

    class Bf16Head(type(base)):
        def _embed(self, x):
            return super()._embed(x).to(torch.bfloat16).float()

    model = Bf16Head()
    monitor = StepwiseMonitor(module="projection_head", every_n_steps=4, window=16)
    model.projection_head.register_forward_hook(lambda m, i, o: o.to(torch.bfloat16))
    trainer(max_steps=4, callbacks=[monitor]).fit(model, pair_loader())
    rows = window_rows(model, pair_loader(), [0])
    np.testing.assert_allclose(monitor.history["eigenvalues"][0], reference_eigenvalues(rows), rtol=1e-9)


def test_no_logger_and_no_crash_without_loss_output(tmp_path):
    base = make_ssl_module()

    class ReturnsNothingUseful(type(base)):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return {"loss": loss, "extra": torch.ones(3)}

    monitor = StepwiseMonitor(every_n_steps=2, window=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepwiseWarning)
        trainer(max_steps=4, callbacks=[monitor], default_root_dir=tmp_path).fit(ReturnsNothingUseful(),
                                                                                 pair_loader())
    assert np.isfinite(monitor.history["loss"]).all()
    assert (tmp_path / "stepwise" / "spectrum.npz").exists()


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="every_n_steps"):
        StepwiseMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="window"):
        StepwiseMonitor(window=1)
    with pytest.raises(ValueError, match="either `module` or `embedding_fn`"):
        StepwiseMonitor(module="backbone", embedding_fn=lambda m, b: b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_cuda_embeddings_are_accumulated_on_their_device():
    model = make_ssl_module(lr=0.0)
    monitor = StepwiseMonitor(every_n_steps=4, window=64)
    trainer(max_steps=4, callbacks=[monitor], accelerator="gpu").fit(model, pair_loader())
    model = model.cpu()
    expected = reference_eigenvalues(window_rows(model, pair_loader(), [0, 1]))
    np.testing.assert_allclose(monitor.history["eigenvalues"][0], expected, rtol=1e-4, atol=1e-8)


def test_checkpoint_saved_after_fit_mid_window_resumes_without_duplicates(tmp_path):
    pl = pl_namespace("lightning.pytorch")

    def run(max_steps, ckpt_path=None):
        pl.seed_everything(0, verbose=False)
        monitor = StepwiseMonitor(every_n_steps=4, window=48)  # 2 batches a window
        t = trainer(max_steps=max_steps, callbacks=[monitor], default_root_dir=tmp_path)
        t.fit(make_ssl_module(batchnorm=True), pair_loader(n=80), ckpt_path=ckpt_path)
        return monitor, t

    continuous, _ = run(14)
    first, first_trainer = run(9)  # ends inside the window opened at step 8: recorded with 1 batch
    np.testing.assert_array_equal(first.history["step"], [0, 4, 8])
    np.testing.assert_array_equal(first.history["samples"], [64, 64, 32])
    first_trainer.save_checkpoint(tmp_path / "after_fit.ckpt")
    resumed, _ = run(14, ckpt_path=tmp_path / "after_fit.ckpt")
    # The partial row is completed, not duplicated; the rows before the checkpoint are kept as they were.
    np.testing.assert_array_equal(resumed.history["step"], [0, 4, 8, 12])
    np.testing.assert_array_equal(resumed.history["measurement"], [0, 1, 2, 3])
    np.testing.assert_array_equal(resumed.history["samples"], [64, 64, 64, 64])
    np.testing.assert_array_equal(resumed.history["eigenvalues"][:2], continuous.history["eigenvalues"][:2])
    # (Later rows differ from the continuous run because Lightning restarts the dataloader of a
    # mid-epoch checkpoint from its first batch: the training itself is not the same.)


def test_files_are_written_when_training_stops_with_an_exception(tmp_path):
    base = make_ssl_module()

    class Crashes(type(base)):
        def training_step(self, batch, batch_idx):
            if self.global_step == 5:
                raise KeyError("boom")
            return super().training_step(batch, batch_idx)

    monitor = StepwiseMonitor(every_n_steps=2, window=32, dirpath=tmp_path)
    with pytest.raises(KeyError, match="boom"):
        trainer(max_steps=10, callbacks=[monitor]).fit(Crashes(), pair_loader())
    assert list(load_spectrum(tmp_path)["step"]) == [0, 2, 4]


def test_skipped_batches_in_a_window_open_at_fit_end_are_counted_once(tmp_path):
    base = make_ssl_module(lr=0.0)

    class NaNAtStep9(type(base)):
        def training_step(self, batch, batch_idx):
            if self.global_step == 9:
                x0, x1 = batch[0]
                self.criterion(self._embed(x0) * math.nan, self._embed(x1))
            return super().training_step(batch, batch_idx)

    def run(max_steps, ckpt_path=None):
        monitor = StepwiseMonitor(every_n_steps=8, window=96)  # 3 batches a window
        t = trainer(max_steps=max_steps, callbacks=[monitor], default_root_dir=tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StepwiseWarning)
            t.fit(NaNAtStep9(), pair_loader(), ckpt_path=ckpt_path)
        return monitor, t

    first, first_trainer = run(10)  # the window opened at step 8 is still open, one batch skipped
    assert first.skipped_batches == 1
    first_trainer.save_checkpoint(tmp_path / "mid_window.ckpt")
    resumed, _ = run(12, ckpt_path=tmp_path / "mid_window.ckpt")
    assert resumed.skipped_batches == 1  # the same skipped batch, not counted again on completion
    np.testing.assert_array_equal(resumed.history["samples"], [96, 64])


def test_each_measurement_is_recorded_when_the_next_window_opens_and_all_by_fit_end():
    import threading

    pl = pl_namespace("lightning.pytorch")
    seen: list[tuple[int, int]] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((trainer.global_step, len(monitor.history["step"])))

    def solver_threads():
        return {t for t in threading.enumerate() if t.name.startswith("stepwise-eigensolve")}

    before = solver_threads()
    monitor = StepwiseMonitor(every_n_steps=4, window=32)  # one batch a window
    trainer(max_steps=12, callbacks=[monitor, Watch()]).fit(make_ssl_module(), pair_loader())
    # The window of step 0 is solved off the training loop and recorded when the step-4 window opens.
    assert dict(seen)[4] == 0 and dict(seen)[5] == 1 and dict(seen)[9] == 2 and dict(seen)[12] == 2
    assert list(monitor.history["step"]) == [0, 4, 8]  # the last one at fit end
    assert solver_threads() <= before  # the worker thread ends with the fit


def test_a_failing_eigensolve_warns_once_and_training_goes_on(monkeypatch):
    from lightning_stepwise.spectrum import SpectrumProblem

    def broken(self):
        raise torch.linalg.LinAlgError("the algorithm failed to converge")

    monkeypatch.setattr(SpectrumProblem, "solve_with_directions", broken)
    monitor = StepwiseMonitor(every_n_steps=2, window=32)
    with pytest.warns(StepwiseWarning, match="could not be computed.*failed to converge") as record:
        trainer(max_steps=8, callbacks=[monitor]).fit(make_ssl_module(), pair_loader())
    assert sum("could not be computed" in str(w.message) for w in record) == 1
    assert len(monitor.history["step"]) == 0
    with pytest.raises(torch.linalg.LinAlgError):
        trainer(max_steps=8, callbacks=[StepwiseMonitor(every_n_steps=2, window=32, strict=True)]).fit(
            make_ssl_module(), pair_loader())


def test_progress_bar_keeps_the_last_measurement_through_later_epochs():
    pl = pl_namespace("lightning.pytorch")
    bars: dict[int, dict[str, float]] = {}

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            bars[trainer.global_step] = dict(trainer.progress_bar_metrics)

    # 4 batches an epoch, a spectrum every 6 steps: the one of step 0 is recorded at step 6 (epoch 1)
    monitor = StepwiseMonitor(every_n_steps=6, window=32)
    trainer(max_steps=16, callbacks=[monitor, Watch()], enable_progress_bar=True).fit(make_ssl_module(),
                                                                                     pair_loader())
    assert "stepwise/erank" not in bars[6]  # step 6's batch end: still nothing recorded before this step
    for step in (7, 8, 9, 12, 16):  # after it, in the same epoch and in the next ones (epoch 2 starts at 8)
        assert bars[step]["stepwise/erank"] > 0 and "stepwise/modes" in bars[step], step
