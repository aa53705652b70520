"""The files of a recorded run, written by one writer for the monitor and the ``report`` command.

``spectrum.npz`` (all arrays) and ``spectrum.csv`` (scalar columns); ``onsets.csv`` / ``onsets.json``
(one row per learned mode); ``stepwise.png`` (eigenvalue trajectories over the loss, see
[`lightning_stepwise.plots`][lightning_stepwise.plots]); ``problems.json`` (counts of skipped work); ``probe*.csv``
from the probe.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_stepwise.history import SCALAR_COLUMNS
from lightning_stepwise.loss_steps import detect_loss_steps, match_loss_drops
from lightning_stepwise.onset_core import ONSET_COLUMNS, check_onset_options
from lightning_stepwise.onsets import detect_onsets
from lightning_stepwise.trajectory import OnsetInputWarning

__all__ = [
    "RunFiles",
    "RunReport",
    "final_onset_table",
    "format_onset_table",
    "load_onsets",
    "load_spectrum",
    "loss_drops_of",
    "report_run",
    "save_onsets",
    "save_probe",
    "save_problems",
    "save_spectrum",
    "write_run_files",
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
    """Read a ``spectrum.npz`` written by `save_spectrum` (or a run folder holding one).

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
    """Write onset records as ``<stem>.csv`` and ``<stem>.json`` (columns `ONSET_COLUMNS`).

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
    """Read onset records from the ``.json`` or ``.csv`` written by `save_onsets` (NaN for blanks).

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


def loss_drops_of(arrays: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
    """The drops of a history's loss column (none with fewer than 3 finite losses).

    Examples:
        >>> steps = np.arange(60)
        >>> [round(d["drop_step"]) for d in loss_drops_of({"step": steps, "loss": 3.0 - (steps >= 30)})]
        [30]
    """
    loss = np.asarray(arrays.get("loss", []), dtype=np.float64)
    finite = np.isfinite(loss)
    if finite.sum() < 3:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OnsetInputWarning)
        return detect_loss_steps(np.asarray(arrays["step"])[finite], loss[finite])


def final_onset_table(
    arrays: Mapping[str, np.ndarray], onsets: Sequence[Mapping[str, Any]], theory: Any = None
) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
    """The onset table as written at the end of a run, and the loss drops.

    Each onset gets its loss drop, and the theory's prediction when given a
    [`TheoryPrediction`][lightning_stepwise.theory.TheoryPrediction]. The records are new: the inputs are left as they
    are.

    Examples:
        >>> steps = np.arange(60)
        >>> table, drops = final_onset_table({"step": steps, "loss": 3.0 - (steps >= 30)},
        ...                                  [{"mode": 0, "onset_step": 31.0, "rise_steps": 6.0}])
        >>> table[0]["loss_drop_step"]  # half-way between the plateaus, between steps 29 and 30
        29.5
    """
    drops = loss_drops_of(arrays)
    table = match_loss_drops([dict(r) for r in onsets], drops)
    if theory is not None:
        table = theory.annotate(table)
    return table, drops


@dataclass(frozen=True)
class RunFiles:
    """The files `write_run_files` wrote (``None`` where it wrote none) and the figure it drew.

    Examples:
        >>> from pathlib import Path
        >>> RunFiles(Path("onsets.csv"), Path("onsets.json")).figure_path is None
        True
    """

    onsets_csv: Path
    onsets_json: Path
    spectrum_npz: Path | None = None
    spectrum_csv: Path | None = None
    figure_path: Path | None = None
    figure: Any = None


