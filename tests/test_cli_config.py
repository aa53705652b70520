"""LightningCLI parses examples/cli/stepwise.yaml (StepwiseMonitor and LinearProbe by class_path) and runs it."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from lightning_stepwise import LinearProbe, StepwiseMonitor, load_spectrum

CLI = Path(__file__).resolve().parents[1] / "examples" / "cli"


def cli_main():
    spec = importlib.util.spec_from_file_location("stepwise_cli_example", CLI / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cli_main


def test_config_parses_runs_and_writes_the_files(tmp_path):
    config = yaml.safe_load((CLI / "stepwise.yaml").read_text())
    monitor_args = config["trainer"]["callbacks"][0]["init_args"]
    cli = cli_main()(["fit", "--config", str(CLI / "stepwise.yaml"), "--trainer.max_steps=6",
                      f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                      "--trainer.logger=false", "--trainer.enable_checkpointing=false"])
    [monitor] = [cb for cb in cli.trainer.callbacks if isinstance(cb, StepwiseMonitor)]
    [probe] = [cb for cb in cli.trainer.callbacks if isinstance(cb, LinearProbe)]
    assert (monitor.every_n_steps, monitor.window, monitor.top_k) == (
        monitor_args["every_n_steps"], monitor_args["window"], monitor_args["top_k"])
    assert probe.fit_options["method"] == "ridge"
    assert cli.trainer.global_step == 6
    assert [p.name for p in monitor.tracking_points] == ["criterion"]
    spectrum = load_spectrum(monitor.output_dir)
    assert list(spectrum["step"]) == [0] and spectrum["eigenvalues"].shape[1] == 64  # top_k from the config
    files = {p.name for p in monitor.output_dir.iterdir()}
    assert {"spectrum.npz", "onsets.csv", "stepwise.png", "probe.csv"} <= files
    assert 0.3 < probe.results[-1]["top1"] <= 1.0


def test_a_bad_monitor_argument_in_the_config_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main()(["fit", "--config", str(CLI / "stepwise.yaml"), "--trainer.max_steps=1",
                    f"--trainer.default_root_dir={tmp_path}",
                    '--trainer.callbacks=[{"class_path": "lightning_stepwise.StepwiseMonitor", '
                    '"init_args": {"every_n_step": 5}}]'])
    assert "every_n_step" in capsys.readouterr().err
