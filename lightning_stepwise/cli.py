"""The ``lightning-stepwise`` command: the demo, the report of a recorded run, the probe and atlas of a checkpoint.

Parsing imports nothing heavy: torch, Lightning and the package's modules that need them are imported
inside the command that runs, so ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main", "package_version", "parse_interval", "positive_int"]

DESCRIPTION = """\
See the stepwise learning of self-supervised models: the eigenvalues of the
embeddings' covariance rising one mode at a time, when each mode was learned,
and what the features carry.

commands:
  demo    train a small Lightly Barlow Twins model on scikit-learn's embedded
          digits (CPU, about 2 min) with StepwiseMonitor and LinearProbe; print
          the spectrum, the learned modes and the probe; write stepwise.png,
          the tables and a checkpoint
  report  detect the learned modes of a recorded run again from its
          spectrum*.npz (other detection options if you like); print the
          table, or why no mode was learned; redraw stepwise.png
  probe   linear probe of a checkpoint's backbone features on a labelled
          dataset (top-1 accuracy, and per number of eigen-directions kept)
  atlas   what each leading mode of a checkpoint's features means: per mode,
          the image statistic (brightness, contrast, edges, colour) and the
          class it follows; write modes.csv and atlas.png (the images at both
          ends of each mode)"""

EPILOG = """\
examples:
  lightning-stepwise demo                      # 800 steps, into stepwise-demo/
  lightning-stepwise demo --max-steps 2000 --every-n-steps 10
  lightning-stepwise report stepwise-demo/logs          # every run under it
  lightning-stepwise report stepwise-demo/logs --min-rise 5
  lightning-stepwise probe stepwise-demo/checkpoints/last.ckpt --output probe
  lightning-stepwise atlas stepwise-demo/checkpoints/last.ckpt --modes 8

'lightning-stepwise COMMAND --help' lists a command's options."""

#: Placeholders of the report's detection options in the help.
_METAVARS = {"min_rise": "FACTOR", "min_relative_plateau": "FRACTION", "smoothing": "ROWS", "plateau_rows": "ROWS"}

