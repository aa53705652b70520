"""Do the first modes an SSL method learns encode colour? (Simon et al. 2023 observe that they often do.)

Trains Barlow Twins, SimCLR and VICReg (the classes of ``examples/methods``, the ``--paper`` preset: tiny
backbone of width 16, projector 64, SGD at 0.1, batch 128, crops of at least half the image) on random
square crops of scikit-learn's two embedded colour photographs (offline, no download), with
``StepwiseMonitor``; then builds the mode atlas of the projector output (the loss input, the point the
monitor tracks; L2-normalised for SimCLR, whose loss normalises it) on 1,000 held-out, un-augmented crops,
and prints per method which image descriptor each leading mode follows most strongly. Two baselines come
first: the principal components of the raw pixels, and each network at initialisation.

    python examples/atlas_colour.py                                  # the three methods, offline
    python examples/atlas_colour.py --methods vicreg --steps 1000    # one method, longer
    python examples/atlas_colour.py --cifar10 --download             # CIFAR-10 instead (network needed)
    python examples/atlas_colour.py --stl10 --download               # STL-10 instead (network needed, 2.6 GB)

Writes ``<output>/<method>/modes.csv`` and ``atlas.png`` (plus the monitor's files under
``<output>/<method>/stepwise``) and ``<output>/pixels/`` for the pixel baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_stepwise import StepwiseMonitor
from lightning_stepwise.atlas import Atlas, mode_atlas
from lightning_stepwise.probe import point_features

METHODS_DIR = Path(__file__).resolve().parent / "methods"
if str(METHODS_DIR) not in sys.path:
    sys.path.insert(0, str(METHODS_DIR))  # the method examples import their shared `common` by name

from common import IMAGENET_NORMALIZE, PAPER, paper_method  # noqa: E402

METHODS = ("barlow_twins", "simclr", "vicreg")
#: descriptors that count as "colour or brightness" in the summary line
COLOURISH = frozenset({"red_mean", "green_mean", "blue_mean", "saturation", "hue", "brightness"})
SIZE = 16


# ---------------------------------------------------------------------- data


def photo_crops(n: int, *, seed: int = 0, size: int = SIZE, min_side: int = 24,
                max_side: int = 96) -> list[Image.Image]:
    """``n`` random square crops of scikit-learn's two sample photographs, resized to ``size`` x ``size`` RGB.

    Each crop picks one of the two photographs (china.jpg, flower.jpg; 427 x 640), a side uniformly in
    ``[min_side, max_side]`` pixels and a uniform position; the same ``seed`` gives the same crops.
    """
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(np.asarray(p)) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(min_side, max_side + 1))
        left = int(rng.integers(photo.width - side + 1))
        top = int(rng.integers(photo.height - side + 1))
        crops.append(photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR))
    return crops


def download_images(name: str, n: int, *, seed: int, root: str, download: bool) -> list[Image.Image]:
    """``n`` random training images of CIFAR-10 (32 x 32) or STL-10 (96 x 96, with the unlabelled split), resized
    to 16 x 16; torchvision, only behind --cifar10 / --stl10 (and --download to fetch them)."""
    import torchvision

    try:
        if name == "cifar10":
            data = torchvision.datasets.CIFAR10(root, train=True, download=download)
            pixels = data.data  # (N, 32, 32, 3) uint8
        else:
            data = torchvision.datasets.STL10(root, split="train+unlabeled", download=download)
            pixels = data.data.transpose(0, 2, 3, 1)  # stored (N, 3, 96, 96)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise SystemExit(f"{name} is not in {Path(root).resolve()} ({err}). Pass --download to fetch it (network "
                         f"needed) or --data-root to point at a copy, or drop --{name} to use the embedded photographs "
                         "(offline).") from None
    order = np.random.default_rng(seed).permutation(len(pixels))[:n]
    return [Image.fromarray(pixels[i]).resize((SIZE, SIZE), Image.BILINEAR) for i in order]


def as_tensor(images: Sequence[Image.Image]) -> Tensor:
    """``(N, 3, H, W)`` float32 values in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)


class Images(Dataset):
    """PIL images through a Lightly multi-view transform, as ``(views, 0)`` (no labels)."""

    def __init__(self, images: Sequence[Image.Image], transform: Callable[[Image.Image], Any]) -> None:
        self.images, self.transform = list(images), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.images[i]), 0


# ---------------------------------------------------------------------- methods


