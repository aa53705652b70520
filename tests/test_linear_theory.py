"""The theory's own setting trained with a Trainer: the monitor's cross-correlation spectrum and onset
table held against the closed-form prediction (the truth is gradient descent run by Lightning)."""

import csv
import warnings

import numpy as np
import pytest
import torch
from helpers import make_ssl_module, pair_loader, trainer

from lightning_stepwise import StepwiseMonitor, StepwiseWarning
from lightning_stepwise.accumulators import CrossCorrelationSums
from lightning_stepwise.linear_model import (
    LinearSSL,
    digits_view_pairs,
    run_linear_theory_experiment,
    view_pair_loader,
)
from lightning_stepwise.theory import LinearSSLTheory


def test_cross_correlation_sums_match_numpy_over_batches():
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal((60, 4)), rng.standard_normal((60, 4))
    acc = CrossCorrelationSums(4)
    for part in (slice(0, 25), slice(25, 60)):
        acc.update(torch.cat([torch.tensor(z0[part]), torch.tensor(z1[part])]))
    eigenvalues, pairs, skipped = acc.compute()
    expected = np.sort(np.linalg.eigvalsh((z0.T @ z1 + z1.T @ z0) / 120))[::-1]
    np.testing.assert_allclose(eigenvalues.numpy(), expected, rtol=1e-12, atol=1e-14)
    assert int(pairs) == 60 and int(skipped) == 0
    with pytest.raises(ValueError, match="even number of rows"):
        acc.update(torch.ones(3, 4))


def test_monitor_records_the_cross_correlation_of_the_two_views():
    x0, x1 = digits_view_pairs(n=100)
    model = LinearSSL(64, 6, lr=1e-9, init_scale=0.1)  # lr ~ 0: the weights of step 0 stay
    monitor = StepwiseMonitor(every_n_steps=2, window=2, spectrum="cross_correlation", save_figure=False)
    trainer(max_steps=1, callbacks=[monitor]).fit(model, view_pair_loader(x0, x1))
    w = model.initial_weight.double().numpy()
    z0, z1 = x0.astype(np.float32) @ w.T, x1.astype(np.float32) @ w.T
    expected = np.sort(np.linalg.eigvalsh((z0.T @ z1 + z1.T @ z0) / 200))[::-1]
    np.testing.assert_allclose(monitor.history["eigenvalues"][0], expected, rtol=1e-5)
    assert monitor.history["samples"][0] == 100  # pairs


@pytest.fixture(scope="module")
def short_experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("linear")
    monitor, prediction = run_linear_theory_experiment(max_steps=900, output=str(out))
    return monitor, prediction, out


def test_trained_step_times_match_the_theory(short_experiment):
    monitor, prediction, _ = short_experiment
    onsets = monitor.onsets
    assert len(onsets) >= 6
    for r in onsets:
        assert abs(r["relative_error"]) <= 0.03, r
        assert r["predicted_onset_step"] == pytest.approx(prediction.onset_steps()[r["mode"]])
    # every mode the theory has half-learned well before the end was observed
    confirmable = (prediction.onset_steps() < 900 - 150).sum()
    assert len(onsets) >= confirmable


def test_the_loss_sits_on_the_predicted_plateaus(short_experiment):
    monitor, prediction, _ = short_experiment
    history = monitor.history
    lam = prediction.eigenvalue_trajectories(history["step"])
    settled = np.all((lam >= 0.98) | (lam <= 0.02), axis=1)
    assert settled.sum() >= 10
    d_minus_k = lam.shape[1] - (lam >= 0.98).sum(axis=1)
    np.testing.assert_allclose(history["loss"][settled], d_minus_k[settled], atol=0.1)


def test_files_hold_the_predicted_onsets_and_the_figure(short_experiment):
    monitor, _, out = short_experiment
    folder = out / "stepwise"
    with open(folder / "onsets.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["predicted_onset_step"]) for r in table] == pytest.approx(
        [r["predicted_onset_step"] for r in monitor.onsets])
    assert (folder / "stepwise.png").stat().st_size > 20_000


