"""Cost of onset detection: online, per measurement, as the history grows; and offline, per run.

Online, after each measurement StepwiseMonitor converts its history to arrays and calls
``OnsetTracker.update``; this prints the time of both together at several history lengths (rows) and
widths (columns), for a synthetic run whose modes keep being learned. Offline is one ``detect_onsets``
over the whole history (what ``lightning-stepwise report`` runs). Two routes: ``identity`` (the
monitor's default: per-mode columns with identities, ``mode_directions`` of them) and ``sorted`` (sorted
eigenvalues, ``top_k`` columns; spectra recorded without directions).

    python benchmarks/onset_cost.py [--rows 100 1000 10000] [--columns 64 256] [--routes identity sorted]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from lightning_stepwise.history import SpectrumHistory
from lightning_stepwise.mode_identity import ModeMatcher
from lightning_stepwise.onsets import OnsetTracker, detect_onsets
from lightning_stepwise.synthetic import mode_family_run, stepwise_trajectories


def measure(rows: int, columns: int, repeats: int, route: str) -> dict[str, float]:
    """Milliseconds for one online update at ``rows`` rows, and for one offline detection."""
    history = SpectrumHistory(max_rows=rows + repeats + 1)
    tracker = OnsetTracker()
    if route == "identity":
        run = mode_family_run("all", columns, rows=rows + repeats, seed=0)
        matcher = ModeMatcher()
    else:
        run = stepwise_trajectories(columns, rows=rows + repeats, seed=0)

    def append(i: int) -> None:
        modes = None
        if route == "identity":
            ids, values, overlaps = matcher.update(run.eigenvalues[i], run.directions[i])
            modes = {"mode_ids": ids, "mode_eigenvalues": values, "mode_overlap": overlaps}
        history.append(measurement=i, step=int(run.steps[i]), eigenvalues=run.eigenvalues[i], modes=modes)

    def update() -> list[dict[str, float]]:
        arrays = history.as_arrays()
        if route == "identity":
            return tracker.update(arrays["step"], arrays["mode_eigenvalues"], mode_ids=arrays["mode_ids"])
        return tracker.update(arrays["step"], arrays["eigenvalues"])

    for i in range(rows):
        append(i)
        if i >= rows - 20 or i == rows // 2:  # catch up, then follow the last rows one at a time, as a monitor
            update()
    online = []
    for i in range(rows, rows + repeats):
        append(i)
        start = time.perf_counter()
        update()
        online.append(time.perf_counter() - start)
    arrays = history.as_arrays()
    start = time.perf_counter()
    if route == "identity":
        found = detect_onsets(arrays["step"], arrays["mode_eigenvalues"], mode_ids=arrays["mode_ids"])
    else:
        found = detect_onsets(arrays["step"], arrays["eigenvalues"])
    offline = time.perf_counter() - start
    return {"online_ms": 1e3 * float(np.median(online)), "offline_ms": 1e3 * offline, "modes": len(found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--columns", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--routes", nargs="+", default=["identity", "sorted"], choices=["identity", "sorted"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| route | history rows | columns | modes learned | online, per measurement (ms) "
          "| offline, whole run (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for route in args.routes:
        for columns in args.columns:
            for rows in args.rows:
                r = measure(rows, columns, args.repeats, route)
                print(f"| {route} | {rows} | {columns} | {r['modes']} | {r['online_ms']:.1f} "
                      f"| {r['offline_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
