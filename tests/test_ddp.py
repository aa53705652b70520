"""Two CPU processes (gloo DDP) record the same spectrum as one process seeing the global batch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent / "scripts" / "ddp_spectrum.py"


def run(out_dir: Path, devices: int, batch_size: int) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(out_dir), str(devices), str(batch_size)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    ddp = tmp_path_factory.mktemp("ddp")
    single = tmp_path_factory.mktemp("single")
    run(ddp, devices=2, batch_size=8)      # two ranks x 8 samples
    run(single, devices=1, batch_size=16)  # one process, the same 16 samples a step
    return ddp, single


@pytest.mark.parametrize("route", ["moments", "gram", "cross"])
def test_ddp_spectrum_is_identical_on_ranks_and_equals_the_global_batch(runs, route):
    ddp, single = runs
    rank0, rank1 = (np.load(ddp / f"{route}_rank{r}.npz") for r in (0, 1))
    reference = np.load(single / f"{route}_rank0.npz")
    for key in rank0.files:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=f"{key} differs between ranks")
    np.testing.assert_array_equal(rank0["step"], [0, 2, 4])
    np.testing.assert_array_equal(rank0["samples"], reference["samples"])
    np.testing.assert_allclose(rank0["eigenvalues"], reference["eigenvalues"], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(rank0["effective_rank"], reference["effective_rank"], rtol=1e-9)
    # The recorded loss is the mean over ranks of each rank's loss (a different batch statistic), so
    # only its presence is compared.
    assert np.isfinite(rank0["loss"]).all()


def test_only_rank_zero_writes_files(runs):
    ddp, _ = runs
    assert sorted(p.name for p in (ddp / "cov").iterdir()) == [
        "onsets.csv", "onsets.json", "problems.json", "spectrum.csv", "spectrum.npz", "stepwise.png"]


PROBE_SCRIPT = Path(__file__).parent / "scripts" / "ddp_probe.py"


def test_ddp_probe_gathers_every_shard_and_agrees_across_ranks(tmp_path):
    import json

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for name, devices in (("ddp", 2), ("single", 1)):
        (tmp_path / name).mkdir()
        result = subprocess.run([sys.executable, str(PROBE_SCRIPT), str(tmp_path / name), str(devices)],
                                capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / "ddp" / f"probe_rank{r}.json").read_text()) for r in (0, 1))
    single = json.loads((tmp_path / "single" / "probe_rank0.json").read_text())
    assert rank0 == rank1  # the same probe on every rank
    assert rank0["train_size"] == 80 and rank0["val_size"] == 40  # both shards, gathered
    # the gathered rows come in rank order, not the single process's order: same data, same optimum
    assert rank0["top1"] == pytest.approx(single["top1"], abs=1 / 40)
    assert [k for k, _ in rank0["modes"]] == [k for k, _ in single["modes"]]
    # default folders (no dirpath) work under DDP: the monitor's files and the probe's, written once
    files = {p.name for p in (tmp_path / "ddp" / "stepwise").iterdir()}
    assert {"spectrum.npz", "onsets.csv", "probe.csv", "probe_modes.png"} <= files


ONSETS_SCRIPT = Path(__file__).parent / "scripts" / "ddp_onsets.py"
DESIGNED_ONSETS = (16, 32, 48)  # ddp_onsets.ONSETS: the truth of the designed staircase


@pytest.fixture(scope="module")
def staircase_runs(tmp_path_factory):
    """One process (per-half BatchNorm), DDP with Lightly's gather_distributed loss, ddp_spawn without."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, args in (("single", ["1", "auto", "local", "ghost"]), ("ddp", ["2", "ddp", "gather", "bn"]),
                       ("ddp_spawn", ["2", "ddp_spawn", "local", "bn"])):
        out = tmp_path_factory.mktemp(name)
        result = subprocess.run([sys.executable, str(ONSETS_SCRIPT), str(out), *args], capture_output=True,
                                text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[name] = out
    return runs


def load_rank(out: Path, name: str, rank: int):
    import json

    return (np.load(out / f"{name}_rank{rank}.npz"), json.loads((out / f"{name}_onsets_rank{rank}.json").read_text()))


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
@pytest.mark.parametrize("route", ["cov", "gram"])
def test_ddp_onsets_are_identical_on_ranks_and_equal_the_global_batch(staircase_runs, strategy, route):
    (h0, onsets0), (h1, onsets1) = (load_rank(staircase_runs[strategy], route, r) for r in (0, 1))
    single, single_onsets = load_rank(staircase_runs["single"], route, 0)
    for key in h0.files:
        np.testing.assert_array_equal(h0[key], h1[key], err_msg=f"{key} differs between ranks")
    assert onsets0 == onsets1
    np.testing.assert_array_equal(h0["samples"], single["samples"])
    np.testing.assert_allclose(h0["eigenvalues"], single["eigenvalues"], rtol=1e-9, atol=1e-15)
    assert [r["mode"] for r in onsets0] == [r["mode"] for r in single_onsets] == [0, 1, 2]
    for record, reference, truth in zip(onsets0, single_onsets, DESIGNED_ONSETS, strict=True):
        # per-identity values carry the float32 precision of the eigen-directions
        assert record["onset_step"] == pytest.approx(reference["onset_step"], rel=1e-6)
        assert record["confirmed_step"] == reference["confirmed_step"]
        assert abs(record["onset_step"] - truth) <= 2  # one measurement interval
    if strategy == "ddp":  # BarlowTwinsLoss(gather_distributed=True): the loss is the global batch's loss
        np.testing.assert_allclose(h0["loss"], single["loss"], rtol=1e-5)
    else:  # a local loss per rank: the recorded loss is the mean of the ranks' losses, another number
        assert not np.allclose(h0["loss"], single["loss"], rtol=1e-3)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_ddp_probe_is_identical_on_ranks_and_equals_one_process(staircase_runs, strategy):
    import json

    rank0, rank1 = (json.loads((staircase_runs[strategy] / f"probe_rank{r}.json").read_text()) for r in (0, 1))
    single = json.loads((staircase_runs["single"] / "probe_rank0.json").read_text())
    assert rank0 == rank1
    assert rank0["train_size"] == single["train_size"] == 96
    assert rank0["top1"] == pytest.approx(single["top1"], abs=1 / 64)
    assert [k for k, _ in rank0["modes"]] == [k for k, _ in single["modes"]]
    for (_, a), (_, b) in zip(rank0["modes"], single["modes"], strict=True):
        assert a == pytest.approx(b, abs=1 / 64)


def test_ddp_step_path_waits_on_the_device_once_per_fit(staircase_runs):
    import json

    # CPU stand-in count (tests/sync_counter.py) inside the monitor's hooks: one process never waits; under
    # DDP the first window reads the agreed rows per step, width and precision of every rank once (one host read
    # of the gathered table), and nothing else in 90 steps does.
    assert json.loads((staircase_runs["single"] / "syncs_rank0.json").read_text()) == []
    for rank in (0, 1):
        assert json.loads((staircase_runs["ddp"] / f"syncs_rank{rank}.json").read_text()) == [[0, "tolist"]]
