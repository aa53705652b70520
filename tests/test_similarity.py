"""Mode similarity: rotated embeddings agree exactly, unrelated ones do not, and modules work like features."""

import numpy as np
import pytest
import torch
from torch import nn

from lightning_stepwise.similarity import linear_cka, mode_similarity, subspace_cosines


def features(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8)) * np.linspace(8, 1, 8)  # distinct variances: well-defined modes


def test_an_orthogonal_rotation_of_the_embedding_is_similarity_1_at_every_k():
    x = features()
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((8, 8)))
    for row in mode_similarity(x, 2.5 * x @ q, k=8):
        assert row["subspace"] == pytest.approx(1.0, abs=1e-9)
        assert row["min_cosine"] == pytest.approx(1.0, abs=1e-9)
        assert row["cka"] == pytest.approx(1.0, abs=1e-9)


def test_unrelated_features_are_far_apart_and_the_measures_are_symmetric():
    x, y = features(seed=0), features(seed=1)
    rows = mode_similarity(x, y, k=4)
    assert [r["k"] for r in rows] == [1, 2, 4]
    assert all(r["subspace"] < 0.1 and r["cka"] < 0.1 for r in rows)  # chance is about k / N
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    np.testing.assert_allclose(subspace_cosines(x[:, :3], y[:, :3]), subspace_cosines(y[:, :3], x[:, :3]))


def test_two_modules_compare_on_images_as_their_features_do():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
    rotated = nn.Sequential(net, nn.Linear(6, 6, bias=False))
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    with torch.no_grad():
        rotated[1].weight.copy_(q)
    images = torch.randn(120, 1, 4, 4)
    rows = mode_similarity(net, rotated, images, k=4)
    assert all(r["subspace"] == pytest.approx(1.0, abs=1e-6) for r in rows)
    with pytest.raises(ValueError, match="pass the images"):
        mode_similarity(net, rotated, k=2)


def test_bad_input_names_the_fix():
    with pytest.raises(ValueError, match="same images"):
        linear_cka(features(100), features(90))
    with pytest.raises(ValueError, match="k must be"):
        mode_similarity(features(), features(), k=0)
    with pytest.raises(ValueError, match="ks must be"):
        mode_similarity(features(), features(), k=4, ks=[5])
