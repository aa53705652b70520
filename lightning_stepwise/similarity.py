"""Do two models learn the same modes? Subspace similarity and linear CKA of their leading modes.

Pure functions on arrays, plus [`mode_similarity`][lightning_stepwise.similarity.mode_similarity], which
runs two models over the same images. Two models' embeddings live in different spaces, so their modes are
compared as functions over the images: the top-k mode coordinates of each model span a k-dimensional
subspace of R^N (N images), and the principal angles between the two subspaces say how much they agree,
whatever rotation or scale each embedding has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from lightning_stepwise.atlas import FeatureFn, mode_coordinates, model_features

__all__ = ["linear_cka", "mode_similarity", "subspace_cosines"]


def _centred(values: ArrayLike | Tensor, name: str) -> np.ndarray:
    x = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be a finite (N, d) matrix, one row per image; got shape {x.shape}")
    return x - x.mean(axis=0)


def subspace_cosines(a: ArrayLike | Tensor, b: ArrayLike | Tensor) -> np.ndarray:
    """Cosines of the principal angles between the column spaces of two (N, k) matrices (centred first).

    1 for a shared direction, 0 for orthogonal ones; ``min(k_a, k_b)`` values, descending.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> a = rng.standard_normal((50, 3))
        >>> subspace_cosines(a, a @ rng.standard_normal((3, 3))).round(6).tolist()  # same span
        [1.0, 1.0, 1.0]
    """
    x, y = _centred(a, "a"), _centred(b, "b")
    if len(x) != len(y):
        raise ValueError(f"a and b must describe the same images: {len(x)} rows against {len(y)}")
    qx, _ = np.linalg.qr(x)
    qy, _ = np.linalg.qr(y)
    return np.clip(np.linalg.svd(qx.T @ qy, compute_uv=False), 0.0, 1.0)


def linear_cka(a: ArrayLike | Tensor, b: ArrayLike | Tensor) -> float:
    """Linear centred kernel alignment of two (N, d) representations of the same images (Kornblith et al. 2019).

    1 when one is an orthogonal transform of the other times a scale; invariant to rotations and isotropic
    scaling, not to arbitrary linear maps.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((100, 4))
        >>> q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
        >>> round(linear_cka(x, 3 * x @ q), 6)
        1.0
    """
    x, y = _centred(a, "a"), _centred(b, "b")
    if len(x) != len(y):
        raise ValueError(f"a and b must describe the same images: {len(x)} rows against {len(y)}")
    cross = np.linalg.norm(y.T @ x) ** 2
    norms = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norms) if norms > 0 else 0.0


def mode_similarity(
    a: nn.Module | Tensor | np.ndarray,
    b: nn.Module | Tensor | np.ndarray,
    images: Tensor | None = None,
    *,
    k: int = 8,
    ks: Sequence[int] | None = None,
    feature_fn: FeatureFn | None = None,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """How similar two models' leading modes are on the same images, as a function of k.

    Each model (or an (N, d) feature matrix already computed) gives its top-k mode coordinates on
    ``images`` ([`mode_coordinates`][lightning_stepwise.atlas.mode_coordinates]). Per k in ``ks`` (default
    1, 2, 4, ... up to ``k``, and ``k``) the result has:

    - ``subspace``: the mean squared cosine of the principal angles between the two top-k subspaces (1: the
      same k functions of the images, in any rotation; about k / N for unrelated ones);
    - ``min_cosine``: the cosine of the largest principal angle (the worst-matched direction);
    - ``cka``: linear CKA of the two top-k coordinate matrices (weights the modes by their variance).

    Args:
        a: a module (run in eval mode without gradients; its training modes restored) or a feature matrix
            with one row per image.
        b: the other, likewise.
        images: ``(N, C, H, W)`` images for the modules (not needed for feature matrices).
        k: the largest number of modes compared.
        ks: the numbers of modes to report (each at most ``k``).
        feature_fn: ``feature_fn(module, images) -> (batch, d)``, e.g.
            [`point_features`][lightning_stepwise.probe.point_features]``("projection_head")``; default the
            module's output.
        batch_size: images per forward pass.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((200, 6)) * np.array([6.0, 5, 4, 3, 2, 1])
        >>> q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
        >>> rows = mode_similarity(x, x @ q, k=4)                 # the same modes, rotated embedding
        >>> [(r["k"], round(r["subspace"], 6), round(r["cka"], 6)) for r in rows]
        [(1, 1.0, 1.0), (2, 1.0, 1.0), (4, 1.0, 1.0)]
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    steps = sorted({min(2**i, k) for i in range(k.bit_length() + 1)} | {k}) if ks is None else sorted(set(ks))
    if any(not isinstance(j, int) or not 1 <= j <= k for j in steps):
        raise ValueError(f"ks must be integers in [1, k={k}], got {list(ks or [])}")

    def features(model: nn.Module | Tensor | np.ndarray, name: str) -> Tensor | np.ndarray:
        if isinstance(model, nn.Module):
            if images is None:
                raise ValueError(f"{name} is a module: pass the images to run it on (images=...)")
            return model_features(model, torch.as_tensor(images), feature_fn, batch_size)
        return model

    coords_a = mode_coordinates(features(a, "a"), k).coordinates
    coords_b = mode_coordinates(features(b, "b"), k).coordinates
    if len(coords_a) != len(coords_b):
        raise ValueError(f"a and b must describe the same images: {len(coords_a)} rows against {len(coords_b)}")
    rows = []
    for j in steps:
        cosines = subspace_cosines(coords_a[:, :j], coords_b[:, :j])
        rows.append({"k": j, "subspace": float(np.mean(cosines**2)), "min_cosine": float(cosines.min()),
                     "cka": linear_cka(coords_a[:, :j], coords_b[:, :j])})
    return rows