def test_a_scaled_loss_is_predicted_too():
    monitor, prediction = run_linear_theory_experiment(max_steps=450, loss_scale=2.0)
    assert len(monitor.onsets) >= 5
    assert all(abs(r["relative_error"]) <= 0.03 for r in monitor.onsets)
    unscaled = prediction.theory.predict(prediction.lr, W0=prediction.W0).onset_steps()
    # c = 2 halves the step times in gradient flow; with 4 c lr γ up to 0.2 the discrete steps differ by < 5 %
    np.testing.assert_allclose(prediction.onset_steps(), unscaled / 2, rtol=0.05)


def test_lightly_barlow_twins_loss_option_trains_and_is_hooked(capsys):
    x0, x1 = digits_view_pairs(n=64)
    model = LinearSSL(64, 4, lr=0.01, loss="barlow_twins")
    monitor = StepwiseMonitor(every_n_steps=2, window=2, spectrum="cross_correlation", save_figure=False)
    trainer(max_steps=4, callbacks=[monitor]).fit(model, view_pair_loader(x0, x1))
    assert monitor.histories.keys() == {"criterion"} and len(monitor.history["step"]) == 2
    assert not torch.equal(model.projection_head.weight, model.initial_weight)


def test_theory_with_the_covariance_spectrum_warns(recwarn):
    x0, x1 = digits_view_pairs(n=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theory = LinearSSLTheory.from_views(x0, x1)
    model = LinearSSL(64, 4)
    monitor = StepwiseMonitor(every_n_steps=2, window=2, theory=theory.predict(0.01, W0=model.initial_weight),
                              save_figure=False)
    with pytest.warns(StepwiseWarning, match="spectrum='cross_correlation'"):
        trainer(max_steps=2, callbacks=[monitor]).fit(model, view_pair_loader(x0, x1))


def test_odd_captures_are_skipped_with_one_warning():
    model = make_ssl_module(concat_views=False)
    calls = {"n": 0}

    def three_rows(pl_module, batch):
        calls["n"] += 1
        return torch.randn(3, 8)

    monitor = StepwiseMonitor(embedding_fn=three_rows, every_n_steps=1, window=2, spectrum="cross_correlation",
                              save_figure=False)
    with pytest.warns(StepwiseWarning, match="not two views of equal size") as caught:
        trainer(max_steps=3, callbacks=[monitor]).fit(model, pair_loader())
    assert sum("not two views" in str(w.message) for w in caught) == 1 and calls["n"] >= 3
    assert len(monitor.history["step"]) == 0


@pytest.mark.parametrize("kwargs, error, message", [
    ({"spectrum": "gram"}, ValueError, r"spectrum=\.\.\.\) takes one of 'covariance', 'cross_correlation'"),
    ({"theory": object()}, TypeError, "TheoryPrediction"),
])
def test_bad_spectrum_and_theory_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        StepwiseMonitor(**kwargs)


def test_linear_model_arguments_are_checked():
    with pytest.raises(ValueError, match="loss must be"):
        LinearSSL(4, 2, loss="vicreg")
    with pytest.raises(ValueError, match="must not exceed"):
        LinearSSL(4, 8)
    with pytest.raises(ValueError, match="n must be between"):
        digits_view_pairs(n=0)


def test_a_cross_correlation_window_open_at_a_checkpoint_is_completed_on_resume(tmp_path):
    x0, x1 = digits_view_pairs(n=100)

    def run(max_steps, ckpt_path=None):
        model = LinearSSL(64, 6, lr=0.05, init_scale=0.05)
        monitor = StepwiseMonitor(every_n_steps=4, window=600, spectrum="cross_correlation", save_figure=False)
        t = trainer(max_steps=max_steps, callbacks=[monitor], default_root_dir=tmp_path)
        t.fit(model, view_pair_loader(x0, x1), ckpt_path=ckpt_path)
        return monitor, t

    continuous, _ = run(8)
    first, first_trainer = run(5)  # the window opened at step 4 holds one of its three steps
    first_trainer.save_checkpoint(tmp_path / "mid_window.ckpt")
    resumed, _ = run(8, ckpt_path=tmp_path / "mid_window.ckpt")
    np.testing.assert_array_equal(resumed.history["step"], [0, 4])
    np.testing.assert_array_equal(resumed.history["samples"], continuous.history["samples"])  # 300 pairs each
    np.testing.assert_allclose(resumed.history["eigenvalues"], continuous.history["eigenvalues"], rtol=1e-6)
