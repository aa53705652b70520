"""The ``lightning-stepwise`` command: the demo, a run's report, a checkpoint's probe and atlas, runs compared.

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

from lightning_stepwise import cli_inputs

__all__ = ["build_parser", "main", "package_version", "parse_interval", "positive_int"]

DESCRIPTION = """\
See the stepwise learning of self-supervised models: the eigenvalues of the
embeddings' covariance rising one mode at a time, when each mode was learned,
and what the features carry.

commands:
  demo    train a small Lightly Barlow Twins model on scikit-learn's embedded
          digits (CPU, a few min) with StepwiseMonitor, LinearProbe and
          ModeAtlas; print the spectrum, the learned modes, the mode atlas and
          the probe; write stepwise.png, atlas.png, the tables and a checkpoint
  report  detect the learned modes of a recorded run again from its
          spectrum*.npz (other detection options if you like); print the
          table, or why no mode was learned; redraw stepwise.png
  probe   linear probe of a checkpoint's backbone features on a labelled
          dataset (top-1 accuracy, and per number of eigen-directions kept)
  atlas   what each leading mode of a checkpoint's features means: per mode,
          the image statistic (brightness, contrast, edges, colour) and the
          class it follows; write modes.csv and atlas.png (the images at both
          ends of each mode)
  compare runs side by side: their onset steps in one table and their
          learned modes in one figure (compare.png); given checkpoints, how
          alike their top-k modes are (principal angles, linear CKA)"""

EPILOG = """\
examples:
  lightning-stepwise demo                      # 800 steps, into stepwise-demo/
  lightning-stepwise demo --max-steps 2000 --every-n-steps 10
  lightning-stepwise report stepwise-demo/logs          # every run under it
  lightning-stepwise report stepwise-demo/logs --min-rise 5
  lightning-stepwise probe stepwise-demo/checkpoints/last.ckpt --output probe
  lightning-stepwise atlas stepwise-demo/checkpoints/last.ckpt --modes 8
  lightning-stepwise compare run-a/ run-b/ --checkpoints a.ckpt b.ckpt

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


def _probe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lightning_stepwise.probe import format_modes, linear_probe
    from lightning_stepwise.report import save_probe

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        print(f"lightning-stepwise probe: no checkpoint at {checkpoint}", file=sys.stderr)
        return 2
    try:
        module = cli_inputs.load_module(checkpoint, args.module_class)
        train, val = cli_inputs.probe_loaders(args)
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
        images, labels, total = cli_inputs.first_images(args)
        n = len(images)
        if n < args.modes + 1:
            cap = "" if n == total else f" (--max-images {args.max_images} of the {total} in --data {args.data})"
            return fail(f"--modes {args.modes} needs at least {args.modes + 1} images (modes + 1), got {n}{cap}; "
                        f"pass a smaller --modes (at most {max(n - 1, 0)})"
                        + (f" or a larger --max-images (at most {total})" if total > n else " or more images"))
        module = cli_inputs.load_module(checkpoint, args.module_class)
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


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    def fail(message: str) -> int:
        print(f"lightning-stepwise compare: {message}", file=sys.stderr)
        return 2

    from lightning_stepwise.onset_core import ONSET_OPTIONS

    if not args.runs and not args.checkpoints:
        return fail("pass run folders (their spectrum*.npz), checkpoints with --checkpoints, or both")
    if args.checkpoints and len(args.checkpoints) + args.untrained_reference < 2:
        return fail("the similarity table compares pairs: pass at least two --checkpoints, or one with "
                    "--untrained-reference")
    if len(args.module_class) not in {1, len(args.checkpoints or [])}:
        return fail(f"{len(args.module_class)} --module-class for {len(args.checkpoints or [])} checkpoints: pass "
                    "one for all of them or one per checkpoint, in the same order")
    output = Path(args.output)
    if args.runs:
        from lightning_stepwise.compare import format_onset_comparison, load_runs, plot_comparison

        options = {name: getattr(args, name) for name in ONSET_OPTIONS}
        try:
            runs = load_runs(args.runs, labels=args.labels, **options)
        except (FileNotFoundError, ValueError) as err:
            return fail(str(err))
        print(f"When each mode was learned (onset steps; {_count(len(runs), 'run')}, detected alike; #k numbered "
              "from 1 in the order learned, '-': not learned by the run's last step):")
        table = format_onset_comparison(runs)
        print(table)
        output.mkdir(parents=True, exist_ok=True)
        plot_comparison(runs, path=output / "compare.png")
        (output / "onsets.txt").write_text(table + "\n")
        print(f"wrote {output / 'compare.png'}, {output / 'onsets.txt'}")
    if args.checkpoints:
        return _compare_checkpoints(args, output, fail)
    return 0


