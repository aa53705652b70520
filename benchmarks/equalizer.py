"""Steps to learn k modes with and without ``ModeEqualizer``, against the linear theory's prediction.

For each model, equaliser strength ``alpha`` and seed, trains with ``StepwiseMonitor`` (and
``ModeEqualizer(alpha=..., max_gain=...)`` when ``alpha > 0``) and reports the step of the k-th detected
onset for each k, the wall-clock time per step, and, for the linear model, the speed-up the theory
predicts for that very initialisation (``LinearSSLTheory.speedup(k, ..., W0=...)``).

Models:

- ``linear``: ``LinearSSL`` (the theory's model: ``f(x) = W x``, the simplified Barlow Twins loss, plain
  SGD) on ``digits_view_pairs``, d = 16, the cross-correlation spectrum measured every 10 steps;
- ``demo``: the demo's ``DigitsBarlowTwins`` (small conv net, Lightly's Barlow Twins loss, SGD with
  momentum) on the embedded digits, the spectrum at the loss input measured every 10 steps;
- ``barlow_twins`` and ``vicreg``: the method examples' ``--paper`` preset (Lightly's modules, transforms and
  losses on a tiny ResNet, 16 x 16 digits, batch 128), as ``examples/compare_methods.py`` trains them.

For the real models, ``--spectra`` chooses what the monitor measures and so what the equaliser's eigenvalues
are: the embedding covariance, or the two views' cross-correlation (each a design, with its own plain runs).
The real models also get the final linear-probe top-1 of each run and a measure that needs no onset
detector: per seed, the steps the plain run needs to reach its own final (smoothed) loss, over the steps the
equalised run needs to reach it. ``ModeEqualizer`` keeps the gradient's norm (``preserve_norm``) on the real
models and not on the linear one (the theory's equaliser) unless ``--preserve-norm``/``--no-preserve-norm``
says otherwise; a run whose weights went non-finite is marked diverged (no probe).

    python benchmarks/equalizer.py                                   # linear model, 3 seeds (a few minutes)
    python benchmarks/equalizer.py --models linear demo --seeds 0    # add the demo model (slow on a CPU)
    python benchmarks/equalizer.py --models demo --spectra covariance cross_correlation --demo-steps 500 \
        --alphas 0 0.5 --json demo.json                              # the design comparison
    python benchmarks/equalizer.py --models vicreg --alphas 0.5 --no-preserve-norm --json vicreg_raw.json
    python benchmarks/equalizer.py --from-json demo.json --figure modes.png   # table and figure, no training

Prints one markdown table; the numbers recorded in docs/performance.md come from it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def steps_to(onsets: Sequence[dict[str, float]], k: int) -> float:
    """The onset step of the k-th mode learned (NaN when fewer than k were learned)."""
    steps = sorted(r["onset_step"] for r in onsets)
    return float(steps[k - 1]) if len(steps) >= k else math.nan


ROOT = Path(__file__).resolve().parents[1]
#: The method examples' ``--paper`` preset (``examples/methods``): Lightly's module, transform and loss.
PAPER_METHODS = ("barlow_twins", "vicreg")
MODELS = ("linear", "demo", *PAPER_METHODS)


def _examples() -> Any:
    """``examples/compare_methods.py`` as a module (it puts ``examples/methods`` on the path for ``common``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_methods", ROOT / "examples" / "compare_methods.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(model_name: str, seed: int, spectrum: str, args: argparse.Namespace) -> tuple[Any, Any, Any, int]:
    """(model, train loader, monitor, steps) of one run, seeded."""
    from lightning_stepwise import StepwiseMonitor

    if model_name == "linear":
        from lightning_stepwise.linear_model import LinearSSL, digits_view_pairs, view_pair_loader

        x0, x1 = digits_view_pairs(500, seed=seed)
        model = LinearSSL(x0.shape[1], 16, lr=args.lr, init_scale=1e-3, seed=seed)
        monitor = StepwiseMonitor(every_n_steps=10, window=2, spectrum="cross_correlation", verbose=False,
                                  log_top_k=0)
        return model, view_pair_loader(x0, x1), monitor, args.linear_steps
    monitor = StepwiseMonitor(every_n_steps=10, spectrum=spectrum, verbose=False, log_top_k=0, prog_bar=False)
    if model_name == "demo":
        from lightning_stepwise.data import digits_dataloader
        from lightning_stepwise.demo import DigitsBarlowTwins

        return DigitsBarlowTwins(init_scale=0.5), digits_dataloader(batch_size=256, seed=seed), monitor, \
            args.demo_steps
    from torch.utils.data import DataLoader

    examples = _examples()
    preset = examples.PAPER
    model, transform, _ = examples.paper_method(model_name, preset["input_size"], preset["min_scale"])
    loader = DataLoader(examples.DigitsImages(preset["input_size"], transform), batch_size=preset["batch_size"],
                        shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))
    return model, loader, monitor, args.method_steps


def probe_top1(model_name: str, model: Any) -> float:
    """Linear-probe top-1 of the trained backbone on the digits' labels (NaN for the linear model)."""
    if model_name == "linear":
        return math.nan
    model.eval()
    if model_name == "demo":  # as the demo's own probe: backbone features, a fixed 70/30 split
        from lightning_stepwise.data import digits_probe_loaders
        from lightning_stepwise.probe import linear_probe

        return float(linear_probe(model, *digits_probe_loaders(size=16), modes=False)["top1"])
    examples = _examples()  # as examples/compare_methods.py probes each method
    images, labels = examples.digits_tensor(examples.PAPER["input_size"])
    return examples.probe_top1(model, images, labels)


def run(model_name: str, alpha: float, seed: int, args: argparse.Namespace,
        spectrum: str = "covariance") -> dict[str, Any]:
    """Train one model, alpha and seed; its row of onset steps, losses, probe top-1 and cost per step."""
    import importlib

    from lightning_stepwise import ModeEqualizer

    # Lightly's modules are ``pytorch_lightning`` modules; ours are ``lightning.pytorch`` ones
    pl = importlib.import_module("pytorch_lightning" if model_name in PAPER_METHODS else "lightning.pytorch")

    pl.seed_everything(seed, verbose=False)
    preserve_norm = model_name != "linear" if args.preserve_norm is None else args.preserve_norm
    model, loader, monitor, steps = build(model_name, seed, spectrum, args)
    callbacks: list[Any] = [monitor]
    if alpha > 0:
        callbacks.append(ModeEqualizer(alpha=alpha, max_gain=args.max_gain, warmup_steps=args.warmup_steps,
                                       preserve_norm=preserve_norm))
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, callbacks=callbacks,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    row = {"model": model_name, "spectrum": "cross_correlation" if model_name == "linear" else spectrum,
           "alpha": alpha, "max_gain": args.max_gain, "warmup_steps": args.warmup_steps,
           "preserve_norm": preserve_norm, "seed": seed, "steps": steps,
           "learned": monitor.modes_learned, "diverged": not all(p.isfinite().all() for p in model.parameters()),
           "onset_steps": sorted(float(r["onset_step"]) for r in monitor.onsets),
           "ms_per_step": 1000 * seconds / max(trainer.global_step, 1),
           "loss_steps": monitor.history["step"].tolist(), "losses": monitor.history["loss"].tolist()}
    for k in args.k:
        row[f"to_{k}"] = steps_to(monitor.onsets, k)
    if not args.no_probe:
        row["top1"] = math.nan if row["diverged"] else probe_top1(model_name, model)
    if model_name == "linear" and alpha > 0:
        from lightning_stepwise.linear_model import digits_view_pairs
        from lightning_stepwise.theory import LinearSSLTheory

        x0, x1 = digits_view_pairs(500, seed=seed)
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


def smoothed(values: Sequence[float], width: int = 5) -> np.ndarray:
    """Running mean over ``width`` measurements (fewer at the start): one batch's loss is noisy."""
    values = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), width)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def steps_to_loss(row: dict[str, Any], target: float) -> float:
    """The first measured step whose smoothed loss is at or below ``target`` (NaN when never)."""
    below = np.flatnonzero(smoothed(row["losses"]) <= target)
    return float(row["loss_steps"][below[0]]) if len(below) else math.nan


def loss_speedups(group: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[float]:
    """Per seed: the baseline's steps to its own final smoothed loss over the equalised run's steps to it.

    A measure that needs no onset detector: how much sooner the same loss is reached.
    """
    ratios = []
    for row in group:
        plain = next((b for b in base if b["seed"] == row["seed"]), None)
        if plain is None or not plain["losses"]:
            continue
        target = float(smoothed(plain["losses"])[-1])
        ratios.append(steps_to_loss(plain, target) / steps_to_loss(row, target))
    return ratios


def _median(values: list[float], missing: float = math.inf) -> float:
    """The median over seeds, a NaN (not reached) counting as ``missing``; NaN when the median is not finite.

    Steps to k modes: a seed that never got there counts as more steps than any (``missing=inf``).
    Speed-ups: a run that never reached the target counts as slower than any (``missing=-inf``).
    """
    if not values:
        return math.nan
    median = float(np.median([missing if math.isnan(v) else v for v in values]))
    return median if math.isfinite(median) else math.nan


def _model_order(model: str) -> tuple[int, str]:
    """Lines and panels in the order of ``MODELS`` (unknown names last)."""
    return (MODELS.index(model) if model in MODELS else len(MODELS)), model


def _design(row: dict[str, Any]) -> tuple[str, str, float, str]:
    """(model, spectrum, alpha, options): the runs a table line gathers (the options are moot at alpha 0)."""
    options = "" if row["alpha"] == 0 else f"max_gain {row.get('max_gain', 10.0):g}" + (
        f", warm-up {row['warmup_steps']}" if row.get("warmup_steps") else "") + (
        ", preserve_norm" if row.get("preserve_norm") else "")
    return row["model"], row["spectrum"], row["alpha"], options


def table(rows: list[dict[str, Any]], ks: Sequence[int]) -> str:
    """One line per model, spectrum, alpha and options: median steps to k modes over seeds, speed-ups, probe, cost."""
    header = ["model", "spectrum", "alpha", "options", "seeds", "modes learned"]
    for k in ks:
        header += [f"steps to {k}", f"speed-up {k}", f"predicted {k}"]
    header += ["to the plain run's final loss", "probe top-1", "ms / step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    designs = sorted(dict.fromkeys(_design(r) for r in rows), key=lambda d: (_model_order(d[0]), *d[1:]))
    for model, spectrum, alpha, options in designs:
        group = [r for r in rows if _design(r) == (model, spectrum, alpha, options)]
        base = [r for r in rows if _design(r)[:3] == (model, spectrum, 0)]
        cells = [model, spectrum.replace("_", " "), f"{alpha:g}", options or "-", str(len(group)),
                 "/".join(str(r["learned"]) for r in group)]
        for k in ks:
            steps = _median([r[f"to_{k}"] for r in group])
            plain = _median([r[f"to_{k}"] for r in base]) if base else math.nan
            predicted = (math.nan if model != "linear" else 1.0 if alpha == 0
                         else _median([r.get(f"predicted_{k}", math.nan) for r in group], missing=math.nan))
            run_length = group[0]["steps"]
            if math.isnan(steps):
                observed = "-"
            elif math.isnan(plain):  # not reached without the equaliser: at least the run's length over this
                observed = f"> {run_length / steps:.1f}" if base else "-"
            else:
                observed = f"{plain / steps:.2f}"
            reached = [f"{r[f'to_{k}']:.0f}" for r in group if math.isfinite(r[f"to_{k}"])]
            if not math.isnan(steps):
                steps_cell = f"{steps:.0f}"
            elif reached:  # the median seed did not get there; those that did, and when
                steps_cell = f"> {run_length} ({len(reached)} of {len(group)}: {', '.join(reached)})"
            else:
                steps_cell = f"> {run_length}"
            cells += [steps_cell, observed,
                      "-" if math.isnan(predicted) else f"{predicted:.2f}"]
        ratios = loss_speedups(group, base) if alpha > 0 else []
        median = _median(ratios, missing=-math.inf)
        cells.append("-" if alpha == 0 or not ratios else
                     f"{'-' if math.isnan(median) else f'{median:.2f}x'} "
                     f"({'/'.join('never' if math.isnan(x) else f'{x:.2f}' for x in ratios)})")
        top1 = [r.get("top1", math.nan) for r in group]
        if any(r.get("diverged") for r in group):  # a mean over the runs that survived would flatter
            cells.append("- (" + "/".join("diverged" if r.get("diverged") else f"{100 * r['top1']:.1f}"
                                          for r in group) + ")")
        else:
            cells.append("-" if any(math.isnan(t) for t in top1) else
                         f"{100 * float(np.mean(top1)):.1f} % ({'/'.join(f'{100 * t:.1f}' for t in top1)})")
        cells.append(f"{np.median([r['ms_per_step'] for r in group]):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_learned(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Modes learned against steps, one panel per model and spectrum, one colour per alpha and options, a line per seed.

    A run whose weights diverged is dotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = sorted(dict.fromkeys((r["model"], r["spectrum"]) for r in rows), key=lambda m: (_model_order(m[0]), m[1]))
    settings = sorted({_design(r)[2:] for r in rows})  # (alpha, options): one colour each
    colours = dict(zip(settings, plt.get_cmap("viridis")(np.linspace(0, 0.85, len(settings))), strict=True))
    columns = min(len(panels), 3)
    rows_of_panels = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(4.2 * columns, 3.4 * rows_of_panels), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (model, spectrum) in zip(axes.flat, panels, strict=False):
        labelled: set[tuple[float, str]] = set()
        for r in (r for r in rows if (r["model"], r["spectrum"]) == (model, spectrum)):
            onsets = r["onset_steps"]
            xs = [0.0, *onsets, float(r["steps"])]
            ys = [0, *range(1, len(onsets) + 1), len(onsets)]
            alpha, options = setting = _design(r)[2:]
            label = None
            if setting not in labelled:  # one legend entry per setting, not per seed
                labelled.add(setting)
                label = "no equaliser" if alpha == 0 else f"alpha {alpha:g}, {options}"
            ax.step(xs, ys, where="post", color=colours[setting], alpha=0.85, lw=1.4, label=label,
                    ls=":" if r.get("diverged") else "-")
        ax.legend(frameon=False, fontsize=7, loc="upper left")
        ax.axhline(8, color="0.6", lw=0.8, ls=":")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{model.replace('_', ' ')} ({spectrum.replace('_', '-')})")
        ax.set_xlabel("step")
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlim(0, max(r["steps"] for r in rows if (r["model"], r["spectrum"]) == (model, spectrum)))
    for ax in axes[:, 0]:
        ax.set_ylabel("modes learned")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["linear"])
    parser.add_argument("--spectra", nargs="+", choices=["covariance", "cross_correlation"], default=["covariance"],
                        help="what the equaliser's eigenvalues are (real models; the linear model measures the "
                             "cross-correlation): each is a design, with its own runs without the equaliser")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--k", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--max-gain", type=float, default=10.0)
    parser.add_argument("--warmup-steps", type=int, default=0, help="ModeEqualizer(warmup_steps=...)")
    parser.add_argument("--preserve-norm", action=argparse.BooleanOptionalAction, default=None,
                        help="ModeEqualizer(preserve_norm=...); default: off for the linear model (the theory's "
                             "equaliser), on for the others (the callback's default)")
    parser.add_argument("--lr", type=float, default=0.025, help="the linear model's learning rate")
    parser.add_argument("--linear-steps", type=int, default=3000)
    parser.add_argument("--demo-steps", type=int, default=800)
    parser.add_argument("--method-steps", type=int, default=2000, help="steps of the Barlow Twins and VICReg runs")
    parser.add_argument("--no-probe", action="store_true", help="skip the linear probe of each trained backbone")
    parser.add_argument("--json", default=None, help="also write every run's row (onset steps included) here")
    parser.add_argument("--figure", default=None, help="draw the modes learned against steps here (PNG)")
    parser.add_argument("--from-json", nargs="+", default=None, metavar="PATH",
                        help="train nothing: print the table (and --figure) of rows written by --json")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = [row for path in args.from_json for row in json.loads(Path(path).read_text())]
    else:
        if 0.0 not in args.alphas and not args.json:
            parser.error("--alphas must include 0 (the runs the speed-up is measured against), or pass --json to "
                         "save these runs and combine them with saved plain runs by --from-json")
        print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}; max_gain {args.max_gain:g}, warm-up {args.warmup_steps} steps")
        rows = []
        for model in args.models:
            for spectrum in (["cross_correlation"] if model == "linear" else args.spectra):
                for alpha in sorted(args.alphas):
                    for seed in args.seeds:
                        rows.append(run(model, alpha, seed, args, spectrum))
                        r = rows[-1]
                        top1 = f", probe {100 * r['top1']:.1f} %" if math.isfinite(r.get("top1", math.nan)) else ""
                        print(f"  {model} {spectrum} alpha={alpha:g} seed={seed}: {r['learned']} learned, "
                              + ", ".join(f"k={k} at {r[f'to_{k}']:.0f}" for k in args.k)
                              + f"{top1}, {r['ms_per_step']:.1f} ms/step", flush=True)
                        if args.json:  # after every run: a long benchmark keeps what it has
                            Path(args.json).write_text(json.dumps(rows, indent=1))
    ks = sorted(set.intersection(*({int(key[3:]) for key in r if key.startswith("to_")} for r in rows)))
    print()
    print(table(rows, ks))
    if args.figure:
        print(f"wrote {plot_learned(rows, args.figure)}")
    return rows


if __name__ == "__main__":
    main()
