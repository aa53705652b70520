"""Files and figures from a recorded run.

``spectrum.npz`` (all arrays) and ``spectrum.csv`` (scalar columns); ``onsets.csv`` / ``onsets.json``
(one row per learned mode); ``stepwise.png`` (eigenvalue trajectories over the loss).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_stepwise.history import SCALAR_COLUMNS
from lightning_stepwise.onsets import ONSET_COLUMNS, detect_loss_steps, detect_onsets, match_loss_drops

__all__ = [
    "RunReport",
    "format_onset_table",
    "load_onsets",
    "load_spectrum",
    "plot_probe_modes",
    "plot_stepwise",
    "report_run",
    "save_onsets",
    "save_probe",
    "save_spectrum",
]


def save_spectrum(
    arrays: Mapping[str, np.ndarray], directory: str | os.PathLike[str], stem: str = "spectrum"
) -> tuple[Path, Path]:
    """Write ``<stem>.npz`` (every array) and ``<stem>.csv`` (the scalar columns); return both paths.

    Examples:
        >>> import tempfile
        >>> from lightning_stepwise.history import SpectrumHistory
        >>> h = SpectrumHistory(); h.append(measurement=0, step=0, eigenvalues=np.ones(2))
        >>> npz, csv_path = save_spectrum(h.as_arrays(), tempfile.mkdtemp())
        >>> load_spectrum(npz)["eigenvalues"].shape
        (1, 2)
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    npz_path = out / f"{stem}.npz"
    csv_path = out / f"{stem}.csv"
    np.savez(npz_path, **{k: np.asarray(v) for k, v in arrays.items()})
    columns = [c for c in SCALAR_COLUMNS if c in arrays]
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(len(arrays[columns[0]]) if columns else 0):
            writer.writerow([arrays[c][i].item() for c in columns])
    return npz_path, csv_path


def load_spectrum(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``spectrum.npz`` written by :func:`save_spectrum` (or a run folder holding one).

    Examples:
        >>> load_spectrum("missing-run")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no spectrum file at missing-run/spectrum.npz
    """
    p = Path(path)
    if p.is_dir() or p.suffix != ".npz":
        p = p / "spectrum.npz"
    if not p.exists():
        raise FileNotFoundError(f"no spectrum file at {p}")
    with np.load(p) as data:
        return {k: data[k] for k in data.files}


def save_onsets(
    records: Sequence[Mapping[str, Any]], directory: str | os.PathLike[str], stem: str = "onsets"
) -> tuple[Path, Path]:
    """Write onset records as ``<stem>.csv`` and ``<stem>.json`` (columns :data:`ONSET_COLUMNS`).

    Examples:
        >>> import tempfile
        >>> csv_path, json_path = save_onsets([{"mode": 0, "onset_step": 120.0}], tempfile.mkdtemp())
        >>> load_onsets(json_path)[0]["onset_step"]
        120.0
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / f"{stem}.csv", out / f"{stem}.json"
    rows = [{c: r.get(c, math.nan) for c in ONSET_COLUMNS} for r in records]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ONSET_COLUMNS)
        writer.writeheader()
        writer.writerows({c: ("" if _is_nan(v) else v) for c, v in row.items()} for row in rows)
    json_rows = [{c: (None if _is_nan(v) else v) for c, v in row.items()} for row in rows]
    json_path.write_text(json.dumps(json_rows, indent=1) + "\n")
    return csv_path, json_path


