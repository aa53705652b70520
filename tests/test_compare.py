"""Comparing runs: onset tables and the figure from saved spectra, and the similarity of checkpoints' modes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from lightning_stepwise.compare import (
    RunCurves,
    format_onset_comparison,
    format_similarity_table,
    load_runs,
    modes_learned_by,
    plot_comparison,
    run_curves,
    similarity_table,
)
from lightning_stepwise.onsets import detect_onsets
from lightning_stepwise.report import load_spectrum, save_spectrum
from lightning_stepwise.synthetic import stepwise_trajectories

DATA = Path(__file__).resolve().parent / "data"
RECORDED = ("barlow_twins", "simclr", "vicreg")


def _synthetic_run(folder: Path, seed: int, modes: int = 6) -> np.ndarray:
    """Save a generated run with known onsets as StepwiseMonitor would; return the true onset steps."""
    run = stepwise_trajectories(modes, rows=220, noise=0.05, rising_fraction=1.0, seed=seed)
    save_spectrum({"step": run.steps.astype(np.int64), "eigenvalues": run.eigenvalues, "loss": run.loss},
                  folder / "stepwise")
    return run.onset_steps


@pytest.fixture
def recorded_runs(tmp_path: Path) -> Path:
    """The three real digits recordings laid out as three run folders, as the monitor writes them."""
    for name in RECORDED:
        (tmp_path / "runs" / name / "stepwise").mkdir(parents=True)
        shutil.copy(DATA / f"digits_{name}_paper.npz", tmp_path / "runs" / name / "stepwise" / "spectrum.npz")
    return tmp_path / "runs"


def test_load_runs_finds_the_true_onsets_of_generated_runs(tmp_path: Path) -> None:
    truths = [_synthetic_run(tmp_path / f"seed{seed}", seed) for seed in (0, 1)]
    runs = load_runs([tmp_path / "seed0", tmp_path / "seed1"])
    assert [r.label for r in runs] == ["seed0", "seed1"]
    for run, truth in zip(runs, truths, strict=True):
        found = np.array([r["onset_step"] for r in run.onsets])
        assert run.modes_learned == len(truth)
        assert np.all(np.diff(found) >= 0), "onsets are listed in the order learned"
        spacing = float(np.median(np.diff(run.arrays["step"])))
        assert np.abs(np.sort(found) - np.sort(truth)).max() < 6 * spacing


def test_runs_are_detected_alike_with_the_options_given(recorded_runs: Path) -> None:
    runs = load_runs([recorded_runs], min_rise=20.0)
    assert sorted(r.label for r in runs) == sorted(RECORDED)
    for run in runs:
        arrays = load_spectrum(run.source)
        direct = detect_onsets(arrays["step"], arrays["mode_eigenvalues"], mode_ids=arrays["mode_ids"], min_rise=20.0)
        assert sorted(r["onset_step"] for r in run.onsets) == sorted(r["onset_step"] for r in direct)
    default = {r.label: r.modes_learned for r in load_runs([recorded_runs])}
    stricter = {r.label: r.modes_learned for r in runs}
    assert all(stricter[name] <= default[name] for name in default)
    assert default["vicreg"] > default["simclr"], "the recorded VICReg run learns more modes than the SimCLR one"


def test_onset_table_lines_up_each_runs_kth_mode_and_marks_the_unlearned(recorded_runs: Path) -> None:
    runs = load_runs([recorded_runs / name for name in RECORDED])
    lines = format_onset_comparison(runs).splitlines()
    assert lines[0].split() == ["onset", "step", *RECORDED]
    deepest = max(r.modes_learned for r in runs)
    assert len(lines) == 1 + deepest + 2
    for k in range(deepest):
        cells = lines[1 + k].split()
        assert cells[0] == f"#{k + 1}"
        for run, cell in zip(runs, cells[1:], strict=True):
            assert cell == (f"{run.onsets[k]['onset_step']:.0f}" if k < run.modes_learned else "-")
    assert lines[-2].split()[2:] == [str(r.modes_learned) for r in runs]
    assert lines[-1].split()[2:] == [str(r.last_step) for r in runs]


def test_modes_learned_by_counts_onsets_up_to_each_step() -> None:
    run = RunCurves("a", {"step": np.arange(100)}, [{"onset_step": 30.0}, {"onset_step": 10.0}])
    assert modes_learned_by(run, [0, 9.9, 10, 29, 30, 99]).tolist() == [0, 0, 1, 1, 2, 2]


def test_figure_draws_one_curve_per_learned_mode_and_one_staircase_per_run(recorded_runs: Path,
                                                                         tmp_path: Path) -> None:
    runs = load_runs([recorded_runs])
    figure = plot_comparison(runs, path=tmp_path / "out" / "compare.png")
    top, bottom = figure.axes
    curves = [line for line in top.get_lines() if len(line.get_xdata()) > 1 and line.get_linestyle() == "-"]
    assert len(curves) == sum(r.modes_learned for r in runs)
    assert len(bottom.get_lines()) == len(runs)
    for run, staircase in zip(runs, bottom.get_lines(), strict=True):
        assert staircase.get_ydata()[-1] == run.modes_learned
    assert (tmp_path / "out" / "compare.png").stat().st_size > 10_000


def test_labels_grow_until_they_tell_the_runs_apart(tmp_path: Path) -> None:
    for method in ("bt", "vicreg"):
        _synthetic_run(tmp_path / method / "version_0", seed=0, modes=2)
    runs = load_runs([tmp_path])
    assert [r.label for r in runs] == ["bt/version_0", "vicreg/version_0"]
    assert [r.label for r in load_runs([tmp_path], labels=["a", "b"])] == ["a", "b"]
    with pytest.raises(ValueError, match="2 labels for 1 spectrum files"):
        load_runs([tmp_path / "bt"], labels=["a", "b"])


def test_bad_runs_get_errors_that_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run at"):
        load_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="StepwiseMonitor writes them at fit end"):
        load_runs([tmp_path / "empty"])
    np.savez(tmp_path / "spectrum.npz", loss=np.ones(3))
    with pytest.raises(ValueError, match=r"lacks \['eigenvalues', 'step'\]"):
        load_runs([tmp_path / "spectrum.npz"])
    with pytest.raises(ValueError, match="at least one run"):
        load_runs([])
    with pytest.raises(ValueError, match="min_rise"):
        run_curves({"step": np.arange(3), "eigenvalues": np.ones((3, 1))}, label="a", min_rise=-1.0)


def test_similarity_is_one_for_a_rotated_embedding_and_near_chance_for_unrelated_ones() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.standard_normal((n, 8)) * np.array([8.0, 6, 5, 4, 3, 2, 1, 0.5])
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    rows = similarity_table({"x": x, "rotated": 0.1 * x @ q + 3.0, "noise": rng.standard_normal((n, 8))}, k=4)
    assert len(rows) == 3 * 3  # three pairs, k = 1, 2, 4
    by = {(r["a"], r["b"], r["k"]): r for r in rows}
    for k in (1, 2, 4):
        assert by["x", "rotated", k]["subspace"] == pytest.approx(1.0, abs=1e-9)
        assert by["x", "rotated", k]["cka"] == pytest.approx(1.0, abs=1e-9)
        assert by["x", "noise", k]["subspace"] < 20 * k / n
    table = format_similarity_table(rows).splitlines()
    assert table[0].split() == ["subspace", "k=1", "k=2", "k=4"]
    assert table[1].split() == ["x", "~", "rotated", "1.00", "1.00", "1.00"]
    with pytest.raises(ValueError, match="at least two models"):
        similarity_table({"x": x}, k=2)
    with pytest.raises(ValueError, match="measure must be"):
        format_similarity_table(rows, measure="angle")


# ---------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small DigitsBarlowTwins, two seeds, after 3 optimizer steps, saved as Lightning does."""
    import lightning.pytorch as pl

    from lightning_stepwise.data import digits_dataloader
    from lightning_stepwise.demo import DigitsBarlowTwins

    folder = tmp_path_factory.mktemp("compare_ckpt")
    paths = []
    for seed in (0, 1):
        pl.seed_everything(seed, verbose=False)
        trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=folder)
        trainer.fit(DigitsBarlowTwins(width=8, embedding_dim=16), digits_dataloader(batch_size=32, seed=seed))
        paths.append(folder / f"seed{seed}" / "last.ckpt")
        trainer.save_checkpoint(paths[-1])
    return paths[0], paths[1]


