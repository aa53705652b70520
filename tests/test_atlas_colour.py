"""examples/atlas_colour.py: the photo-crop data set, and a tiny end-to-end run (offline, CPU)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from helpers import load_script

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "atlas_colour.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_script(EXAMPLE, "example_atlas_colour")


def test_photo_crops_are_deterministic_16px_rgb_and_differ_in_colour(example: ModuleType) -> None:
    crops = example.photo_crops(60, seed=3)
    assert len(crops) == 60 and all(c.mode == "RGB" and c.size == (16, 16) for c in crops)
    x = example.as_tensor(crops)
    assert tuple(x.shape) == (60, 3, 16, 16) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    again = example.as_tensor(example.photo_crops(60, seed=3))
    assert np.array_equal(x.numpy(), again.numpy())
    assert not np.array_equal(x.numpy(), example.as_tensor(example.photo_crops(60, seed=4)).numpy())
    means = x.mean(dim=(2, 3)).numpy()  # (60, 3) mean colour of each crop
    assert means.std(axis=0).min() > 0.05  # crops differ in every channel's mean (sky, flowers, buildings)
    hue_spread = (means - means.mean(axis=1, keepdims=True)).std(axis=0)
    assert hue_spread.max() > 0.03  # and in colour, not just in brightness


def test_tiny_run_writes_the_atlas_files_and_prints_the_tables(example: ModuleType, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "atlas-colour"
    atlases = example.main(["--methods", "vicreg", "--steps", "5", "--crops", "200", "--atlas-crops", "60",
                            "--k", "4", "--batch-size", "32", "--output", str(out)])
    assert set(atlases) == {"pixels", "vicreg@init", "vicreg"}
    for name in ("pixels", "vicreg"):
        assert (out / name / "modes.csv").stat().st_size > 0 and (out / name / "atlas.png").stat().st_size > 0
        assert len(atlases[name].rows) == 4
    assert (out / "vicreg" / "stepwise" / "spectrum.npz").exists()
    text = capsys.readouterr().out
    assert "vicreg: 5 steps in" in text and "modes learned" in text and "views: VICRegTransform" in text
    assert "of the first 3 modes have colour or brightness as strongest" in text
    assert "strongest" in text and "eigenvalue" in text


@pytest.mark.parametrize("flag", ["--cifar10", "--stl10"])
def test_a_missing_download_dataset_says_how_to_get_it_without_touching_the_network(
        example: ModuleType, tmp_path: Path, flag: str) -> None:
    with pytest.raises(SystemExit, match=f"not in .*Pass --download to fetch it.*drop {flag}"):
        example.main([flag, "--data-root", str(tmp_path / "empty"), "--steps", "1", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        example.parse_args(["--cifar10", "--stl10"])