#: The demo's interval between two measurements: 40 over its 800 steps, enough for its onset table.
#: ``"auto"`` (StepwiseMonitor's default) would spend 16, as every 50 steps does: too few for it.
DEMO_EVERY_N_STEPS = 20


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's default after its help, unless the help says it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or "(default" in text or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option that still works, with a note to stderr naming the new one."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, replacement: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated, use {self.replacement} (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def package_version() -> str:
    """The installed version of ``lightning-stepwise`` (the package's own ``__version__`` when not installed).

    Examples:
        >>> package_version().count(".") >= 1
        True
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lightning-stepwise")
    except PackageNotFoundError:  # run from a source tree
        from lightning_stepwise import __version__

        return __version__


def parse_interval(text: str) -> int | str:
    """An ``--every-n-steps`` value: a whole number of steps >= 1, or ``auto``.

    Examples:
        >>> parse_interval("20"), parse_interval("auto")
        (20, 'auto')
        >>> parse_interval("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a whole number of steps >= 1 or 'auto', got '0'
    """
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps >= 1 or 'auto', got {text!r}") from None


def positive_int(text: str) -> int:
    """A command-line count: a whole number >= 1.

    Examples:
        >>> positive_int("8")
        8
        >>> positive_int("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a whole number >= 1, got '0'
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _wrapped(text: str, indent: str = "  ") -> str:
    return textwrap.fill(text, width=110, initial_indent=indent, subsequent_indent=indent)


def _paragraph(text: str) -> str:
    """A description wrapped as the formatter would (it keeps descriptions as written, for the lists)."""
    return textwrap.fill(text, width=78)


def _demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if not args.quiet:
        print("lightning-stepwise demo: loading PyTorch, Lightning and Lightly...", flush=True)
    from lightning_stepwise.demo import run_demo

    run_demo(max_steps=args.max_steps, output=args.output, seed=args.seed, batch_size=args.batch_size,
             init_scale=args.small_init, every_n_steps=args.every_n_steps, quiet=args.quiet)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    run = Path(args.run_dir)
    if not run.exists():
        print(f"lightning-stepwise report: {run} does not exist", file=sys.stderr)
        return 2
    from lightning_stepwise.onset_core import ONSET_OPTIONS
    from lightning_stepwise.report import MODE_NUMBERING, format_onset_table, report_run

    options = {name: getattr(args, name) for name in ONSET_OPTIONS}
    try:
        reports = report_run(run, output=args.output, x=args.x, **options)
    except (FileNotFoundError, ValueError) as err:
        print(f"lightning-stepwise report: {err}", file=sys.stderr)
        return 2
    explained = False
    for r in reports:
        print(f"{r.spectrum_path}: {_count(len(r.onsets), 'mode')} learned, {_count(len(r.loss_drops), 'loss drop')}")
        if r.onsets:
            if not explained:
                print(MODE_NUMBERING)
                explained = True
            print(format_onset_table(r.onsets, ordinal=True))
        else:
            note = r.note.replace("report RUN", f"report {args.run_dir}")
            print(_wrapped(f"Why none: {note}" if note else "No mode learned."))
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
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--module-class {spec}: cannot import {module_name} ({err}); is its package installed "
                         "or on PYTHONPATH?") from err
    if not hasattr(module, class_name):
        raise ValueError(f"--module-class {spec}: {module_name} has no {class_name}")
    return getattr(module, class_name)


def _checkpoint_contents(path: Any) -> str | None:
    """What a checkpoint says about the module it holds, as the start of an error message.

    Its class path (LightningCLI saves one), else its hyper-parameters and top-level submodules; None
    when it cannot be read as a checkpoint.
    """
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not readable as a checkpoint, whatever the reason
        return None
    if not isinstance(checkpoint, dict):
        return None
    hparams = checkpoint.get("hyper_parameters") or {}
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if class_path:
        return f"the checkpoint holds a {class_path} (as --module-class: {class_path.rpartition('.')[0]}:" \
               f"{class_path.rpartition('.')[2]}); "
    parts = []
    if isinstance(hparams, dict) and hparams:
        parts.append("hyper-parameters " + ", ".join(f"{k}={v!r}" for k, v in hparams.items()))
    state = checkpoint.get("state_dict")
    if isinstance(state, dict) and state:
        parts.append("submodules " + ", ".join(dict.fromkeys(str(k).split(".")[0] for k in state)))
    return f"the checkpoint holds a module with {' and '.join(parts)}; " if parts else ""


def _load_module(checkpoint: Any, spec: str) -> Any:
    """The LightningModule ``spec`` (``package.module:ClassName``) loaded from ``checkpoint`` on the CPU.

    Raises ValueError with the fix when the class cannot be imported or the checkpoint is of another class.
    """
    module_class = _load_class(spec)
    if not hasattr(module_class, "load_from_checkpoint"):
        raise ValueError(f"--module-class {spec} is not a LightningModule (no load_from_checkpoint)")
    try:
        return module_class.load_from_checkpoint(str(checkpoint), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any load failure has the same fix
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if len(reason) > 300:
            reason = reason[:300] + "..."
        contents = _checkpoint_contents(checkpoint)
        if contents is None:
            raise ValueError(f"cannot read {checkpoint} as a Lightning checkpoint ({type(err).__name__}: {reason}); "
                             "pass a .ckpt written by Trainer.save_checkpoint or ModelCheckpoint") from err
        raise ValueError(f"cannot load {checkpoint} as {spec} ({type(err).__name__}: {reason}); {contents}pass "
                         "the LightningModule class it was saved from with --module-class package.module:ClassName"
                         ) from err


def _labelled_dataset(args: argparse.Namespace) -> tuple[Any, bool]:
    """The labelled images of ``--data`` at ``--image-size`` / ``--channels``, and whether classes are mixed.

    The digits come with classes mixed; an ImageFolder's files come grouped by class.
    """
    if args.data == "digits":
        from torch.utils.data import TensorDataset

        from lightning_stepwise.data import load_digits_images

        return TensorDataset(*load_digits_images(args.image_size, args.channels)), True
    from pathlib import Path

    from torchvision import datasets, transforms

    root = Path(args.data)
    if not root.is_dir():
        raise ValueError(f"--data must be 'digits' or a folder of class sub-folders (torchvision ImageFolder); "
                         f"{root} is not a folder")
    steps = [transforms.Resize((args.image_size, args.image_size)), transforms.ToTensor()]
    if args.channels == 1:
        steps.insert(0, transforms.Grayscale())
    return datasets.ImageFolder(str(root), transform=transforms.Compose(steps)), False


def _fixed_order(size: int) -> list[int]:
    """The seeded shuffle of ``range(size)`` that the probe's split and the atlas's sample share."""
    import torch

    return torch.randperm(size, generator=torch.Generator().manual_seed(0)).tolist()


def _probe_loaders(args: argparse.Namespace) -> tuple[object, object]:
    from torch.utils.data import DataLoader, Subset

    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    dataset, _ = _labelled_dataset(args)
    order = _fixed_order(len(dataset))
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
        module = _load_module(checkpoint, args.module_class)
        train, val = _probe_loaders(args)
        result = linear_probe(module, train, val, method=args.method, c=args.c)
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


def _atlas_images(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """The first ``--max-images`` images of ``--data`` (a tensor), their labels, and the size of the set.

    The labels are None with fewer than two classes. The digits are taken in their own order (classes
    mixed); an ImageFolder, whose files come grouped by class, in the probe's fixed shuffled order, so
    that the first N images span the classes.
    """
    import torch
    from torch.utils.data import DataLoader, Subset, TensorDataset

    dataset, mixed = _labelled_dataset(args)
    total = len(dataset)
    n = min(args.max_images, total)
    if isinstance(dataset, TensorDataset):
        images, labels = (t[:n] for t in dataset.tensors)
    else:
        order = list(range(total)) if mixed else _fixed_order(total)
        batches = list(DataLoader(Subset(dataset, order[:n]), batch_size=256))
        if not batches:
            raise ValueError(f"--data {args.data} holds no images")
        images = torch.cat([b[0] for b in batches])
        labels = torch.cat([torch.as_tensor(b[1]) for b in batches])
    if len(torch.unique(labels)) < 2:
        labels = None
    return images, labels, total


def _atlas(args: argparse.Namespace) -> int:
    from pathlib import Path

    def fail(message: str) -> int:
        print(f"lightning-stepwise atlas: {message}", file=sys.stderr)
        return 2

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        return fail(f"no checkpoint at {checkpoint}")
    output = Path(args.output) if args.output is not None else checkpoint.parent / "atlas"
    try:
        images, labels, total = _atlas_images(args)
        n = len(images)
        if n < args.modes + 1:
            cap = "" if n == total else f" (--max-images {args.max_images} of the {total} in --data {args.data})"
            return fail(f"--modes {args.modes} needs at least {args.modes + 1} images (modes + 1), got {n}{cap}; "
                        f"pass a smaller --modes (at most {max(n - 1, 0)})"
                        + (f" or a larger --max-images (at most {total})" if total > n else " or more images"))
        module = _load_module(checkpoint, args.module_class)
    except (ValueError, ImportError, AttributeError, RuntimeError, KeyError, OSError) as err:
        return fail(str(err))
    try:
        module.get_submodule(args.point)
    except AttributeError:
        names = [name for name, _ in module.named_children()]
        return fail(f"--point {args.point!r}: no such submodule in {type(module).__name__}; it has {names} "
                    "(a dotted path such as 'backbone.0' reaches inside one); pass one of them with --point")
    from lightning_stepwise.atlas import mode_atlas
    from lightning_stepwise.probe import point_features

    try:
        atlas = mode_atlas(module, images, k=args.modes, labels=labels, per_side=args.per_side,
                           output_dir=output, feature_fn=point_features(args.point))
    except ValueError as err:
        return fail(str(err))
    print(f"Mode atlas of {checkpoint} at `{args.point}`: {n} images, {args.modes} modes")
    print(atlas.table())
    if atlas.left_out:
        print(f"left out (the images have {images.shape[1]} channel{'s' if images.shape[1] != 1 else ''}): "
              + ", ".join(atlas.left_out))
    print(f"wrote {atlas.csv_path}, {atlas.figure_path}")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``lightning-stepwise`` command and its ``demo``, ``report``, ``probe`` and ``atlas`` commands.

    Building it imports no torch or Lightning (only the onset options' defaults, with NumPy).

    Examples:
        >>> args = build_parser().parse_args(["demo", "--steps", "200", "--every-n-steps", "auto"])
        >>> args.max_steps, args.every_n_steps, args.small_init
        (200, 'auto', 0.5)
    """
    from lightning_stepwise.onset_core import ONSET_OPTIONS

    parser = argparse.ArgumentParser(prog="lightning-stepwise", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"lightning-stepwise {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="demo, report, probe or atlas (above); 'lightning-stepwise COMMAND --help' "
                                          "lists its options")

    demo = commands.add_parser(
        "demo", formatter_class=_HelpFormatter,
        description=_paragraph(
            "Train a small Lightly Barlow Twins model on scikit-learn's embedded digits (1,797 images, 16x16, two "
            "augmented views each) on the CPU, with StepwiseMonitor and LinearProbe. Prints the spectrum of the "
            "embeddings over time, the modes learned (their onset steps) or why none were, and the linear probe; "
            "writes spectrum.npz, onsets.csv, stepwise.png and the probe's files under "
            "DIR/logs/version_N/stepwise, and DIR/checkpoints/last.ckpt."),
        epilog="examples:\n  lightning-stepwise demo\n  lightning-stepwise demo --max-steps 2000 --every-n-steps 10"
               "\n  lightning-stepwise demo --small-init 1.0 --output demo-default-init")
    demo.add_argument("--max-steps", "--steps", dest="max_steps", type=int, default=800, metavar="N",
                      help="optimizer steps to train (7 per epoch at the default batch size; 800 take about 2 min "
                           "on 2 CPU cores)")
    demo.add_argument("--every-n-steps", type=parse_interval, default=DEMO_EVERY_N_STEPS, metavar="N|auto",
                      help="steps between two spectrum measurements, or 'auto' (StepwiseMonitor's default: as "
                           "many as every 50 steps would give, dense early). The detector needs about 15 "
                           "measurements to confirm a mode: the default gives 40 over 800 steps")
    demo.add_argument("--small-init", type=float, default=0.5, metavar="FACTOR",
                      help="multiply every initial conv / linear weight by FACTOR (the paper's small-init setting, "
                           "which sharpens the steps; 1.0: PyTorch's default init)")
    demo.add_argument("--init-scale", dest="small_init", type=float, action=_DeprecatedAlias,
                      replacement="--small-init", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    demo.add_argument("--output", default="stepwise-demo", metavar="DIR",
                      help="folder for the logs, the stepwise files and the checkpoint")
    demo.add_argument("--seed", type=int, default=0, help="random seed: initial weights, augmentations, batch order")
    demo.add_argument("--batch-size", type=int, default=256, metavar="N",
                      help="images per training batch (two augmented views of each)")
    demo.add_argument("--quiet", action="store_true",
                      help="print only the last line: no progress, no tables (the files are written all the same)")
    demo.set_defaults(run=_demo)

    report = commands.add_parser(
        "report", formatter_class=_HelpFormatter,
        description=_paragraph(
            "Detect the learned modes of a recorded run again from its spectrum*.npz (as StepwiseMonitor wrote "
            "them), with the detection options below; match the drops of the loss; print the onset table, or why "
            "no mode was learned and what to change; write onsets.csv, onsets.json and stepwise.png next to each "
            "spectrum (or under --output)."),
        epilog="examples:\n  lightning-stepwise report stepwise-demo/logs\n"
               "  lightning-stepwise report run/stepwise/spectrum.npz --min-rise 5 --x time --output again")
    report.add_argument("run_dir", metavar="RUN",
                        help="a folder searched recursively for spectrum*.npz (a logger's run folder), or one .npz")
    report.add_argument("--output", default=None, metavar="DIR",
                        help="folder for the files (default: next to each spectrum file)")
    report.add_argument("--x", choices=["step", "time"], default="step",
                        help="x axis of the figure: optimizer step, or effective time (the sum of the learning rates)")
    for name, (default, meaning) in ONSET_OPTIONS.items():
        report.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, help=meaning,
                            metavar=_METAVARS.get(name))
    report.set_defaults(run=_report)

    probe = commands.add_parser(
        "probe", formatter_class=_HelpFormatter,
        description=_paragraph(
            "Fit a linear classifier on the backbone features of a checkpoint's model (the demo's, or your "
            "LightningModule's with --module-class) on a labelled dataset; print the validation top-1 / top-5 "
            "accuracy and the accuracy with only the k leading eigen-directions of the features' covariance."),
        epilog="examples:\n  lightning-stepwise probe stepwise-demo/checkpoints/last.ckpt --output probe\n"
               "  lightning-stepwise probe run.ckpt --module-class my_package.models:MyBYOL \\\n"
               "      --data images/ --image-size 32 --channels 3")
    probe.add_argument("checkpoint", help="a Lightning checkpoint (.ckpt)")
    probe.add_argument("--module-class", default="lightning_stepwise.demo:DigitsBarlowTwins",
                       metavar="MODULE:CLASS", help="package.module:ClassName of the LightningModule it holds")
    probe.add_argument("--data", default="digits", metavar="digits|DIR",
                       help="'digits' (embedded, offline) or a folder of class sub-folders (torchvision ImageFolder)")
    probe.add_argument("--image-size", type=int, default=16, metavar="PIXELS",
                       help="side of the square images fed to the backbone (the demo's: 16)")
    probe.add_argument("--channels", type=int, choices=[1, 3], default=1,
                       help="image channels the backbone takes: 1 (grayscale, as the demo's) or 3")
    probe.add_argument("--val-fraction", type=float, default=0.3, metavar="FRACTION",
                       help="share of the images held out for validation")
    probe.add_argument("--method", choices=["logistic", "ridge"], default="logistic",
                       help="the linear classifier: logistic regression, or ridge regression on one-hot labels")
    probe.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength (scikit-learn's C)")
    probe.add_argument("--output", default=None, metavar="DIR",
                       help="folder for probe.csv, probe_modes.csv and probe_modes.png (default: none written)")
    probe.set_defaults(run=_probe)

    atlas = commands.add_parser(
        "atlas", formatter_class=_HelpFormatter,
        description=_paragraph(
            "What each leading mode of a checkpoint's features means. Runs the model (the demo's, or your "
            "LightningModule's with --module-class) on the first --max-images images of a dataset, takes the "
            "output of the submodule --point, projects it on the leading eigen-directions of its covariance "
            "(the modes), and relates each mode to simple image statistics (brightness, contrast, edge energy; "
            "colour for 3-channel images) and to the classes. Prints one row per mode; writes modes.csv and "
            "atlas.png (the images at both ends of each mode). A correlation is a hint, not a proof."),
        epilog="examples:\n  lightning-stepwise atlas stepwise-demo/checkpoints/last.ckpt\n"
               "  lightning-stepwise atlas stepwise-demo/checkpoints/last.ckpt --point backbone --modes 4\n"
               "  lightning-stepwise atlas run.ckpt --module-class my_package.models:MyBYOL \\\n"
               "      --data images/ --image-size 32 --channels 3 --output atlas-run")
    atlas.add_argument("checkpoint", help="a Lightning checkpoint (.ckpt)")
    atlas.add_argument("--module-class", default="lightning_stepwise.demo:DigitsBarlowTwins",
                       metavar="MODULE:CLASS", help="package.module:ClassName of the LightningModule it holds")
    atlas.add_argument("--data", default="digits", metavar="digits|DIR",
                       help="'digits' (embedded, offline) or a folder of class sub-folders (torchvision "
                            "ImageFolder); the labels give the class columns")
    atlas.add_argument("--image-size", type=positive_int, default=16, metavar="PIXELS",
                       help="side of the square images fed to the model (the demo's: 16)")
    atlas.add_argument("--channels", type=int, choices=[1, 3], default=1,
                       help="image channels the model takes: 1 (grayscale, as the demo's) or 3 (adds the "
                            "colour statistics)")
    atlas.add_argument("--point", default="projection_head", metavar="SUBMODULE",
                       help="dotted path of the submodule whose output is the feature: the point StepwiseMonitor "
                            "tracks, whose modes it counts (StepwiseMonitor(module=...); in Lightly's models the "
                            "embeddings fed to the loss come out of 'projection_head'), or e.g. 'backbone'")
    atlas.add_argument("--modes", type=positive_int, default=8, metavar="K",
                       help="number of leading modes to describe (needs at least K + 1 images)")
    atlas.add_argument("--per-side", type=positive_int, default=8, metavar="N",
                       help="images shown at each end of a mode in atlas.png")
    atlas.add_argument("--max-images", type=positive_int, default=2000, metavar="N",
                       help="use the first N images of the set, always the same ones (an ImageFolder in a fixed "
                            "shuffled order, so that they span the classes)")
    atlas.add_argument("--output", default=None, metavar="DIR",
                       help="folder for modes.csv and atlas.png (default: atlas/ next to the checkpoint)")
    atlas.set_defaults(run=_atlas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-stepwise`` console script: parse, then import what the command needs.

    Returns the exit status: 0, or 2 for a missing input (argparse exits with 2 on a bad option).

    Examples:
        >>> main(["report", "missing-run"])
        2
    """
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
