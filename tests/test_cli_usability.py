"""The command's help, its option names, and the reasons it gives when no mode is learned."""

import json
import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest

from lightning_stepwise.cli import build_parser, main, parse_interval
from lightning_stepwise.report import explain_no_onsets, largest_rise, load_onsets, rows_needed, save_spectrum

HEAVY = ("torch", "lightning", "pytorch_lightning", "lightly", "matplotlib")

PARSE_ONLY = """
import json, sys
from lightning_stepwise.cli import main
codes = []
for argv in (["--help"], ["--version"], ["demo", "--help"], ["report", "--help"], ["probe", "--help"]):
    try:
        main(argv)
    except SystemExit as exit_:
        codes.append(exit_.code)
print(json.dumps({"codes": codes, "heavy": [m for m in sys.argv[1:] if m in sys.modules]}))
"""


def test_help_and_version_import_neither_torch_nor_lightning():
    result = subprocess.run([sys.executable, "-c", PARSE_ONLY, *HEAVY], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {"codes": [0, 0, 0, 0, 0], "heavy": []}


def test_module_help_runs_and_names_the_commands():
    result = subprocess.run([sys.executable, "-m", "lightning_stepwise.cli", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for command in ("demo", "report", "probe"):
        assert f"\n  {command}  " in result.stdout  # each listed with what it does
    assert "examples:" in result.stdout and "lightning-stepwise demo" in result.stdout
    assert "The ``lightning-stepwise`` command" not in result.stdout  # not the module docstring


def test_the_package_imports_its_public_names_on_first_use():
    code = ("import sys, lightning_stepwise as ls\n"
            "before = 'torch' in sys.modules or 'lightning' in sys.modules\n"
            "from lightning_stepwise import StepwiseMonitor\n"
            "from lightning_stepwise.monitor import StepwiseMonitor as direct\n"
            "print(before, StepwiseMonitor is direct, 'lightning' in sys.modules, ls.report.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "True", "True", "lightning_stepwise.report"]


def test_every_public_name_has_a_source():
    import lightning_stepwise

    assert set(lightning_stepwise._SOURCES) == set(lightning_stepwise.__all__)
    assert set(lightning_stepwise.__all__) <= set(dir(lightning_stepwise))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        lightning_stepwise.not_a_name  # noqa: B018


def help_of(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal: compare unwrapped


def test_every_option_has_help_and_shows_its_default(capsys):
    demo = help_of(capsys, "demo")
    for option, default in (("--max-steps N, --steps N", "800"), ("--every-n-steps N|auto", "20"),
                            ("--small-init FACTOR", "0.5"), ("--output DIR", "stepwise-demo"), ("--seed SEED", "0"),
                            ("--batch-size N", "256")):
        start = demo.index(option, demo.index("options:"))
        assert f"(default: {default})" in demo[start:start + 400], option
    assert "--init-scale" not in demo  # the old name still works, but is not advertised
    probe = help_of(capsys, "probe")
    for option, default in (("--image-size PIXELS", "16"), ("--channels {1,3}", "1"),
                            ("--val-fraction FRACTION", "0.3"), ("--method {logistic,ridge}", "logistic")):
        start = probe.index(option, probe.index("options:"))
        assert f"(default: {default})" in probe[start:start + 300], option
    report = help_of(capsys, "report")
    assert "(default: 10.0)" in report and "(default: 7)" in report and "default 10.0" not in report


def test_demo_options_share_the_names_of_the_examples(capsys):
    parser = build_parser()
    args = parser.parse_args(["demo", "--steps", "200", "--small-init", "0.25"])
    assert (args.max_steps, args.small_init, args.every_n_steps) == (200, 0.25, 20)
    args = parser.parse_args(["demo", "--init-scale", "0.1", "--every-n-steps", "auto"])
    assert (args.small_init, args.every_n_steps) == (0.1, "auto")
    assert "--init-scale is deprecated, use --small-init" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--every-n-steps", "often"])
    assert "whole number of steps >= 1 or 'auto'" in capsys.readouterr().err
    assert parse_interval("AUTO") == "auto"


# ---------------------------------------------------------------- why no mode is learned


def history(values, steps=None):
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    steps = np.arange(len(values)) * 10 if steps is None else np.asarray(steps)
    return {"step": steps, "eigenvalues": values}


def test_a_history_with_a_learned_mode_needs_no_explanation():
    assert explain_no_onsets(history(np.where(np.arange(40) >= 15, 1.0, 0.01))) is None


def test_too_few_measurements_names_the_count_and_a_finer_interval():
    steps = np.arange(0, 200, 20)
    reason = explain_no_onsets(history(np.where(steps >= 100, 1.0, 0.01), steps))
    assert reason.startswith("too few measurements: 10 (steps 0 to 180, every 20)")
    assert f"needs about {rows_needed()}" in reason and rows_needed() == 15
    assert "every 6 steps gives 31 measurements" in reason and "--every-n-steps 6" in reason
    assert "30 measurements every 20 steps take 600 steps" in reason
    assert explain_no_onsets(history(np.zeros((0, 3)), np.zeros(0))).startswith("no measurement recorded")
    assert "needs about 9" in explain_no_onsets(history(np.ones(5)), {"smoothing": 3, "plateau_rows": 3})


def test_a_rise_in_the_last_rows_asks_for_more_steps():
    reason = explain_no_onsets(history(np.where(np.arange(40) >= 38, 1.0, 0.01)))
    assert reason.startswith("a rise at the very end: eigenvalue 1 rose 100x above its floor at step 380")
    assert "Train longer" in reason


def test_a_rise_shorter_than_the_median_window_asks_for_a_finer_interval():
    values = np.full(40, 0.01)
    values[20:22] = 1.0  # up for two measurements, back down: the running median of 7 drops it
    reason = explain_no_onsets(history(values))
    assert reason.startswith("too coarse an interval: eigenvalue 1 rose 100x above its floor at step 200")
    assert "back within 3 measurements" in reason and "--every-n-steps 2" in reason
    assert "report RUN --smoothing 3" in reason


def test_no_eigenvalue_rising_enough_names_the_largest_rise():
    values = np.stack([np.full(40, 2.0), np.geomspace(0.01, 0.04, 40)], axis=1)
    reason = explain_no_onsets(history(values))
    assert reason.startswith("a run too short: no eigenvalue rose 10x above its floor")
    assert "eigenvalue 2, from step 0 to step 360, still rising at the end" in reason
    assert "report RUN --min-rise 3" in reason
    assert "still rising" not in explain_no_onsets(history(np.concatenate([np.geomspace(0.01, 0.04, 20),
                                                                           np.full(20, 0.04)])))


def test_a_mode_still_rising_at_the_end_asks_for_more_steps():
    reason = explain_no_onsets(history(np.geomspace(0.01, 10.0, 40)))
    assert reason.startswith("a run too short: eigenvalue 1 rose 588x above its floor but was still rising")
    assert "(step 360)" in reason and "at least 100 more steps" in reason


def test_a_spectrum_that_grows_as_a_whole_has_nothing_standing_out():
    t = np.arange(60)
    scale = 1 + 99 / (1 + np.exp(-(t - 30) / 2))  # every eigenvalue rises 100x together, then levels off
    reason = explain_no_onsets(history(scale[:, None] * np.geomspace(1.0, 0.01, 16)[None, :]))
    assert reason.startswith("nothing stood out: 16 eigenvalues rose 10x above their floor and levelled off")
    assert "--min-relative-plateau 0.001" in reason


def test_largest_rise_as_the_detector_sees_it():
    values = np.full(40, 0.01)
    values[20:22] = 1.0
    assert largest_rise(history(values))["factor"] == pytest.approx(100.0)
    assert largest_rise(history(values), smoothing=7)["factor"] == pytest.approx(1.0)
    assert largest_rise(history(np.ones(1))) is None


def test_report_says_why_no_mode_was_learned(tmp_path, capsys):
    values = np.full(40, 0.01)
    values[20:22] = 1.0
    save_spectrum({"step": np.arange(40) * 10, "eigenvalues": values[:, None], "loss": np.ones(40)}, tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0 modes learned" in out and "Why none: too coarse an interval" in out
    assert f"lightning-stepwise report {tmp_path} --smoothing 3" in out  # the fix, with this run's folder
    assert "(no learned mode detected)" not in out  # no empty table


def test_report_numbers_modes_as_the_monitor_does(tmp_path, capsys):
    from lightning_stepwise.report import MODE_NUMBERING
    from lightning_stepwise.synthetic import stepwise_trajectories

    for seed in (0, 1):
        run = stepwise_trajectories(8, rows=100, noise=0.05, seed=seed)
        save_spectrum({"step": run.steps.round(), "eigenvalues": run.eigenvalues}, tmp_path / f"run{seed}")
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count(MODE_NUMBERING) == 1  # explained once
    tables = [block.split("\nwrote")[0].splitlines()[1:] for block in out.split("mode  onset step")[1:]]
    for seed, rows in zip((0, 1), tables, strict=True):
        saved = load_onsets(tmp_path / f"run{seed}" / "onsets.json")
        assert [row.split()[0] for row in rows] == [f"#{r['mode'] + 1}" for r in saved] and saved


def test_the_onset_legend_only_with_dots():
    from lightning_stepwise.plots import plot_stepwise

    arrays = {"step": np.arange(30) * 10, "eigenvalues": np.ones((30, 4)), "loss": np.ones(30)}

    def texts(onsets):
        return [t.get_text() for t in plot_stepwise(arrays, onsets).axes[0].texts]

    onset = {"mode": 1, "onset_step": 100.0, "plateau": 1.0}
    assert texts([]) == []
    assert texts([{**onset, "mode": 7}]) == []  # beyond the modes drawn: no dot, no legend
    assert texts([onset]) == ["dots: onsets (half the plateau)"]


# ---------------------------------------------------------------- the demo's screen


def test_quiet_lightning_keeps_own_lines_and_restores_everything():
    import lightning_utilities.core.rank_zero as rank_zero_module
    from lightning.fabric.utilities import rank_zero

    from lightning_stepwise.demo import quiet_lightning

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    logger, lines = rank_zero_module.log, Lines()
    levels = {name: logging.getLogger(name).level for name in ("lightning.pytorch", "pytorch_lightning")}
    logger.addHandler(lines)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_lightning():
                rank_zero.rank_zero_info("💡 Tip: For seamless cloud logging ...")
                rank_zero.rank_zero_info("StepwiseMonitor: tracking the online inputs of `criterion`")
                warnings.warn_explicit("deprecated here", FutureWarning, "fit_loop.py", 1,
                                       module="lightning.pytorch.loops.fit_loop")
                warnings.warn_explicit("yours", UserWarning, "train.py", 1, module="my_training")
            rank_zero.rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(lines)
    assert lines.lines == ["StepwiseMonitor: tracking the online inputs of `criterion`",
                           "GPU available: False, used: False"]
    assert [str(w.message) for w in caught] == ["yours"]
    assert {name: logging.getLogger(name).level for name in levels} == levels
    assert not logger.filters
