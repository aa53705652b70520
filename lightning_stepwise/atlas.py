"""Mode atlas: what each learned mode of an embedding means, in terms of its images.

The monitor says *how many* covariance eigen-directions ("modes") a self-supervised embedding has
learned and *when*. The atlas says *what* each one encodes: project a set of images' features on the
leading eigen-directions of their covariance, then compare each image's coordinate along a mode with
simple statistics of the image (brightness, contrast, colour, edges) and, when there are labels, with
the classes. Everything is a pure function on tensors or arrays, no Lightning:

- [`image_descriptors`][lightning_stepwise.atlas.image_descriptors]: per-image statistics;
- [`mode_coordinates`][lightning_stepwise.atlas.mode_coordinates]: per-image coordinates along the
  leading eigen-directions, with a deterministic sign;
- [`describe_modes`][lightning_stepwise.atlas.describe_modes]: per mode, the correlation with each
  descriptor, the strongest one, and the class it separates best (one-vs-rest ROC AUC);
- [`extreme_images`][lightning_stepwise.atlas.extreme_images] and
  [`plot_atlas`][lightning_stepwise.atlas.plot_atlas]: the images at both ends of each mode;
- [`mode_atlas`][lightning_stepwise.atlas.mode_atlas]: all of the above for a model (or features) and
  a batch of images, with ``modes.csv`` and ``atlas.png`` written to a folder.

A correlation is a hint, not a proof: a mode can follow a statistic the descriptors do not measure, and
descriptors are correlated with each other on real images (brightness with every channel mean).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

__all__ = [
    "COLOUR_DESCRIPTORS",
    "Atlas",
    "ImageDescriptors",
    "ModeCoordinates",
    "describe_modes",
    "extreme_images",
    "format_mode_table",
    "image_descriptors",
    "mode_atlas",
    "mode_coordinates",
    "model_features",
    "plot_atlas",
    "write_modes_csv",
]

COLOUR_DESCRIPTORS: tuple[str, ...] = ("red_mean", "green_mean", "blue_mean", "saturation", "hue_cos", "hue_sin")
"""The descriptors that need 3-channel (RGB) images; left out, not faked, for any other channel count."""

#: Which descriptor wins when several explain a mode equally well (|r| within ``_TIE``): the more specific
#: one, except that brightness wins over the three channel means when all of them tie (an achromatic change).
_PREFERENCE: tuple[str, ...] = (
    "red_mean", "green_mean", "blue_mean", "saturation", "hue", "brightness", "contrast", "edge_energy",
)
_CHANNELS = ("red_mean", "green_mean", "blue_mean")
_TIE = 1e-6

FeatureFn = Callable[[nn.Module, Tensor], Tensor]


class ImageDescriptors(dict[str, np.ndarray]):
    """The per-image descriptors (``name -> (N,) float64 array``), and which ones were left out.

    A plain ``dict`` with one more attribute, ``left_out``: the names that could not be computed for
    these images (the colour descriptors of grayscale images), so that no fake values stand in for them.

    Attributes:
        left_out: descriptor names left out because the images cannot provide them.

    Examples:
        >>> d = ImageDescriptors({"brightness": np.array([0.5])}, left_out=("red_mean",))
        >>> sorted(d), d.left_out
        (['brightness'], ('red_mean',))
    """

    def __init__(self, values: Mapping[str, np.ndarray], left_out: Sequence[str] = ()) -> None:
        super().__init__(values)
        self.left_out: tuple[str, ...] = tuple(left_out)


class ModeCoordinates(NamedTuple):
    """Images' coordinates along the leading covariance eigen-directions of their features.

    Attributes:
        coordinates: ``(N, k)`` float64: each image's centred features projected on each direction.
        eigenvalues: ``(k,)`` float64, descending: the covariance eigenvalues (``/ (N - 1)``), equal to
            the variance of each coordinate column.
        directions: ``(d, k)`` float64, unit columns: the eigen-directions, signs as documented in
            [`mode_coordinates`][lightning_stepwise.atlas.mode_coordinates].
        mean: ``(d,)`` float64: the feature mean; ``(x - mean) @ directions`` places new features.

    Examples:
        >>> m = mode_coordinates(np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]]), k=1)
        >>> m.coordinates.ravel().round(3).tolist(), m.eigenvalues.round(3).tolist()
        ([-2.0, -1.0, 3.0], [7.0])
    """

    coordinates: np.ndarray
    eigenvalues: np.ndarray
    directions: np.ndarray
    mean: np.ndarray


@dataclass
class Atlas:
    """What [`mode_atlas`][lightning_stepwise.atlas.mode_atlas] found: modes, descriptors, their relation.

    Attributes:
        coordinates: ``(N, k)`` per-image mode coordinates.
        eigenvalues: ``(k,)`` covariance eigenvalues, descending.
        directions: ``(d, k)`` eigen-directions in feature space.
        descriptors: the per-image descriptors
            ([`image_descriptors`][lightning_stepwise.atlas.image_descriptors]).
        rows: one dict per mode ([`describe_modes`][lightning_stepwise.atlas.describe_modes]).
        left_out: descriptor names left out (the colour ones for grayscale images).
        csv_path: where ``modes.csv`` was written, or None.
        figure_path: where ``atlas.png`` was written, or None.

    Examples:
        >>> images = torch.rand(6, 1, 4, 4)
        >>> atlas = mode_atlas(images.flatten(1), images, k=2)
        >>> atlas.coordinates.shape, len(atlas.rows), "red_mean" in atlas.left_out
        ((6, 2), 2, True)
    """

    coordinates: np.ndarray
    eigenvalues: np.ndarray
    directions: np.ndarray
    descriptors: ImageDescriptors
    rows: list[dict[str, Any]]
    left_out: tuple[str, ...] = ()
    csv_path: Path | None = None
    figure_path: Path | None = None

    def table(self) -> str:
        """The rows as a text table ([`format_mode_table`][lightning_stepwise.atlas.format_mode_table])."""
        return format_mode_table(self.rows)


# ---------------------------------------------------------------------------------------------- inputs


def _as_images(images: Tensor | np.ndarray, name: str = "images") -> Tensor:
    """``images`` as a float64 CPU tensor ``(N, C, H, W)``, or a ValueError naming the fix."""
    x = torch.as_tensor(images.detach() if isinstance(images, Tensor) else np.asarray(images))
    if x.ndim != 4:
        hint = "; add the channel axis with images.unsqueeze(1)" if x.ndim == 3 else ""
        raise ValueError(f"{name} must be (N, C, H, W), got shape {tuple(x.shape)}{hint}")
    if min(x.shape) < 1:
        raise ValueError(f"{name} must be (N, C, H, W) with every size >= 1, got shape {tuple(x.shape)}")
    x = x.to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf values; replace them (e.g. torch.nan_to_num) first")
    return x


def _as_matrix(values: Tensor | np.ndarray | ArrayLike) -> np.ndarray:
    """A float64 NumPy copy of a tensor or array."""
    if isinstance(values, Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- descriptors


def _hsv(rgb: Tensor) -> tuple[Tensor, Tensor]:
    """HSV saturation and hue (radians in [0, 2π)) of ``(N, 3, H, W)`` values in [0, 1]."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    top = rgb.amax(dim=1)
    delta = top - rgb.amin(dim=1)
    saturation = torch.where(top > 0, delta / torch.where(top > 0, top, 1.0), torch.zeros_like(top))
    safe = torch.where(delta > 0, delta, 1.0)
    hue = torch.where(top == r, torch.remainder((g - b) / safe, 6.0),
                      torch.where(top == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue)) * (math.pi / 3.0)
    return saturation, hue


