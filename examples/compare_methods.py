"""Do Barlow Twins, SimCLR and VICReg learn the same modes? (Simon et al. 2023 ask this.)

Trains each method on scikit-learn's embedded digits with the ``--paper`` preset of ``examples/methods``
(tiny backbone of width 16, 64-d projector, SGD at 0.1, batch 128, crops of at least half the image;
SimCLR starts collapsed) and ``StepwiseMonitor``; VICReg twice, with two seeds, as the reference for
"the same method". Then:

- when: the runs' learned modes overlaid in one figure and their onset steps in one table
  (``lightning_stepwise.compare``, as ``lightning-stepwise compare`` does);
- what: every pair of trained networks, plus an untrained one of the same architecture, compared on the
  same 1,797 un-augmented digits: the mean squared cosine of the principal angles between their top-k
  mode subspaces, and linear CKA, for k = 1, 2, 4, 8, at the backbone output (the representation kept
  after training) and at the projector output (the loss input the monitor tracks);
- how much: a linear probe of each backbone on the digits' labels.

    python examples/compare_methods.py                      # 4 runs of 2,000 steps; about 25 min on 2 CPU cores
    python examples/compare_methods.py --steps 500 --runs barlow_twins:0 vicreg:0
    python examples/compare_methods.py --compare-only       # again from the saved runs, without training

Writes ``<output>/<method>_s<seed>/stepwise/`` (the monitor's files) and ``model.pt`` per run, and
``<output>/compare.png``, ``onsets.txt`` and ``similarity.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_stepwise import StepwiseMonitor
from lightning_stepwise.compare import (
    format_onset_comparison,
    format_similarity_table,
    load_runs,
    plot_comparison,
    similarity_table,
)
from lightning_stepwise.probe import fit_linear_probe, point_features

METHODS_DIR = Path(__file__).resolve().parent / "methods"
if str(METHODS_DIR) not in sys.path:
    sys.path.insert(0, str(METHODS_DIR))  # the method examples import their shared `common` by name

from common import IMAGENET_NORMALIZE, METHOD_CLASSES, PAPER, DigitsImages, paper_method  # noqa: E402

DEFAULT_RUNS = ("barlow_twins:0", "simclr:0", "vicreg:0", "vicreg:1")
#: The untrained reference's seed: one no trained run starts from, so that it shares no initial weights.
REFERENCE_SEED = 1000


def parse_run(text: str) -> tuple[str, int]:
    """``"vicreg:1"`` -> ``("vicreg", 1)``; a bare method name means seed 0."""
    name, _, seed = text.partition(":")
    if name not in METHOD_CLASSES:
        raise argparse.ArgumentTypeError(f"unknown method {name!r} in {text!r}: one of {sorted(METHOD_CLASSES)}")
    try:
        return name, int(seed or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the seed in {text!r} must be an integer, as in vicreg:1") from None


def run_name(method: str, seed: int) -> str:
    return f"{method}_s{seed}"


def digits_tensor(size: int) -> tuple[Tensor, Tensor]:
    """All 1,797 digits as the probe sees them: ``(N, 3, size, size)``, ImageNet-normalised, and the labels."""
    import torchvision.transforms as T

    plain = T.Compose([T.ToTensor(), T.Normalize(**IMAGENET_NORMALIZE)])
    data = DigitsImages(size, plain)
    return torch.stack([data[i][0] for i in range(len(data))]), torch.tensor(data.labels)


def backbone_features(module: nn.Module, x: Tensor) -> Tensor:
    return point_features("backbone")(module, x).flatten(1)


def train(method: str, seed: int, args: argparse.Namespace, folder: Path) -> tuple[nn.Module, float]:
    """Train one run; its monitor's files go to ``folder/stepwise`` and its weights to ``folder/model.pt``."""
    pl.seed_everything(seed, verbose=False)
    model, transform, _ = paper_method(method, PAPER["input_size"], PAPER["min_scale"])
    loader = DataLoader(DigitsImages(PAPER["input_size"], transform), batch_size=PAPER["batch_size"], shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(seed))
    monitor = StepwiseMonitor(every_n_steps=args.every_n_steps, dirpath=folder / "stepwise", verbose=False,
                              prog_bar=False)
    trainer = pl.Trainer(max_steps=args.steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[monitor], default_root_dir=folder)
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    torch.save(model.state_dict(), folder / "model.pt")
    return model, seconds


def load_trained(method: str, folder: Path) -> nn.Module:
    model, _, _ = paper_method(method, PAPER["input_size"], PAPER["min_scale"])
    path = folder / "model.pt"
    if not path.is_file():
        raise SystemExit(f"--compare-only: no {path}; train the run first (drop --compare-only)")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def probe_top1(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Linear-probe top-1 of the backbone on a fixed 70/30 split of the digits (as the method examples split)."""
    from lightning_stepwise.atlas import model_features

    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    features = model_features(model, images, backbone_features)
    train, val = order[:1258], order[1258:]
    result = fit_linear_probe(features[train], labels[train], features[val], labels[val], modes=False)
    return float(result["top1"])


def write_similarity_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=parse_run, default=[parse_run(r) for r in DEFAULT_RUNS],
                        metavar="METHOD[:SEED]", help=f"runs to train (default {' '.join(DEFAULT_RUNS)})")
    parser.add_argument("--steps", type=int, default=PAPER["max_steps"], help="training steps per run (default 2000)")
    parser.add_argument("--every-n-steps", type=int, default=PAPER["every_n_steps"],
                        help="steps between two spectrum measurements (default 10)")
    parser.add_argument("--k", type=int, default=8, help="the most modes compared (default 8)")
    parser.add_argument("--output", default="compare-methods", help="where the files go (default compare-methods/)")
    parser.add_argument("--compare-only", action="store_true",
                        help="skip training: compare the runs already saved under --output")
    args = parser.parse_args(argv)
    if len(set(args.runs)) != len(args.runs):
        parser.error("--runs lists a run twice")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train (unless ``--compare-only``) and compare; returns the runs, the similarity rows and the probe."""
    args = parse_args(argv)
    output = Path(args.output)
    images, labels = digits_tensor(PAPER["input_size"])
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU; "
          f"{args.steps} steps per run, the --paper preset")

    models: dict[str, nn.Module] = {}
    top1: dict[str, float] = {}
    for method, seed in args.runs:
        name = run_name(method, seed)
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        if args.compare_only:
            models[name] = load_trained(method, folder)
        else:
            models[name], seconds = train(method, seed, args, folder)
            print(f"{name}: {args.steps} steps in {seconds:.0f} s", flush=True)
        top1[name] = probe_top1(models[name], images, labels)
    pl.seed_everything(REFERENCE_SEED, verbose=False)
    reference_method = args.runs[-1][0]
    reference = f"untrained {reference_method}"
    models[reference] = paper_method(reference_method, PAPER["input_size"], PAPER["min_scale"])[0]
    top1[reference] = probe_top1(models[reference], images, labels)

    runs = load_runs([output / run_name(m, s) for m, s in args.runs],
                     labels=[run_name(m, s) for m, s in args.runs])
    onsets = format_onset_comparison(runs)
    print("\nWhen each mode was learned (onset steps; #k numbered from 1 in the order learned):")
    print(onsets)
    (output / "onsets.txt").write_text(onsets + "\n")
    figure = output / "compare.png"
    plot_comparison(runs, path=figure, title=f"Learned modes on the digits, --paper preset, {args.steps} steps")

    print("\nLinear probe of each backbone (top-1 on 539 held-out digits):")
    for name, accuracy in top1.items():
        print(f"  {name:<24} {accuracy:.1%}")

    all_rows = []
    for point, fn in (("backbone", backbone_features), ("projection_head", point_features("projection_head"))):
        rows = similarity_table(models, images, k=args.k, feature_fn=fn)
        all_rows += [{"point": point, **row} for row in rows]
        print(f"\nAt the {point} output, on {len(images)} digits: mean squared cosine of the principal angles "
              f"between the top-k mode subspaces (1: the same k directions of variation; about k/N by chance):")
        print(format_similarity_table(rows))
        print("linear CKA of the top-k mode coordinates:")
        print(format_similarity_table(rows, measure="cka"))
    write_similarity_csv(all_rows, output / "similarity.csv")
    print(f"\nwrote {figure}, {output / 'onsets.txt'}, {output / 'similarity.csv'}")
    return {"runs": runs, "similarity": all_rows, "top1": top1}


if __name__ == "__main__":
    main()