def feature_fn(normalize: bool) -> Callable[[nn.Module, Tensor], Tensor]:
    """Projector output of [0, 1] images (ImageNet-normalised on the way in, as in training)."""
    mean = torch.tensor(IMAGENET_NORMALIZE["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALIZE["std"]).view(1, 3, 1, 1)
    head = point_features("projection_head")

    def features(module: nn.Module, x: Tensor) -> Tensor:
        z = head(module, (x - mean.to(x)) / std.to(x))
        return nn.functional.normalize(z, dim=1) if normalize else z

    return features


# ---------------------------------------------------------------------- report


def table(atlas: Atlas, learned: int | None = None) -> str:
    """mode, eigenvalue, strongest descriptor, r; with ``learned``, "yes" on the first ``learned`` modes (the
    monitor's count of learned modes; the atlas ranks modes by their final eigenvalue)."""
    header = f"{'mode':>4}  {'eigenvalue':>10}  {'strongest':<12} {'r':>6}"
    lines = [header + ("  learned" if learned is not None else "")]
    for row in atlas.rows:
        line = f"{row['mode']:>4}  {row['eigenvalue']:>10.4g}  {row['strongest'] or '-':<12} {row['r']:>6.2f}"
        if learned is not None:
            line += "  " + ("yes" if row["mode"] < learned else "no")
        lines.append(line)
    return "\n".join(lines)


def colour_count(atlas: Atlas, first: int = 3) -> int:
    """How many of the ``first`` modes have a colour descriptor or brightness as their strongest."""
    return sum(row["strongest"] in COLOURISH for row in atlas.rows[:first])


def summary(label: str, atlas: Atlas) -> str:
    names = ", ".join(str(row["strongest"]) for row in atlas.rows[:3])
    return f"{label}: {colour_count(atlas)} of the first 3 modes have colour or brightness as strongest ({names})"


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=int, default=300,
                        help="training steps per method (default 300: about 1.5 min each on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops and of training")
    parser.add_argument("--crops", type=int, default=3000, help="training crops (default 3000)")
    parser.add_argument("--atlas-crops", type=int, default=1000, help="held-out un-augmented crops for the atlas")
    parser.add_argument("--k", type=int, default=8, help="modes in the atlas (default 8)")
    parser.add_argument("--batch-size", type=int, default=PAPER["batch_size"])
    parser.add_argument("--min-scale", type=float, default=PAPER["min_scale"],
                        help="smallest random-resized-crop area (the --paper preset's 0.5)")
    parser.add_argument("--every-n-steps", type=int, default=PAPER["every_n_steps"])
    parser.add_argument("--output", default="atlas-colour", help="where the files go (default atlas-colour/)")
    parser.add_argument("--cifar10", action="store_true", help="CIFAR-10 images instead of the photo crops")
    parser.add_argument("--stl10", action="store_true", help="STL-10 images (train+unlabeled) instead of the crops")
    parser.add_argument("--download", action="store_true", help="allow downloading CIFAR-10 / STL-10 (network)")
    parser.add_argument("--data-root", default="data", help="where CIFAR-10 / STL-10 live or are downloaded to")
    args = parser.parse_args(argv)
    if args.cifar10 and args.stl10:
        parser.error("pass --cifar10 or --stl10, not both")
    if args.download and not (args.cifar10 or args.stl10):
        parser.error("--download only applies with --cifar10 or --stl10")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Atlas]:
    """Run the experiment; returns each atlas by name ("pixels", "<method>@init", "<method>")."""
    args = parse_args(argv)
    output = Path(args.output)
    if args.cifar10 or args.stl10:
        name = "cifar10" if args.cifar10 else "stl10"
        source = "CIFAR-10 (train)" if args.cifar10 else "STL-10 (train+unlabeled)"
        source += ", resized to 16 x 16"
        both = download_images(name, args.crops + args.atlas_crops, seed=args.seed, root=args.data_root,
                               download=args.download)
        train_images, held_out = both[:args.crops], both[args.crops:]
    else:
        source = "random square crops (24-96 px) of sklearn's china.jpg and flower.jpg, resized to 16 x 16"
        train_images = photo_crops(args.crops, seed=args.seed)
        held_out = photo_crops(args.atlas_crops, seed=args.seed + 1)
    atlas_images = as_tensor(held_out)
    print(f"data: {args.crops} training and {args.atlas_crops} held-out atlas images: {source}")
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU")

    atlases: dict[str, Atlas] = {}
    pixels = mode_atlas(atlas_images.flatten(1), atlas_images, k=args.k, output_dir=output / "pixels")
    atlases["pixels"] = pixels
    print("\nbaseline: principal components of the raw pixels (no network)")
    print(table(pixels))
    print(summary("pixels", pixels))

    for name in args.methods:
        pl.seed_everything(args.seed, verbose=False)
        model, transform, views = paper_method(name, SIZE, args.min_scale)
        fn = feature_fn(normalize=name == "simclr")
        init = mode_atlas(model, atlas_images, k=args.k, feature_fn=fn)
        atlases[f"{name}@init"] = init
        loader = DataLoader(Images(train_images, transform), batch_size=args.batch_size, shuffle=True,
                            drop_last=True, generator=torch.Generator().manual_seed(args.seed))
        monitor = StepwiseMonitor(every_n_steps=args.every_n_steps, dirpath=output / name / "stepwise",
                                  verbose=False, prog_bar=False)
        trainer = pl.Trainer(max_steps=args.steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[monitor], default_root_dir=output / name)
        start = time.perf_counter()
        trainer.fit(model, loader)
        seconds = time.perf_counter() - start
        learned = monitor.modes_learned
        atlas = mode_atlas(model, atlas_images, k=args.k, feature_fn=fn, output_dir=output / name)
        atlases[name] = atlas
        onsets = ", ".join(str(int(row["onset_step"])) for row in monitor.onsets) or "-"
        point = "projection_head output" + (", L2-normalised" if name == "simclr" else "")
        print(f"\n{name}: {args.steps} steps in {seconds:.0f} s; {learned} modes learned (onsets at steps {onsets})")
        print(f"  views: {views}")
        print(f"  atlas: {point} (the monitor tracked {monitor.tracking_points[0].describe()}), "
              f"k={args.k}, {len(atlas_images)} held-out crops")
        print(table(atlas, learned))
        print(summary(f"{name} at init", init))
        print(summary(name, atlas))
        print(f"  files: {atlas.csv_path}, {atlas.figure_path}")
    return atlases


if __name__ == "__main__":
    main()
