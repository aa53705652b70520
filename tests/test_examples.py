"""Every Lightly method example trains a few steps on the embedded digits (tiny backbone, CPU) and the
monitor finds the embeddings the example says it does, with the files and the probe to show for it."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_stepwise import LinearProbe, StepwiseMonitor, load_spectrum

METHODS = Path(__file__).resolve().parents[1] / "examples" / "methods"
# example -> (tracking point, source, L2-normalised by the loss)
EXPECTED = {
    "barlow_twins": ("criterion", "loss_inputs", False),
    "simclr": ("criterion", "loss_inputs", True),
    "vicreg": ("criterion", "loss_inputs", False),
    "byol": ("projection_head", "module_output", False),
    "moco_v2": ("projection_head", "module_output", False),
    "dino": ("student_head", "module_output", False),
    "benchmark_barlow_twins": ("criterion", "loss_inputs", False),
}
SMOKE = ["--backbone", "tiny", "--input-size", "16", "--batch-size", "32", "--max-steps", "3"]


def load_example(name: str):
    sys.path.insert(0, str(METHODS))  # the examples import their shared `common` module by name
    spec = importlib.util.spec_from_file_location(f"example_{name}", METHODS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def callback(trainer, kind):
    return next(cb for cb in trainer.callbacks if isinstance(cb, kind))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_method_example_trains_and_writes_its_files(name, tmp_path, capsys):
    trainer = load_example(name).main([*SMOKE, "--output", str(tmp_path)])
    monitor, probe = callback(trainer, StepwiseMonitor), callback(trainer, LinearProbe)
    point, source, normalized = EXPECTED[name]
    [tracked] = monitor.tracking_points
    assert (tracked.name, tracked.source, tracked.loss_normalizes) == (point, source, normalized)
    files = {p.name for p in monitor.output_dir.iterdir()}
    assert {"spectrum.npz", "spectrum.csv", "onsets.csv", "onsets.json", "stepwise.png", "probe.csv"} <= files
    spectrum = load_spectrum(monitor.output_dir)
    assert list(spectrum["step"]) == [0] and np.isfinite(spectrum["eigenvalues"]).all()
    assert spectrum["eigenvalues"].shape[1] > 8  # the projector's spectrum, not a scalar
    assert probe.results[-1]["top1"] > 0.3  # ten classes: chance is 0.1
    out = capsys.readouterr().out
    assert f"the monitor tracked {tracked.describe()}" in out and "linear probe of the backbone" in out


def test_small_init_scales_every_weight_and_keeps_momentum_copies_equal(tmp_path):
    example = load_example("byol")
    common = sys.modules["common"]
    torch.manual_seed(0)
    plain = example.BYOL(*common.backbone("tiny"))
    torch.manual_seed(0)
    scaled = common.small_init(example.BYOL(*common.backbone("tiny")), 0.1)
    for (name, a), (_, b) in zip(plain.named_parameters(), scaled.named_parameters(), strict=True):
        factor = 0.1 if name.endswith("weight") and a.ndim > 1 else 1.0
        torch.testing.assert_close(b, a * factor, msg=name)
    for a, b in zip(scaled.backbone.parameters(), scaled.backbone_momentum.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("data", ["cifar10", "stl10"])
def test_downloads_happen_only_behind_the_flag(data, tmp_path):
    example = load_example("simclr")
    root = tmp_path / "data"
    with pytest.raises(SystemExit, match=f"{data} is not in .*Pass --download"):
        example.main([*SMOKE, "--data", data, "--data-root", str(root), "--output", str(tmp_path / "run")])
    assert not root.exists() or not any(root.iterdir())  # nothing was fetched: no network in tests


def test_paper_preset_fills_what_was_not_given():
    load_example("barlow_twins")
    common = sys.modules["common"]
    args = common.parse_args("x", ["--paper", "--lr", "0.2"], paper=True)
    assert (args.projector_dim, args.backbone, args.min_scale, args.lr) == (
        common.PAPER["projector_dim"], common.PAPER["backbone"], common.PAPER["min_scale"], 0.2)
    assert (args.max_steps, args.every_n_steps) == (common.PAPER["max_steps"], common.PAPER["every_n_steps"])
    plain = common.parse_args("x", [], paper=True)
    assert (plain.projector_dim, plain.small_init, plain.every_n_steps) == (2048, 1.0, "auto")


@pytest.mark.parametrize("name", ["barlow_twins", "simclr", "vicreg"])
def test_projector_width_and_learning_rate_reach_the_module(name, tmp_path):
    trainer = load_example(name).main([*SMOKE, "--projector-dim", "24", "--lr", "0.01", "--output", str(tmp_path)])
    model = trainer.lightning_module
    assert model.lr == 0.01
    assert load_spectrum(callback(trainer, StepwiseMonitor).output_dir)["eigenvalues"].shape[1] == 24


def test_collapsed_start_puts_the_normalised_embeddings_near_one_point():
    simclr = load_example("simclr")
    common = sys.modules["common"]
    torch.manual_seed(0)
    x = torch.randn(256, 3, 16, 16)

    def normalised_spread(model):  # trace of the covariance of the L2-normalised embeddings (at most 1)
        model.train()
        with torch.no_grad():
            z = torch.nn.functional.normalize(model(x), dim=1)
        return torch.trace(torch.cov(z.T)).item()

    plain = simclr.SimCLR(*common.backbone("tiny", 8), projector_dim=32)
    collapsed = simclr.SimCLR(*common.backbone("tiny", 8), projector_dim=32)
    collapsed.load_state_dict(plain.state_dict())
    common.collapsed_start(collapsed.projection_head, 0.03)
    last = [m for m in collapsed.projection_head.modules() if isinstance(m, torch.nn.BatchNorm1d)][-1]
    assert torch.linalg.vector_norm(last.bias).item() == pytest.approx(1.0)
    spread = normalised_spread(plain)
    assert spread > 0.5  # a last BatchNorm spreads them over the sphere
    # the shift dominates: all embeddings near one point, the spread about d x factor^2 = 32 x 0.03^2
    assert normalised_spread(collapsed) < min(0.05, spread / 10)
    args = common.parse_args("x", ["--paper"], paper=True, paper_overrides={"collapsed_start": 0.03},
                             extra=simclr._flags)
    assert args.collapsed_start == 0.03
    assert common.parse_args("x", [], paper=True, extra=simclr._flags).collapsed_start == 1
    with pytest.raises(ValueError, match="no BatchNorm1d"):
        common.collapsed_start(torch.nn.Linear(4, 4), 0.1)
