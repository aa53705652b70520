"""Mode identity: matching eigen-directions across measurements, and onsets per identity.

Truth comes from designed covariances (known directions and eigenvalue curves) and from the parameters
of :func:`mode_family_run`, never from the matcher or detector under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_stepwise.mode_identity import ModeMatcher, follow_modes, identity_series
from lightning_stepwise.onsets import detect_onsets
from lightning_stepwise.spectrum import covariance_problem
from lightning_stepwise.synthetic import mode_family_run
from lightning_stepwise.tracker import SpectrumTracker


def orthonormal(d: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def logistic(t: np.ndarray, floor: float, plateau: float, centre: float, width: float) -> np.ndarray:
    return floor + (plateau - floor) / (1 + np.exp(-(t - centre) / width))


def measured(basis: np.ndarray, variances: np.ndarray, rng: np.random.Generator, n: int = 4000,
             k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenvalues and directions of the sample covariance of n rows with the designed covariance."""
    rows = rng.standard_normal((n, len(variances))) * np.sqrt(variances) @ basis.T
    values, vectors = np.linalg.eigh(np.cov(rows.T))
    k = len(variances) if k is None else k
    return values[::-1][:k], vectors[:, ::-1][:, :k]


# ----------------------------------------------------------------------------------- the matcher alone


def test_a_mode_keeps_its_identity_when_its_eigenvalue_crosses_another():
    basis = orthonormal(6)
    rng = np.random.default_rng(1)
    steps = np.arange(60.0)
    slow = logistic(steps, 1e-3, 0.3, 10, 2)  # learned first, small plateau
    fast = logistic(steps, 1e-3, 3.0, 35, 2)  # learned later, overtakes it
    matcher = ModeMatcher()
    identity_of = {}
    for t in steps.astype(int):
        variances = np.array([slow[t], fast[t], 1e-3, 8e-4, 6e-4, 4e-4])
        values, vectors = measured(basis, variances, rng)
        ids, mode_values, _ = matcher.update(values, vectors)
        for name, column in (("slow", 0), ("fast", 1)):
            direction = basis[:, column]
            best = max(ids, key=lambda i: float(matcher.direction(int(i)) @ direction) ** 2)
            identity_of.setdefault(name, set()).add(int(best))
    # once risen, each design mode is one identity for the rest of the run (before, it is in the bulk)
    matcher = ModeMatcher()
    late = {"slow": set(), "fast": set()}
    for t in steps.astype(int):
        variances = np.array([slow[t], fast[t], 1e-3, 8e-4, 6e-4, 4e-4])
        values, vectors = measured(basis, variances, rng)
        ids, mode_values, _ = matcher.update(values, vectors)
        for name, column, risen_at in (("slow", 0, 16), ("fast", 1, 41)):
            if t >= risen_at:
                direction = basis[:, column]
                best = max(ids, key=lambda i: float(matcher.direction(int(i)) @ direction) ** 2)
                late[name].add(int(best))
                value = mode_values[list(ids).index(best)]
                target = slow[t] if name == "slow" else fast[t]
                assert value == pytest.approx(target, rel=0.15)
    assert len(late["slow"]) == 1 and len(late["fast"]) == 1 and late["slow"] != late["fast"]


def test_modes_sharing_a_plateau_keep_their_identities_and_the_plateau_value():
    basis = orthonormal(8, seed=2)
    rng = np.random.default_rng(3)
    variances = np.array([1.0, 1.0, 1.0, 1.0, 1e-3, 1e-3, 1e-3, 1e-3])
    matcher = ModeMatcher()
    first = None
    for _ in range(40):
        values, vectors = measured(basis, variances, rng, n=500)  # directions mix inside the plateau
        ids, mode_values, _ = matcher.update(values, vectors)
        top = set(ids[:4].tolist())
        first = top if first is None else first
        assert top == first  # the same four identities on the plateau, whatever the mixing
        assert np.allclose(mode_values[:4], 1.0, rtol=0.2)
    assert matcher.next_identity < 8 + 4 * 40  # the bulk does not spawn an identity per direction each time


