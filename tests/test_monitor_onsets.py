"""Online onset detection in StepwiseMonitor: modes_learned, the onset table, files, figures, resume.

The embeddings come from an ``embedding_fn`` whose covariance spectrum is designed: mode j's
variance is a logistic in the step, half-way at a known step. The truth is the design, not the code.
"""

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import make_ssl_module, pair_loader, pl_namespace, trainer

from lightning_stepwise import StepwiseMonitor, StepwiseWarning
from lightning_stepwise.onsets import OnsetTracker

ONSETS = (30, 60, 90)
EVERY = 3


def staircase(onsets=ONSETS, dim=8, floor=1e-3, width=2.0, rows=64, seed=0):
    """embedding_fn: rows whose covariance has eigenvalue floor + (1 - floor) σ((step - c_j) / width)."""
    generator = torch.Generator().manual_seed(seed)

    def embed(pl_module, batch):
        step = pl_module.trainer.global_step
        variances = torch.full((dim,), floor, dtype=torch.float64)
        for j, c in enumerate(onsets):
            variances[j] = floor + (1 - floor) / (1 + math.exp(-(step - c) / width))
        return torch.randn(rows, dim, generator=generator, dtype=torch.float64).float() * variances.sqrt().float()

    return embed


def fit(tmp_path, max_steps, ckpt_path=None, seed=0, onsets=ONSETS, **kwargs):
    pl = pl_namespace("lightning.pytorch")
    pl.seed_everything(0, verbose=False)
    monitor = StepwiseMonitor(embedding_fn=staircase(onsets, seed=seed), every_n_steps=EVERY, window=64,
                              dirpath=tmp_path / "files", **kwargs.pop("monitor", {}))
    options = dict(max_steps=max_steps, callbacks=[monitor], default_root_dir=tmp_path)
    options.update(kwargs)
    t = trainer(**options)
    t.fit(make_ssl_module(), pair_loader(), ckpt_path=ckpt_path)
    return monitor, t


def test_modes_are_learned_online_at_the_designed_steps(tmp_path, capsys):
    logger = pl_namespace("lightning.pytorch").loggers.CSVLogger(tmp_path, name="csv")
    monitor, _ = fit(tmp_path, 150, logger=logger)
    onsets = monitor.onsets
    assert [r["mode"] for r in onsets] == [0, 1, 2]
    for record, truth in zip(onsets, ONSETS, strict=True):
        assert abs(record["onset_step"] - truth) <= 1.5 * EVERY
        assert record["rise_start_step"] < record["onset_step"] < record["rise_end_step"]
        assert 0.7 < record["plateau"] < 1.4  # the designed plateau is 1
        assert record["confirmed_step"] > record["rise_end_step"]
    assert monitor.modes_learned == 3
    out = capsys.readouterr().out
    for mode in range(3):  # numbered from 1 in the printed line; the count says how many so far
        assert out.count(f"mode #{mode + 1} learned at step") == 1
        assert f"({mode + 1} learned so far)" in out
    # modes_learned goes to the logger, counting up as modes are confirmed
    with open(logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("stepwise/modes_learned")]
    learned = [float(r["stepwise/modes_learned"]) for r in rows]
    assert learned[0] == 0 and learned[-1] == 3 and np.all(np.diff(learned) >= 0)
    # files at fit end
    files = tmp_path / "files"
    with open(files / "onsets.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["mode"]) for r in table] == [0, 1, 2]
    assert [float(r["onset_step"]) for r in table] == pytest.approx([r["onset_step"] for r in onsets])
    assert len(json.loads((files / "onsets.json").read_text())) == 3
    png = (files / "stepwise.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_no_mode_is_announced_for_a_flat_spectrum(tmp_path, capsys):
    pl = pl_namespace("lightning.pytorch")
    monitor = StepwiseMonitor(embedding_fn=staircase(onsets=()), every_n_steps=EVERY, window=64, dirpath=tmp_path)
    trainer(max_steps=60, callbacks=[monitor]).fit(make_ssl_module(), pair_loader())
    assert monitor.onsets == [] and monitor.modes_learned == 0
    assert "learned at step" not in capsys.readouterr().out
    assert pl is not None and (tmp_path / "onsets.csv").read_text().count("\n") == 1  # header only


def test_onsets_survive_checkpoint_resume(tmp_path, capsys):
    onsets = (20, 40, 140)
    first, first_trainer = fit(tmp_path, 125, onsets=onsets)
    assert [r["mode"] for r in first.onsets] == [0, 1]
    first_trainer.save_checkpoint(tmp_path / "after_fit.ckpt")
    capsys.readouterr()
    resumed, _ = fit(tmp_path, 220, ckpt_path=tmp_path / "after_fit.ckpt", seed=1, onsets=onsets)
    np.testing.assert_equal(resumed.onsets[:2], first.onsets)  # restored as they were (NaN = NaN), not redetected
    assert all(isinstance(r["mode"], int) for r in resumed.onsets)
    assert [r["mode"] for r in resumed.onsets] == [0, 1, 2]
    out = capsys.readouterr().out
    assert "mode #3 learned" in out and "mode #1 learned" not in out and "mode #2 learned" not in out
    assert "(3 learned so far)" in out


def test_figure_is_logged_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = pl_namespace("lightning.pytorch").loggers.TensorBoardLogger(tmp_path, name="tb")
    fit(tmp_path, 40, logger=logger)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "stepwise/stepwise" in events.Tags()["images"]
    assert "stepwise/modes_learned" in events.Tags()["scalars"]


def test_figure_goes_to_loggers_that_take_images_and_is_skipped_for_others(tmp_path):
    pl = pl_namespace("lightning.pytorch")

    class ImageLogger(pl.loggers.Logger):  # the shape of WandbLogger's image API
        def __init__(self):
            super().__init__()
            self.images = []

        name = "images"
        version = 0

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            pass

        def log_image(self, key, images, step=None, **kwargs):
            self.images.append((key, images, step))

    image_logger = ImageLogger()
    csv_logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepwiseWarning)
        fit(tmp_path, 40, logger=[csv_logger, image_logger])
    (key, images, step), = image_logger.images
    assert key == "stepwise/stepwise" and step == 40 and images[0].endswith("stepwise.png")


def test_a_failing_onset_detection_warns_and_training_goes_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(OnsetTracker, "update", broken)
    with pytest.warns(StepwiseWarning, match="onset detection failed"):
        monitor, t = fit(tmp_path, 30)
    assert t.global_step == 30 and len(monitor.history["step"]) == 10 and monitor.onsets == []
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, 30, monitor={"strict": True})


@pytest.mark.parametrize("options, message", [({"bogus": 1}, "unknown onset options"),
                                              ({"min_rise": 0.5}, "min_rise"),
                                              ({"smoothing": 4}, "smoothing")])
def test_onset_options_are_checked_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        StepwiseMonitor(onset_options=options)


def test_plot_x_is_checked():
    with pytest.raises(ValueError, match="plot_x"):
        StepwiseMonitor(plot_x="epoch")
