"""Cost of onset detection: online, per measurement, as the history grows; and offline, per run.

Online, after each measurement StepwiseMonitor converts its history to arrays and calls
``OnsetTracker.update``; this prints the time of both together at several history lengths (rows) and
widths (top-k columns), for a synthetic run whose modes keep being learned. Offline is one
``detect_onsets`` over the whole history (what ``lightning-stepwise report`` runs).

    python benchmarks/onset_cost.py [--rows 100 1000 10000] [--columns 64 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from lightning_stepwise.history import SpectrumHistory
from lightning_stepwise.onsets import OnsetTracker, detect_onsets
from lightning_stepwise.synthetic import stepwise_trajectories


def measure(rows: int, columns: int, repeats: int) -> dict[str, float]:
    """Milliseconds for one online update at ``rows`` rows, and for one offline detection."""
    run = stepwise_trajectories(columns, rows=rows + repeats, seed=0)
    history = SpectrumHistory(max_rows=rows + repeats + 1)
    tracker = OnsetTracker()
    for i in range(rows):
        history.append(measurement=i, step=int(run.steps[i]), eigenvalues=run.eigenvalues[i])
    arrays = history.as_arrays()
    tracker.update(arrays["step"], arrays["eigenvalues"])  # catch up, as a monitor would have
    online = []
    for i in range(rows, rows + repeats):
        history.append(measurement=i, step=int(run.steps[i]), eigenvalues=run.eigenvalues[i])
        start = time.perf_counter()
        arrays = history.as_arrays()
        tracker.update(arrays["step"], arrays["eigenvalues"])
        online.append(time.perf_counter() - start)
    start = time.perf_counter()
    found = detect_onsets(arrays["step"], arrays["eigenvalues"])
    offline = time.perf_counter() - start
    return {"online_ms": 1e3 * float(np.median(online)), "offline_ms": 1e3 * offline, "modes": len(found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--columns", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| history rows | columns (top_k) | modes learned | online, per measurement (ms) | offline, whole run (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for columns in args.columns:
        for rows in args.rows:
            r = measure(rows, columns, args.repeats)
            print(f"| {rows} | {columns} | {r['modes']} | {r['online_ms']:.1f} | {r['offline_ms']:.1f} |")


if __name__ == "__main__":
    main()