def _compare_checkpoints(args: argparse.Namespace, output: Any, fail: Any) -> int:
    """The similarity table of ``--checkpoints`` (and an untrained copy of the first), per point and k."""
    import copy
    from pathlib import Path

    import torch

    from lightning_stepwise.compare import format_similarity_table, similarity_table
    from lightning_stepwise.probe import point_features

    paths = [Path(c) for c in args.checkpoints]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return fail(f"no checkpoint at {', '.join(missing)}")
    classes = args.module_class * len(paths) if len(args.module_class) == 1 else args.module_class
    names = _checkpoint_names(paths)
    try:
        images, _, _ = cli_inputs.first_images(args)
        if len(images) < args.modes + 1:
            return fail(f"--modes {args.modes} needs at least {args.modes + 1} images, got {len(images)}; pass a "
                        "smaller --modes or more images")
        models = {name: cli_inputs.load_module(path, spec) for name, path, spec in zip(names, paths, classes,
                                                                                        strict=True)}
    except (ValueError, ImportError, AttributeError, RuntimeError, KeyError, OSError) as err:
        return fail(str(err))
    if args.untrained_reference:
        first = next(iter(models.values()))
        reference = copy.deepcopy(first)
        torch.manual_seed(args.reference_seed)
        for layer in reference.modules():
            if hasattr(layer, "reset_parameters") and layer is not reference:
                layer.reset_parameters()
        models[f"untrained {names[0]}"] = reference
    rows = []
    for point in args.points:
        for name, module in models.items():
            try:
                module.get_submodule(point)
            except AttributeError:
                children = [child for child, _ in module.named_children()]
                return fail(f"--points {point!r}: no such submodule in {name} ({type(module).__name__}); it has "
                            f"{children}; pass those to compare with --points")
        try:
            table = similarity_table(models, images, k=args.modes, feature_fn=point_features(point))
        except ValueError as err:
            return fail(str(err))
        rows += [{"point": point, **row} for row in table]
        print(f"\nAt `{point}`, on {len(images)} images: mean squared cosine of the principal angles between the "
              "top-k mode subspaces (1: the same k directions of variation, in any rotation; near k/N by chance)")
        print(format_similarity_table(table))
        print("linear CKA of the top-k mode coordinates (weights the modes by their variance)")
        print(format_similarity_table(table, measure="cka"))
    import csv

    output.mkdir(parents=True, exist_ok=True)
    with (output / "similarity.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {output / 'similarity.csv'}")
    return 0


def _checkpoint_names(paths: Sequence[Any]) -> list[str]:
    """Short distinct names: the file stem, or the folders above it when stems repeat (``last.ckpt``).

    A file given twice is named twice, the second time with `` (2)``.
    """
    distinct = list(dict.fromkeys(paths))
    names = [str(p) for p in distinct]
    for depth in range(1, max(len(p.parts) for p in distinct) + 1):
        shortest = ["/".join(p.with_suffix("").parts[-depth:]) for p in distinct]
        if len(set(shortest)) == len(shortest):
            names = shortest
            break
    of = dict(zip(distinct, names, strict=True))
    seen: dict[Any, int] = {}
    result = []
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
        result.append(of[p] if seen[p] == 1 else f"{of[p]} ({seen[p]})")
    return result


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _add_image_options(parser: argparse.ArgumentParser, fed_to: str, data_note: str = "",
                       colour_note: str = "") -> None:
    """``--data``, ``--image-size`` and ``--channels``: the images a checkpoint's model is run on."""
    parser.add_argument("--data", default="digits", metavar="digits|DIR",
                        help="'digits' (embedded, offline) or a folder of class sub-folders (torchvision "
                             f"ImageFolder){data_note}")
    parser.add_argument("--image-size", type=positive_int, default=16, metavar="PIXELS",
                        help=f"side of the square images fed to {fed_to} (the demo's: 16)")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=1,
                        help=f"image channels {fed_to} takes: 1 (grayscale, as the demo's) or 3{colour_note}")