def image_descriptors(images: Tensor | np.ndarray) -> ImageDescriptors:
    """Simple statistics of each image, to compare mode coordinates with.

    Images are ``(N, C, H, W)`` floats in any range. All descriptors are ``(N,)`` float64 arrays:

    - ``brightness``: the mean of all values (channels and pixels);
    - ``contrast``: the standard deviation over pixels of the channel-mean image;
    - ``edge_energy``: the mean squared finite-difference gradient (horizontal plus vertical neighbour
      differences, averaged over channels): high for fine texture and sharp edges, the spatial frequency;
    - for 3-channel (RGB) images only: ``red_mean``, ``green_mean``, ``blue_mean`` (channel means),
      ``saturation`` (mean HSV saturation), and ``hue_cos``, ``hue_sin``: cosine and sine of the
      saturation-weighted circular mean of the HSV hue (NaN for an image without any saturation, whose
      hue does not exist).

    Brightness, contrast, channel means and edge energy are in the images' own units. Saturation and
    hue need values in [0, 1]: when any value is outside, the whole batch is mapped to [0, 1] by one
    affine map (its minimum and maximum) for them, which makes them meaningful for globally shifted or
    scaled images; per-channel normalisation (e.g. ImageNet mean and std) should be undone first.

    For other channel counts than 3 the colour descriptors
    ([`COLOUR_DESCRIPTORS`][lightning_stepwise.atlas.COLOUR_DESCRIPTORS]) are left out, not faked: their
    names are in the result's ``left_out``.

    Raises:
        ValueError: when ``images`` are not ``(N, C, H, W)`` or contain NaN or inf.

    Examples:
        >>> images = torch.zeros(2, 3, 4, 4)
        >>> images[1, 0] = 1.0  # the second image is pure red
        >>> d = image_descriptors(images)
        >>> d["red_mean"].tolist(), d["saturation"].tolist(), d["hue_cos"][1].item()
        ([0.0, 1.0], [0.0, 1.0], 1.0)
        >>> gray = image_descriptors(torch.rand(2, 1, 4, 4))
        >>> sorted(gray), gray.left_out[:2]
        (['brightness', 'contrast', 'edge_energy'], ('red_mean', 'green_mean'))
    """
    x = _as_images(images)
    n, c = x.shape[:2]
    gray = x.mean(dim=1)
    values: dict[str, np.ndarray] = {
        "brightness": x.mean(dim=(1, 2, 3)).numpy(),
        "contrast": gray.flatten(1).std(dim=1, unbiased=False).numpy(),
    }
    energy = torch.zeros(n, dtype=torch.float64)
    if x.shape[3] > 1:
        energy += (x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(1, 2, 3))
    if x.shape[2] > 1:
        energy += (x[:, :, 1:] - x[:, :, :-1]).pow(2).mean(dim=(1, 2, 3))
    values["edge_energy"] = energy.numpy()
    if c != 3:
        return ImageDescriptors(values, left_out=COLOUR_DESCRIPTORS)
    for i, name in enumerate(_CHANNELS):
        values[name] = x[:, i].mean(dim=(1, 2)).numpy()
    low, high = x.min(), x.max()
    unit = x
    if low < 0 or high > 1:
        unit = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    saturation, hue = _hsv(unit)
    values["saturation"] = saturation.mean(dim=(1, 2)).numpy()
    cos = (saturation * torch.cos(hue)).sum(dim=(1, 2))
    sin = (saturation * torch.sin(hue)).sum(dim=(1, 2))
    length = torch.hypot(cos, sin)
    defined = length > 1e-12 * saturation.sum(dim=(1, 2)).clamp_min(1e-300)
    nan = torch.full_like(length, float("nan"))
    values["hue_cos"] = torch.where(defined, cos / length.clamp_min(1e-300), nan).numpy()
    values["hue_sin"] = torch.where(defined, sin / length.clamp_min(1e-300), nan).numpy()
    return ImageDescriptors(values)


