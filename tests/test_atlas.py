"""Mode atlas: descriptors, mode coordinates and their meaning, on images whose answer is known."""

import csv

import numpy as np
import pytest
import torch
from torch import nn

from lightning_stepwise.atlas import (
    COLOUR_DESCRIPTORS,
    ModeCoordinates,
    describe_modes,
    extreme_images,
    format_mode_table,
    image_descriptors,
    mode_atlas,
    mode_coordinates,
    plot_atlas,
    write_modes_csv,
)

N = 40


def brightness_images(channels: int, noise: float = 0.005, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random pattern plus one random offset per image (and a little pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.rand(1, channels, 8, 8, generator=g) * 0.5 + 0.25
    offsets = torch.rand(N, generator=g) * 0.4 - 0.2
    images = pattern + offsets[:, None, None, None] + noise * torch.randn(N, channels, 8, 8, generator=g)
    return images, offsets


def red_images(noise: float = 0.005, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed colour pattern whose red channel alone moves, by one level per image."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(1, 3, 8, 8, generator=g) * 0.4 + 0.2).repeat(N, 1, 1, 1)
    levels = torch.rand(N, generator=g) * 0.3
    images[:, 0] += levels[:, None, None]
    return images + noise * torch.randn(N, 3, 8, 8, generator=g), levels


# ---------------------------------------------------------------------------------------------- known answers


def test_brightness_mode_through_a_flattening_model_and_raw_features():
    images, offsets = brightness_images(channels=1)
    for source in (nn.Flatten(), images.flatten(1)):
        atlas = mode_atlas(source, images, k=3)
        row = atlas.rows[0]
        assert row["strongest"] == "brightness"
        assert abs(row["r"]) > 0.9
        assert abs(np.corrcoef(atlas.coordinates[:, 0], offsets.numpy())[0, 1]) > 0.99
        assert atlas.eigenvalues[0] > 100 * atlas.eigenvalues[1]
        assert set(atlas.left_out) == set(COLOUR_DESCRIPTORS)
        assert not any(name in row["correlations"] for name in ("red_mean", "saturation", "hue"))


def test_achromatic_colour_change_is_brightness_not_a_channel():
    images, _ = brightness_images(channels=3, noise=0.0)  # every channel mean ties with brightness exactly
    row = mode_atlas(images.flatten(1), images, k=1).rows[0]
    assert row["strongest"] == "brightness" and abs(row["r"]) > 0.999
    assert {"red_mean", "green_mean", "blue_mean"} <= set(row["ties"])


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_red_channel_mode(noise):
    images, levels = red_images(noise=noise)
    atlas = mode_atlas(nn.Flatten(), images, k=2)
    row = atlas.rows[0]
    assert row["strongest"] == "red_mean", row["correlations"]
    assert abs(row["r"]) > 0.9
    assert atlas.left_out == ()
    assert {"red_mean", "green_mean", "blue_mean", "saturation", "hue"} <= set(row["correlations"])
    assert abs(np.corrcoef(atlas.coordinates[:, 0], levels.numpy())[0, 1]) > 0.99


def test_grayscale_descriptors_lack_colour_keys():
    gray = image_descriptors(torch.rand(5, 1, 6, 6))
    assert set(gray) == {"brightness", "contrast", "edge_energy"}
    assert gray.left_out == COLOUR_DESCRIPTORS
    colour = image_descriptors(torch.rand(5, 3, 6, 6))
    assert set(COLOUR_DESCRIPTORS) <= set(colour) and colour.left_out == ()
    assert all(v.shape == (5,) and v.dtype == np.float64 for v in colour.values())


def test_descriptor_values():
    images = torch.zeros(4, 3, 4, 4)
    images[1, 0] = 1.0  # pure red
    images[2, 1] = 0.5  # dark green: hue 120 degrees
    images[3, :, :, ::2] = 1.0  # white and black stripes: no colour, strong edges
    d = image_descriptors(images)
    assert d["red_mean"].tolist() == [0.0, 1.0, 0.0, 0.5]
    assert d["saturation"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert np.allclose([d["hue_cos"][1], d["hue_sin"][1]], [1.0, 0.0])
    assert np.allclose([d["hue_cos"][2], d["hue_sin"][2]], [-0.5, np.sqrt(3) / 2])
    assert np.isnan(d["hue_cos"][[0, 3]]).all()  # achromatic: no hue, not a fake angle
    assert d["edge_energy"][3] > 0 and d["edge_energy"][0] == 0
    assert d["contrast"][3] == pytest.approx(0.5)
    # any range: saturation and hue do not change when the batch is shifted and scaled
    shifted = image_descriptors(images * 4 - 2)
    assert np.allclose(shifted["saturation"], d["saturation"])
    assert np.allclose(shifted["brightness"], d["brightness"] * 4 - 2)


def test_hue_uses_a_circular_linear_correlation():
    theta = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    coordinate = np.cos(theta - 1.0)[:, None]  # peaks at a hue of 1 radian: no linear relation to cos or sin alone
    hue_cos, hue_sin = np.cos(theta), np.sin(theta)
    hue_cos[0] = hue_sin[0] = np.nan  # an achromatic image is left out, not counted
    row = describe_modes(coordinate, {"hue_cos": hue_cos, "hue_sin": hue_sin, "noise": np.sin(7 * theta)})[0]
    assert set(row["correlations"]) == {"hue", "noise"}
    assert row["strongest"] == "hue" and row["r"] == pytest.approx(1.0)


def test_labels_split_by_the_varying_statistic():
    images, offsets = brightness_images(channels=1)
    labels = (offsets > offsets.median()).long()
    row = mode_atlas(images.flatten(1), images, k=2, labels=labels).rows[0]
    assert abs(row["best_auc"] - 0.5) > 0.45
    assert set(row["auc"]) == {0, 1}
    # the bright class sits at the end of the mode where brightness is high
    assert (row["auc"][1] > 0.95) == (row["r"] > 0)
    assert row["auc"][0] == pytest.approx(1 - row["auc"][1])
    unlabelled = mode_atlas(images.flatten(1), images, k=2).rows[0]
    assert not {"auc", "best_class", "best_auc"} & set(unlabelled)


# ---------------------------------------------------------------------------------------------- coordinates


def test_sign_convention_is_deterministic():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(20, 6, generator=g) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    base = mode_coordinates(features, k=3)
    flipped_axes = features * torch.tensor([-1.0, 1.0, -1.0, 1.0, 1.0, -1.0])
    for other in (mode_coordinates(-features, k=3), mode_coordinates(flipped_axes, k=3),
                  mode_coordinates(features.numpy(), k=3)):
        assert np.allclose(other.coordinates, base.coordinates)
        assert np.allclose(other.eigenvalues, base.eigenvalues)
    assert np.allclose(mode_coordinates(-features, k=3).directions, -base.directions)
    extreme = base.coordinates[np.abs(base.coordinates).argmax(axis=0), np.arange(3)]
    assert (extreme > 0).all()


def test_coordinates_match_the_covariance_on_both_paths():
    g = torch.Generator().manual_seed(3)
    for n, d in ((30, 5), (8, 20)):  # covariance path (d <= N) and Gram path (d > N)
        x = (torch.randn(n, d, generator=g) * torch.linspace(3, 0.1, d)).double().numpy()
        m = mode_coordinates(x, k=3)
        assert isinstance(m, ModeCoordinates)
        expected = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1][:3]
        assert np.allclose(m.eigenvalues, expected)
        assert np.allclose(m.coordinates.var(axis=0, ddof=1), m.eigenvalues)
        assert np.allclose(m.directions.T @ m.directions, np.eye(3), atol=1e-10)
        assert np.allclose((x - m.mean) @ m.directions, m.coordinates)


def test_extreme_images_are_the_largest_and_smallest_coordinates():
    images, _ = brightness_images(channels=1)
    atlas = mode_atlas(images.flatten(1), images, k=2)
    top, bottom = extreme_images(atlas.coordinates, images, per_side=5)
    assert top.shape == bottom.shape == (2, 5)
    for j in range(2):
        c = atlas.coordinates[:, j]
        assert np.array_equal(c[top[j]], np.sort(c)[::-1][:5])
        assert np.array_equal(c[bottom[j]], np.sort(c)[:5])
        rest = np.setdiff1d(np.arange(N), top[j])
        assert c[top[j]].min() >= c[rest].max()
    # mode 0 follows brightness: its top images are the brightest (or the darkest, by the sign)
    brightness = atlas.descriptors["brightness"]
    ends = top[0] if atlas.rows[0]["r"] > 0 else bottom[0]
    assert set(ends.tolist()) == set(np.argsort(brightness)[::-1][:5].tolist())


# ---------------------------------------------------------------------------------------------- outputs


def test_plot_and_csv_are_written(tmp_path):
    images, offsets = red_images()
    labels = (offsets > offsets.median()).long()
    atlas = mode_atlas(images.flatten(1), images, k=3, labels=labels, per_side=3, output_dir=tmp_path / "atlas")
    assert atlas.figure_path == tmp_path / "atlas" / "atlas.png"
    assert atlas.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with atlas.csv_path.open() as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["mode"]) for r in table] == [0, 1, 2]
    assert {"mode", "eigenvalue", "strongest", "r", "best_class", "best_auc", "r_brightness", "r_red_mean",
            "r_hue", "auc_0", "auc_1"} <= set(table[0])
    assert table[0]["strongest"] == "red_mean"
    assert float(table[0]["eigenvalue"]) == pytest.approx(atlas.eigenvalues[0])
    text = atlas.table()
    assert text.splitlines()[0].split() == ["mode", "eigenvalue", "strongest", "r", "best", "class", "AUC"]
    assert len(text.splitlines()) == 4 and "red_mean" in text.splitlines()[1]
    # without labels: no class columns anywhere
    rows = describe_modes(atlas.coordinates, atlas.descriptors)
    path = write_modes_csv(rows, tmp_path / "plain.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert not [h for h in header if "auc" in h or "class" in h]
    assert "class" not in format_mode_table(rows)


def test_plot_atlas_layout_and_colormaps(tmp_path):
    gray, _ = brightness_images(channels=1)
    m = mode_coordinates(gray.flatten(1), k=3)
    fig = plot_atlas(gray, m, 2, tmp_path / "gray.png", modes=[0, 2])
    assert (tmp_path / "gray.png").stat().st_size > 0
    assert len(fig.axes) == 2  # one axes per mode row
    assert fig.axes[0].images[0].get_cmap().name == "gray"
    assert fig.axes[0].get_ylabel() == "mode 0" and fig.axes[1].get_ylabel() == "mode 2"
    labels = [float(t.get_text()) for t in fig.axes[0].texts]
    assert len(labels) == 4 and labels == sorted(labels)  # lowest first, highest last
    expected = np.sort(m.coordinates[:, 0])
    assert labels[:2] == pytest.approx(expected[:2], rel=0.05) and labels[2:] == pytest.approx(expected[-2:],
                                                                                               rel=0.05)
    row = fig.axes[0].images[0].get_array()
    assert row.shape == (8, 4 * 8 + 3 * 1)  # four 8-pixel tiles, 1-pixel gaps
    order = np.argsort(m.coordinates[:, 0], kind="stable")
    assert 0.0 <= float(gray.min()) and float(gray.max()) <= 1.0  # shown as they are, not rescaled
    assert np.allclose(row[:, :8], gray[order[0], 0].numpy())  # the lowest image's pixels, in the first tile
    assert np.allclose(row[:, 8], 1.0)  # then a white gap
    colour, _ = red_images()
    fig = plot_atlas(colour * 2 - 1, mode_coordinates(colour.flatten(1), k=1), 2, None)  # any range
    assert fig.axes[0].images[0].get_array().shape == (8, 4 * 8 + 3, 3)
    with pytest.raises(ValueError, match="modes"):
        plot_atlas(gray, m, 2, None, modes=[3])


# ---------------------------------------------------------------------------------------------- mistakes


def test_errors_name_the_parameter_and_the_fix():
    images = torch.rand(4, 1, 5, 5)
    with pytest.raises(ValueError, match=r"k=4 .*at least k \+ 1 = 5 images.*pass more images or a smaller k"):
        mode_atlas(images.flatten(1), images, k=4)
    with pytest.raises(ValueError, match=r"pass more images or a smaller k \(at most 3\)"):
        mode_coordinates(images.flatten(1), k=4)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        mode_coordinates(images.flatten(1), k=0)
    with pytest.raises(ValueError, match=r"k=30 is larger than the feature dimension d=25"):
        mode_coordinates(torch.rand(40, 25), k=30)
    with pytest.raises(ValueError, match=r"features must be 2-D.*flatten"):
        mode_coordinates(images, k=1)
    bad = images.flatten(1).clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(rows \[2\]"):
        mode_coordinates(bad, k=1)
    with pytest.raises(ValueError, match=r"feature_fn must return a 2-D tensor.*flatten"):
        mode_atlas(nn.Identity(), images, k=1, feature_fn=lambda m, x: m(x))
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\).*unsqueeze\(1\)"):
        mode_atlas(images.flatten(1), images[:, 0], k=1)
    with pytest.raises(ValueError, match=r"features have 3 rows but there are 4 images"):
        mode_atlas(images.flatten(1)[:3], images, k=1)
    with pytest.raises(ValueError, match="labels must have at least two classes"):
        mode_atlas(images.flatten(1), images, k=1, labels=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="labels has 3 entries"):
        mode_atlas(images.flatten(1), images, k=1, labels=[0, 1, 1])
    with pytest.raises(ValueError, match="per_side must be an integer >= 1"):
        extreme_images(np.zeros((4, 1)), None, per_side=0)
    with pytest.raises(ValueError, match="descriptor 'brightness' has 2 values"):
        describe_modes(np.zeros((4, 1)), {"brightness": np.zeros(2)})


def test_mode_atlas_restores_the_training_mode_and_runs_in_eval():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 4))
    net.train()
    net[2].eval()  # a mixed state must come back exactly
    before = [m.training for m in net.modules()]
    seen = []

    def features(module, x):
        seen.append((module.training, torch.is_grad_enabled(), len(x)))
        return module(x)

    images = torch.rand(10, 3, 2, 2)
    atlas = mode_atlas(net, images, k=2, feature_fn=features, batch_size=4)
    assert [m.training for m in net.modules()] == before
    assert seen == [(False, False, 4), (False, False, 4), (False, False, 2)]
    with torch.no_grad():
        net.eval()
        expected = mode_coordinates(net(images), k=2)
    net.train()
    net[2].eval()
    assert np.allclose(atlas.coordinates, expected.coordinates)

    def broken(module, x):
        module(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        mode_atlas(net, images, k=2, feature_fn=broken)
    assert [m.training for m in net.modules()] == before