def _add_onset_options(parser: argparse.ArgumentParser) -> None:
    """The detection options of ``detect_onsets``, each as ``--min-rise`` etc. with its default."""
    from lightning_stepwise.onset_core import ONSET_OPTIONS

    for name, (default, meaning) in ONSET_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, help=meaning,
                            metavar=_METAVARS.get(name))


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``lightning-stepwise`` and its commands: demo, report, probe, atlas and compare.

    Building it imports no torch or Lightning (only the onset options' defaults, with NumPy).

    Examples:
        >>> args = build_parser().parse_args(["demo", "--steps", "200", "--every-n-steps", "auto"])
        >>> args.max_steps, args.every_n_steps, args.small_init
        (200, 'auto', 0.5)
    """
    parser = argparse.ArgumentParser(prog="lightning-stepwise", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"lightning-stepwise {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="demo, report, probe, atlas or compare (above); "
                                          "'lightning-stepwise COMMAND --help' lists its options")

    demo = commands.add_parser(
        "demo", formatter_class=_HelpFormatter,
        description=_paragraph(
            "Train a small Lightly Barlow Twins model on scikit-learn's embedded digits (1,797 images, 16x16, two "
            "augmented views each) on the CPU, with StepwiseMonitor, LinearProbe and ModeAtlas. Prints the spectrum "
            "of the embeddings over time, the modes learned (their onset steps) or why none were, what each mode "
            "encodes (the mode atlas: its strongest image statistic and the digit it separates best) and the "
            "linear probe; writes spectrum.npz, onsets.csv, stepwise.png, the probe's files and atlas/modes.csv "
            "and atlas/atlas.png under DIR/logs/version_N/stepwise, and DIR/checkpoints/last.ckpt."),
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
    _add_onset_options(report)
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
    _add_image_options(probe, "the backbone")
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
    _add_image_options(atlas, "the model", "; the labels give the class columns",
                       " (adds the colour statistics)")
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

    compare = commands.add_parser(
        "compare", formatter_class=_HelpFormatter,
        description=_paragraph(
            "Compare runs. Given run folders (or spectrum*.npz files): detect each run's learned modes again with "
            "the same options, print their onset steps side by side, and draw compare.png (each learned mode's "
            "eigenvalue over its plateau, one colour per run, and the count of modes learned over steps). Given "
            "checkpoints: run each model on the same images and print how alike their top-k modes are, per pair "
            "and k (principal angles between the top-k mode subspaces, and linear CKA); write similarity.csv."),
        epilog="examples:\n  lightning-stepwise compare runs/barlow_twins runs/vicreg runs/simclr\n"
               "  lightning-stepwise compare seed0/ seed1/ --labels seed-0 seed-1 --min-rise 5\n"
               "  lightning-stepwise compare --checkpoints a/last.ckpt b/last.ckpt --untrained-reference\n"
               "  lightning-stepwise compare run-a run-b --checkpoints run-a.ckpt run-b.ckpt \\\n"
               "      --module-class my_package.models:MyBYOL --data images/ --image-size 32 --channels 3")
    compare.add_argument("runs", nargs="*", metavar="RUN",
                         help="run folders searched recursively for spectrum*.npz (each file found is one run), or "
                              ".npz files")
    compare.add_argument("--labels", nargs="+", default=None, metavar="NAME",
                         help="one name per spectrum file found (default: the shortest distinct part of each path)")
    compare.add_argument("--output", default="stepwise-compare", metavar="DIR",
                         help="folder for compare.png, onsets.txt and similarity.csv")
    compare.add_argument("--checkpoints", nargs="+", default=None, metavar="CKPT",
                         help="Lightning checkpoints whose modes to compare pairwise (two or more)")
    compare.add_argument("--module-class", nargs="+", default=["lightning_stepwise.demo:DigitsBarlowTwins"],
                         metavar="MODULE:CLASS",
                         help="package.module:ClassName of the LightningModule the checkpoints hold: one for all, or "
                              "one per checkpoint in the same order")
    compare.add_argument("--untrained-reference", action="store_true",
                         help="add the first checkpoint's architecture with fresh random weights (every layer's "
                              "reset_parameters): the similarity that needs no training")
    compare.add_argument("--reference-seed", type=int, default=0, help="seed of the untrained reference's weights")
    compare.add_argument("--points", nargs="+", default=["backbone", "projection_head"], metavar="SUBMODULE",
                         help="dotted paths of the submodules whose outputs are compared, each in its own table")
    compare.add_argument("--modes", type=positive_int, default=8, metavar="K",
                         help="compare the top 1, 2, 4, ..., K modes (needs at least K + 1 images)")
    _add_image_options(compare, "the models", "; every model sees the same images")
    compare.add_argument("--max-images", type=positive_int, default=2000, metavar="N",
                         help="use the first N images of the set, always the same ones")
    _add_onset_options(compare)
    compare.set_defaults(run=_compare)
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
