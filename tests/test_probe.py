"""Linear probe: the classifier against scikit-learn, feature extraction, and the LinearProbe callback."""

import csv
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import make_ssl_module, pair_loader, pl_namespace, trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_stepwise import LinearProbe, StepwiseMonitor
from lightning_stepwise.probe import (
    extract_features,
    fit_linear_probe,
    format_probe_table,
    linear_probe,
    mode_counts,
)


@pytest.fixture(scope="module")
def digits_split():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, val = order[:1200], order[1200:]
    return x[train], y[train], x[val], y[val]


def fitted_through_the_probe(monkeypatch, solver, *args, **kwargs):
    """Run ``fit_linear_probe`` and keep what its solver ``solver`` saw and fitted: (x, c, weight, bias).

    The probe reports accuracies only; the spy keeps the standardised training features it was given and
    the coefficients it returned, so the whole path (standardisation, ``c``, intercept) can be checked.
    """
    import lightning_stepwise.probe as probe_module

    original, calls = getattr(probe_module, solver), []

    def spy(x, y, classes, c, *rest):
        weight, bias = original(x, y, classes, c, *rest)
        calls.append({"x": x.numpy(), "c": c, "weight": weight.numpy(), "bias": bias.numpy()})
        return weight, bias

    monkeypatch.setattr(probe_module, solver, spy)
    result = fit_linear_probe(*args, **kwargs)
    assert len(calls) == 1  # modes=False: a single fit
    return result, calls[0]


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("c", [0.1, 1.0, 100.0])
def test_logistic_probe_agrees_with_scikit_learn_on_raw_pixels(digits_split, monkeypatch, c):
    # the same coefficients, intercepts and probabilities as LogisticRegression(C=c) on StandardScaler
    # features: a wrong c (c = 1 instead of 0.1 or 100 moves the coefficients by 50-400 %), a wrong
    # standardisation (n - 1 in the std moves them by 4e-4) or a missing intercept would all show
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train, y_train, x_val, y_val = digits_split
    scaler = StandardScaler().fit(x_train)
    s_train, s_val = scaler.transform(x_train), scaler.transform(x_val)
    reference = LogisticRegression(C=c, max_iter=10_000, tol=1e-10).fit(s_train, y_train)
    result, fitted = fitted_through_the_probe(
        monkeypatch, "_fit_logistic", torch.tensor(x_train), torch.tensor(y_train), torch.tensor(x_val),
        torch.tensor(y_val), c=c, modes=False)
    np.testing.assert_allclose(fitted["x"], s_train, atol=1e-9)  # standardised with the train mean and std
    weight, bias = fitted["weight"], fitted["bias"]
    # L-BFGS to its tolerance: ~1e-5 relative at c ≤ 1, ~2e-4 at the nearly unregularised c = 100
    tolerance = 1e-4 if c <= 1 else 2e-3
    coef = reference.coef_.T
    assert np.linalg.norm(weight - coef) <= tolerance * np.linalg.norm(coef)
    # multinomial intercepts are defined up to a common shift: compare them centred
    np.testing.assert_allclose(bias - bias.mean(), reference.intercept_ - reference.intercept_.mean(),
                               atol=0.01 if c > 1 else 1e-3)
    probabilities = reference.predict_proba(s_val)
    np.testing.assert_allclose(softmax(s_val @ weight + bias), probabilities, atol=5 * tolerance)
    # the reported accuracies are those of scikit-learn's probabilities
    assert result["top1"] == pytest.approx(reference.score(s_val, y_val), abs=1e-6)
    top5 = np.mean([y in np.argsort(p)[-5:] for p, y in zip(probabilities, y_val, strict=True)])
    assert result["top5"] == pytest.approx(top5, abs=1e-6)
    assert result["train_top1"] == pytest.approx(reference.score(s_train, y_train), abs=1e-6)


@pytest.mark.parametrize("c", [0.1, 1.0, 100.0])
def test_ridge_probe_is_scikit_learn_ridge_with_alpha_one_over_c(digits_split, monkeypatch, c):
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    x_train, y_train, x_val, y_val = digits_split
    scaler = StandardScaler().fit(x_train)
    s_train, s_val = scaler.transform(x_train), scaler.transform(x_val)
    ridge = Ridge(alpha=1 / c).fit(s_train, np.eye(10)[y_train])
    result, fitted = fitted_through_the_probe(
        monkeypatch, "_fit_ridge", torch.tensor(x_train), torch.tensor(y_train), torch.tensor(x_val),
        torch.tensor(y_val), method="ridge", c=c, modes=False)
    np.testing.assert_allclose(fitted["x"], s_train, atol=1e-9)
    # closed form on both sides: equal to rounding
    np.testing.assert_allclose(fitted["weight"], ridge.coef_.T, rtol=1e-7, atol=1e-9 * np.abs(ridge.coef_).max())
    np.testing.assert_allclose(fitted["bias"], ridge.intercept_, rtol=1e-7, atol=1e-9)
    scores = ridge.predict(s_val)
    np.testing.assert_allclose(s_val @ fitted["weight"] + fitted["bias"], scores, atol=1e-8)
    assert result["top1"] == pytest.approx(np.mean(scores.argmax(1) == y_val), abs=1e-6)  # torchmetrics: float32