def load_onsets(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Read onset records from the ``.json`` or ``.csv`` written by :func:`save_onsets` (NaN for blanks).

    Examples:
        >>> load_onsets("missing-run/onsets.json")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no onset file at missing-run/onsets.json
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no onset file at {p}")
    if p.suffix == ".json":
        rows = json.loads(p.read_text())
    else:
        with p.open(newline="") as f:
            rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)]
    return [{k: (math.nan if v is None else (int(float(v)) if k == "mode" else float(v))) for k, v in r.items()}
            for r in rows]


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def format_onset_table(records: Sequence[Mapping[str, Any]]) -> str:
    """The per-mode table for a terminal: mode, onset, rise, plateau, epoch and the matched loss drop.

    Examples:
        >>> print(format_onset_table([{"mode": 3, "onset_step": 230.4, "rise_steps": 41.0, "plateau": 0.93}]))
        mode  onset step  rise (steps)  plateau  epoch  loss drop (step)
           3         230            41     0.93      -                 -
    """
    header = "mode  onset step  rise (steps)  plateau  epoch  loss drop (step)"
    with_theory = any(not _is_nan(r.get("predicted_onset_step", math.nan)) for r in records)
    if with_theory:
        header += "  predicted  rel. error"
    lines = [header]

    def num(r: Mapping[str, Any], key: str, fmt: str) -> str:
        v = r.get(key, math.nan)
        return "-" if v is None or _is_nan(v) else format(v, fmt)

    for r in records:
        drop = "-"
        if not _is_nan(r.get("loss_drop", math.nan)):
            drop = f"{r['loss_drop']:.3g} ({r['loss_drop_step']:.0f})"
        line = (f"{int(r['mode']):4d}  {num(r, 'onset_step', '.0f'):>10}  {num(r, 'rise_steps', '.0f'):>12}  "
                f"{num(r, 'plateau', '.3g'):>7}  {num(r, 'onset_epoch', '.0f'):>5}  {drop:>16}")
        if with_theory:
            line += f"  {num(r, 'predicted_onset_step', '.0f'):>9}  {num(r, 'relative_error', '+.1%'):>10}"
        lines.append(line)
    if not records:
        lines.append("(no learned mode detected)")
    return "\n".join(lines)