def test_identities_stay_bounded_and_state_round_trips():
    rng = np.random.default_rng(4)
    matcher = ModeMatcher()
    for _ in range(200):  # pure noise: every direction random every time
        q = orthonormal(16, seed=int(rng.integers(1 << 30)))
        matcher.update(np.sort(rng.uniform(0.5, 1.5, 8))[::-1], q[:, :8])
        assert len(matcher) <= 16  # 2 k
    again = ModeMatcher()
    again.load_state_dict(matcher.state_dict())
    q = orthonormal(16, seed=99)
    a = matcher.update(np.linspace(2, 1, 8), q[:, :8])
    b = again.update(np.linspace(2, 1, 8), q[:, :8])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)


def test_bad_directions_are_refused_with_the_shape():
    matcher = ModeMatcher()
    with pytest.raises(ValueError, match="directions must be"):
        matcher.update([1.0, 2.0], np.ones((4, 3)))
    matcher.update([1.0], np.eye(4)[:, :1])
    with pytest.raises(ValueError, match="dimension 3"):
        matcher.update([1.0], np.eye(3)[:, :1])
    with pytest.raises(ValueError, match="min_overlap"):
        ModeMatcher(min_overlap=1.5)


def test_identity_series_lists_rows_and_columns():
    series = identity_series([[3, 5], [5, 3], [5, -1]])
    assert series[5][0].tolist() == [0, 1, 2] and series[5][1].tolist() == [1, 0, 0]
    assert series[3][0].tolist() == [0, 1]


# --------------------------------------------------------------------- directions from the eigensolve


@pytest.mark.parametrize("n", [20, 400])  # Gram route (n < d) and the d x d route
def test_directions_from_both_routes_are_the_covariance_eigenvectors(n):
    torch.manual_seed(0)
    d = 40
    basis = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0]
    scales = torch.logspace(1, -2, d, dtype=torch.float64)
    rows = torch.randn(n, d, dtype=torch.float64) * scales @ basis.T
    values, vectors = covariance_problem(rows, directions=5).solve_with_directions()
    reference_values, reference_vectors = torch.linalg.eigh(torch.cov(rows.T))
    assert torch.allclose(values[:5], reference_values.flip(0)[:5], rtol=1e-9)
    overlap = (vectors.double().T @ reference_vectors.flip(1)[:, :5]).abs().diagonal()
    assert bool((overlap > 0.999).all())


# ------------------------------------------------------------------------------- onsets per identity


@pytest.mark.parametrize("family", ["collapse", "early", "spread", "all"])
def test_identity_route_finds_the_true_onsets_of_each_family(family):
    found = total = false = 0
    errors = []
    for seed in range(3):
        run = mode_family_run(family, 16, noise=0.15, seed=seed, rows=200)
        ids, values, _, directions = follow_modes(run.eigenvalues, run.directions, keep_directions=True)
        onsets = detect_onsets(run.steps, values, mode_ids=ids)
        total += len(run.onset_steps)
        taken = set()
        for o in onsets:
            row = int(np.searchsorted(run.steps, o["onset_step"]))
            direction = directions[min(row, 199)].get(int(o["identity"]))
            overlap = (run.onset_directions.T @ direction) ** 2 if direction is not None else np.zeros(1)
            i = int(np.argmax(overlap))
            close = abs(run.onset_steps[i] - o["onset_step"]) <= 5 * run.interval
            if overlap[i] > 0.5 and close and i not in taken:
                taken.add(i)
                found += 1
                errors.append(abs(run.onset_steps[i] - o["onset_step"]) / run.interval)
            else:
                false += 1
    assert found / total >= 0.95
    assert false / max(found + false, 1) <= 0.05
    assert np.median(errors) <= 1.0


def test_a_whole_spectrum_rise_is_not_a_learned_mode():
    steps = np.arange(120.0)
    scale = logistic(steps, 1e-4, 1e-2, 10, 1.5)  # everything grows 100x early (the embedding's scale adapts)
    learned = logistic(steps, 0.0, 1.0, 70, 3)  # one mode is learned later, on top of that
    values = np.stack([scale + learned] + [scale * f for f in np.linspace(0.9, 0.5, 11)], 1)
    ids = np.tile(np.arange(12), (120, 1))  # identity = design column (the columns stay in value order)
    onsets = detect_onsets(steps, values, mode_ids=ids)
    assert [int(r["identity"]) for r in onsets] == [0]
    assert onsets[0]["onset_step"] == pytest.approx(70, abs=2)


