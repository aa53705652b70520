"""Compare runs: their learned modes over time side by side, and how alike their final modes are.

Two questions, two halves:

- *When* does each run learn its modes? [`load_runs`][lightning_stepwise.compare.load_runs] reads the
  ``spectrum*.npz`` files that [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor] wrote and
  detects every run's onsets again with the same options, so that the runs are measured alike;
  [`format_onset_comparison`][lightning_stepwise.compare.format_onset_comparison] puts their onset steps in one
  table and [`plot_comparison`][lightning_stepwise.compare.plot_comparison] overlays their learned-mode curves.
- *What* have they learned, and is it the same? [`similarity_table`][lightning_stepwise.compare.similarity_table]
  compares every pair of models on the same images: the principal angles between their top-k mode subspaces
  and linear CKA, per k ([`mode_similarity`][lightning_stepwise.similarity.mode_similarity]).

No Lightning here: files, arrays and modules in, tables and a figure out.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from lightning_stepwise.atlas import FeatureFn, model_features
from lightning_stepwise.similarity import mode_similarity

__all__ = [
    "RunCurves",
    "format_onset_comparison",
    "format_similarity_table",
    "load_runs",
    "modes_learned_by",
    "plot_comparison",
    "run_curves",
    "similarity_table",
]


@dataclass
class RunCurves:
    """One run's measured spectrum and the modes detected in it.

    Attributes:
        label: the run's name in tables and legends.
        arrays: the history, as [`load_spectrum`][lightning_stepwise.report.load_spectrum] returns it.
        onsets: one onset record per learned mode, in the order learned.
        source: the ``spectrum*.npz`` file it was read from (None when built from arrays).

    Examples:
        >>> run = run_curves({"step": np.arange(3), "eigenvalues": np.ones((3, 2))}, label="flat")
        >>> run.label, run.modes_learned, run.last_step
        ('flat', 0, 2)
    """

    label: str
    arrays: dict[str, np.ndarray]
    onsets: list[dict[str, float]] = field(default_factory=list)
    source: Path | None = None

    @property
    def modes_learned(self) -> int:
        """How many modes the run learned."""
        return len(self.onsets)

    @property
    def last_step(self) -> int:
        """The step of the run's last measurement (-1 when it has none)."""
        steps = np.asarray(self.arrays["step"])
        return int(steps[-1]) if steps.size else -1


def run_curves(arrays: Mapping[str, np.ndarray], *, label: str, source: str | os.PathLike[str] | None = None,
               **onset_options: Any) -> RunCurves:
    """A [`RunCurves`][lightning_stepwise.compare.RunCurves] from a history, its onsets detected as ``report`` does.

    Identity-tracked histories (``mode_ids``) are detected per identity, others on the sorted spectrum;
    histories of fewer than 3 measurements get no onsets.

    Examples:
        >>> steps = np.arange(0, 400, 4)
        >>> rise = 1e-4 + 1 / (1 + np.exp(-(steps - 200) / 8.0))            # one sigmoid step at step 200
        >>> run = run_curves({"step": steps, "eigenvalues": np.stack([rise, np.full(100, 1e-4)], 1)}, label="a")
        >>> run.modes_learned, round(run.onsets[0]["onset_step"] / 10) * 10
        (1, 200)
    """
    from lightning_stepwise.onset_core import check_onset_options
    from lightning_stepwise.report import _detect

    check_onset_options(**onset_options)
    data = {name: np.asarray(value) for name, value in arrays.items()}
    missing = {"step", "eigenvalues"} - set(data)
    if missing:
        where = f"{source} " if source is not None else ""
        raise ValueError(f"{where}lacks {sorted(missing)}: not a spectrum written by StepwiseMonitor")
    onsets = _detect(data, onset_options) if len(data["step"]) >= 3 else []
    onsets = sorted(onsets, key=lambda r: r["onset_step"])
    return RunCurves(label, data, onsets, Path(source) if source is not None else None)


