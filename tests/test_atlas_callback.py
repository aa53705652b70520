"""ModeAtlas in a Trainer: files next to the monitor's, the table, new-mode atlases, training untouched."""

import csv
import warnings

import pytest
import torch

from lightning_stepwise import StepwiseMonitor, StepwiseWarning
from lightning_stepwise.atlas_callback import ModeAtlas
from lightning_stepwise.data import digits_dataloader, load_digits_images
from lightning_stepwise.demo import DigitsBarlowTwins

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fit(tmp_path, callbacks, steps=6, seed=0):
    import lightning.pytorch as pl

    pl.seed_everything(seed, verbose=False)
    model = DigitsBarlowTwins(width=8, embedding_dim=16)
    trainer = pl.Trainer(max_steps=steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, digits_dataloader(batch_size=64, seed=seed))
    return model


def test_the_atlas_is_drawn_at_fit_end_next_to_the_monitors_files(tmp_path, capsys):
    images, labels = load_digits_images(size=16)
    monitor = StepwiseMonitor(every_n_steps=2, window=64, save_figure=False)
    atlas = ModeAtlas(images[:200], labels[:200], point="projection_head", modes=4, per_side=3)
    model = fit(tmp_path, [monitor, atlas])
    folder = monitor.output_dir / "atlas"
    rows = list(csv.DictReader((folder / "modes.csv").open()))
    assert len(rows) == 4 and (folder / "atlas.png").stat().st_size > 0
    assert atlas.atlas is not None and atlas.atlas.coordinates.shape == (200, 4)
    assert "ModeAtlas: 4 modes of `projection_head` on 200 images" in capsys.readouterr().out
    assert model.training  # the forward pass ran in eval mode, and the mode came back


def test_without_a_monitor_the_count_defaults_to_8_and_the_folder_to_the_log_dir(tmp_path):
    images, _ = load_digits_images(size=16)
    atlas = ModeAtlas(images[:100])
    fit(tmp_path, [atlas], steps=2)
    assert atlas.atlas is not None and atlas.atlas.coordinates.shape == (100, 8)
    assert (tmp_path / "stepwise" / "atlas" / "modes.csv").exists()


def test_an_atlas_at_each_new_mode_leaves_training_untouched(tmp_path, monkeypatch):
    images, labels = load_digits_images(size=16)
    plain = fit(tmp_path / "plain", [StepwiseMonitor(every_n_steps=2, window=64, save_figure=False)])
    monkeypatch.setattr(StepwiseMonitor, "modes_learned", property(lambda self: 1))  # a mode from the start
    monitor = StepwiseMonitor(every_n_steps=2, window=64, save_figure=False)
    atlas = ModeAtlas(images[:120], labels[:120], point="projection_head", modes=2, on_new_mode=True)
    drawn = fit(tmp_path / "drawn", [monitor, atlas])
    assert (monitor.output_dir / "atlas" / "mode_1" / "atlas.png").exists()
    for (name, a), b in zip(plain.state_dict().items(), drawn.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # weights and BatchNorm statistics bit for bit


def test_a_point_that_does_not_exist_warns_and_the_fit_finishes(tmp_path):
    images, _ = load_digits_images(size=16)
    atlas = ModeAtlas(images[:50], point="projecton_head", modes=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, [atlas], steps=2)
    assert atlas.atlas is None
    assert any(issubclass(w.category, StepwiseWarning) and "could not be drawn" in str(w.message) for w in caught)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"images": torch.zeros(4, 16, 16)}, TypeError, "(N, C, H, W) tensor"),
    ({"images": torch.zeros(4, 1, 8, 8), "labels": torch.zeros(3)}, ValueError, "3 labels for 4 images"),
    ({"images": torch.zeros(4, 1, 8, 8), "modes": 0}, ValueError, "modes=..."),
    ({"images": torch.zeros(4, 1, 8, 8), "per_side": 0}, ValueError, "per_side=..."),
    ({"images": torch.zeros(4, 1, 8, 8), "point": 3}, TypeError, "dotted submodule path"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        ModeAtlas(**kwargs)


def test_verbose_false_prints_nothing_and_the_figure_is_drawn_once_without_image_loggers(tmp_path, capsys,
                                                                                         monkeypatch):
    import lightning_stepwise.atlas as atlas_module
    import lightning_stepwise.atlas_callback as callback_module

    drawn = []
    original = atlas_module.plot_atlas

    def counting_plot(*args, **kwargs):
        drawn.append(kwargs.get("rows") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(atlas_module, "plot_atlas", counting_plot)
    monkeypatch.setattr(callback_module, "plot_atlas", counting_plot)
    images, labels = load_digits_images(size=16)
    atlas = ModeAtlas(images[:100], labels[:100], point="projection_head", modes=2, verbose=False)
    fit(tmp_path, [atlas], steps=2)  # logger=False: no logger takes images
    assert "ModeAtlas" not in capsys.readouterr().out
    assert (tmp_path / "stepwise" / "atlas" / "atlas.png").stat().st_size > 0
    assert len(drawn) == 1  # atlas.png only, no second figure for the loggers