# ---------------------------------------------------------------------------------------------- modes


def mode_coordinates(features: Tensor | np.ndarray, k: int) -> ModeCoordinates:
    """Per-image coordinates along the leading ``k`` covariance eigen-directions of ``features``.

    The features ``(N, d)`` are centred, the covariance ``Zcᵀ Zc / (N - 1)`` is diagonalised in float64
    (``eigh``; through the ``N x N`` Gram matrix when ``d > N``, same eigenvalues), and the centred
    features are projected on the ``k`` directions with the largest eigenvalues.

    Sign convention: an eigen-direction's sign is arbitrary, so each one is flipped to make the image
    with the largest ``|coordinate|`` (the first one on a tie) have a positive coordinate: the most
    extreme image of a mode is on its positive side, and negating the features (or any feature axis)
    gives the same coordinates.

    Modes beyond the rank of the features (eigenvalue about 0) carry no meaning.

    Args:
        features: ``(N, d)`` finite features, one row per image.
        k: number of leading modes, ``1 <= k <= min(d, N - 1)``.

    Raises:
        ValueError: when ``features`` are not 2-D or not finite, ``k < 1``, ``k > d``, or ``N < k + 1``.

    Examples:
        >>> x = np.array([[1.0, 0.0], [-1.0, 0.1], [3.0, -0.1], [-3.0, 0.0]])
        >>> m = mode_coordinates(x, k=1)
        >>> m.coordinates.ravel().round(2).tolist()
        [1.0, -1.0, 3.0, -3.0]
        >>> np.allclose(mode_coordinates(-x, k=1).coordinates, m.coordinates)
        True
    """
    z = _as_matrix(features)
    if z.ndim != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {z.shape}; flatten them, e.g. features.flatten(1)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (the number of modes to describe), got {k!r}")
    n, d = z.shape
    if n < k + 1:
        raise ValueError(f"k={k} modes need at least k + 1 = {k + 1} images, got N={n}: "
                         f"pass more images or a smaller k (at most {max(n - 1, 0)})")
    if k > d:
        raise ValueError(f"k={k} is larger than the feature dimension d={d}: pass k <= {d}")
    bad = ~np.isfinite(z).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"features contain NaN or inf (rows {rows}, {int(bad.sum())} in all): "
                         "remove those images or fix the model's output before computing modes")
    mean = z.mean(axis=0)
    zc = z - mean
    if d <= n:
        values, vectors = np.linalg.eigh(zc.T @ zc / (n - 1))
        values, directions = values[::-1][:k], vectors[:, ::-1][:, :k]
    else:
        values, vectors = np.linalg.eigh(zc @ zc.T / (n - 1))
        values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
        directions = zc.T @ vectors
        norms = np.linalg.norm(directions, axis=0)
        directions = directions / np.where(norms > 0, norms, 1.0)
    values = np.maximum(values, 0.0)
    coordinates = zc @ directions
    extreme = coordinates[np.abs(coordinates).argmax(axis=0), np.arange(k)]
    signs = np.where(extreme < 0, -1.0, 1.0)
    return ModeCoordinates(coordinates * signs, values.copy(), directions * signs, mean)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the samples where ``y`` is finite; NaN when either side is (numerically) constant."""
    keep = np.isfinite(y)
    if keep.sum() < 3:
        return float("nan")
    xs, ys = x[keep], y[keep]
    xc, yc = xs - xs.mean(), ys - ys.mean()
    x_norm, y_norm = float(np.linalg.norm(xc)), float(np.linalg.norm(yc))
    if x_norm <= 1e-10 * float(np.linalg.norm(xs)) or y_norm <= 1e-10 * float(np.linalg.norm(ys)):
        return float("nan")
    return float(np.clip(xc @ yc / (x_norm * y_norm), -1.0, 1.0))


def _circular_linear(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> float:
    """sqrt(R²) of regressing ``x`` on (1, cos, sin) over the images whose hue is defined; in [0, 1]."""
    keep = np.isfinite(cos) & np.isfinite(sin)
    if keep.sum() < 4:
        return float("nan")
    xc = x[keep] - x[keep].mean()
    design = np.stack([cos[keep], sin[keep]], axis=1)
    design = design - design.mean(axis=0)
    total = float(xc @ xc)
    if total <= 0 or not np.any(np.abs(design) > 1e-12):
        return float("nan")
    beta, *_ = np.linalg.lstsq(design, xc, rcond=None)
    explained = float(np.sum((design @ beta) ** 2))
    return float(math.sqrt(min(max(explained / total, 0.0), 1.0)))


def _strongest(correlations: Mapping[str, float]) -> tuple[str | None, float, list[str]]:
    """The descriptor with the largest |r|, its r, and the others tied with it (see ``_PREFERENCE``)."""
    finite = {name: r for name, r in correlations.items() if math.isfinite(r)}
    if not finite:
        return None, float("nan"), []
    best = max(abs(r) for r in finite.values())
    tied = [name for name, r in finite.items() if abs(r) >= best - _TIE]
    order = {name: i for i, name in enumerate(_PREFERENCE)}
    if "brightness" in tied and all(name in tied for name in _CHANNELS):
        winner = "brightness"
    else:
        winner = min(tied, key=lambda name: (order.get(name, len(order)), list(finite).index(name)))
    return winner, finite[winner], [name for name in tied if name != winner]


def describe_modes(
    coordinates: ModeCoordinates | Tensor | np.ndarray,
    descriptors: Mapping[str, ArrayLike],
    labels: ArrayLike | Tensor | None = None,
) -> list[dict[str, Any]]:
    """Per mode: its correlation with each descriptor, the strongest one, and the class it separates best.

    Each row is a dict:

    - ``mode`` (0 = largest eigenvalue) and ``eigenvalue`` (from a
      [`ModeCoordinates`][lightning_stepwise.atlas.ModeCoordinates], else the variance of the
      coordinate column, ``/ (N - 1)``, which is the same thing);
    - ``correlations``: ``{descriptor: r}``, the Pearson correlation of the mode's coordinate with each
      descriptor over the images where the descriptor is finite (NaN when it is constant). The hue pair
      ``hue_cos``/``hue_sin`` becomes one entry, ``hue``: a circular-linear correlation, the square root
      of the R² of regressing the coordinate on the cosine and sine of the hue, in [0, 1] (a hue has no
      sign; with two regressors it is biased upwards on few images);
    - ``strongest`` (None when no correlation is defined), its correlation ``r`` with its sign, and
      ``ties``: descriptors within 1e-6 of the same |r|. On a tie the more specific descriptor is named
      (a channel mean over brightness), except that brightness is named when all three channel means tie
      with it (an achromatic change);
    - with ``labels`` only: ``auc`` (``{class: one-vs-rest ROC AUC}`` of the coordinate, scikit-learn's
      ``roc_auc_score``), ``best_class`` (the class with the largest ``|AUC - 0.5|``, the first one on a
      tie) and ``best_auc``. An AUC near 1 means the class sits at the positive end of the mode, near 0 at
      the negative end.

    Args:
        coordinates: ``(N, k)`` mode coordinates, or the result of
            [`mode_coordinates`][lightning_stepwise.atlas.mode_coordinates].
        descriptors: ``{name: (N,) values}``, e.g. from
            [`image_descriptors`][lightning_stepwise.atlas.image_descriptors]; any other per-image
            quantity works too.
        labels: ``(N,)`` class labels (at least two classes), or None.

    Raises:
        ValueError: when the lengths disagree, the coordinates are not 2-D, or ``labels`` have one class.

    Examples:
        >>> c = np.array([[-2.0], [-1.0], [1.0], [2.0]])
        >>> rows = describe_modes(c, {"brightness": np.array([0.1, 0.2, 0.3, 0.4])}, labels=[0, 0, 1, 1])
        >>> rows[0]["strongest"], round(rows[0]["r"], 3), rows[0]["best_class"], rows[0]["best_auc"]
        ('brightness', 0.99, 0, 0.0)
    """
    if isinstance(coordinates, ModeCoordinates):
        coords, eigenvalues = np.asarray(coordinates.coordinates, np.float64), coordinates.eigenvalues
    else:
        coords, eigenvalues = _as_matrix(coordinates), None
    if coords.ndim != 2:
        raise ValueError(f"coordinates must be (N, k), got shape {coords.shape}; "
                         "pass mode_coordinates(features, k) or its .coordinates")
    n, k = coords.shape
    if eigenvalues is None:
        eigenvalues = coords.var(axis=0, ddof=1) if n > 1 else np.full(k, np.nan)
    columns: dict[str, np.ndarray] = {}
    for name, value in descriptors.items():
        column = _as_matrix(value).reshape(-1)
        if len(column) != n:
            raise ValueError(f"descriptor {name!r} has {len(column)} values but there are N={n} coordinates: "
                             "compute the descriptors on the same images as the features")
        columns[name] = column
    classes: np.ndarray | None = None
    if labels is not None:
        y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        y = y.reshape(-1)
        if len(y) != n:
            raise ValueError(f"labels has {len(y)} entries but there are N={n} coordinates: "
                             "pass one label per image, in the same order")
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"labels must have at least two classes for a ROC AUC, got only {classes.tolist()}; "
                             "pass labels=None to leave the class columns out")
    from sklearn.metrics import roc_auc_score

    rows: list[dict[str, Any]] = []
    for j in range(k):
        x = coords[:, j]
        correlations: dict[str, float] = {}
        for name, column in columns.items():
            if name == "hue_sin" and "hue_cos" in columns:
                continue
            if name == "hue_cos" and "hue_sin" in columns:
                correlations["hue"] = _circular_linear(x, column, columns["hue_sin"])
            else:
                correlations[name] = _pearson(x, column)
        strongest, r, ties = _strongest(correlations)
        row: dict[str, Any] = {"mode": j, "eigenvalue": float(eigenvalues[j]), "strongest": strongest, "r": r,
                               "ties": ties, "correlations": correlations}
        if classes is not None:
            auc = {_plain(c): float(roc_auc_score(y == c, x)) for c in classes}
            best = max(auc, key=lambda c: abs(auc[c] - 0.5))
            row.update(auc=auc, best_class=best, best_auc=auc[best])
        rows.append(row)
    return rows


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python scalar it holds (for printing and CSV)."""
    return value.item() if isinstance(value, np.generic) else value


