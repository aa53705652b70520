"""Two CPU processes (gloo DDP): a checkpoint taken mid-window resumes exactly, and trouble on one rank
never leaves the other waiting in a collective."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).parent / "scripts"
ROUTES = ("moments", "gram", "cross")


def run(script: str, *args: str, timeout: int = 300) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                                timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:  # a rank left waiting in a collective
        pytest.fail(f"{script} {args} did not finish in {timeout} s: {str(err.stderr)[-2000:]}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    for mode in ("whole", "first", "resumed"):
        (root / mode).mkdir()
        run("ddp_resume.py", str(root / mode), mode)
    return root


@pytest.mark.parametrize("route", ROUTES)
def test_a_run_resumed_from_a_mid_window_checkpoint_records_the_uninterrupted_history(resume_runs, route):
    whole = [np.load(resume_runs / "whole" / f"{route}_rank{r}.npz") for r in (0, 1)]
    resumed = [np.load(resume_runs / "resumed" / f"{route}_rank{r}.npz") for r in (0, 1)]
    first = np.load(resume_runs / "first" / f"{route}_rank0.npz")
    assert first["step"].tolist() == [0, 5]  # the checkpoint's window of step 5 was open (recorded partially)
    assert first["samples"][1] < whole[0]["samples"][1]
    assert whole[0]["step"].tolist() == [0, 5, 10, 15]
    for rank in (0, 1):
        for key in ("step", "samples", "epoch"):
            np.testing.assert_array_equal(resumed[rank][key], whole[rank][key], err_msg=key)
        for key in ("eigenvalues", "time", "trace", "effective_rank", "loss"):
            np.testing.assert_allclose(resumed[rank][key], whole[rank][key], rtol=1e-9, atol=1e-15, err_msg=key)


@pytest.fixture(scope="module")
def trouble_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trouble")
    run("ddp_trouble.py", str(out))
    return out


@pytest.mark.parametrize("route", ROUTES)
def test_trouble_on_one_rank_finishes_and_both_ranks_agree(trouble_run, route):
    rank0, rank1 = (np.load(trouble_run / f"{route}_rank{r}.npz") for r in (0, 1))
    for key in rank0.files:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    assert rank0["step"].tolist() == [0, 4, 8, 12]
    # Each rank brings 8 rows a batch (cross: both views, 16 rows, 8 pairs). The first batch (rank 1: no rows)
    # agreed on 8 rows a batch, so the windows take 2 batches (moments: 16 samples), or 1 (gram: 4 samples, a
    # buffer of 8 rows a rank; cross: 16 rows). Rank 1's first batch of each window is trouble: none (step 0),
    # a width change (4, skipped), non-finite (8, skipped), 3 rows (12: skipped by the cross-correlation, which
    # needs two views of equal size), so each cross window holds rank 0's 8 pairs.
    expected = {"moments": [8 + 16, 8 + 16, 8 + 16, 11 + 16], "gram": [8, 8, 8, 11], "cross": [8] * 4}
    assert rank0["samples"].tolist() == expected[route]


def test_trouble_on_one_rank_is_counted_the_same_on_both(trouble_run):
    rank0, rank1 = (json.loads((trouble_run / f"problems_rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    for route in ROUTES:
        assert rank0[route]["malformed_batches"] == (2 if route == "cross" else 1)
        assert rank0[route]["non_finite_batches"] == 1
    assert rank0["probe"]["failed_probes"] == 4
