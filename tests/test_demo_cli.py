"""The demo, the command line and the example scripts, run as a user would (shortened)."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from lightning_stepwise import load_spectrum
from lightning_stepwise.cli import main
from lightning_stepwise.data import digits_dataloader, load_digits_images
from lightning_stepwise.demo import format_summary

ROOT = Path(__file__).resolve().parents[1]


def test_demo_command_trains_prints_and_writes(tmp_path, capsys):
    assert main(["demo", "--max-steps", "24", "--every-n-steps", "8", "--batch-size", "64",
                 "--output", str(tmp_path), "--quiet"]) == 0
    files = list(tmp_path.rglob("spectrum.npz"))
    assert len(files) == 1 and (files[0].parent / "spectrum.csv").exists()
    history = load_spectrum(files[0])
    assert list(history["step"]) == [0, 8, 16]
    assert history["eigenvalues"].shape == (3, 64)
    assert (np.diff(history["eigenvalues"], axis=1) <= 0).all()  # descending
    assert "demo finished" in capsys.readouterr().out


def test_demo_summary_table_names_the_columns(tmp_path, capsys):
    main(["demo", "--max-steps", "16", "--every-n-steps", "8", "--batch-size", "64", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert "eff.rank" in out and "spectrum.npz" in out and str(tmp_path) in out


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


def test_lightly_example_runs_unchanged_module_under_pytorch_lightning(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "barlow_twins_lightly.py"), "--max-steps", "2",
         "--batch-size", "8", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tracking the inputs of `criterion` (BarlowTwinsLoss)" in result.stdout + result.stderr
    assert list(tmp_path.rglob("spectrum.npz"))


def test_console_script_is_installed():
    result = subprocess.run([str(Path(sys.executable).parent / "lightning-stepwise"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout
