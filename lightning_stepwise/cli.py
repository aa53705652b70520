"""The ``lightning-stepwise`` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from lightning_stepwise.demo import run_demo

    start = time.perf_counter()
    run_demo(max_steps=args.max_steps, output=args.output, seed=args.seed, batch_size=args.batch_size,
             init_scale=args.init_scale, every_n_steps=args.every_n_steps, quiet=args.quiet)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lightning_stepwise.report import format_onset_table, report_run

    run = Path(args.run_dir)
    if not run.exists():
        print(f"lightning-stepwise report: {run} does not exist", file=sys.stderr)
        return 2
    from lightning_stepwise.onset_core import ONSET_OPTIONS

    options = {name: getattr(args, name) for name in ONSET_OPTIONS}
    try:
        reports = report_run(run, output=args.output, x=args.x, **options)
    except (FileNotFoundError, ValueError) as err:
        print(f"lightning-stepwise report: {err}", file=sys.stderr)
        return 2
    for r in reports:
        print(f"{r.spectrum_path}: {len(r.onsets)} modes learned, {len(r.loss_drops)} loss drops")
        if r.note:
            print(r.note)
        print(format_onset_table(r.onsets))
        problems = r.spectrum_path.parent / "problems.json"
        if problems.exists():
            import json

            counts = {k: v for k, v in json.loads(problems.read_text()).items() if v}
            if counts:
                print("skipped during the run: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        figure = f", {r.figure.name}" if r.figure is not None else ""
        print(f"wrote {r.onsets_csv}, {r.onsets_json.name}{figure}\n")
    return 0


def _load_class(spec: str) -> type:
    import importlib

    module_name, _, class_name = spec.partition(":")
    if not class_name:
        raise ValueError(f"--module-class must look like package.module:ClassName, got {spec!r}")
    return getattr(importlib.import_module(module_name), class_name)


def _probe_loaders(args: argparse.Namespace) -> tuple[object, object]:
    from lightning_stepwise.data import digits_probe_loaders

    if args.data == "digits":
        return digits_probe_loaders(size=args.image_size, channels=args.channels, val_fraction=args.val_fraction)
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    root = Path(args.data)
    if not root.is_dir():
        raise ValueError(f"--data must be 'digits' or a folder of class sub-folders (torchvision ImageFolder); "
                         f"{root} is not a folder")
    steps = [transforms.Resize((args.image_size, args.image_size)), transforms.ToTensor()]
    if args.channels == 1:
        steps.insert(0, transforms.Grayscale())
    dataset = datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    cut = int(round(len(order) * (1 - args.val_fraction)))
    return (DataLoader(Subset(dataset, order[:cut]), batch_size=256),
            DataLoader(Subset(dataset, order[cut:]), batch_size=256))


def _probe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lightning_stepwise.probe import format_modes, linear_probe
    from lightning_stepwise.report import save_probe

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        print(f"lightning-stepwise probe: no checkpoint at {checkpoint}", file=sys.stderr)
        return 2
    try:
        module_class = _load_class(args.module_class)
        train, val = _probe_loaders(args)
        result = linear_probe(str(checkpoint), train, val, module_class=module_class, method=args.method, c=args.c)
    except (ValueError, ImportError, AttributeError, RuntimeError, KeyError) as err:
        print(f"lightning-stepwise probe: {err}", file=sys.stderr)
        return 2
    row = {"step": 0, "top1": result["top1"], **{f"top{k}": v for k, v in result.topk.items()}}
    print(f"{checkpoint}: {result.width}-d features, {result.train_size} train / {result.val_size} validation samples, "
          f"{result.classes} classes")
    print(f"top-1 {100 * result.top1:.1f} %" + "".join(f", top-{k} {100 * v:.1f} %" for k, v in result.topk.items()))
    print(format_modes(result.modes))
    if args.output:
        paths = save_probe([{k: v for k, v in row.items() if k != "step"}], result.modes, args.output)
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-stepwise`` console script.

    Examples:
        >>> main(["--version"])  # doctest: +SKIP
        lightning-stepwise 0.1.0
    """
    from lightning_stepwise import __version__

    parser = argparse.ArgumentParser(prog="lightning-stepwise", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lightning-stepwise {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train a small Lightly Barlow Twins model on the embedded digits with StepwiseMonitor()")
    demo.add_argument("--max-steps", type=int, default=800, help="optimizer steps (7 per epoch at batch 256)")
    demo.add_argument("--output", default="stepwise-demo", help="folder for logs and files")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=int, default=256)
    demo.add_argument("--init-scale", type=float, default=0.5,
                      help="multiply initial weights (small init, as in the paper, makes the steps sharper; "
                           "1.0: PyTorch's default init)")
    demo.add_argument("--every-n-steps", type=int, default=20,
                      help="steps between spectrum measurements (the onset table needs a few dozen)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    demo.set_defaults(run=_demo)
    report = commands.add_parser(
        "report", help="detect the learned modes of a recorded run again; write the table and stepwise.png")
    report.add_argument("run_dir", help="a folder holding spectrum*.npz (searched recursively), or one .npz file")
    report.add_argument("--output", default=None, help="folder for the files (default: next to each spectrum)")
    report.add_argument("--x", choices=["step", "time"], default="step",
                        help="x axis of the figure: optimizer step or effective time (sum of learning rates)")
    from lightning_stepwise.onset_core import ONSET_OPTIONS

    for name, (default, meaning) in ONSET_OPTIONS.items():
        report.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"{meaning} (default {default})")
    report.set_defaults(run=_report)
    probe = commands.add_parser("probe", help="linear probe of a checkpoint's backbone features on a labelled dataset")
    probe.add_argument("checkpoint", help="a Lightning checkpoint (.ckpt)")
    probe.add_argument("--module-class", default="lightning_stepwise.demo:DigitsBarlowTwins",
                       help="package.module:ClassName of the LightningModule the checkpoint holds")
    probe.add_argument("--data", default="digits",
                       help="'digits' (embedded) or a folder of class sub-folders (torchvision ImageFolder)")
    probe.add_argument("--image-size", type=int, default=16)
    probe.add_argument("--channels", type=int, choices=[1, 3], default=1)
    probe.add_argument("--val-fraction", type=float, default=0.3)
    probe.add_argument("--method", choices=["logistic", "ridge"], default="logistic")
    probe.add_argument("--c", type=float, default=1.0, help="inverse regularisation (scikit-learn's C)")
    probe.add_argument("--output", default=None, help="folder for probe.csv, probe_modes.csv and probe_modes.png")
    probe.set_defaults(run=_probe)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