def test_compare_command_prints_the_onset_table_and_writes_the_figure(recorded_runs: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_stepwise.cli import main

    out = tmp_path / "out"
    assert main(["compare", str(recorded_runs / "vicreg"), str(recorded_runs / "simclr"), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 runs, detected alike" in text and "vicreg" in text and "modes learned" in text
    assert (out / "compare.png").stat().st_size > 10_000
    assert (out / "onsets.txt").read_text().splitlines()[0].split() == ["onset", "step", "vicreg", "simclr"]


def test_compare_command_a_checkpoint_with_itself_is_identical_and_the_untrained_reference_is_not(
        checkpoints: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_stepwise.cli import main

    first, second = checkpoints
    out = tmp_path / "sim"
    code = main(["compare", "--checkpoints", str(first), str(first), str(second), "--untrained-reference",
                 "--max-images", "300", "--modes", "4", "--points", "projection_head", "--output", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "At `projection_head`, on 300 images" in text and "linear CKA" in text
    with open(out / "similarity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["point"] for r in rows} == {"projection_head"}
    names = {r["a"] for r in rows} | {r["b"] for r in rows}
    assert names == {"seed0/last", "seed0/last (2)", "seed1/last", "untrained seed0/last"}
    assert len({(r["a"], r["b"]) for r in rows}) == 6  # every pair of the four models
    by = {(r["a"], r["b"], int(r["k"])): float(r["subspace"]) for r in rows}
    for k in (1, 2, 4):
        assert by["seed0/last", "seed0/last (2)", k] == pytest.approx(1.0, abs=1e-6)  # the same model
        assert by["seed0/last", "untrained seed0/last", k] < 0.999
    assert by["seed0/last", "seed1/last", 4] < 0.999  # another seed: other modes after 3 steps


def test_compare_command_errors_name_the_fix(checkpoints: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_stepwise.cli import main

    first, second = checkpoints
    cases = [
        ([], "pass run folders"),
        (["--checkpoints", str(first)], "at least two --checkpoints"),
        ([str(tmp_path / "missing")], "no run at"),
        (["--checkpoints", str(first), str(tmp_path / "missing.ckpt")], "no checkpoint at"),
        (["--checkpoints", str(first), str(second), "--module-class", "a:B", "c:D", "e:F"],
         "3 --module-class for 2 checkpoints"),
        (["--checkpoints", str(first), str(second), "--points", "head"], "no such submodule"),
        (["--checkpoints", str(first), str(second), "--max-images", "4", "--modes", "4"], "needs at least 5 images"),
        (["--checkpoints", str(first), str(second), "--module-class", "lightning_stepwise.demo:Missing"],
         "has no Missing"),
    ]
    for extra, message in cases:
        assert main(["compare", *extra, "--output", str(tmp_path / "out")]) == 2, extra
        assert message in capsys.readouterr().err, extra