def _spectrum_files(run: Path) -> list[Path]:
    if run.is_file():
        if run.suffix != ".npz":
            raise ValueError(f"{run} is not a spectrum*.npz file or a run folder")
        return [run]
    if not run.is_dir():
        raise FileNotFoundError(f"no run at {run}: pass a run folder (searched for spectrum*.npz) or a spectrum file")
    files = sorted(run.rglob("spectrum*.npz"))
    if not files:
        raise FileNotFoundError(f"no spectrum*.npz under {run}: StepwiseMonitor writes them at fit end into "
                                "<log_dir>/stepwise/ (or its dirpath=)")
    return files


def _unique_labels(paths: Sequence[Path], given: Sequence[str] | None) -> list[str]:
    """Each file's shortest distinguishing name: the folder above ``stepwise/``, then more of its path."""
    if given is not None:
        return list(given)

    def parts(path: Path) -> list[str]:
        names = [p for p in path.resolve().parent.parts if p not in {"stepwise", "/"}]
        stem = path.stem[len("spectrum"):].lstrip("_")
        return names + ([stem] if stem else [])

    split = [parts(p) for p in paths]
    for depth in range(1, max(len(s) for s in split) + 1):
        labels = ["/".join(s[-depth:]) for s in split]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def load_runs(runs: Sequence[str | os.PathLike[str]], *, labels: Sequence[str] | None = None,
              **onset_options: Any) -> list[RunCurves]:
    """Read several runs' spectra and detect their onsets alike.

    Args:
        runs: run folders (each searched recursively for ``spectrum*.npz``, so a folder with several
            versions or tracked points gives several runs) or ``spectrum*.npz`` files.
        labels: one name per spectrum file found; default: the shortest part of each file's path that
            tells the runs apart (e.g. ``barlow_twins`` for ``runs/barlow_twins/stepwise/spectrum.npz``).
        **onset_options: as [`detect_onsets`][lightning_stepwise.onsets.detect_onsets] takes them, the same for
            every run.

    Raises:
        FileNotFoundError: a run that does not exist or holds no spectrum file.
        ValueError: a wrong number of labels, or a file that is not a spectrum.

    Examples:
        >>> load_runs(["missing-run"])
        Traceback (most recent call last):
        ...
        FileNotFoundError: no run at missing-run: pass a run folder (searched for spectrum*.npz) or a spectrum file
    """
    from lightning_stepwise.report import load_spectrum

    if not runs:
        raise ValueError("pass at least one run folder or spectrum file")
    files = [file for run in runs for file in _spectrum_files(Path(run))]
    if labels is not None and len(labels) != len(files):
        found = ", ".join(str(f) for f in files)
        raise ValueError(f"{len(labels)} labels for {len(files)} spectrum files ({found}): pass one label per file")
    names = _unique_labels(files, labels)
    return [run_curves(load_spectrum(f), label=name, source=f, **onset_options) for f, name in zip(files, names,
                                                                                                    strict=True)]


def modes_learned_by(run: RunCurves, steps: Sequence[float] | np.ndarray) -> np.ndarray:
    """How many modes ``run`` had learned by each of ``steps`` (counting onsets at or before the step).

    Examples:
        >>> run = RunCurves("a", {"step": np.arange(10)}, [{"onset_step": 2.0}, {"onset_step": 5.0}])
        >>> modes_learned_by(run, [0, 2, 4, 9]).tolist()
        [0, 1, 1, 2]
    """
    onsets = np.sort([float(r["onset_step"]) for r in run.onsets])
    return np.searchsorted(onsets, np.asarray(steps, dtype=np.float64), side="right")