def write_run_files(
    directory: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    onsets: Sequence[Mapping[str, Any]],
    loss_drops: Sequence[Mapping[str, float]] = (),
    *,
    suffix: str = "",
    spectrum: bool = True,
    figure: bool = True,
    x: str = "step",
    title: str | None = None,
    predicted: Mapping[str, np.ndarray] | None = None,
    ylabel: str = "covariance eigenvalue",
) -> RunFiles:
    """Write one tracking point's files: the only writer, used by the monitor and the ``report`` command.

    ``spectrum<suffix>.npz`` / ``.csv`` (when ``spectrum``), ``onsets<suffix>.csv`` / ``.json`` and
    ``stepwise<suffix>.png`` (when ``figure`` and the history has a row). ``x="time"`` falls back to
    steps when the history has no effective time.

    Examples:
        >>> import tempfile
        >>> arrays = {"step": np.arange(3), "eigenvalues": np.ones((3, 2)), "loss": np.ones(3)}
        >>> files = write_run_files(tempfile.mkdtemp(), arrays, [])
        >>> files.spectrum_npz.name, files.onsets_csv.name, files.figure_path.name
        ('spectrum.npz', 'onsets.csv', 'stepwise.png')
    """
    from lightning_stepwise.plots import plot_stepwise

    out = Path(directory)
    npz = csv_path = figure_path = drawn = None
    if spectrum:
        npz, csv_path = save_spectrum(arrays, out, stem=f"spectrum{suffix}")
    onsets_csv, onsets_json = save_onsets(onsets, out, stem=f"onsets{suffix}")
    if figure and len(arrays["step"]):
        use_time = x == "time" and "time" in arrays and bool(np.all(np.isfinite(arrays["time"])))
        figure_path = out / f"stepwise{suffix}.png"
        drawn = plot_stepwise(arrays, onsets, loss_drops, x="time" if use_time else "step", path=figure_path,
                              title=title, predicted=predicted, ylabel=ylabel)
    return RunFiles(onsets_csv=onsets_csv, onsets_json=onsets_json, spectrum_npz=npz, spectrum_csv=csv_path,
                    figure_path=figure_path, figure=drawn)


def save_problems(counts: Mapping[str, int], directory: str | os.PathLike[str],
                  name: str = "problems.json") -> Path:
    """Write the counts of skipped work (see [`lightning_stepwise.problems`][lightning_stepwise.problems]) as JSON.

    Counts already in the file under other names are kept: the monitor and the probe each write their own.

    Examples:
        >>> import tempfile
        >>> save_problems({"failed_solves": 0}, tempfile.mkdtemp()).name
        'problems.json'
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(counts)
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return path


@dataclass(frozen=True)
class RunReport:
    """What [`report_run`][lightning_stepwise.report.report_run] found and wrote for one ``spectrum*.npz``.

    ``note`` says why there are no onsets when the history is too short to look for them.

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
    figure: Path | None
    note: str = ""


def report_run(
    run: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    x: str = "step",
    **onset_options: Any,
) -> list[RunReport]:
    """Detect onsets and loss drops again from saved spectra; write the tables and ``stepwise.png``.

    A history of fewer than 3 measurements is drawn as it is, with an empty onset table and a
    ``note`` saying why.

    Args:
        run: a ``spectrum*.npz`` file, or a folder searched recursively for them (a logger's run folder).
        output: folder for the files; default: next to each spectrum file.
        x: x axis of the figure, ``"step"`` or ``"time"``.
        **onset_options: passed to [`detect_onsets`][lightning_stepwise.onsets.detect_onsets].

    Returns:
        One [`RunReport`][lightning_stepwise.report.RunReport] per spectrum file. For ``spectrum_<point>.npz`` the
        files are
        ``onsets_<point>.*`` and ``stepwise_<point>.png``.

    Examples:
        >>> report_run("missing-run")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no spectrum*.npz under missing-run
    """
    check_onset_options(**onset_options)
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
        rows = len(arrays["step"])
        note = ""
        if rows < 3:
            onsets: list[dict[str, float]] = []
            note = (f"{rows} measurement{'s' if rows != 1 else ''}: finding learned modes needs at least 3 "
                    "(measure more often with every_n_steps, or train longer)")
        else:
            identities = "mode_ids" in arrays and bool((np.asarray(arrays["mode_ids"]) >= 0).any())
            onsets = detect_onsets(arrays["step"], arrays["mode_eigenvalues" if identities else "eigenvalues"],
                                   mode_ids=arrays["mode_ids"] if identities else None, epochs=arrays.get("epoch"),
                                   times=arrays.get("time"), **onset_options)
        table, drops = final_onset_table(arrays, onsets)
        suffix = path.stem[len("spectrum"):]
        files_written = write_run_files(Path(output) if output is not None else path.parent, arrays, table, drops,
                                        suffix=suffix, spectrum=False, x=x,
                                        title=f"{path.parent.name}/{path.name}: {len(table)} modes learned")
        reports.append(RunReport(path, table, drops, files_written.onsets_csv, files_written.onsets_json,
                                 files_written.figure_path, note))
    return reports


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
        from lightning_stepwise.plots import plot_probe_modes

        plot_probe_modes(modes, learned_modes=learned_modes, path=paths[-1])
    return paths
