"""Onset-detection accuracy on synthetic trajectories with known truth.

Runs :func:`lightning_stepwise.onsets.detect_onsets` on trajectories from
:func:`lightning_stepwise.synthetic.stepwise_trajectories` (logistic rises in linear scale, random floors,
plateaus and spacing, modes that never rise, a collapsing top mode, multiplicative noise, sorted rows,
non-uniform sampling) and prints, per setting: the fraction of true modes found, the fraction of
detected onsets that are false, and the median and 90th-percentile onset error in measurement intervals.

    python benchmarks/onset_accuracy.py [--runs 20] [--modes 16 32 64] [--noise 0.05 0.15 0.3]
                                        [--plateau-range 0.8 1.25]

A detection matches a true onset when both are within ``--tolerance`` intervals (default 5) and
neither has a closer partner; unmatched detections are false onsets.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lightning_stepwise.loss_steps import closest_pairs
from lightning_stepwise.onsets import detect_onsets
from lightning_stepwise.synthetic import stepwise_trajectories


def evaluate(modes: int, noise: float, runs: int, tolerance: float, plateau_range: tuple[float, float] = (0.8, 1.25),
             **options: float) -> dict[str, float]:
    """Aggregate accuracy over ``runs`` seeds for one setting."""
    n_true = n_found = n_matched = 0
    errors: list[float] = []
    end_errors: list[float] = []
    seconds = 0.0
    for seed in range(runs):
        run = stepwise_trajectories(modes, noise=noise, seed=seed, plateau_range=plateau_range)
        start = time.perf_counter()
        onsets = detect_onsets(run.steps, run.eigenvalues, **options)
        seconds += time.perf_counter() - start
        found = np.array([o["onset_step"] for o in onsets])
        pairs = closest_pairs(run.onset_steps, found, tolerance * run.interval)
        n_true += len(run.onset_steps)
        n_found += len(found)
        n_matched += len(pairs)
        errors += [abs(run.onset_steps[i] - found[j]) / run.interval for i, j in pairs]
        end_errors += [abs(run.rise_end_steps[i] - onsets[j]["rise_end_step"]) / run.interval for i, j in pairs]
    return {
        "modes": modes,
        "noise": noise,
        "true": n_true,
        "found": n_matched / max(n_true, 1),
        "false": (n_found - n_matched) / max(n_found, 1),
        "median_error": float(np.median(errors)) if errors else float("nan"),
        "p90_error": float(np.percentile(errors, 90)) if errors else float("nan"),
        "rise_end_error": float(np.median(end_errors)) if end_errors else float("nan"),
        "ms_per_run": 1e3 * seconds / runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="random trajectories per setting")
    parser.add_argument("--modes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.15, 0.3])
    parser.add_argument("--tolerance", type=float, default=5.0, help="matching window, in intervals")
    parser.add_argument("--plateau-range", type=float, nargs=2, default=[0.8, 1.25],
                        help="plateaus are uniform in this range (the theory's are all 1)")
    args = parser.parse_args()
    print("| modes | noise | true modes | found | false onsets | median onset error (intervals) "
          "| p90 onset error | median rise-end error | ms per run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for modes in args.modes:
        for noise in args.noise:
            r = evaluate(modes, noise, args.runs, args.tolerance, tuple(args.plateau_range))
            print(f"| {modes} | {noise:.0%} | {r['true']} | {r['found']:.1%} | {r['false']:.1%} "
                  f"| {r['median_error']:.2f} | {r['p90_error']:.2f} | {r['rise_end_error']:.2f} "
                  f"| {r['ms_per_run']:.1f} |")


if __name__ == "__main__":
    main()
