"""examples/compare_methods.py: a tiny end-to-end run (offline, CPU), then the comparison again from its files."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest
from helpers import load_script

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compare_methods.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_script(EXAMPLE, "example_compare_methods")


def test_tiny_comparison_writes_the_tables_and_compares_again_without_training(
        example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare"
    result = example.main(["--steps", "4", "--every-n-steps", "2", "--runs", "vicreg:0", "vicreg:1", "--k", "2",
                           "--output", str(out)])
    text = capsys.readouterr().out
    assert [run.label for run in result["runs"]] == ["vicreg_s0", "vicreg_s1"]
    assert set(result["top1"]) == {"vicreg_s0", "vicreg_s1", "untrained vicreg"}
    assert all(0.1 < accuracy <= 1.0 for accuracy in result["top1"].values())  # ten classes: above chance
    for name in ("vicreg_s0", "vicreg_s1"):
        assert (out / name / "model.pt").is_file() and (out / name / "stepwise" / "spectrum.npz").is_file()
    assert (out / "compare.png").stat().st_size > 10_000
    assert (out / "onsets.txt").read_text().split()[:4] == ["onset", "step", "vicreg_s0", "vicreg_s1"]
    with open(out / "similarity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["point"] for r in rows} == {"backbone", "projection_head"}
    assert len(rows) == 2 * 3 * 2  # two points, three pairs, k = 1 and 2
    assert all(0.0 <= float(r["subspace"]) <= 1.0 + 1e-9 for r in rows)
    assert "vicreg_s0 ~ untrained vicreg" in text and "linear CKA" in text

    again = example.main(["--compare-only", "--runs", "vicreg:0", "vicreg:1", "--k", "2", "--output", str(out)])
    assert "steps in" not in capsys.readouterr().out  # nothing trained
    assert again["top1"] == pytest.approx(result["top1"])
    first = {(r["point"], r["a"], r["b"], r["k"]): float(r["subspace"]) for r in rows}
    assert {(r["point"], r["a"], r["b"], str(r["k"])): r["subspace"] for r in again["similarity"]} == \
        pytest.approx(first)


def test_bad_runs_and_missing_models_are_refused(example: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        example.parse_args(["--runs", "byol:0"])
    with pytest.raises(SystemExit):
        example.parse_args(["--runs", "vicreg:0", "vicreg:0"])
    with pytest.raises(SystemExit, match="no .*model.pt"):
        example.main(["--compare-only", "--runs", "vicreg:0", "--output", str(tmp_path)])
