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
from lightning_stepwise.onset_core import ONSET_COLUMNS, RESOLUTION, check_onset_options, find_rise
from lightning_stepwise.onsets import detect_onsets
from lightning_stepwise.trajectory import OnsetInputWarning, running_median

__all__ = [
    "MODE_NUMBERING",
    "RunFiles",
    "RunReport",
    "explain_no_onsets",
    "final_onset_table",
    "format_onset_table",
    "largest_rise",
    "load_onsets",
    "load_spectrum",
    "loss_drops_of",
    "rows_needed",
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
    """Write onset records as ``<stem>.csv`` and ``<stem>.json``.

    The columns are [`ONSET_COLUMNS`][lightning_stepwise.onset_core.ONSET_COLUMNS].

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


#: How the demo and the ``report`` command explain their ``#k`` once: modes numbered from 1, as in
#: ``StepwiseMonitor``'s "mode #3 learned at step ... (3 learned so far)"; the files keep the index from 0.
MODE_NUMBERING = "modes are numbered from 1 here (#1, #2, ...) and from 0 in onsets.csv: #1 is mode 0 there"


def format_onset_table(records: Sequence[Mapping[str, Any]], *, ordinal: bool = False) -> str:
    """The per-mode table for a terminal: mode, onset, rise, plateau, epoch and the matched loss drop.

    ``ordinal`` writes each mode as ``#k``, numbered from 1 (``#1`` is mode 0), as the monitor's lines and the
    command line do; otherwise as its ``mode`` index from 0, as in ``onsets.csv``.

    Examples:
        >>> print(format_onset_table([{"mode": 3, "onset_step": 230.4, "rise_steps": 41.0, "plateau": 0.93}]))
        mode  onset step  rise (steps)  plateau  epoch  loss drop (step)
           3         230            41     0.93      -                 -
        >>> print(format_onset_table([{"mode": 3, "onset_step": 230.4}], ordinal=True).splitlines()[1])
          #4         230             -        -      -                 -
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
        mode = f"#{int(r['mode']) + 1}" if ordinal else f"{int(r['mode'])}"
        line = (f"{mode:>4}  {num(r, 'onset_step', '.0f'):>10}  {num(r, 'rise_steps', '.0f'):>12}  "
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


def _detect(arrays: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> list[dict[str, float]]:
    """The onsets of a history as the ``report`` command finds them: per identity when it has ``mode_ids``."""
    identities = "mode_ids" in arrays and bool((np.asarray(arrays["mode_ids"]) >= 0).any())
    return detect_onsets(arrays["step"], arrays["mode_eigenvalues" if identities else "eigenvalues"],
                         mode_ids=arrays["mode_ids"] if identities else None, epochs=arrays.get("epoch"),
                         times=arrays.get("time"), **options)


def rows_needed(smoothing: int = 7, plateau_rows: int = 5) -> int:
    """About how many measurements the onset detector needs to find one learned mode.

    Half a running-median window at the floor before the rise, the rise, the ``plateau_rows`` rows that
    confirm its plateau, and the last half window, which the running median cannot use yet:
    ``smoothing + plateau_rows + 3``.

    Examples:
        >>> rows_needed()  # the default options: a running median of 7 rows, then 5 confirming rows
        15
    """
    return int(smoothing) + int(plateau_rows) + 3


def _spectrum_rows(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Steps and sorted eigenvalues without all-NaN columns and non-finite rows, clipped below at float32 resolution.

    Values under ``RESOLUTION`` times the largest of their row are round-off: clipped to that level, they
    cannot make rises of a billion.
    """
    steps = np.asarray(arrays["step"], dtype=np.float64).reshape(-1)
    values = np.asarray(arrays["eigenvalues"], dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.shape[1]:
        values = values[:, ~np.all(np.isnan(values), axis=0)]
    keep = np.all(np.isfinite(values), axis=1) & np.isfinite(steps)
    steps, values = steps[keep], values[keep]
    if values.size:
        top = np.max(np.abs(values), axis=1, keepdims=True)
        values = np.maximum(values, np.maximum(RESOLUTION * top, np.finfo(np.float64).tiny))
    return steps, values


def largest_rise(arrays: Mapping[str, np.ndarray], *, smoothing: int = 1) -> dict[str, float] | None:
    """The largest rise of a sorted eigenvalue above its floor (its lowest value so far) in a history.

    With ``smoothing`` > 1 the values are first smoothed by a running median over that many rows and the
    last ``smoothing // 2`` rows are left out: the rise as the onset detector sees it.

    Returns:
        ``eigenvalue`` (its rank, from 1: the columns of the demo's table), ``factor`` (value / floor),
        ``floor`` and ``floor_step``, ``value`` and ``step`` (where the factor is largest); None with fewer than
        two usable rows.

    Examples:
        >>> eigenvalues = np.array([[2.0, 0.1], [2.0, 0.1], [3.0, 1.5], [3.0, 2.0]])
        >>> rise = largest_rise({"step": np.array([0, 10, 20, 30]), "eigenvalues": eigenvalues})
        >>> rise["eigenvalue"], rise["factor"], rise["floor_step"], rise["step"]
        (2, 20.0, 0.0, 30.0)
    """
    steps, values = _spectrum_rows(arrays)
    if smoothing > 1 and len(values):
        usable = max(len(values) - smoothing // 2, 0)
        values, steps = running_median(values, smoothing)[:usable], steps[:usable]
    if len(values) < 2 or values.shape[1] == 0:
        return None
    ratio = values / np.minimum.accumulate(values, axis=0)
    row, column = (int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
    floor_row = int(np.argmin(values[: row + 1, column]))
    return {"eigenvalue": column + 1, "factor": float(ratio[row, column]), "floor": float(values[floor_row, column]),
            "floor_step": float(steps[floor_row]), "value": float(values[row, column]), "step": float(steps[row])}


def _spacing(steps: np.ndarray) -> str:
    """``steps 0 to 180, every 20`` (or ``every 1 to 40`` when the spacing varies, as with ``"auto"``)."""
    if len(steps) == 1:
        return f"at step {steps[0]:.0f}"
    gaps = np.diff(steps)
    every = f"{gaps[0]:.0f}" if np.ptp(gaps) == 0 else f"{gaps.min():.0f} to {gaps.max():.0f}"
    return f"steps {steps[0]:.0f} to {steps[-1]:.0f}, every {every}"


def explain_no_onsets(
    arrays: Mapping[str, np.ndarray],
    options: Mapping[str, Any] | None = None,
    *,
    onsets: Sequence[Mapping[str, Any]] | None = None,
) -> str | None:
    """Why a history yields no learned mode, and what to change; None when it has one.

    The reasons, computed from the history, the first that applies:

    - *too few measurements*: fewer than [`rows_needed`][lightning_stepwise.report.rows_needed] rows (about 15
      with the default options: a running median of 7 rows, then 5 rows confirming each plateau);
    - *a rise at the very end*: an eigenvalue rose ``min_rise`` times above its floor in the last rows, which
      the running median cannot use yet;
    - *too coarse an interval*: an eigenvalue rose ``min_rise`` times but fell back within fewer measurements
      than the running median keeps (the rises are shorter than a few measurement intervals);
    - *a run too short*: no eigenvalue rose ``min_rise`` times above its floor (the largest rise is named), or
      one did but was still rising at the end, its plateau not confirmed;
    - *nothing stood out*: eigenvalues rose and levelled off, but with the whole spectrum or below
      ``min_relative_plateau`` of the largest.

    Each comes with its fix: more steps, a smaller ``every_n_steps`` (the demo's ``--every-n-steps``), or
    detection options for ``lightning-stepwise report``. Used by the demo and the ``report`` command.

    Args:
        arrays: a history as [`StepwiseMonitor.history`][lightning_stepwise.monitor.StepwiseMonitor.history] or
            [`load_spectrum`][lightning_stepwise.report.load_spectrum] returns it (``step``, ``eigenvalues``;
            ``mode_ids`` and ``mode_eigenvalues`` when identity-tracked).
        options: the detection options (see
            [`ONSET_OPTIONS`][lightning_stepwise.onset_core.ONSET_OPTIONS]); defaults for those not given.
        onsets: the onsets already found in ``arrays`` with these options; detected here when not given.

    Examples:
        >>> steps = np.arange(0, 200, 20)  # ten measurements, a mode rising at step 100
        >>> history = {"step": steps, "eigenvalues": np.where(steps >= 100, 1.0, 0.01)[:, None]}
        >>> print(explain_no_onsets(history).split(":")[0])
        too few measurements
        >>> explain_no_onsets({"step": np.arange(40), "eigenvalues": np.ones((40, 1))}, onsets=[{"mode": 0}]) is None
        True
    """
    opts = check_onset_options(**dict(options or {}))
    smoothing, plateau_rows, min_rise = int(opts["smoothing"]), int(opts["plateau_rows"]), float(opts["min_rise"])
    half = smoothing // 2
    steps, values = _spectrum_rows(arrays)
    rows = len(steps)
    if onsets is None and len(np.asarray(arrays["step"])) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OnsetInputWarning)
            try:
                onsets = _detect(arrays, opts)
            except ValueError:  # inputs the detector refuses: the reasons below still hold
                onsets = []
    if onsets:
        return None
    if rows == 0:
        return ("no measurement recorded: the run ended before the first measurement window filled (it takes "
                "`window` samples). Train for more steps.")
    needed = rows_needed(smoothing, plateau_rows)
    interval = float(np.median(np.diff(steps))) if rows > 1 else math.nan
    span = float(steps[-1] - steps[0])
    if rows < needed:
        text = (f"too few measurements: {rows} ({_spacing(steps)}); the detector needs about {needed} to find a "
                f"mode (a running median of {smoothing}, then {plateau_rows} confirming its plateau).")
        longer = (f"train longer: {2 * needed} measurements every {interval:.0f} steps take "
                  f"{2 * needed * interval:.0f} steps") if rows > 1 else "train for more steps"
        every = max(int(span // (2 * needed)), 1)
        if span > 0 and every < interval and int(span // every) + 1 >= needed:  # else only a longer run helps
            return (f"{text} Measure more often: every {every} steps gives {int(span // every) + 1} measurements "
                    f"over these {span:.0f} steps (StepwiseMonitor(every_n_steps={every}), the demo's "
                    f"--every-n-steps {every}); or {longer}.")
        return f"{text} {longer[0].upper()}{longer[1:]}."
    raw = largest_rise(arrays)
    seen = largest_rise(arrays, smoothing=smoothing)
    if seen is None or seen["factor"] < min_rise:
        if raw is not None and raw["factor"] >= min_rise:
            column, row = int(raw["eigenvalue"]) - 1, int(np.flatnonzero(steps == raw["step"])[0])
            up = values[row:, column] >= min_rise * raw["floor"]
            stayed = int(np.argmin(up)) if not up.all() else len(up)  # rows it stayed up, from its peak on
            if row > rows - 1 - half:
                return (f"a rise at the very end: eigenvalue {raw['eigenvalue']} rose {raw['factor']:.0f}x above "
                        f"its floor at step {raw['step']:.0f}, among the last {half} measurements, which the running "
                        f"median of {smoothing} cannot use yet. Train longer: about "
                        f"{(half + plateau_rows + 2) * interval:.0f} more steps confirm its plateau.")
            if stayed <= half:
                every = max(int(interval // (half + 1)), 1)
                return (f"too coarse an interval: eigenvalue {raw['eigenvalue']} rose {raw['factor']:.0f}x above "
                        f"its floor at step {raw['step']:.0f} but was back within {stayed + 1} measurements (every "
                        f"{interval:.0f} steps); the running median of {smoothing} measurements keeps only rises "
                        f"that last {half + 1} or more, so the rises here are shorter than a few measurement "
                        f"intervals. Measure more often: every {every} steps (StepwiseMonitor(every_n_steps={every}), "
                        f"the demo's --every-n-steps {every}); or detect again with a shorter running median "
                        f"(lightning-stepwise report RUN --smoothing {max(2 * stayed - 1, 1)}).")
        if seen is None:
            return f"too few usable measurements: {rows} ({_spacing(steps)}). Train for more steps."
        m = running_median(values, smoothing)[: rows - half, int(seen["eigenvalue"]) - 1]
        rising = len(m) > plateau_rows and m[-1] >= m.max() and m[-1] > 1.02 * m[-1 - plateau_rows]
        lower = f"; or look for smaller rises (lightning-stepwise report RUN --min-rise " \
                f"{max(math.floor(seen['factor']), 2)})" if seen["factor"] >= 3 else ""
        return (f"a run too short: no eigenvalue rose {min_rise:g}x above its floor (the detector's min_rise); the "
                f"largest rise was {seen['factor']:.1f}x (eigenvalue {seen['eigenvalue']}, from step "
                f"{seen['floor_step']:.0f} to step {seen['step']:.0f}{', still rising at the end' if rising else ''}). "
                f"Train longer (e.g. {2 * steps[-1]:.0f} steps){lower}.")
    smoothed = running_median(values, smoothing)[: rows - half]
    risen_columns = 0
    for j in range(smoothed.shape[1]):
        m = smoothed[:, j]
        factor = float(np.max(m / np.minimum.accumulate(m)))
        if factor < min_rise:
            continue
        risen_columns += 1
        if find_rise(m, min_rise, plateau_rows)[2] is None:
            return (f"a run too short: eigenvalue {j + 1} rose {factor:.0f}x above its floor but was still rising at "
                    f"the last measurement the detector can use (step {steps[len(m) - 1]:.0f}), so its plateau is "
                    f"not confirmed: that takes {plateau_rows} measurements that do not exceed it, and the last "
                    f"{half} are beyond the running median. Train longer: at least "
                    f"{(half + plateau_rows + 2) * interval:.0f} more steps (every {interval:.0f} steps).")
    return (f"nothing stood out: {risen_columns} eigenvalue{'s' if risen_columns != 1 else ''} rose {min_rise:g}x "
            f"above {'their' if risen_columns != 1 else 'its'} floor and levelled off, but with the whole spectrum "
            f"(the embedding's scale adapting, early in training) or below min_relative_plateau = "
            f"{opts['min_relative_plateau']:g} of the largest eigenvalue. Train longer for modes to separate, or "
            f"detect again with a smaller plateau threshold (lightning-stepwise report RUN --min-relative-plateau "
            f"{opts['min_relative_plateau'] / 10:g}).")


@dataclass(frozen=True)
class RunReport:
    """What [`report_run`][lightning_stepwise.report.report_run] found and wrote for one ``spectrum*.npz``.

    ``note`` says why no mode was learned and what to change (see
    [`explain_no_onsets`][lightning_stepwise.report.explain_no_onsets]); empty when some were.

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

    When no mode is found (a history of fewer than 3 measurements is not searched), the table is empty and
    the report's ``note`` says why and what to change
    ([`explain_no_onsets`][lightning_stepwise.report.explain_no_onsets]).

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
        onsets = _detect(arrays, onset_options) if len(arrays["step"]) >= 3 else []
        note = "" if onsets else explain_no_onsets(arrays, onset_options, onsets=onsets) or ""
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