def test_a_renamed_direction_on_its_plateau_is_not_a_new_mode():
    steps = np.arange(100.0)
    rise = logistic(steps, 1e-3, 1.0, 30, 2)
    bulk = np.full(100, 1e-3)
    values = np.stack([rise, bulk, bulk * 0.9, bulk * 0.8, bulk * 0.7], 1)
    ids = np.tile(np.arange(5), (100, 1))
    ids[60:, 0] = 9  # the learned mode's identity changes on its plateau (matching lost it)
    onsets = detect_onsets(steps, values, mode_ids=ids)
    assert [int(r["identity"]) for r in onsets] == [0]


def test_identity_route_is_causal():
    run = mode_family_run("all", 16, noise=0.15, seed=5, rows=200)
    ids, values, _, _ = follow_modes(run.eigenvalues, run.directions)
    full = detect_onsets(run.steps, values, mode_ids=ids)
    for end in (80, 120, 160):
        prefix = detect_onsets(run.steps[:end], values[:end], mode_ids=ids[:end])
        for record in prefix:  # what a prefix found is what the whole run finds
            same = [r for r in full if r["identity"] == record["identity"]]
            assert same and same[0]["onset_step"] == pytest.approx(record["onset_step"])
            assert same[0]["mode"] == record["mode"]


# -------------------------------------------------------------------------------------- in the tracker


def test_tracker_records_identities_and_keeps_a_crossing_mode_whole(tmp_path):
    d, rows_per_batch = 6, 256
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))[0]
    generator = torch.Generator().manual_seed(1)

    def batch(step: int) -> torch.Tensor:
        variances = torch.full((d,), 1e-3)
        variances[0] = float(logistic(np.array(step), 1e-3, 0.3, 20, 2))
        variances[1] = float(logistic(np.array(step), 1e-3, 3.0, 50, 2))
        return torch.randn(rows_per_batch, d, generator=generator) * variances.sqrt() @ basis.T

    tracker = SpectrumTracker(["head"], every_n_steps=2, window=rows_per_batch, mode_directions=4)
    for step in range(100):
        tracker.start_batch(step, lr=0.1)
        tracker.end_batch({"head": [batch(step)]}, loss=torch.tensor(1.0))
    tracker.finish(100)
    history = tracker.history("head")
    assert history["mode_ids"].shape == history["mode_eigenvalues"].shape == history["mode_overlap"].shape
    onsets = tracker.onset_records("head")
    assert [r["mode"] for r in onsets] == [0, 1]
    assert onsets[0]["onset_step"] == pytest.approx(20, abs=3) and onsets[0]["plateau"] == pytest.approx(0.3, rel=0.2)
    assert onsets[1]["onset_step"] == pytest.approx(50, abs=3) and onsets[1]["plateau"] == pytest.approx(3.0, rel=0.2)
    point = tracker._point("head")
    for record, column in zip(onsets, (0, 1), strict=True):
        direction = point.onset_directions[int(record["identity"])]
        assert float(direction @ basis[:, column].numpy()) ** 2 > 0.9
    # the slow mode's identity is one curve over the crossing, at its own plateau after it
    slow = int(onsets[0]["identity"])
    late = history["step"] >= 60
    rows, columns = np.nonzero(history["mode_ids"][late] == slow)
    assert len(rows) == late.sum()
    assert np.allclose(history["mode_eigenvalues"][late][rows, columns], 0.3, rtol=0.2)
    state = tracker.state_dict()
    again = SpectrumTracker(["head"], every_n_steps=2, window=rows_per_batch, mode_directions=4)
    again.load_state_dict(state)
    assert again._point("head").matcher.next_identity == point.matcher.next_identity
    assert set(again._point("head").onset_directions) == set(point.onset_directions)


def test_mode_directions_zero_records_sorted_spectra_only():
    tracker = SpectrumTracker(["head"], every_n_steps=1, window=16, mode_directions=0)
    for step in range(3):
        tracker.start_batch(step)
        tracker.end_batch({"head": [torch.randn(16, 4)]})
    tracker.finish(3)
    assert "mode_ids" not in tracker.history("head")
    assert math.isnan(float("nan"))