def _number(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def format_mode_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of [`describe_modes`][lightning_stepwise.atlas.describe_modes] as a short text table.

    Columns: mode, eigenvalue, strongest descriptor, its r, and with labels the best class and its AUC.

    Examples:
        >>> rows = [{"mode": 0, "eigenvalue": 2.5, "strongest": "brightness", "r": -0.97}]
        >>> print(format_mode_table(rows))
        mode  eigenvalue  strongest   r
           0         2.5  brightness  -0.97
    """
    labelled = any("best_class" in row for row in rows)
    header = ["mode", "eigenvalue", "strongest", "r"] + (["best class", "AUC"] if labelled else [])
    body = []
    for row in rows:
        cells = [str(row["mode"]), _number(row["eigenvalue"]), str(row.get("strongest") or "-"),
                 _number(row.get("r"), ".2f")]
        if labelled:
            cells += [str(row.get("best_class", "-")), _number(row.get("best_auc"), ".3f")]
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {0, 1}  # numbers right-aligned, names left-aligned

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                   strict=True)))

    return "\n".join(line(cells).rstrip() for cells in [header, *body])


def write_modes_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write the rows of [`describe_modes`][lightning_stepwise.atlas.describe_modes] as a CSV, one row per mode.

    Columns: ``mode``, ``eigenvalue``, ``strongest``, ``r``, ``ties`` (``;``-separated), then with
    labels ``best_class`` and ``best_auc``, then ``r_<descriptor>`` for every descriptor and
    ``auc_<class>`` for every class. Undefined values are written as ``nan``.

    Returns:
        The path written.

    Examples:
        >>> import tempfile
        >>> rows = [{"mode": 0, "eigenvalue": 2.0, "strongest": "brightness", "r": 0.9, "ties": [],
        ...          "correlations": {"brightness": 0.9, "contrast": 0.1}}]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     print(write_modes_csv(rows, Path(folder) / "modes.csv").read_text().splitlines()[0])
        mode,eigenvalue,strongest,r,ties,r_brightness,r_contrast
    """
    descriptors: list[str] = []
    classes: list[Any] = []
    for row in rows:
        descriptors += [name for name in row.get("correlations", {}) if name not in descriptors]
        classes += [c for c in row.get("auc", {}) if c not in classes]
    labelled = any("best_class" in row for row in rows)
    header = ["mode", "eigenvalue", "strongest", "r", "ties"] + (["best_class", "best_auc"] if labelled else [])
    header += [f"r_{name}" for name in descriptors] + [f"auc_{c}" for c in classes]
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            cells: list[Any] = [row["mode"], row["eigenvalue"], row.get("strongest") or "", row.get("r"),
                                ";".join(row.get("ties", []))]
            if labelled:
                cells += [row.get("best_class", ""), row.get("best_auc", float("nan"))]
            cells += [row.get("correlations", {}).get(name, float("nan")) for name in descriptors]
            cells += [row.get("auc", {}).get(c, float("nan")) for c in classes]
            writer.writerow(cells)
    return path


# ---------------------------------------------------------------------------------------------- images


def extreme_images(
    coordinates: ModeCoordinates | Tensor | np.ndarray,
    images: Tensor | np.ndarray | None,
    per_side: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the images at both ends of each mode.

    Args:
        coordinates: ``(N, k)`` mode coordinates (or a
            [`ModeCoordinates`][lightning_stepwise.atlas.ModeCoordinates]).
        images: the ``N`` images, only checked to match the coordinates' length (None skips the check).
        per_side: images per end, at least 1 (at most ``N`` are returned).

    Returns:
        ``(top, bottom)``, each ``(k, per_side)`` int64: ``top[j]`` the images with the largest
        coordinates along mode ``j``, largest first; ``bottom[j]`` those with the smallest, smallest
        first. Equal coordinates keep the images' order.

    Examples:
        >>> top, bottom = extreme_images(np.array([[0.5], [-2.0], [3.0], [0.0]]), None, per_side=2)
        >>> top.tolist(), bottom.tolist()
        ([[2, 0]], [[1, 3]])
    """
    coords = np.asarray(coordinates.coordinates) if isinstance(coordinates, ModeCoordinates) \
        else _as_matrix(coordinates)
    if coords.ndim != 2:
        raise ValueError(f"coordinates must be (N, k), got shape {coords.shape}")
    if isinstance(per_side, bool) or not isinstance(per_side, (int, np.integer)) or per_side < 1:
        raise ValueError(f"per_side must be an integer >= 1 (images shown at each end of a mode), got {per_side!r}")
    if images is not None and len(images) != len(coords):
        raise ValueError(f"there are {len(images)} images but {len(coords)} coordinate rows: "
                         "pass the images the features were computed from, in the same order")
    m = min(int(per_side), len(coords))
    top = np.argsort(-coords, axis=0, kind="stable")[:m].T
    bottom = np.argsort(coords, axis=0, kind="stable")[:m].T
    return top.astype(np.int64), bottom.astype(np.int64)


def plot_atlas(
    images: Tensor | np.ndarray,
    coordinates: ModeCoordinates | Tensor | np.ndarray,
    per_side: int,
    path: str | os.PathLike[str] | None,
    modes: Sequence[int] | None = None,
    *,
    rows: Sequence[Mapping[str, Any]] | None = None,
) -> Any:
    """One overview figure: a row per mode, its ``per_side`` lowest then ``per_side`` highest images.

    Within a row the coordinate grows from left to right (the lowest image first, the highest last,
    a red line between the two ends); each image is labelled with its coordinate. Each row is one axes
    holding one image of its tiles. Values are shown on one scale for the whole figure (the
    images' minimum to maximum when outside [0, 1]), so brightness differences stay visible; 1-channel
    images use a gray colormap, other channel counts than 1 and 3 are shown as their channel mean.

    Args:
        images: ``(N, C, H, W)`` images.
        coordinates: ``(N, k)`` mode coordinates (or a
            [`ModeCoordinates`][lightning_stepwise.atlas.ModeCoordinates]).
        per_side: images at each end of a mode.
        path: where to save the figure (PNG for a ``.png`` name), or None to only return it.
        modes: which modes to draw (default all ``k``).
        rows: the rows of [`describe_modes`][lightning_stepwise.atlas.describe_modes], to name each
            mode's strongest descriptor next to it.

    Returns:
        A matplotlib ``Figure`` made without pyplot (no window opens; nothing to close).

    Examples:
        >>> images = torch.rand(6, 1, 4, 4)
        >>> fig = plot_atlas(images, mode_coordinates(images.flatten(1), k=2), 2, None)
        >>> len(fig.axes), fig.axes[0].images[0].get_cmap().name   # one axes per mode
        (2, 'gray')
    """
    from matplotlib.figure import Figure

    x = _as_images(images)
    top, bottom = extreme_images(coordinates, x, per_side)
    coords = np.asarray(coordinates.coordinates) if isinstance(coordinates, ModeCoordinates) \
        else _as_matrix(coordinates)
    k = coords.shape[1]
    chosen = list(range(k)) if modes is None else [int(m) for m in modes]
    if not chosen or any(not 0 <= m < k for m in chosen):
        raise ValueError(f"modes must be a non-empty list of mode indices in [0, {k - 1}], got {modes!r}")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        x = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    if x.shape[1] == 3:
        pictures = x.permute(0, 2, 3, 1).numpy()
    else:
        pictures = x.mean(dim=1).numpy()
    m = top.shape[1]
    height, width = pictures.shape[1], pictures.shape[2]
    gap = max(1, width // 8)
    # One image per mode row, the tiles side by side: one axes per row instead of one per image keeps the
    # figure a small fraction of the atlas's cost (hundreds of axes took seconds to lay out and save).
    stride = width + gap
    cell = 1.1 if 2 * m <= 16 else 0.8
    fig = Figure(figsize=(cell * 2 * m + 1.2, cell * len(chosen) + 0.6), layout="constrained")
    axes = fig.subplots(len(chosen), 1, squeeze=False)[:, 0]
    described = {row["mode"]: row for row in rows or []}
    for ax, j in zip(axes, chosen, strict=True):
        order = np.concatenate([bottom[j], top[j][::-1]])
        mosaic = np.ones((height, 2 * m * stride - gap, *pictures.shape[3:]), dtype=np.float64)
        for col, index in enumerate(order):
            mosaic[:, col * stride:col * stride + width] = np.clip(pictures[index], 0.0, 1.0)
            ax.text(col * stride + (width - 1) / 2, -0.8, f"{coords[index, j]:.2g}", fontsize=6, ha="center",
                    va="bottom")
        if pictures.ndim == 3:
            ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(mosaic, interpolation="nearest")
        ax.axvline(m * stride - gap / 2 - 0.5, color="tab:red", linewidth=2)  # where the two ends meet
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        label = f"mode {j}"
        row = described.get(j)
        if row is not None and row.get("strongest"):
            label += f"\n{row['strongest']}\nr={row['r']:.2f}"
        ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"lowest {m}  ←  coordinate along the mode  →  highest {m}", fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


# ---------------------------------------------------------------------------------------------- the atlas


def _default_features(module: nn.Module, x: Tensor) -> Tensor:
    return module(x).flatten(1)


def model_features(module: nn.Module, images: Tensor, feature_fn: FeatureFn | None = None,
                   batch_size: int = 256) -> Tensor:
    """Features of ``images`` in batches, in eval mode, without gradients; training modes restored.

    ``feature_fn(module, images)`` (default: the module's output, flattened) must return ``(batch, d)``.
    The result is float64 on the CPU.

    Examples:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> model_features(net, torch.rand(5, 1, 4, 4), batch_size=2).shape
        torch.Size([5, 3])
    """
    feature_fn = feature_fn or _default_features
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    was_training = {m: m.training for m in module.modules()}
    parameter = next(iter(module.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else None
    chunks = []
    module.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size].to(device=device, dtype=dtype or images.dtype)
                out = feature_fn(module, batch)
                if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(batch):
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(f"feature_fn must return a 2-D tensor (batch={len(batch)}, features), got "
                                     f"{shape}; flatten it, e.g. feature_fn=lambda m, x: m(x).flatten(1)")
                chunks.append(out.detach().to("cpu", torch.float64))
    finally:
        for m, mode in was_training.items():
            m.training = mode
    return torch.cat(chunks)


def mode_atlas(
    features_or_model: Tensor | np.ndarray | nn.Module,
    images: Tensor | np.ndarray,
    *,
    k: int,
    labels: ArrayLike | Tensor | None = None,
    per_side: int = 8,
    output_dir: str | os.PathLike[str] | None = None,
    feature_fn: FeatureFn | None = None,
    batch_size: int = 256,
) -> Atlas:
    """What the leading ``k`` modes of an embedding mean, for a batch of images.

    Features come from ``features_or_model``: an ``(N, d)`` tensor or array is used as it is; an
    ``nn.Module`` is run on ``images`` in batches of ``batch_size`` under ``torch.no_grad()`` in eval mode
    (BatchNorm and Dropout frozen; every submodule's training mode is restored afterwards, also on
    errors), on the device and in the floating dtype of its parameters. ``feature_fn(module, images)``
    picks the features; by default the module's output, flattened. To look at an inner point, use
    [`point_features`][lightning_stepwise.probe.point_features], e.g. ``feature_fn=point_features("backbone")``.

    The features go through [`mode_coordinates`][lightning_stepwise.atlas.mode_coordinates], the
    images through [`image_descriptors`][lightning_stepwise.atlas.image_descriptors], and both (with
    ``labels``) through [`describe_modes`][lightning_stepwise.atlas.describe_modes]. With
    ``output_dir``, ``modes.csv`` ([`write_modes_csv`][lightning_stepwise.atlas.write_modes_csv]) and
    ``atlas.png`` ([`plot_atlas`][lightning_stepwise.atlas.plot_atlas]) are written there (the folder is
    created).

    Args:
        features_or_model: ``(N, d)`` features of ``images``, or the model to compute them with.
        images: ``(N, C, H, W)`` images, in any range (see
            [`image_descriptors`][lightning_stepwise.atlas.image_descriptors]).
        k: number of leading modes, ``1 <= k < N``.
        labels: ``(N,)`` class labels, for the one-vs-rest AUC columns; None leaves them out.
        per_side: images shown at each end of a mode in ``atlas.png``.
        output_dir: folder for ``modes.csv`` and ``atlas.png``; None writes nothing.
        feature_fn: ``fn(module, images) -> (batch, d)`` features; only with a module.
        batch_size: images per forward pass; only with a module.

    Raises:
        ValueError: when images are not ``(N, C, H, W)``, there are fewer than ``k + 1`` images, the
            features do not have one row per image, or ``feature_fn`` does not return a 2-D tensor.

    Examples:
        >>> images = torch.rand(12, 3, 6, 6)
        >>> images[:6] += 0.5  # half of the images are brighter
        >>> atlas = mode_atlas(torch.nn.Flatten(), images, k=2, labels=[1] * 6 + [0] * 6)
        >>> atlas.rows[0]["strongest"], atlas.rows[0]["best_class"], abs(atlas.rows[0]["best_auc"] - 0.5)
        ('brightness', 0, 0.5)
    """
    x = _as_images(images)
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (the number of modes to describe), got {k!r}")
    if n < k + 1:
        raise ValueError(f"k={k} modes need at least k + 1 = {k + 1} images, got {n}: "
                         f"pass more images or a smaller k (at most {max(n - 1, 0)})")
    if isinstance(per_side, bool) or not isinstance(per_side, (int, np.integer)) or per_side < 1:
        raise ValueError(f"per_side must be an integer >= 1 (images shown at each end of a mode), got {per_side!r}")
    if isinstance(features_or_model, nn.Module):
        source = images if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
        features = model_features(features_or_model, source, feature_fn, batch_size)
    else:
        if feature_fn is not None:
            raise ValueError("feature_fn is only used with a model; pass the model instead of features, "
                             "or apply feature_fn yourself")
        features = features_or_model
    if len(features) != n:
        raise ValueError(f"the features have {len(features)} rows but there are {n} images: "
                         "pass the features of these images, one row per image, in the same order")
    modes = mode_coordinates(features, k)
    descriptors = image_descriptors(x)
    rows = describe_modes(modes, descriptors, labels)
    atlas = Atlas(coordinates=modes.coordinates, eigenvalues=modes.eigenvalues, directions=modes.directions,
                  descriptors=descriptors, rows=rows, left_out=descriptors.left_out)
    if output_dir is not None:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        atlas.csv_path = write_modes_csv(rows, folder / "modes.csv")
        atlas.figure_path = folder / "atlas.png"
        plot_atlas(x, modes, per_side, atlas.figure_path, rows=rows)
    return atlas