def _log_limits(values: np.ndarray) -> tuple[float | None, float | None]:
    """Log-axis limits that keep the bulk of the curves readable.

    A collapse at initialisation can put the first rows 10 orders of magnitude above the rest, and
    numerically zero eigenvalues can sit 10 below: both are clipped to percentiles of the data.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None
    top = 3 * np.nanpercentile(values[:, 0], 98) if values.shape[1] else finite.max()
    bottom = max(np.percentile(finite, 5) / 3, top * 1e-10)  # at most 10 decades
    if not (np.isfinite(top) and top > bottom > 0):
        return None, None
    return bottom, top


def plot_stepwise(
    arrays: Mapping[str, np.ndarray],
    onsets: Sequence[Mapping[str, Any]] = (),
    loss_drops: Sequence[Mapping[str, Any]] = (),
    *,
    x: str = "step",
    max_modes: int = 64,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    predicted: Mapping[str, np.ndarray] | None = None,
    ylabel: str = "covariance eigenvalue",
) -> Any:
    """Eigenvalue trajectories (log scale, coloured by mode rank) with onsets marked, over the loss.

    Args:
        arrays: a history as :meth:`StepwiseMonitor.history` or :func:`load_spectrum` returns it.
        onsets: records of :func:`~lightning_stepwise.onsets.detect_onsets`; each marked with a dot at
            half its plateau and a thin vertical line.
        loss_drops: records of :func:`~lightning_stepwise.onsets.detect_loss_steps`, marked on the loss.
        x: ``"step"`` or ``"time"`` (effective time: the running sum of the learning rate).
        max_modes: leading eigenvalues drawn.
        title: figure title.
        path: save the figure there (PNG) when given.
        predicted: a theory's curves, drawn dashed: ``step`` (S,), ``eigenvalues`` (S × d, sorted per row)
            and optionally ``loss`` (S,); see :class:`~lightning_stepwise.theory.TheoryPrediction`.
        ylabel: label of the eigenvalue axis (which spectrum it is).

    Returns:
        A matplotlib ``Figure`` made without pyplot (no window opens; nothing to close).

    Examples:
        >>> steps = np.arange(0, 300, 10)
        >>> fig = plot_stepwise({"step": steps, "eigenvalues": np.ones((30, 4)), "loss": np.ones(30)})
        >>> len(fig.axes)  # eigenvalues, loss, colour bar (and "modes learned" over the loss when onsets given)
        3
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if x not in {"step", "time"}:
        raise ValueError(f"x must be 'step' or 'time', got {x!r}")
    steps = np.asarray(arrays["step"], dtype=np.float64)
    xs = np.asarray(arrays["time"], dtype=np.float64) if x == "time" else steps
    if x == "time" and not np.all(np.isfinite(xs)):
        raise ValueError("this history has no effective time (NaN learning rates); plot with x='step'")

    def to_x(step: float) -> float:
        return float(np.interp(step, steps, xs))

    eigenvalues = np.asarray(arrays["eigenvalues"], dtype=np.float64)[:, :max_modes]
    modes = eigenvalues.shape[1]
    loss = np.asarray(arrays.get("loss", np.full(len(steps), np.nan)), dtype=np.float64)
    has_loss = bool(np.isfinite(loss).any())
    # a bare Figure, not pyplot: no GUI backend, nothing left open in notebooks or training processes
    fig = Figure(figsize=(9, 7 if has_loss else 4.5), layout="constrained")
    axes = fig.subplots(2 if has_loss else 1, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [3, 1.3]} if has_loss else None)
    ax = axes[0, 0]
    cmap = matplotlib.colormaps["viridis"]
    norm = Normalize(0, max(modes - 1, 1))
    positive = np.where(eigenvalues > 0, eigenvalues, np.nan)
    for j in range(modes):
        ax.plot(xs, positive[:, j], color=cmap(norm(j)), lw=1.1)
    for r in onsets:
        j = int(r["mode"])
        if j >= modes:
            continue
        ox = to_x(float(r["onset_step"]))
        ax.axvline(ox, color=cmap(norm(j)), lw=0.5, alpha=0.35)
        ax.plot([ox], [0.5 * float(r["plateau"])], "o", ms=4.5, mfc=cmap(norm(j)), mec="black", mew=0.6)
    ax.set_yscale("log")
    if predicted is not None:
        p_steps = np.asarray(predicted["step"], dtype=np.float64)
        p_x = np.interp(p_steps, steps, xs) if x == "time" else p_steps
        p_eig = np.asarray(predicted["eigenvalues"], dtype=np.float64)[:, :modes]
        for j in range(p_eig.shape[1]):
            ax.plot(p_x, np.where(p_eig[:, j] > 0, p_eig[:, j], np.nan), color=cmap(norm(j)), lw=1.0, ls="--",
                    alpha=0.9, label="theory" if j == 0 else None)
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.05), fontsize=8, frameon=False)
    low, high = _log_limits(positive)
    if low is not None:
        ax.set_ylim(low, high)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{len(onsets)} modes learned")
    ax.text(0.99, 0.02, "dots: onsets (half the plateau)", transform=ax.transAxes, ha="right", va="bottom",
            fontsize=8, color="0.3")
    if has_loss:
        lax = axes[1, 0]
        lax.plot(xs, loss, color="black", lw=1.1)
        if predicted is not None and "loss" in predicted:
            lax.plot(p_x, predicted["loss"], color="black", lw=1.0, ls="--", alpha=0.7)
        for d in loss_drops:
            lax.axvline(to_x(float(d["drop_step"])), color="tab:red", lw=0.8, ls="--")
        lax.set_ylabel("loss")
        if np.nanmin(loss) > 0 and np.nanmax(loss) / np.nanmin(loss) > 30:
            lax.set_yscale("log")
        if onsets:  # the staircase the loss should mirror: modes learned so far
            onset_x = np.sort([to_x(float(r["onset_step"])) for r in onsets])
            edges = np.concatenate([[min(xs[0], onset_x[0])], onset_x, [max(xs[-1], onset_x[-1])]])
            count = np.concatenate([[0], np.arange(1, len(onset_x) + 1), [len(onset_x)]])
            cax = lax.twinx()
            cax.step(edges, count, where="post", color="tab:blue", lw=1.0, alpha=0.8)
            cax.set_ylabel("modes learned", color="tab:blue")
            cax.tick_params(axis="y", colors="tab:blue")
            cax.set_ylim(0, max(len(onsets), 1) * 1.1)
    axes[-1, 0].set_xlabel("optimizer step" if x == "step" else "effective time (sum of learning rates)")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[:, 0].tolist(), label="mode (rank)", pad=0.01)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


@dataclass(frozen=True)
class RunReport:
    """What :func:`report_run` found and wrote for one ``spectrum*.npz``.

    Examples:
        >>> import tempfile
        >>> from lightning_stepwise.synthetic import stepwise_trajectories
        >>> run, folder = stepwise_trajectories(8, rows=80, seed=0), tempfile.mkdtemp()
        >>> _ = save_spectrum({"step": run.steps, "eigenvalues": run.eigenvalues, "loss": run.loss}, folder)
        >>> (report,) = report_run(folder)
        >>> report.figure.name, report.onsets_csv.name, len(report.onsets) > 0
        ('stepwise.png', 'onsets.csv', True)
    """

    spectrum_path: Path
    onsets: list[dict[str, float]]
    loss_drops: list[dict[str, float]]
    onsets_csv: Path
    onsets_json: Path
    figure: Path