def test_online_tracker_finds_what_the_offline_detection_finds():
    from lightning_stepwise.onsets import OnsetTracker

    run = mode_family_run("all", 16, noise=0.3, seed=7, rows=150)
    ids, values, _, _ = follow_modes(run.eigenvalues, run.directions)
    offline = detect_onsets(run.steps, values, mode_ids=ids)
    tracker = OnsetTracker()
    online = []
    for end in range(3, 151):  # one more row at a time, as during training
        online += tracker.update(run.steps[:end], values[:end], mode_ids=ids[:end])
    assert len(offline) >= 6
    key = lambda r: (r["identity"], round(r["onset_step"], 9), r["mode"])  # noqa: E731
    assert sorted(map(key, online)) == sorted(map(key, offline))


# ------------------------------------------------------------------------ in the monitor, files, report


def crossing_embeddings(d: int = 8, rows: int = 128):
    """embedding_fn whose covariance has a slow mode (plateau 0.3, onset 30) overtaken by a fast one (3.0, 70)."""
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(3)))[0]
    generator = torch.Generator().manual_seed(4)

    def embed(pl_module, batch):
        step = pl_module.trainer.global_step
        variances = torch.full((d,), 1e-3)
        variances[0] = float(logistic(np.array(step), 1e-3, 0.3, 30, 2))
        variances[1] = float(logistic(np.array(step), 1e-3, 3.0, 70, 2))
        return torch.randn(rows, d, generator=generator) * variances.sqrt() @ basis.T

    return embed, basis


def test_monitor_records_identities_draws_them_and_report_finds_the_same_onsets(tmp_path):
    from helpers import make_ssl_module, pair_loader, trainer

    from lightning_stepwise import StepwiseMonitor, load_spectrum
    from lightning_stepwise.plots import plot_stepwise
    from lightning_stepwise.report import report_run

    embed, basis = crossing_embeddings()
    monitor = StepwiseMonitor(embedding_fn=embed, every_n_steps=2, window=128, dirpath=tmp_path / "run",
                              verbose=False)
    trainer(max_steps=130, callbacks=[monitor]).fit(make_ssl_module(), pair_loader())
    onsets = monitor.onsets
    assert [r["mode"] for r in onsets] == [0, 1]
    assert [round(r["onset_step"] / 10) for r in onsets] == [3, 7]
    assert onsets[1]["plateau"] == pytest.approx(3.0, rel=0.25)
    history = monitor.history
    assert {"mode_ids", "mode_eigenvalues", "mode_overlap"} <= set(history)
    saved = load_spectrum(tmp_path / "run")
    np.testing.assert_array_equal(saved["mode_ids"], history["mode_ids"])
    [report] = report_run(tmp_path / "run", output=tmp_path / "again")
    assert [(r["identity"], round(r["onset_step"], 6)) for r in report.onsets] == \
        [(r["identity"], round(r["onset_step"], 6)) for r in onsets]
    figure = plot_stepwise(history, onsets)
    curves = [line for line in figure.axes[0].lines if line.get_linewidth() == 1.4]
    assert len(curves) == 2  # one coloured curve per learned mode, along its identity
    fast = np.asarray(curves[1].get_ydata(), dtype=float)
    assert np.nanmax(fast) == pytest.approx(3.0, rel=0.3)  # the overtaking mode's own curve, not a rank


def test_mode_directions_must_be_a_count():
    from lightning_stepwise import StepwiseMonitor

    with pytest.raises(ValueError, match="mode_directions"):
        StepwiseMonitor(mode_directions=-1)
    with pytest.raises(ValueError, match="every_n_steps"):
        StepwiseMonitor(every_n_steps="sometimes")


def test_follow_modes_equals_the_matcher_row_by_row_and_checks_shapes():
    run = mode_family_run("spread", 8, rows=60, seed=3)
    followed = follow_modes(run.eigenvalues, run.directions, keep_directions=True)
    matcher = ModeMatcher()
    for t in range(60):
        ids, values, overlaps = matcher.update(run.eigenvalues[t], run.directions[t])
        assert followed.mode_ids[t, : len(ids)].tolist() == ids.tolist()
        np.testing.assert_allclose(followed.mode_eigenvalues[t, : len(ids)], values)
        np.testing.assert_allclose(followed.mode_overlap[t, : len(ids)], overlaps)
        assert set(followed.directions[t]) == set(ids.tolist())
    with pytest.raises(ValueError, match=r"\(T, d, k\) directions"):
        follow_modes(run.eigenvalues, run.directions[:, :, :3])
