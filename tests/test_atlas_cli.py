"""The ``lightning-stepwise atlas`` command, run as a user would on a tiny demo checkpoint."""

import csv
import json
import subprocess
import sys

import pytest

from lightning_stepwise.cli import build_parser, main

HEAVY = ("torch", "lightning", "pytorch_lightning", "lightly", "matplotlib")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small DigitsBarlowTwins after 2 optimizer steps, saved as Lightning does."""
    import lightning.pytorch as pl

    from lightning_stepwise.data import digits_dataloader
    from lightning_stepwise.demo import DigitsBarlowTwins

    folder = tmp_path_factory.mktemp("atlas_ckpt")
    model = DigitsBarlowTwins(width=8, embedding_dim=16)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=folder)
    trainer.fit(model, digits_dataloader(batch_size=32, seed=0))
    trainer.save_checkpoint(folder / "demo.ckpt")
    return folder / "demo.ckpt"


def test_atlas_command_prints_the_table_and_writes_the_files(checkpoint, tmp_path, capsys):
    out_dir = tmp_path / "atlas_out"
    assert main(["atlas", str(checkpoint), "--max-images", "200", "--modes", "4", "--output", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Mode atlas of {checkpoint} at `projection_head`: 200 images, 4 modes" in out
    assert "strongest" in out and "best class" in out  # the table, with the class columns (digits have labels)
    assert any(name in out for name in ("brightness", "contrast", "edge_energy"))
    with open(out_dir / "modes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["mode"] for row in rows] == ["0", "1", "2", "3"]
    assert "auc_9" in rows[0]  # all ten digit classes among the first 200 images
    assert (out_dir / "atlas.png").stat().st_size > 1000
    assert f"wrote {out_dir / 'modes.csv'}, {out_dir / 'atlas.png'}" in out


def test_atlas_command_writes_next_to_the_checkpoint_by_default(checkpoint, capsys):
    assert main(["atlas", str(checkpoint), "--point", "backbone", "--max-images", "40", "--modes", "2",
                 "--per-side", "2"]) == 0
    assert "at `backbone`: 40 images, 2 modes" in capsys.readouterr().out
    assert {p.name for p in (checkpoint.parent / "atlas").iterdir()} == {"modes.csv", "atlas.png"}


def test_atlas_command_reads_an_image_folder(checkpoint, tmp_path, capsys):
    from PIL import Image

    for cls, value in (("dark", 30), ("light", 220)):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (10, 10), value + 3 * i).save(tmp_path / "images" / cls / f"{i}.png")
    # 8 of 12 files, grouped by class on disk: the fixed shuffle still takes both classes
    assert main(["atlas", str(checkpoint), "--data", str(tmp_path / "images"), "--max-images", "8", "--modes", "2",
                 "--per-side", "2", "--output", str(tmp_path / "out")]) == 0
    assert "8 images, 2 modes" in capsys.readouterr().out
    with open(tmp_path / "out" / "modes.csv", newline="") as f:
        assert {"auc_0", "auc_1"} <= set(next(csv.DictReader(f)))


def test_atlas_command_names_the_points_when_the_point_is_wrong(checkpoint, tmp_path, capsys):
    assert main(["atlas", str(checkpoint), "--point", "head", "--max-images", "20", "--modes", "2",
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--point 'head'" in err and "'backbone', 'projection_head'" in err
    assert not (tmp_path / "out").exists()


def test_atlas_command_needs_more_images_than_modes(checkpoint, tmp_path, capsys):
    assert main(["atlas", str(checkpoint), "--max-images", "6", "--modes", "8", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--modes 8 needs at least 9 images" in err and "got 6" in err
    assert "a smaller --modes (at most 5)" in err and "a larger --max-images" in err
    assert main(["atlas", str(checkpoint), "--modes", "1797", "--output", str(tmp_path)]) == 2
    assert "at most 1796" in capsys.readouterr().err


def test_atlas_command_explains_a_checkpoint_of_another_class(checkpoint, tmp_path, capsys):
    assert main(["atlas", str(checkpoint), "--module-class", "lightning_stepwise.linear_model:LinearSSL",
                 "--max-images", "20", "--modes", "2"]) == 2
    err = capsys.readouterr().err
    assert "cannot load" in err and "--module-class package.module:ClassName" in err
    assert "width=8" in err and "submodules backbone, projection_head" in err  # what the checkpoint holds
    assert main(["atlas", str(checkpoint), "--module-class", "no_such_package.models:Model"]) == 2
    assert "cannot import no_such_package.models" in capsys.readouterr().err
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    assert main(["atlas", str(tmp_path / "junk.ckpt"), "--max-images", "20", "--modes", "2"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["atlas", str(tmp_path / "missing.ckpt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_atlas_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["atlas", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    options = text[text.index("options:"):]
    for option, default in (("--module-class MODULE:CLASS", "lightning_stepwise.demo:DigitsBarlowTwins"),
                            ("--data digits|DIR", "digits"), ("--image-size PIXELS", "16"),
                            ("--channels {1,3}", "1"), ("--point SUBMODULE", "projection_head"),
                            ("--modes K", "8"), ("--per-side N", "8"), ("--max-images N", "2000"),
                            ("--output DIR", "atlas/ next to the checkpoint")):
        start = options.index(option)
        assert f"(default: {default})" in " ".join(options[start:start + 500].split()), option
    assert "StepwiseMonitor tracks" in " ".join(options.split())
    assert "atlas" in build_parser().format_help()


def test_atlas_help_imports_neither_torch_nor_lightning():
    code = ("import json, sys\nfrom lightning_stepwise.cli import main\ntry:\n    main(['atlas', '--help'])\n"
            "except SystemExit as exit_:\n    code = exit_.code\n"
            "print(json.dumps({'code': code, 'heavy': [m for m in sys.argv[1:] if m in sys.modules]}))")
    result = subprocess.run([sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"code": 0, "heavy": []}


def test_atlas_options_reject_counts_below_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["atlas", "x.ckpt", "--modes", "0"])
    assert exit_.value.code == 2
    assert "expected a whole number >= 1, got '0'" in capsys.readouterr().err
