"""``benchmarks/equalizer.py``: its loss-based speed-up on hand-made curves, and a tiny run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from helpers import load_script

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "equalizer.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(BENCHMARK, "benchmark_equalizer")


def test_smoothed_is_a_running_mean_with_a_short_start(bench: ModuleType) -> None:
    np.testing.assert_allclose(bench.smoothed([1, 2, 3, 4, 5, 6], width=2), [1, 1.5, 2.5, 3.5, 4.5, 5.5])
    np.testing.assert_allclose(bench.smoothed([4, 2, 0], width=5), [4, 3, 2])


def test_steps_to_loss_reads_the_first_smoothed_crossing(bench: ModuleType) -> None:
    row = {"loss_steps": [0, 10, 20, 30], "losses": [4.0, 3.0, 2.0, 1.0]}  # smoothed: 4, 3.5, 3, 2.5
    assert bench.steps_to_loss(row, 3.0) == 20
    assert bench.steps_to_loss(row, 4.0) == 0
    assert math.isnan(bench.steps_to_loss(row, 2.0))


def test_loss_speedup_is_the_plain_runs_steps_over_the_equalised_runs(bench: ModuleType) -> None:
    steps = list(range(0, 100, 10))
    plain = {"seed": 0, "loss_steps": steps, "losses": [10.0, 9, 8, 7, 6, 5, 4, 3, 2, 1]}
    # the plain run's final smoothed loss is mean(5, 4, 3, 2, 1) = 3, first reached at its last step (90);
    # this run's smoothed loss is 10, 9, 8, 7, 6, 4.2, 2.8, ...: at or below 3 from step 60
    fast = {"seed": 0, "loss_steps": steps, "losses": [10.0, 8, 6, 4, 2, 1, 1, 1, 1, 1]}
    never = {"seed": 1, "loss_steps": steps, "losses": [10.0] * 10}
    plain_1 = dict(plain, seed=1)
    assert bench.loss_speedups([fast], [plain, plain_1]) == [pytest.approx(1.5)]
    ratios = bench.loss_speedups([fast, never], [plain, plain_1])
    assert ratios[0] == pytest.approx(1.5) and math.isnan(ratios[1])
    assert bench.loss_speedups([fast], [plain_1]) == []  # no plain run of that seed: nothing to compare


def test_tiny_benchmark_writes_rows_table_and_figure(bench: ModuleType, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rows_path, figure = tmp_path / "rows.json", tmp_path / "modes.png"
    rows = bench.main(["--models", "linear", "demo", "--seeds", "0", "--alphas", "0", "0.5", "--linear-steps", "40",
                       "--demo-steps", "20", "--k", "1", "2", "--json", str(rows_path), "--figure", str(figure)])
    printed = capsys.readouterr().out
    assert [(r["model"], r["alpha"]) for r in rows] == [("linear", 0.0), ("linear", 0.5), ("demo", 0.0),
                                                        ("demo", 0.5)]
    for row in rows:
        assert row["steps"] == (40 if row["model"] == "linear" else 20)
        assert row["ms_per_step"] > 0
        assert len(row["loss_steps"]) == len(row["losses"]) > 0
        assert row["onset_steps"] == sorted(row["onset_steps"]) and len(row["onset_steps"]) == row["learned"]
    linear_eq = rows[1]
    assert linear_eq["spectrum"] == "cross_correlation" and linear_eq["predicted_1"] >= 1.0
    demo_rows = rows[2:]
    assert all(0.1 < r["top1"] <= 1.0 for r in demo_rows)  # a probe of a barely trained net, above chance
    header = next(line for line in printed.splitlines() if line.startswith("| model"))
    for column in ("steps to 2", "speed-up 2", "predicted 2", "to the plain run's final loss", "probe top-1",
                   "ms / step"):
        assert column in header
    assert sum(line.startswith(("| linear", "| demo")) for line in printed.splitlines()) == 4
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the saved rows give the same table without training
    saved = json.loads(rows_path.read_text())
    assert len(saved) == 4
    again = bench.main(["--from-json", str(rows_path)])
    assert bench.table(again, [1, 2]) == bench.table(rows, [1, 2])
    assert "| demo | covariance | 0.5 |" in capsys.readouterr().out


def test_benchmark_needs_the_plain_runs_or_a_json_to_combine(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--alphas", "0.5", "--linear-steps", "10"])
