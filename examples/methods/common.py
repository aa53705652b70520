"""What the method examples share: arguments, data, backbones, the small-initialisation switch, a summary.

Each method example defines its module as Lightly's examples write it and builds its own Trainer with
``StepwiseMonitor()`` (measuring every ``--every-n-steps``) and ``LinearProbe(...)``; everything else lives
here so the examples stay short.

Data: ``digits`` (default) is scikit-learn's embedded handwritten digits, offline, as small RGB
images; ``cifar10`` and ``stl10`` are torchvision downloads that happen only with ``--download``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_stepwise import LinearProbe, StepwiseMonitor, format_onset_table

IMAGENET_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DEFAULT_INPUT_SIZE = {"digits": 32, "cifar10": 32, "stl10": 96}


#: ``--paper``: the paper's experiment (Simon et al. 2023) on a CPU budget: a narrow projector (64-d output,
#: few enough modes to see each one rise), crops that keep most of the digit (``min_scale`` 0.5: Lightly's
#: 0.08 leaves a few pixels of a 16-pixel digit, and few invariant directions to learn), the tiny backbone at
#: width 16, and enough steps for at least 8 learned modes with Barlow Twins, SimCLR and VICReg on the
#: embedded digits (see the methods page of the docs).
PAPER = {"projector_dim": 64, "backbone": "tiny", "tiny_width": 16, "min_scale": 0.5, "lr": 0.1,
         "input_size": 16, "batch_size": 128, "max_steps": 2000, "max_epochs": -1, "every_n_steps": 10}


def _interval(text: str) -> int | str:
    return text if text == "auto" else int(text)


def parse_args(description: str, argv: Sequence[str] | None = None, *, paper: bool = False,
               paper_overrides: dict[str, Any] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The flags every method example takes (and, with ``paper``, ``--paper``, ``--projector-dim``, ``--lr``).

    ``paper_overrides`` changes the ``--paper`` preset for one method (e.g. more steps); ``extra`` adds one
    example's own flags to the parser.
    """
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    preset = {**PAPER, **(paper_overrides or {})}
    if paper:
        parser.add_argument("--paper", action="store_true",
                            help="the paper's experiment: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                        for k, v in preset.items())
                            + " (flags given explicitly win)")
        parser.add_argument("--projector-dim", type=int, default=2048, help="projection head width and output")
        parser.add_argument("--lr", type=float, default=0.06, help="SGD learning rate")
    parser.add_argument("--every-n-steps", type=_interval, default="auto",
                        help="steps between two spectrum measurements, or 'auto' (dense early; the default)")
    parser.add_argument("--data", choices=["digits", "cifar10", "stl10"], default="digits",
                        help="digits: embedded, offline (default); cifar10 / stl10: torchvision datasets")
    parser.add_argument("--data-root", default="data", help="where cifar10 / stl10 live or are downloaded to")
    parser.add_argument("--download", action="store_true", help="allow downloading cifar10 / stl10")
    parser.add_argument("--backbone", choices=["resnet18", "tiny"], default="resnet18",
                        help="tiny: a 3-layer conv net (CPU smoke runs)")
    parser.add_argument("--tiny-width", type=int, default=8, help="channels of the tiny backbone's first layer")
    parser.add_argument("--small-init", type=float, default=1.0, metavar="FACTOR",
                        help="multiply every initial conv / linear weight by FACTOR (the paper's small-init setting)")
    parser.add_argument("--input-size", type=int, default=None, help="image side (default 32, 96 for stl10)")
    parser.add_argument("--min-scale", type=float, default=0.08,
                        help="smallest random-resized-crop area, as a fraction of the image (Lightly's default 0.08)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-epochs", type=int, default=150)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: epochs decide)")
    parser.add_argument("--devices", default="1", help="as Trainer(devices=...): 1, 2, 'auto', ...")
    parser.add_argument("--precision", default="32-true", help="as Trainer(precision=...), e.g. bf16-mixed")
    parser.add_argument("--num-workers", type=int, default=None, help="dataloader workers (default 0 for digits)")
    parser.add_argument("--output", default="stepwise-runs", help="the Trainer's default_root_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if getattr(args, "paper", False):  # the preset fills what was not given on the command line
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
                 if a.startswith("--")}
        for name, value in preset.items():
            if name not in given:
                setattr(args, name, value)
    args.input_size = args.input_size or DEFAULT_INPUT_SIZE[args.data]
    if args.num_workers is None:
        args.num_workers = 0 if args.data == "digits" else min(8, os.cpu_count() or 1)
    args.devices = int(args.devices) if args.devices.isdigit() else args.devices
    return args