def report_run(
    run: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    x: str = "step",
    **onset_options: Any,
) -> list[RunReport]:
    """Detect onsets and loss drops again from saved spectra; write the tables and ``stepwise.png``.

    Args:
        run: a ``spectrum*.npz`` file, or a folder searched recursively for them (a logger's run folder).
        output: folder for the files; default: next to each spectrum file.
        x: x axis of the figure, ``"step"`` or ``"time"``.
        **onset_options: passed to :func:`~lightning_stepwise.onsets.detect_onsets`.

    Returns:
        One :class:`RunReport` per spectrum file. For ``spectrum_<point>.npz`` the files are
        ``onsets_<point>.*`` and ``stepwise_<point>.png``.

    Examples:
        >>> report_run("missing-run")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no spectrum*.npz under missing-run
    """
    root = Path(run)
    files = [root] if root.suffix == ".npz" and root.is_file() else sorted(root.rglob("spectrum*.npz"))
    if not files:
        raise FileNotFoundError(f"no spectrum*.npz under {root}")
    reports = []
    for path in files:
        arrays = load_spectrum(path)
        missing = {"step", "eigenvalues"} - set(arrays)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}: not a spectrum file written by StepwiseMonitor")
        suffix = path.stem[len("spectrum"):]
        onsets = detect_onsets(arrays["step"], arrays["eigenvalues"], epochs=arrays.get("epoch"),
                               times=arrays.get("time"), **onset_options)
        loss = arrays.get("loss")
        drops: list[dict[str, float]] = []
        if loss is not None and np.isfinite(loss).sum() >= 3:
            finite = np.isfinite(loss)
            drops = detect_loss_steps(arrays["step"][finite], loss[finite])
        onsets = match_loss_drops(onsets, drops)
        directory = Path(output) if output is not None else path.parent
        csv_path, json_path = save_onsets(onsets, directory, stem=f"onsets{suffix}")
        figure = directory / f"stepwise{suffix}.png"
        use_time = x == "time" and "time" in arrays and bool(np.all(np.isfinite(arrays["time"])))
        plot_stepwise(arrays, onsets, drops, x="time" if use_time else "step", path=figure,
                      title=f"{path.parent.name}/{path.name}: {len(onsets)} modes learned")
        reports.append(RunReport(path, onsets, drops, csv_path, json_path, figure))
    return reports


def plot_probe_modes(
    modes: Sequence[tuple[int, float]],
    *,
    learned_modes: int | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Probe accuracy against the number of leading covariance eigen-directions kept.

    Examples:
        >>> fig = plot_probe_modes([(1, 0.3), (2, 0.55), (4, 0.8), (8, 0.9)], learned_modes=5)
        >>> fig.axes[0].get_xlabel()
        'leading eigen-directions kept (k)'
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    if modes:
        ks, accuracies = zip(*modes, strict=True)
        ax.plot(ks, [100 * a for a in accuracies], "o-", color="tab:blue")
        ax.set_xscale("log", base=2)
    if learned_modes:
        ax.axvline(learned_modes, color="tab:red", ls="--", lw=1, label=f"{learned_modes} modes learned")
        ax.legend(loc="lower right", frameon=False)
    ax.set_xlabel("leading eigen-directions kept (k)")
    ax.set_ylabel("probe top-1 accuracy (%)")
    ax.set_title(title or "which modes carry label information")
    ax.grid(alpha=0.3)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def save_probe(
    rows: Sequence[Mapping[str, Any]],
    modes: Sequence[tuple[int, float]],
    directory: str | os.PathLike[str],
    *,
    learned_modes: int | None = None,
) -> list[Path]:
    """Write ``probe.csv`` (one row per probe run), and ``probe_modes.csv`` / ``probe_modes.png`` when given.

    Examples:
        >>> import tempfile
        >>> paths = save_probe([{"step": 10, "top1": 0.5}], [(1, 0.4), (2, 0.5)], tempfile.mkdtemp())
        >>> [p.name for p in paths]
        ['probe.csv', 'probe_modes.csv', 'probe_modes.png']
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    paths = [out / "probe.csv"]
    with paths[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if _is_nan(r.get(k, math.nan)) else r.get(k)) for k in columns} for r in rows)
    if modes:
        paths.append(out / "probe_modes.csv")
        with paths[-1].open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["k", "top1"])
            writer.writerows(modes)
        paths.append(out / "probe_modes.png")
        plot_probe_modes(modes, learned_modes=learned_modes, path=paths[-1])
    return paths
