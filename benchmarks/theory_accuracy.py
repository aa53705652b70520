"""Theory against a trained run: predicted vs observed step times and loss plateaus.

Runs the linear experiment of ``examples/linear_theory.py`` (500 digits, two augmented views each, a
linear map to ``d`` dimensions from small random weights, full-batch gradient descent on
``‖C − I‖²_F`` with a Lightning Trainer) and compares:

- per learned mode, the observed onset (``StepwiseMonitor(spectrum="cross_correlation")``) with the
  theory's step time for the run's own initial weights (QR route);
- the loss on each plateau the theory predicts (rows where every mode is, by the theory, either
  learned, λ ≥ 0.98, or not yet, λ ≤ 0.02; ``k`` of them learned) with ``d − k``.

    python benchmarks/theory_accuracy.py [--max-steps 4000] [--d 16] [--init-scale 1e-6] [--loss-scale 1]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from lightning_stepwise.linear_model import run_linear_theory_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=4000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.025)
    parser.add_argument("--loss-scale", type=float, default=1.0)
    parser.add_argument("--init-scale", type=float, default=1e-6, help="std of the initial weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    monitor, prediction = run_linear_theory_experiment(d=args.d, lr=args.lr, max_steps=args.max_steps,
                                                       init_scale=args.init_scale, loss_scale=args.loss_scale,
                                                       seed=args.seed)
    seconds = time.perf_counter() - start
    print(f"machine: {platform.machine()}, Python {platform.python_version()}; training {seconds:.0f} s")
    print("| mode | observed onset (step) | predicted (step) | relative error |")
    print("| --- | --- | --- | --- |")
    errors = []
    for r in monitor.onsets:
        errors.append(r["relative_error"])
        print(f"| {r['mode']} | {r['onset_step']:.1f} | {r['predicted_onset_step']:.1f} | {r['relative_error']:+.2%} |")
    errors = np.abs(np.array(errors, dtype=float))
    print(f"\n{len(errors)} modes learned; median |relative error| {np.nanmedian(errors):.2%}, "
          f"max {np.nanmax(errors):.2%} (goal: median ≤ 5 % over ≥ 8 modes)")

    history = monitor.history
    steps, loss = history["step"].astype(float), history["loss"] / args.loss_scale
    lam = prediction.eigenvalue_trajectories(steps)
    settled = np.all((lam >= 0.98) | (lam <= 0.02), axis=1)
    learned = (lam >= 0.98).sum(axis=1)
    print("\n| k (modes learned) | d − k | steps on the plateau | observed loss (median) | max deviation |")
    print("| --- | --- | --- | --- | --- |")
    worst = 0.0
    for k in range(args.d + 1):
        on_plateau = settled & (learned == k)
        if not on_plateau.any():
            continue
        deviation = float(np.max(np.abs(loss[on_plateau] - (args.d - k))))
        worst = max(worst, deviation)
        print(f"| {k} | {args.d - k} | {int(on_plateau.sum())} rows, steps {steps[on_plateau][0]:.0f}–"
              f"{steps[on_plateau][-1]:.0f} | {np.median(loss[on_plateau]):.3f} | {deviation:.3f} |")
    print(f"\nlargest deviation of the loss from d − k on a predicted plateau: {worst:.3f} (goal: ≤ 0.1)")


if __name__ == "__main__":
    main()
