"""The demo, the command line and the example scripts, run as a user would (shortened)."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from lightning_stepwise import load_spectrum, save_spectrum
from lightning_stepwise.cli import main
from lightning_stepwise.data import digits_dataloader, load_digits_images
from lightning_stepwise.demo import format_summary
from lightning_stepwise.report import load_onsets
from lightning_stepwise.synthetic import stepwise_trajectories

ROOT = Path(__file__).resolve().parents[1]


def test_demo_command_trains_prints_and_writes(tmp_path, capsys):
    assert main(["demo", "--max-steps", "24", "--every-n-steps", "8", "--batch-size", "64",
                 "--output", str(tmp_path), "--quiet"]) == 0
    files = list(tmp_path.rglob("spectrum.npz"))
    assert len(files) == 1
    assert {p.name for p in files[0].parent.iterdir()} == {
        "spectrum.npz", "spectrum.csv", "onsets.csv", "onsets.json", "stepwise.png", "probe.csv", "probe_modes.csv",
        "probe_modes.png", "problems.json", "atlas"}
    # the atlas at fit end only (no mode_<n> folders), one mode (none learned), on the probe's 539 images
    atlas = files[0].parent / "atlas"
    assert {p.name for p in atlas.iterdir()} == {"modes.csv", "atlas.png"}
    assert (atlas / "atlas.png").stat().st_size > 1_000
    modes_csv = (atlas / "modes.csv").read_text().splitlines()
    assert len(modes_csv) == 2 and "best_auc" in modes_csv[0] and "auc_9" in modes_csv[0]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    history = load_spectrum(files[0])
    assert list(history["step"]) == [0, 8, 16]
    assert history["eigenvalues"].shape == (3, 64)
    assert (np.diff(history["eigenvalues"], axis=1) <= 0).all()  # descending
    out = capsys.readouterr().out
    assert "demo finished" in out
    assert "strongest" not in out and "Mode atlas" not in out and "ModeAtlas" not in out  # quiet: no atlas table


def test_demo_summary_table_names_the_columns(tmp_path, capfd):
    main(["demo", "--max-steps", "16", "--every-n-steps", "8", "--batch-size", "64", "--output", str(tmp_path)])
    out, err = capfd.readouterr()  # file descriptors: Lightning's logging handlers write to them directly
    assert "eff.rank" in out and "spectrum.npz" in out and str(tmp_path) in out
    # progress before the slow parts, in order
    starts = [out.index(line) for line in ("loading PyTorch", "Preparing the data", "Training for 16 steps",
                                           "Writing the files, probing", "drawing the mode atlas")]
    assert starts == sorted(starts)
    # what this run measured, not a claim; no mode learned in 2 measurements, and why
    assert "2 measurements over 16 steps" in out and "Largest rise: eigenvalue" in out
    assert "Modes are learned one after another" not in out
    assert "0 modes learned. Why: too few measurements: 2 (steps 0 to 8, every 8)" in " ".join(out.split())
    assert "Linear probe" in out and "top-k eigen-directions" in out
    # the atlas table, once, between the modes learned and the probe
    assert out.count("Mode atlas of the final embeddings on the probe's 539 validation images") == 1
    assert out.count("mode  eigenvalue  strongest") == 1 and "best class" in out and "ModeAtlas:" not in out
    assert out.index("0 modes learned") < out.index("Mode atlas of") < out.index("Linear probe")
    table = out[out.index("mode  eigenvalue  strongest"):].splitlines()
    assert table[1].split()[0] == "0" and table[2] == ""  # one mode: none learned in 16 steps
    assert "atlas/atlas.png, atlas/modes.csv" in out  # in the Files line
    # the first screen is the package's: no Lightning tips, device lines or deprecation warnings
    for noise in ("Tip:", "LitLogger", "GPU available", "TPU available", "is deprecated", "logging interval"):
        assert noise not in out + err, noise


def test_format_summary_picks_even_rows():
    h = {"step": np.arange(100) * 10, "epoch": np.arange(100), "loss": np.ones(100),
         "effective_rank": np.ones(100), "eigenvalues": np.ones((100, 3))}
    lines = format_summary(h, max_rows=5).splitlines()
    assert [int(line.split()[0]) for line in lines[1:]] == [0, 250, 500, 740, 990]


def test_digits_are_embedded_and_views_differ():
    images, labels = load_digits_images(size=16, channels=3)
    assert images.shape == (1797, 3, 16, 16) and set(labels.tolist()) == set(range(10))
    (x0, x1), y = next(iter(digits_dataloader(batch_size=32, seed=0)))
    assert x0.shape == (32, 1, 16, 16) and not np.allclose(x0.numpy(), x1.numpy())


def test_console_script_is_installed():
    result = subprocess.run([str(Path(sys.executable).parent / "lightning-stepwise"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout


def write_synthetic_run(directory, seed=0, stem="spectrum"):
    run = stepwise_trajectories(16, rows=120, noise=0.1, seed=seed)
    rows = len(run.steps)
    save_spectrum({"step": run.steps.round().astype(np.int64), "epoch": np.arange(rows) // 10,
                   "time": run.steps * 0.01, "loss": run.loss, "eigenvalues": run.eigenvalues}, directory, stem=stem)
    return run


def test_report_command_rerenders_table_and_figure(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "logs" / "version_0" / "stepwise")
    assert main(["report", str(tmp_path), "--x", "time"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "logs" / "version_0" / "stepwise"
    table = load_onsets(folder / "onsets.json")
    assert (folder / "stepwise.png").stat().st_size > 10_000 and (folder / "onsets.csv").exists()
    assert f"{len(table)} modes learned" in out and "onset step" in out
    # the saved table is the truth of the generator, within a measurement interval or two
    found = np.array([r["onset_step"] for r in table])
    assert len(found) >= 0.9 * len(run.onset_steps)
    assert all(np.min(np.abs(run.onset_steps - f)) <= 2.5 * run.interval for f in found)


def test_report_command_handles_several_points_and_an_output_folder(tmp_path, capsys):
    write_synthetic_run(tmp_path, stem="spectrum_backbone")
    write_synthetic_run(tmp_path, seed=1, stem="spectrum_projection_head")
    assert main(["report", str(tmp_path), "--output", str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        f"{kind}_{point}.{ext}" for point in ("backbone", "projection_head")
        for kind, ext in (("onsets", "csv"), ("onsets", "json"), ("stepwise", "png"))}


def test_report_command_explains_what_is_missing(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no spectrum*.npz" in capsys.readouterr().err


def test_linear_theory_example_prints_observed_against_predicted(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "linear_theory.py"), "--max-steps", "400", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predicted  rel. error" in result.stdout and "modes learned" in result.stdout
    assert (tmp_path / "stepwise" / "stepwise.png").exists() and (tmp_path / "stepwise" / "onsets.csv").exists()


def test_probe_command_probes_a_demo_checkpoint(tmp_path, capsys):
    import lightning.pytorch as pl

    from lightning_stepwise.demo import DigitsBarlowTwins

    model = DigitsBarlowTwins()
    t = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path)
    t.fit(model, digits_dataloader(batch_size=32, seed=0))
    t.save_checkpoint(tmp_path / "demo.ckpt")
    assert main(["probe", str(tmp_path / "demo.ckpt"), "--output", str(tmp_path / "probe")]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-k eigen-directions" in out and "1258 train / 539 validation" in out
    assert {p.name for p in (tmp_path / "probe").iterdir()} == {"probe.csv", "probe_modes.csv", "probe_modes.png"}
    assert main(["probe", str(tmp_path / "missing.ckpt")]) == 2
    assert main(["probe", str(tmp_path / "demo.ckpt"), "--data", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