def trainer_options(args: argparse.Namespace) -> dict[str, Any]:
    """Trainer arguments from the flags (callbacks are the example's own)."""
    return {"max_epochs": args.max_epochs, "max_steps": args.max_steps, "devices": args.devices,
            "accelerator": "auto", "precision": args.precision, "default_root_dir": args.output,
            "log_every_n_steps": 10}


# ---------------------------------------------------------------------- backbones


def backbone(name: str, width: int = 8) -> tuple[nn.Module, int]:
    """(backbone, feature width): torchvision's ResNet-18 without its classifier, or a tiny conv net.

    The tiny net has ``width``, ``2 width`` and ``4 width`` channels; its features are ``4 width`` wide.
    """
    if name == "resnet18":
        resnet = torchvision.models.resnet18()
        return nn.Sequential(*list(resnet.children())[:-1]), 512

    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    tiny = nn.Sequential(*block(3, width, 1), *block(width, 2 * width, 2), *block(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool2d(1))
    return tiny, 4 * width


def small_init(module: nn.Module, factor: float) -> nn.Module:
    """Multiply every conv and linear weight by ``factor`` (momentum copies too, so they stay equal)."""
    if factor != 1.0:
        with torch.no_grad():
            for layer in module.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    layer.weight.mul_(factor)
    return module


def collapsed_start(head: nn.Module, factor: float, offset: float = 1.0, seed: int = 0) -> nn.Module:
    """Start a head that ends in a BatchNorm with its outputs near one point: the small initialisation of a
    loss that L2-normalises its inputs (NT-Xent, ...).

    Scaling weights down changes nothing there (the normalisation undoes any scale, and a last BatchNorm
    standardises its outputs anyway). Instead the last BatchNorm's scale is multiplied by ``factor`` and its
    shift set to a fixed random vector of norm ``offset``: every image starts at almost the same point of
    the sphere, and each direction the loss spreads them along grows from near zero, as in the paper's
    small-initialisation runs. ``factor`` 1 leaves the head as it is.
    """
    if factor != 1.0:
        norms = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
        if not norms:
            raise ValueError(f"{type(head).__name__} has no BatchNorm1d to start collapsed")
        last = norms[-1]
        with torch.no_grad():
            shift = torch.randn(last.num_features, generator=torch.Generator().manual_seed(seed))
            last.bias.copy_(offset * shift / shift.norm())
            last.weight.mul_(factor)
    return head


# ---------------------------------------------------------------------- the paper's methods, built alike

#: The example files and their LightningModule classes, for the scripts that train several methods alike.
METHOD_CLASSES = {"barlow_twins": "BarlowTwins", "simclr": "SimCLR", "vicreg": "VICReg"}


def load_method(name: str) -> Any:
    """The example module ``examples/methods/<name>.py`` (its LightningModule class and ``main``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", Path(__file__).resolve().parent / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paper_method(name: str, input_size: int, min_scale: float) -> tuple[nn.Module, Any, str]:
    """(model, Lightly transform, what the views are) for one method with the ``--paper`` preset.

    The tiny backbone of width 16, a 64-d projector, SGD at 0.1; SimCLR starts collapsed as ``--paper`` does.
    Lightly's own views with their default colour jitter and greyscale, without blur.
    """
    from lightly.transforms import SimCLRTransform, VICRegTransform

    if name not in METHOD_CLASSES:
        raise ValueError(f"unknown method {name!r}: one of {sorted(METHOD_CLASSES)}")
    net, width = backbone("tiny", PAPER["tiny_width"])
    model = getattr(load_method(name), METHOD_CLASSES[name])(net, width, PAPER["projector_dim"], PAPER["lr"])
    if name == "barlow_twins":
        transform = byol_views(input_size, min_scale)
        views = "BYOLTransform views 1/2 (crop, flip, colour jitter p=0.8 b/c/s/h 0.4/0.4/0.2/0.1, grey p=0.2, " \
                "solarize p=0/0.2)"
    elif name == "simclr":
        collapsed_start(model.projection_head, 0.03)  # as --paper: the embeddings start near one point
        transform = SimCLRTransform(input_size=input_size, gaussian_blur=0.0, min_scale=min_scale)
        views = "SimCLRTransform (crop, flip, colour jitter p=0.8 b/c/s/h 0.8/0.8/0.8/0.2, grey p=0.2)"
    else:
        transform = VICRegTransform(input_size=input_size, gaussian_blur=0.0, min_scale=min_scale)
        views = "VICRegTransform (crop, flip, colour jitter p=0.8 b/c/s/h 0.4/0.4/0.2/0.1, grey p=0.2, solarize p=0.1)"
    return model, transform, views + f", min_scale {min_scale}, no blur"


# ---------------------------------------------------------------------- data


def byol_views(input_size: int, min_scale: float = 0.08) -> Any:
    """BYOL's two asymmetric views, as Lightly's BYOL and Barlow Twins examples use (no blur at small sizes)."""
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    return BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=input_size, gaussian_blur=0.0, min_scale=min_scale),
        view_2_transform=BYOLView2Transform(input_size=input_size, gaussian_blur=0.0, min_scale=min_scale))


class DigitsImages(Dataset):
    """The embedded digits as ``size x size`` RGB PIL images with labels (indices ``indices`` only)."""

    def __init__(self, size: int, transform: Callable[[Image.Image], Any] | None = None,
                 indices: Sequence[int] | None = None) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = (digits.images * (255.0 / 16.0)).astype(np.uint8)
        keep = range(len(pixels)) if indices is None else indices
        self.images = [Image.fromarray(pixels[i]).resize((size, size), Image.BILINEAR).convert("RGB") for i in keep]
        self.labels = [int(digits.target[i]) for i in keep]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.labels[i]


def _torchvision_dataset(args: argparse.Namespace, split: str, transform: Callable[..., Any]) -> Dataset:
    root = Path(args.data_root)
    try:
        if args.data == "cifar10":
            return torchvision.datasets.CIFAR10(root, train=split != "test", transform=transform,
                                                download=args.download)
        stl_split = {"ssl": "train+unlabeled", "train": "train", "test": "test"}[split]
        return torchvision.datasets.STL10(root, split=stl_split, transform=transform, download=args.download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise SystemExit(f"{args.data} is not in {root.resolve()} ({err}). Pass --download to fetch it (network "
                         "needed), or --data-root to point at a copy, or use --data digits (offline).") from None


def ssl_loader(args: argparse.Namespace, transform: Callable[[Image.Image], Any]) -> DataLoader:
    """Training batches ``(views, labels)``: ``transform`` (a Lightly multi-view transform) per image."""
    dataset = (DigitsImages(args.input_size, transform) if args.data == "digits"
               else _torchvision_dataset(args, "ssl", transform))
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                      num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                      generator=torch.Generator().manual_seed(args.seed))


def probe_loaders(args: argparse.Namespace) -> tuple[DataLoader, DataLoader]:
    """Labelled, un-augmented train / validation loaders for ``LinearProbe`` (digits: a fixed 70/30 split)."""
    plain = torchvision.transforms.Compose([
        torchvision.transforms.Resize(args.input_size),
        torchvision.transforms.CenterCrop(args.input_size),
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(**IMAGENET_NORMALIZE),
    ])
    if args.data == "digits":
        order = torch.randperm(1797, generator=torch.Generator().manual_seed(0)).tolist()
        train = DigitsImages(args.input_size, plain, order[:1258])
        val = DigitsImages(args.input_size, plain, order[1258:])
    else:
        train, val = _torchvision_dataset(args, "train", plain), _torchvision_dataset(args, "test", plain)
    return (DataLoader(train, batch_size=512, num_workers=args.num_workers),
            DataLoader(val, batch_size=512, num_workers=args.num_workers))


# ---------------------------------------------------------------------- report


def summarize(trainer: Any, monitor: StepwiseMonitor, probe: LinearProbe) -> None:
    """Print what the monitor tracked, the learned modes, the probe's accuracy and where the files are."""
    if not trainer.is_global_zero:
        return
    print()
    print(f"{monitor.modes_learned} modes learned; the monitor tracked "
          f"{', '.join(point.describe() for point in monitor.tracking_points)}.")
    print(format_onset_table(monitor.onsets, ordinal=True))  # #1 is mode 0 in onsets.csv
    if probe.results:
        print(f"linear probe of the backbone: top-1 {probe.results[-1]['top1']:.1%} on the validation split")
    print(f"files: {monitor.output_dir}")