def format_onset_comparison(runs: Sequence[RunCurves]) -> str:
    """One table: per learned mode ``#k`` (from 1, in the order learned), each run's onset step.

    The last rows give each run's count of learned modes and its last measured step, so that a blank
    reads as "not learned within this run", not "missing".

    Examples:
        >>> a = RunCurves("bt", {"step": np.array([0, 500])}, [{"onset_step": 40.0}, {"onset_step": 210.0}])
        >>> b = RunCurves("vicreg", {"step": np.array([0, 500])}, [{"onset_step": 25.0}])
        >>> print(format_onset_comparison([a, b]))
        onset step            bt     vicreg
        #1                    40         25
        #2                   210          -
        modes learned          2          1
        last step            500        500
    """
    if not runs:
        return "(no runs)"
    width = max(9, *(len(r.label) for r in runs))
    deepest = max((r.modes_learned for r in runs), default=0)
    lines = ["onset step   " + "".join(f"  {r.label:>{width}}" for r in runs)]
    for k in range(deepest):
        cells = [f"{r.onsets[k]['onset_step']:.0f}" if k < r.modes_learned else "-" for r in runs]
        lines.append(f"{'#' + str(k + 1):<13}" + "".join(f"  {c:>{width}}" for c in cells))
    lines.append(f"{'modes learned':<13}" + "".join(f"  {r.modes_learned:>{width}d}" for r in runs))
    lines.append(f"{'last step':<13}" + "".join(f"  {r.last_step:>{width}d}" for r in runs))
    return "\n".join(lines)


def _learned_curves(run: RunCurves) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per learned mode: (steps, eigenvalue / plateau, onset step); its own identity's curve when tracked."""
    from lightning_stepwise.plots import _identity_curves

    steps = np.asarray(run.arrays["step"], dtype=np.float64)
    own = _identity_curves(run.arrays, run.onsets)
    sorted_values = np.asarray(run.arrays["eigenvalues"], dtype=np.float64)
    curves = []
    for record in run.onsets:
        mode = int(record["mode"])
        if own is not None:
            values = own[mode]
        elif mode < sorted_values.shape[1]:
            values = sorted_values[:, mode]
        else:
            continue
        plateau = float(record.get("plateau", math.nan))
        if not (math.isfinite(plateau) and plateau > 0):
            finite = values[np.isfinite(values)]
            plateau = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        curves.append((steps, values / plateau, float(record["onset_step"])))
    return curves


