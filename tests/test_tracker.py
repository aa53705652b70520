"""SpectrumTracker alone: windows, counts, state and restore, without a Trainer (and without Lightning)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from helpers import reference_eigenvalues

from lightning_stepwise import StepwiseWarning
from lightning_stepwise.tracker import PointSpec, SpectrumTracker


def batches(n: int, rows: int, dim: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, dim)
    return [torch.randn(rows, dim, generator=g) * scales for _ in range(n)]


def run(tracker: SpectrumTracker, data: list[torch.Tensor], point: str = "head", steps_per_batch: int = 1,
        first_step: int = 0, losses: list[float] | None = None) -> None:
    """Feed one batch per call; ``steps_per_batch`` batches make a step (gradient accumulation)."""
    for i, rows in enumerate(data):
        step = first_step + i // steps_per_batch
        tracker.start_batch(step, epoch=0, lr=0.1)
        loss = None if losses is None else torch.tensor(losses[i])
        tracker.end_batch({point: [rows]}, loss=loss)


@pytest.mark.parametrize("window", [64, 24])  # 64 >= d: moments; 24 < d = 32: Gram rows
def test_windows_hold_whole_batches_and_equal_the_reference(window):
    data = batches(12, rows=16, dim=32)
    tracker = SpectrumTracker(["head"], every_n_steps=4, window=window)
    run(tracker, data)
    tracker.finish(12)
    h = tracker.history("head")
    per_window = math.ceil(window / 16)
    assert h["step"].tolist() == [0, 4, 8]
    assert (h["samples"] == 16 * per_window).all()
    for row, start in zip(h["eigenvalues"], (0, 4, 8), strict=True):
        expected = reference_eigenvalues(torch.cat(data[start:start + per_window]).numpy())
        np.testing.assert_allclose(row, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h["time"], [0.0, 0.4, 0.8])


def test_a_window_that_cannot_fill_in_every_n_steps_stays_open_warns_once_and_counts_true_samples():
    data = batches(20, rows=8, dim=4)
    tracker = SpectrumTracker(["head"], every_n_steps=2, window=40)  # 5 batches a window, 2 steps apart
    with pytest.warns(StepwiseWarning, match=r"needed 5 batches.*spanned 5 steps.*every_n_steps=2") as caught:
        run(tracker, data)
    assert sum("spanned" in str(w.message) for w in caught) == 1
    h = tracker.history("head")
    assert (h["samples"] == 40).all()  # never cut short
    assert h["step"].tolist() == [0, 6, 12]  # each window opens at the first multiple of 2 after the last closed
    expected = reference_eigenvalues(torch.cat(data[6:11]).numpy())
    np.testing.assert_allclose(h["eigenvalues"][1], expected, rtol=1e-9)


def test_gradient_accumulation_counts_optimizer_steps():
    data = batches(12, rows=8, dim=4)
    tracker = SpectrumTracker(["head"], every_n_steps=2, window=16)
    run(tracker, data, steps_per_batch=2, losses=[float(i) for i in range(12)])
    tracker.finish(6)
    h = tracker.history("head")
    assert h["step"].tolist() == [0, 2, 4]  # steps, not batches
    np.testing.assert_allclose(h["loss"], [0.5, 4.5, 8.5])  # the mean of the window's two batches
    np.testing.assert_allclose(h["time"], [0.0, 0.2, 0.4])


def test_a_short_last_batch_is_counted_as_it_is():
    data = batches(4, rows=16, dim=8)
    data[1] = data[1][:5]  # the epoch's last batch is short
    tracker = SpectrumTracker(["head"], every_n_steps=2, window=32)
    run(tracker, data)
    tracker.finish(4)
    h = tracker.history("head")
    assert h["samples"].tolist() == [21, 32]
    np.testing.assert_allclose(h["eigenvalues"][0], reference_eigenvalues(torch.cat(data[:2]).numpy()), rtol=1e-9)


def test_bad_batches_are_skipped_counted_and_warned_once():
    data = batches(8, rows=8, dim=4)
    data[1] = torch.randn(8, 5)        # a width change
    data[2] = data[2] * math.nan       # non-finite
    tracker = SpectrumTracker(["head"], every_n_steps=8, window=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, rows in enumerate(data):
            tracker.start_batch(i // 8, lr=0.1)
            tracker.end_batch({"head": [rows] if i != 3 else []})  # batch 3 brought nothing
        tracker.finish(1)
    counts = tracker.problems.counts
    assert (counts["malformed_batches"], counts["non_finite_batches"], counts["empty_batches"]) == (1, 1, 1)
    assert tracker.history("head")["samples"].tolist() == [40]  # 5 of the 8 batches
    expected = reference_eigenvalues(torch.cat([data[0], *data[4:]]).numpy())
    np.testing.assert_allclose(tracker.history("head")["eigenvalues"][0], expected, rtol=1e-9)
    messages = [str(w.message) for w in caught if issubclass(w.category, StepwiseWarning)]
    assert len(messages) == 3 and all("warned once" in m for m in messages)
    assert "1 batches skipped for their shape" in tracker.problems.summary()


def test_a_point_with_no_embeddings_says_so_and_how_to_point_the_monitor():
    tracker = SpectrumTracker(["backbone"], every_n_steps=2, window=8)
    with pytest.warns(StepwiseWarning, match=r"`backbone` produced no embeddings.*module=.*embedding_fn="):
        for step in range(6):
            tracker.start_batch(step, lr=0.1)
            tracker.end_batch({"backbone": []})
    tracker.finish(6)
    assert tracker.problems.counts["empty_windows"] == 3
    assert len(tracker.history("backbone")["step"]) == 0


def test_cross_correlation_skips_odd_batches():
    z = torch.randn(10, 3, dtype=torch.float64)
    tracker = SpectrumTracker(["head"], every_n_steps=4, window=60, spectrum="cross_correlation")
    with pytest.warns(StepwiseWarning, match="not two views"):
        run(tracker, [torch.cat([z, z]), torch.randn(7, 3), torch.cat([z, z])])
    tracker.finish(3)
    assert tracker.problems.counts["malformed_batches"] == 1
    np.testing.assert_allclose(tracker.history("head")["eigenvalues"][0],
                               np.linalg.eigvalsh((z.T @ z / 10).numpy())[::-1], rtol=1e-9)


@pytest.mark.parametrize("window,spectrum", [(48, "covariance"), (12, "covariance"), (48, "cross_correlation")])
def test_state_taken_mid_window_resumes_to_the_uninterrupted_history(window, spectrum):
    data = batches(16, rows=8, dim=16)
    whole = SpectrumTracker([PointSpec("head", normalize=True)], every_n_steps=8, window=window, spectrum=spectrum)
    run(whole, data)
    whole.finish(16)

    first = SpectrumTracker([PointSpec("head", normalize=True)], every_n_steps=8, window=window, spectrum=spectrum)
    run(first, data[:9])  # inside the window opened at step 8
    first.finish(9)       # recorded as a partial measurement, kept open in the state
    assert first.problems.counts["partial_windows"] == 1
    state = first.state_dict()
    resumed = SpectrumTracker([PointSpec("head", normalize=True)], every_n_steps=8, window=window, spectrum=spectrum)
    resumed.load_state_dict(state)
    run(resumed, data[9:], first_step=9)
    resumed.finish(16)
    a, b = whole.history("head"), resumed.history("head")
    assert b["step"].tolist() == a["step"].tolist()
    np.testing.assert_array_equal(b["samples"], a["samples"])
    np.testing.assert_allclose(b["eigenvalues"], a["eigenvalues"], rtol=1e-12)
    np.testing.assert_allclose(b["time"], a["time"], rtol=1e-12)
    assert resumed.problems.counts["partial_windows"] == 0  # the partial row was replaced by the full one


def test_a_failing_solve_is_counted_and_strict_raises(monkeypatch):
    from lightning_stepwise.spectrum import SpectrumProblem

    def broken(self):
        raise torch.linalg.LinAlgError("the algorithm failed to converge")

    monkeypatch.setattr(SpectrumProblem, "solve_with_directions", broken)
    tracker = SpectrumTracker(["head"], every_n_steps=2, window=8)
    with pytest.warns(StepwiseWarning, match="failed to converge"):
        run(tracker, batches(6, rows=8, dim=3))
        tracker.finish(6)
    assert tracker.problems.counts["failed_solves"] == 3
    strict = SpectrumTracker(["head"], every_n_steps=2, window=8, strict=True)
    with pytest.raises(torch.linalg.LinAlgError):
        run(strict, batches(6, rows=8, dim=3))


def test_several_points_and_their_own_widths():
    a, b = batches(4, rows=8, dim=3), batches(4, rows=8, dim=6, seed=1)
    tracker = SpectrumTracker(["a", "b"], every_n_steps=2, window=16)
    for step in range(4):
        tracker.start_batch(step, lr=0.1)
        tracker.end_batch({"a": [a[step]], "b": [b[step]]})
    tracker.finish(4)
    assert tracker.history("a")["eigenvalues"].shape == (2, 3)
    np.testing.assert_allclose(tracker.history("b")["eigenvalues"][1], reference_eigenvalues(torch.cat(b[2:]).numpy()),
                               rtol=1e-9)
    with pytest.raises(KeyError, match="tracked: \\['a', 'b'\\]"):
        tracker.history("c")


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="distinct"):
        SpectrumTracker(["a", "a"])
    with pytest.raises(ValueError, match="spectrum"):
        SpectrumTracker(["a"], spectrum="kernel")
    with pytest.raises(ValueError, match="state version"):
        SpectrumTracker(["a"]).load_state_dict({"version": 1})
