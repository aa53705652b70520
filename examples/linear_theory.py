"""The paper's linear experiment on embedded data, held against the closed-form theory.

Pairs of augmented views of 500 scikit-learn digits (the paper used 500 CIFAR-10 images with two random
crops each), a linear model ``f(x) = W x`` with small random initial weights, plain full-batch gradient
descent on the simplified Barlow Twins loss ``‖C − I‖²_F``, trained with a Lightning Trainer and
``StepwiseMonitor(spectrum="cross_correlation", theory=...)``. Prints observed vs predicted step times
per mode and writes ``stepwise.png``: the eigenvalues of ``C`` (solid) against the theory (dashed),
and the loss staircase.

    python examples/linear_theory.py [--max-steps 4000] [--d 16] [--lr 0.025] [--output linear-theory]
"""

from __future__ import annotations

import argparse
import time

from lightning_stepwise import format_onset_table
from lightning_stepwise.linear_model import run_linear_theory_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=4000, help="gradient-descent steps (full batch)")
    parser.add_argument("--d", type=int, default=16, help="embedding dimensions")
    parser.add_argument("--lr", type=float, default=0.025)
    parser.add_argument("--init-scale", type=float, default=1e-6, help="std of the initial weights")
    parser.add_argument("--loss-scale", type=float, default=1.0, help="multiplies the loss (divides step times)")
    parser.add_argument("--every-n-steps", type=int, default=10)
    parser.add_argument("--output", default="linear-theory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    monitor, prediction = run_linear_theory_experiment(
        d=args.d, lr=args.lr, init_scale=args.init_scale, max_steps=args.max_steps,
        every_n_steps=args.every_n_steps, loss_scale=args.loss_scale, seed=args.seed, output=args.output)
    print(f"{monitor.modes_learned} modes learned in {args.max_steps} steps "
          f"({time.perf_counter() - start:.0f} s); the theory predicts "
          f"{int((prediction.onset_steps() <= args.max_steps).sum())} by then:")
    print(format_onset_table(monitor.onsets))
    print(f"figure and tables: {monitor.output_dir}")


if __name__ == "__main__":
    main()
