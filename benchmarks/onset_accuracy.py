"""Onset-detection accuracy on synthetic runs with known truth, by family, for both detection routes.

Each run comes from :func:`lightning_stepwise.synthetic.mode_family_run`: modes as slowly rotating
orthonormal directions whose eigenvalues rise as logistic curves in linear scale, with multiplicative
noise, measured through finite windows (a Wishart draw per row), non-uniformly spaced. Families (see
``MODE_FAMILIES``): ``collapse`` (a top mode 1e3-1e6 above the plateaus decaying over 10-50 % of the run),
``early`` (half the modes rise in the first 10 %), ``spread`` (plateaus over 0.3-3), ``all`` (the three).

Two routes see the same measurements:

- ``identity``: directions matched by :class:`~lightning_stepwise.mode_identity.ModeMatcher`, onsets per
  identity. A detection counts only if its identity's direction at the onset is the true mode's
  (squared cosine > 0.5) and its time is within the tolerance;
- ``sorted``: the sorted eigenvalues alone (old files, offline use). Sorted spectra cannot say which
  mode is which, so this route is judged on times: detected and true onsets paired closest first.

Per setting it prints the fraction of true onsets found, the fraction of detections that are false, and
the median and 90th-percentile onset error in measurement intervals.

    python benchmarks/onset_accuracy.py [--runs 10] [--families collapse early spread all]
                                        [--modes 16 32 64] [--noise 0.05 0.15 0.3] [--routes identity sorted]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lightning_stepwise.loss_steps import closest_pairs
from lightning_stepwise.mode_identity import follow_modes
from lightning_stepwise.onsets import detect_onsets
from lightning_stepwise.synthetic import MODE_FAMILIES, SyntheticModeRun, mode_family_run

GOAL = {"found": 0.95, "false": 0.05, "median_error": 1.0}


def identities(run: SyntheticModeRun) -> tuple[np.ndarray, np.ndarray, list[dict[int, np.ndarray]]]:
    """(mode_ids, mode values, per row {identity: direction}) as the monitor records them."""
    followed = follow_modes(run.eigenvalues, run.directions, keep_directions=True)
    return followed.mode_ids, followed.mode_eigenvalues, followed.directions or []


def score(run: SyntheticModeRun, route: str, tolerance: float) -> tuple[int, int, list[tuple[int, int]], list[float]]:
    """(true onsets, detections, matched pairs, onset errors in intervals) of one run on one route."""
    if route == "identity":
        ids, values, directions = identities(run)
        onsets = detect_onsets(run.steps, values, mode_ids=ids)
    else:
        onsets = detect_onsets(run.steps, run.eigenvalues)
    found = np.array([o["onset_step"] for o in onsets])
    if route == "identity":  # a detection and a true mode pair only when they are the same direction
        pairs = []
        taken: set[int] = set()
        for j, o in enumerate(onsets):
            row = int(np.clip(np.searchsorted(run.steps, o["onset_step"]), 0, len(run.steps) - 1))
            direction = next((directions[r][int(o["identity"])] for r in range(row, len(run.steps))
                              if int(o["identity"]) in directions[r]), None)
            if direction is None:
                continue
            overlap = (run.onset_directions.T @ direction) ** 2
            for i in np.argsort(-overlap):
                if overlap[i] <= 0.5:
                    break
                if i not in taken and abs(run.onset_steps[i] - o["onset_step"]) <= tolerance * run.interval:
                    pairs.append((int(i), j))
                    taken.add(int(i))
                    break
    else:
        pairs = closest_pairs(run.onset_steps, found, tolerance * run.interval)
    errors = [abs(run.onset_steps[i] - found[j]) / run.interval for i, j in pairs]
    return len(run.onset_steps), len(found), pairs, errors


def evaluate(family: str, modes: int, noise: float, runs: int, route: str, tolerance: float) -> dict[str, float]:
    """Aggregate accuracy over ``runs`` seeds for one setting."""
    n_true = n_found = n_matched = 0
    errors: list[float] = []
    seconds = 0.0
    for seed in range(runs):
        run = mode_family_run(family, modes, noise=noise, seed=seed)
        start = time.perf_counter()
        t, f, pairs, e = score(run, route, tolerance)
        seconds += time.perf_counter() - start
        n_true, n_found, n_matched = n_true + t, n_found + f, n_matched + len(pairs)
        errors += e
    found = n_matched / max(n_true, 1)
    false = (n_found - n_matched) / max(n_found, 1)
    median = float(np.median(errors)) if errors else float("nan")
    return {"family": family, "route": route, "modes": modes, "noise": noise, "true": n_true, "found": found,
            "false": false, "median_error": median,
            "p90_error": float(np.percentile(errors, 90)) if errors else float("nan"),
            "ms_per_run": 1e3 * seconds / runs,
            "goal": found >= GOAL["found"] and false <= GOAL["false"] and median <= GOAL["median_error"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="random runs per setting")
    parser.add_argument("--families", nargs="+", default=["baseline", "collapse", "early", "spread", "all"],
                        choices=list(MODE_FAMILIES))
    parser.add_argument("--modes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.15, 0.3])
    parser.add_argument("--routes", nargs="+", default=["identity", "sorted"], choices=["identity", "sorted"])
    parser.add_argument("--tolerance", type=float, default=5.0, help="matching window, in intervals")
    args = parser.parse_args()
    print("| family | route | modes | noise | true onsets | found | false onsets | median error (intervals) "
          "| p90 error | ms per run | goal met |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    missed = 0
    for family in args.families:
        for route in args.routes:
            for modes in args.modes:
                for noise in args.noise:
                    r = evaluate(family, modes, noise, args.runs, route, args.tolerance)
                    missed += not r["goal"]
                    print(f"| {family} | {route} | {modes} | {noise:.0%} | {r['true']} | {r['found']:.1%} "
                          f"| {r['false']:.1%} | {r['median_error']:.2f} | {r['p90_error']:.2f} "
                          f"| {r['ms_per_run']:.0f} | {'yes' if r['goal'] else 'no'} |", flush=True)
    print(f"\ngoal (found >= 95 %, false <= 5 %, median error <= 1 interval) missed in {missed} settings")


if __name__ == "__main__":
    main()