def plot_comparison(runs: Sequence[RunCurves], *, title: str | None = None,
                    path: str | os.PathLike[str] | None = None) -> Any:
    """Several runs in one figure: their learned modes' curves, and the count of modes learned over steps.

    Top: each learned mode's eigenvalue divided by its plateau (log scale), one colour per run, a dot at
    its onset, so runs whose eigenvalues live on different scales (a normalised loss, another width) share
    an axis. Bottom: how many modes each run has learned by each step, a staircase per run.

    Args:
        runs: from [`load_runs`][lightning_stepwise.compare.load_runs] or
            [`run_curves`][lightning_stepwise.compare.run_curves].
        title: figure title.
        path: save the figure there (PNG) when given.

    Returns:
        A matplotlib ``Figure`` made without pyplot.

    Examples:
        >>> steps = np.arange(0, 400, 4)
        >>> rise = 1e-4 + 1 / (1 + np.exp(-(steps - 200) / 8.0))
        >>> run = run_curves({"step": steps, "eigenvalues": rise[:, None]}, label="a")
        >>> len(plot_comparison([run]).axes)
        2
    """
    import matplotlib
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("plot_comparison needs at least one run")
    fig = Figure(figsize=(9, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    colours = matplotlib.colormaps["tab10"]
    lowest = 1.0
    for i, run in enumerate(runs):
        colour = colours(i % 10)
        for j, (steps, values, onset) in enumerate(_learned_curves(run)):
            positive = values[np.isfinite(values) & (values > 0)]
            lowest = min(lowest, float(positive.min())) if positive.size else lowest
            top.plot(steps, values, color=colour, linewidth=1.1, alpha=0.85,
                     label=f"{run.label} ({run.modes_learned} learned)" if j == 0 else None)
            top.plot([onset], [0.5], "o", color=colour, markersize=4)
        last = max(run.last_step, 0)
        grid = np.unique(np.concatenate([[0.0, float(last)], [r["onset_step"] for r in run.onsets]]))
        bottom.step(grid, modes_learned_by(run, grid), where="post", color=colour, linewidth=1.6, label=run.label)
    top.set_yscale("log")
    top.set_ylim(max(lowest / 1.5, 1e-5), 3)  # a collapsed start below 1e-5 of the plateau is clipped
    top.axhline(0.5, color="0.6", linewidth=0.6, linestyle=":")
    top.set_ylabel("eigenvalue / plateau\n(learned modes)")
    if top.get_legend_handles_labels()[0]:
        top.legend(loc="lower right", fontsize=8)
    bottom.set_ylabel("modes learned")
    bottom.set_xlabel("step")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.yaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title or f"{len(runs)} runs: learned modes (dots: onsets, half the plateau)")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def similarity_table(
    models: Mapping[str, nn.Module | Tensor | np.ndarray],
    images: Tensor | None = None,
    *,
    k: int = 8,
    ks: Sequence[int] | None = None,
    feature_fn: FeatureFn | None = None,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Every pair of models compared on the same images: top-k mode-subspace similarity and CKA, per k.

    Each model's features are computed once (one forward pass over ``images`` in eval mode, without
    gradients); feature matrices are taken as they are. See
    [`mode_similarity`][lightning_stepwise.similarity.mode_similarity] for the measures.

    Args:
        models: name -> module, or name -> ``(N, d)`` features of the same ``N`` images.
        images: ``(N, C, H, W)`` images for the modules.
        k: the largest number of modes compared.
        ks: the numbers of modes reported (default 1, 2, 4, ..., ``k``).
        feature_fn: ``feature_fn(module, images) -> (batch, d)``, e.g.
            [`point_features`][lightning_stepwise.probe.point_features]``("backbone")``; default the output.
        batch_size: images per forward pass.

    Returns:
        One row per pair and k: ``a``, ``b``, ``k``, ``subspace``, ``min_cosine``, ``cka``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((300, 6)) * np.array([6.0, 5, 4, 3, 2, 1])
        >>> q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
        >>> rows = similarity_table({"a": x, "rotated": x @ q, "noise": rng.standard_normal((300, 6))}, k=2)
        >>> [(r["a"], r["b"], r["k"], round(r["subspace"], 2)) for r in rows if r["k"] == 2]
        [('a', 'rotated', 2, 1.0), ('a', 'noise', 2, 0.01), ('rotated', 'noise', 2, 0.01)]
    """
    if len(models) < 2:
        raise ValueError(f"similarity_table compares pairs: pass at least two models, got {len(models)}")
    features: dict[str, Tensor | np.ndarray] = {}
    for name, model in models.items():
        if isinstance(model, nn.Module):
            if images is None:
                raise ValueError(f"{name} is a module: pass the images to run it on (images=...)")
            features[name] = model_features(model, images, feature_fn, batch_size)
        else:
            features[name] = model
    rows = []
    for a, b in itertools.combinations(features, 2):
        for row in mode_similarity(features[a], features[b], k=k, ks=ks):
            rows.append({"a": a, "b": b, **row})
    return rows


def format_similarity_table(rows: Sequence[Mapping[str, Any]], *, measure: str = "subspace") -> str:
    """The pairs as rows and k as columns, for one measure (``subspace``, ``min_cosine`` or ``cka``).

    Examples:
        >>> rows = [{"a": "bt", "b": "vicreg", "k": 1, "subspace": 0.98}, {"a": "bt", "b": "vicreg", "k": 4,
        ...          "subspace": 0.61}]
        >>> print(format_similarity_table(rows))
        subspace       k=1    k=4
        bt ~ vicreg   0.98   0.61
    """
    if measure not in {"subspace", "min_cosine", "cka"}:
        raise ValueError(f"measure must be 'subspace', 'min_cosine' or 'cka', got {measure!r}")
    if not rows:
        return "(no pairs)"
    ks = sorted({int(r["k"]) for r in rows})
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in rows))
    values = {(r["a"], r["b"], int(r["k"])): r[measure] for r in rows}
    names = [f"{a} ~ {b}" for a, b in pairs]
    width = max(len(measure), *(len(n) for n in names))
    lines = [f"{measure:<{width}}" + "".join(f"  {'k=' + str(k):>5}" for k in ks)]
    for (a, b), name in zip(pairs, names, strict=True):
        cells = [values.get((a, b, k)) for k in ks]
        lines.append(f"{name:<{width}}" + "".join(f"  {c:>5.2f}" if c is not None else f"  {'-':>5}" for c in cells))
    return "\n".join(lines)