def test_accuracy_per_mode_count_rises_with_k_and_uses_the_covariance_eigenvectors(digits_split):
    x_train, y_train, x_val, y_val = digits_split
    result = fit_linear_probe(torch.tensor(x_train), torch.tensor(y_train), torch.tensor(x_val), torch.tensor(y_val),
                              modes=[5])
    ks = [k for k, _ in result["modes"]]
    assert ks == [1, 2, 4, 5, 8, 16, 32, 64]
    accuracies = dict(result["modes"])
    assert accuracies[1] < accuracies[4] < accuracies[16] and accuracies[64] > 0.9
    # k = 2 is the probe on the top-2 principal components, built here with NumPy
    centred = x_train - x_train.mean(0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    top2 = vectors[:, ::-1][:, :2]
    direct = fit_linear_probe(torch.tensor(x_train @ top2), torch.tensor(y_train), torch.tensor(x_val @ top2),
                              torch.tensor(y_val), modes=False)
    assert accuracies[2] == pytest.approx(direct["top1"], abs=0.005)


def test_mode_counts():
    assert mode_counts(1) == [1]
    assert mode_counts(64, extra=[3, 100, 0]) == [1, 2, 3, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.ones(2, 3), torch.tensor([0, 1])), "empty"),
    ((torch.ones(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(2, 3), torch.tensor([0, 0])), "single class"),
    ((torch.ones(4, 3), torch.tensor([0, 1, 0, 1]), torch.ones(2, 5), torch.tensor([0, 1])), "width 3"),
    ((torch.ones(4, 3), torch.tensor([0.0, 1, 0, 1]), torch.ones(2, 3), torch.tensor([0, 1])), "integer class"),
    ((torch.ones(4, 3), torch.tensor([0, 1, 0]), torch.ones(2, 3), torch.tensor([0, 1])), "one per feature row"),
    ((torch.ones(4, 3), torch.tensor([0, 1, 0, 1]), torch.ones(2, 3), torch.tensor([0, 7])), "never occur"),
    ((torch.full((4, 3), math.nan), torch.tensor([0, 1, 0, 1]), torch.ones(2, 3), torch.tensor([0, 1])), "NaN"),
])
def test_bad_probe_input_is_refused_with_the_reason(args, message):
    with pytest.raises(ValueError, match=message):
        fit_linear_probe(*args)


def test_extraction_is_frozen_in_eval_mode_and_restores_the_mode():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5))
    net.train()
    net[1].eval()  # a mixed state must come back as it was
    loader = DataLoader(TensorDataset(torch.randn(20, 3), torch.arange(20) % 2), batch_size=8)
    before = net[1].running_mean.clone()
    features, labels = extract_features(net, loader)
    assert features.shape == (20, 4) and labels.tolist() == (torch.arange(20) % 2).tolist()
    assert net.training and not net[1].training and net[2].training
    assert torch.equal(net[1].running_mean, before)  # no statistics updated
    with torch.no_grad():
        net.eval()
        expected = net(loader.dataset.tensors[0]).double()
    torch.testing.assert_close(features, expected)  # dropout off, batchnorm on running statistics


def test_unlabelled_and_empty_loaders_are_explained():
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="labelled batches"):
        extract_features(net, [torch.randn(4, 3)])
    with pytest.raises(ValueError, match="no batches"):
        extract_features(net, [])


def test_offline_probe_of_a_model_and_a_checkpoint(tmp_path):
    pl = pl_namespace("lightning.pytorch")
    model = make_ssl_module()
    t = trainer(max_steps=2, default_root_dir=tmp_path)
    t.fit(model, pair_loader())
    t.save_checkpoint(tmp_path / "m.ckpt")
    labelled = DataLoader(TensorDataset(torch.randn(60, 12), torch.arange(60) % 3), batch_size=32)
    direct = linear_probe(model, labelled, labelled, modes=False)
    from_checkpoint = linear_probe(str(tmp_path / "m.ckpt"), labelled, labelled, module_class=type(model),
                                   modes=False)
    assert direct["top1"] == pytest.approx(from_checkpoint["top1"])
    with pytest.raises(ValueError, match="module_class"):
        linear_probe(str(tmp_path / "m.ckpt"), labelled, labelled)
    assert pl is not None


