"""Steps to learn k modes with and without ``ModeEqualizer``, against the linear theory's prediction.

For each model, equaliser strength ``alpha`` and seed, trains with ``StepwiseMonitor`` (and
``ModeEqualizer(alpha=..., max_gain=...)`` when ``alpha > 0``) and reports the step of the k-th detected
onset for each k, the wall-clock time per step, and, for the linear model, the speed-up the theory
predicts for that very initialisation (``LinearSSLTheory.speedup(k, ..., W0=...)``).

Models:

- ``linear``: ``LinearSSL`` (the theory's model: ``f(x) = W x``, the simplified Barlow Twins loss, plain
  SGD) on ``digits_view_pairs``, d = 16, the cross-correlation spectrum measured every 10 steps;
- ``demo``: the demo's ``DigitsBarlowTwins`` (small conv net, Lightly's Barlow Twins loss, SGD with
  momentum) on the embedded digits, the covariance at the loss input measured every 10 steps.

    python benchmarks/equalizer.py                                   # linear model, 3 seeds (a few minutes)
    python benchmarks/equalizer.py --models linear demo --seeds 0    # add the demo model (slow on a CPU)

Prints one markdown table; the numbers recorded in docs/performance.md come from it.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def steps_to(onsets: Sequence[dict[str, float]], k: int) -> float:
    """The onset step of the k-th mode learned (NaN when fewer than k were learned)."""
    steps = sorted(r["onset_step"] for r in onsets)
    return float(steps[k - 1]) if len(steps) >= k else math.nan


def run(model_name: str, alpha: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import lightning.pytorch as pl

    from lightning_stepwise import ModeEqualizer, StepwiseMonitor

    pl.seed_everything(seed, verbose=False)
    if model_name == "linear":
        from lightning_stepwise.linear_model import LinearSSL, digits_view_pairs, view_pair_loader

        x0, x1 = digits_view_pairs(500, seed=seed)
        model = LinearSSL(x0.shape[1], 16, lr=args.lr, init_scale=1e-3, seed=seed)
        loader = view_pair_loader(x0, x1)
        monitor = StepwiseMonitor(every_n_steps=10, window=2, spectrum="cross_correlation", verbose=False,
                                  log_top_k=0)
        steps = args.linear_steps
    else:
        from lightning_stepwise.data import digits_dataloader
        from lightning_stepwise.demo import DigitsBarlowTwins

        model = DigitsBarlowTwins(init_scale=0.5)
        loader = digits_dataloader(batch_size=256, seed=seed)
        monitor = StepwiseMonitor(every_n_steps=10, verbose=False, log_top_k=0)
        steps = args.demo_steps
    callbacks: list[Any] = [monitor]
    if alpha > 0:
        callbacks.append(ModeEqualizer(alpha=alpha, max_gain=args.max_gain))
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, callbacks=callbacks,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    row = {"model": model_name, "alpha": alpha, "seed": seed, "steps": steps, "learned": monitor.modes_learned,
           "ms_per_step": 1000 * seconds / max(trainer.global_step, 1)}
    for k in args.k:
        row[f"to_{k}"] = steps_to(monitor.onsets, k)
    if model_name == "linear" and alpha > 0:
        from lightning_stepwise.theory import LinearSSLTheory

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant border pixels: some γ are 0, by design
            theory = LinearSSLTheory.from_views(x0, x1)
        for k in args.k:
            try:
                row[f"predicted_{k}"] = theory.speedup(k, args.lr, alpha, W0=model.initial_weight,
                                                       max_gain=args.max_gain)
            except ValueError:
                row[f"predicted_{k}"] = math.nan
    return row


def table(rows: list[dict[str, Any]], ks: Sequence[int]) -> str:
    """One line per model and alpha: median steps to k modes over seeds, observed and predicted speed-up."""
    def median(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.median(finite)) if len(finite) == len(values) and finite else math.nan

    header = ["model", "alpha", "seeds", "modes learned"]
    for k in ks:
        header += [f"steps to {k}", f"speed-up {k}", f"predicted {k}"]
    header += ["ms / step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (model, alpha) in dict.fromkeys((r["model"], r["alpha"]) for r in rows):
        group = [r for r in rows if r["model"] == model and r["alpha"] == alpha]
        base = [r for r in rows if r["model"] == model and r["alpha"] == 0]
        cells = [model, f"{alpha:g}", str(len(group)), "/".join(str(r["learned"]) for r in group)]
        for k in ks:
            steps = median([r[f"to_{k}"] for r in group])
            plain = median([r[f"to_{k}"] for r in base]) if base else math.nan
            predicted = median([r.get(f"predicted_{k}", math.nan) for r in group]) if alpha > 0 else 1.0
            run_length = group[0]["steps"]
            if math.isnan(steps):
                observed = "-"
            elif math.isnan(plain):  # not reached without the equaliser: at least the run's length over this
                observed = f"> {run_length / steps:.1f}" if base else "-"
            else:
                observed = f"{plain / steps:.2f}"
            cells += [f"> {run_length}" if math.isnan(steps) else f"{steps:.0f}", observed,
                      "-" if math.isnan(predicted) else f"{predicted:.2f}"]
        cells.append(f"{np.median([r['ms_per_step'] for r in group]):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["linear", "demo"], default=["linear"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--k", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--max-gain", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=0.025, help="the linear model's learning rate")
    parser.add_argument("--linear-steps", type=int, default=3000)
    parser.add_argument("--demo-steps", type=int, default=800)
    args = parser.parse_args(argv)
    if 0.0 not in args.alphas:
        parser.error("--alphas must include 0 (the runs the speed-up is measured against)")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; max_gain {args.max_gain:g}")
    rows = []
    for model in args.models:
        for alpha in sorted(args.alphas):
            for seed in args.seeds:
                rows.append(run(model, alpha, seed, args))
                r = rows[-1]
                print(f"  {model} alpha={alpha:g} seed={seed}: {r['learned']} learned, "
                      + ", ".join(f"k={k} at {r[f'to_{k}']:.0f}" for k in args.k) + f", {r['ms_per_step']:.1f} ms/step",
                      flush=True)
    print()
    print(table(rows, args.k))
    return rows


if __name__ == "__main__":
    main()