def labelled_loaders(n=90, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 12, generator=g) + torch.nn.functional.one_hot(y, 12).float() * 3
    return (DataLoader(TensorDataset(x[: 2 * n // 3], y[: 2 * n // 3]), batch_size=16),
            DataLoader(TensorDataset(x[2 * n // 3 :], y[2 * n // 3 :]), batch_size=16))


def test_linear_probe_callback_runs_at_epochs_and_fit_end_logs_and_writes(tmp_path):
    pl = pl_namespace("lightning.pytorch")
    train, val = labelled_loaders()
    probe = LinearProbe(train, val, every_n_epochs=2)
    logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    t = trainer(max_epochs=4, callbacks=[StepwiseMonitor(every_n_steps=2, save_figure=False), probe],
                logger=logger, default_root_dir=tmp_path)
    model = make_ssl_module(batchnorm=True)
    t.fit(model, pair_loader())
    assert [r["trigger"] for r in probe.results] == ["epoch", "epoch", "fit_end"]
    assert [r["epoch"] for r in probe.results[:2]] == [1.0, 3.0]
    assert all(0.0 <= r["top1"] <= 1.0 for r in probe.results) and probe.results[-1]["modes_learned"] >= 0
    assert model.training  # the module's mode is back
    assert [k for k, _ in probe.modes_table][-1] == 16  # backbone width
    with open(logger.log_dir + "/metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("probe_top1")]
    assert len(logged) == 3
    files = {p.name for p in probe.output_dir.iterdir()}
    assert {"probe.csv", "probe_modes.csv", "probe_modes.png"} <= files
    # the same numbers as an offline probe of the final model
    offline = linear_probe(model, train, val, modes=False)
    assert probe.results[-1]["top1"] == pytest.approx(offline["top1"])


def test_probe_results_survive_checkpoint_resume(tmp_path):
    train, val = labelled_loaders()

    def run(max_epochs, ckpt_path=None):
        probe = LinearProbe(train, val, every_n_epochs=1, modes=False)
        t = trainer(max_epochs=max_epochs, callbacks=[probe], default_root_dir=tmp_path)
        t.fit(make_ssl_module(), pair_loader(), ckpt_path=ckpt_path)
        return probe, t

    first, first_trainer = run(2)
    first_trainer.save_checkpoint(tmp_path / "p.ckpt")
    resumed, _ = run(3, ckpt_path=tmp_path / "p.ckpt")
    np.testing.assert_equal(resumed.results[: len(first.results)], first.results)
    assert [r["trigger"] for r in resumed.results] == ["epoch", "epoch", "fit_end", "epoch", "fit_end"]


def test_probe_on_new_modes_follows_the_monitor(tmp_path):
    from test_monitor_onsets import staircase

    train, val = labelled_loaders()
    probe = LinearProbe(train, val, on_new_mode=True, at_fit_end=False)
    monitor = StepwiseMonitor(embedding_fn=staircase((20, 40)), every_n_steps=3, window=64, save_figure=False,
                              dirpath=tmp_path)
    trainer(max_steps=100, callbacks=[monitor, probe]).fit(make_ssl_module(), pair_loader())
    assert monitor.modes_learned == 2
    assert [r["modes_learned"] for r in probe.results] == [1.0, 2.0]
    assert all(r["trigger"] == "new_mode" for r in probe.results)


@pytest.mark.parametrize("loaders, message", [
    ((None, None), "needs labelled train and validation"),
    (([], "val"), "train dataloader is empty"),
    (([torch.randn(4, 12)], "val"), "labelled batches"),
    ((DataLoader(TensorDataset(torch.randn(8, 12), torch.zeros(8, dtype=torch.long))), "val"), "single class"),
])
def test_set_up_errors_name_the_problem(loaders, message):
    train, val = loaders
    val = labelled_loaders()[1] if val == "val" else val
    with pytest.raises(ValueError, match=message):
        trainer(max_steps=1, callbacks=[LinearProbe(train, val)]).fit(make_ssl_module(), pair_loader())


def test_mismatched_feature_widths_fail_at_set_up():
    train, _ = labelled_loaders()
    wide = DataLoader(TensorDataset(torch.randn(10, 12), torch.arange(10) % 2), batch_size=5)

    def features(module, x):
        return module.backbone(x) if x.shape[0] > 5 else module.backbone(x)[:, :3]

    with pytest.raises(ValueError, match="width 16 but validation features 3"):
        trainer(max_steps=1, callbacks=[LinearProbe(train, wide, feature_fn=features)]).fit(
            make_ssl_module(), pair_loader())


def test_a_failing_probe_during_training_warns_once_and_training_goes_on(monkeypatch):
    import lightning_stepwise.linear_probe as callbacks_module
    from lightning_stepwise import StepwiseWarning

    def broken(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(callbacks_module, "fit_linear_probe", broken)
    train, val = labelled_loaders()
    probe = LinearProbe(train, val, every_n_epochs=1)
    with pytest.warns(StepwiseWarning, match="solver exploded") as caught:
        t = trainer(max_epochs=3, callbacks=[probe])
        t.fit(make_ssl_module(), pair_loader())
    # three epoch probes and the one at fit end, each counted
    assert t.current_epoch == 3 and probe.results == [] and probe.problems.counts["failed_probes"] == 4
    assert sum("solver exploded" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="solver exploded"):
        trainer(max_epochs=1, callbacks=[LinearProbe(train, val, strict=True)]).fit(make_ssl_module(), pair_loader())


def test_probe_arguments_are_checked():
    with pytest.raises(ValueError, match="every_n_epochs"):
        LinearProbe(every_n_epochs=0)
    with pytest.raises(ValueError, match="method"):
        LinearProbe(method="svm")
    with pytest.raises(TypeError, match="feature_fn"):
        LinearProbe(feature_fn=3)


def test_format_probe_table_lists_runs_and_modes():
    text = format_probe_table([{"step": 10, "modes_learned": math.nan, "top1": 0.5}], [(1, 0.25), (2, 0.5)])
    lines = text.splitlines()
    assert len(lines) == 3 and "50.0 %" in lines[1] and lines[1].split()[1] == "-"
    assert "1: 25.0 %" in lines[2]


def test_training_is_untouched_by_the_probe():
    pl = pl_namespace("lightning.pytorch")
    train, val = labelled_loaders()

    def fit(callbacks):
        pl.seed_everything(0, verbose=False)
        model = make_ssl_module(batchnorm=True)
        loader = DataLoader(pair_loader().dataset, batch_size=16, shuffle=True)  # shuffling draws from the RNG
        trainer(max_epochs=3, callbacks=callbacks).fit(model, loader)
        return [p.detach().clone() for p in model.parameters()] + [b.clone() for b in model.buffers()]

    without = fit([])
    with_probe = fit([LinearProbe(train, val, every_n_epochs=1)])
    for a, b in zip(without, with_probe, strict=True):
        assert torch.equal(a, b)


def test_a_trained_demo_encoder_beats_its_random_initialisation():
    # Random conv features are already strong on the digits (95 %); training's gain shows most clearly in
    # the leading eigen-directions, where it moves label information (docs/probe.md).
    from lightning_stepwise.data import digits_dataloader, digits_probe_loaders
    from lightning_stepwise.demo import DigitsBarlowTwins

    pl = pl_namespace("lightning.pytorch")
    train, val = digits_probe_loaders()
    pl.seed_everything(0, verbose=False)
    model = DigitsBarlowTwins(init_scale=0.5)
    random_init = linear_probe(model, train, val)
    pl.Trainer(max_steps=300, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(model, digits_dataloader(batch_size=128, seed=0))
    trained = linear_probe(model, train, val)
    assert trained["top1"] > random_init["top1"]
    before, after = dict(random_init["modes"]), dict(trained["modes"])
    assert after[4] - before[4] >= 0.05 and after[16] - before[16] >= 0.02


def test_probe_a_named_point_of_the_forward_pass():
    from lightning_stepwise.probe import point_features

    model = make_ssl_module()
    train, val = labelled_loaders()
    probe = LinearProbe(train, val, point="projection_head", modes=False)
    trainer(max_steps=2, callbacks=[probe]).fit(model, pair_loader())
    assert probe.results[-1]["width"] == 8  # the projection head's width, not the backbone's 16
    x = next(iter(train))[0]
    with torch.no_grad():
        torch.testing.assert_close(point_features("projection_head")(model, x), model(x))
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        point_features("nope")(model, x)
    with pytest.raises(ValueError, match="either feature_fn or point"):
        LinearProbe(feature_fn=lambda m, x: x, point="backbone")
    with pytest.raises(ValueError, match="no submodule"):
        trainer(max_steps=1, callbacks=[LinearProbe(train, val, point="nope")]).fit(make_ssl_module(), pair_loader())
