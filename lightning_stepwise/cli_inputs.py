"""What the ``probe``, ``atlas`` and ``compare`` commands load: checkpoints and labelled image sets.

Errors are ``ValueError``s whose messages name the command-line flag to change (``--module-class``,
``--data``, ...), for the commands to print. Imports of torch and torchvision stay inside the functions,
so that the parser answers ``--help`` at once.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["checkpoint_contents", "first_images", "fixed_order", "labelled_dataset", "load_class", "load_module",
           "probe_loaders"]


def load_class(spec: str) -> type:
    """The class ``spec`` names as ``package.module:ClassName`` (``--module-class``).

    Examples:
        >>> load_class("lightning_stepwise.demo:DigitsBarlowTwins").__name__
        'DigitsBarlowTwins'
        >>> load_class("lightning_stepwise.demo")
        Traceback (most recent call last):
        ...
        ValueError: --module-class must look like package.module:ClassName, got 'lightning_stepwise.demo'
    """
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


def checkpoint_contents(path: Any) -> str | None:
    """What a checkpoint says about the module it holds, as the start of an error message.

    Its class path (LightningCLI saves one), else its hyper-parameters and top-level submodules; None
    when it cannot be read as a checkpoint.

    Examples:
        >>> checkpoint_contents("not-a-checkpoint.ckpt") is None
        True
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


def load_module(checkpoint: Any, spec: str) -> Any:
    """The LightningModule ``spec`` (``package.module:ClassName``) loaded from ``checkpoint`` on the CPU.

    Raises ValueError with the fix when the class cannot be imported or the checkpoint is of another class.

    Examples:
        >>> module = load_module("stepwise-demo/checkpoints/last.ckpt",
        ...                      "lightning_stepwise.demo:DigitsBarlowTwins")  # doctest: +SKIP
    """
    module_class = load_class(spec)
    if not hasattr(module_class, "load_from_checkpoint"):
        raise ValueError(f"--module-class {spec} is not a LightningModule (no load_from_checkpoint)")
    try:
        return module_class.load_from_checkpoint(str(checkpoint), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any load failure has the same fix
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if len(reason) > 300:
            reason = reason[:300] + "..."
        contents = checkpoint_contents(checkpoint)
        if contents is None:
            raise ValueError(f"cannot read {checkpoint} as a Lightning checkpoint ({type(err).__name__}: {reason}); "
                             "pass a .ckpt written by Trainer.save_checkpoint or ModelCheckpoint") from err
        raise ValueError(f"cannot load {checkpoint} as {spec} ({type(err).__name__}: {reason}); {contents}pass "
                         "the LightningModule class it was saved from with --module-class package.module:ClassName"
                         ) from err


def labelled_dataset(args: argparse.Namespace) -> tuple[Any, bool]:
    """The labelled images of ``--data`` at ``--image-size`` / ``--channels``, and whether classes are mixed.

    The digits come with classes mixed; an ImageFolder's files come grouped by class.

    Examples:
        >>> dataset, mixed = labelled_dataset(argparse.Namespace(data="digits", image_size=8, channels=1))
        >>> len(dataset), mixed
        (1797, True)
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


def fixed_order(size: int) -> list[int]:
    """The seeded shuffle of ``range(size)`` that the probe's split and the atlas's sample share.

    Examples:
        >>> sorted(fixed_order(5)) == list(range(5)) and fixed_order(5) == fixed_order(5)
        True
    """
    import torch

    return torch.randperm(size, generator=torch.Generator().manual_seed(0)).tolist()


def probe_loaders(args: argparse.Namespace) -> tuple[object, object]:
    """Train and validation loaders of ``--data``: the fixed shuffle cut at ``--val-fraction``.

    Examples:
        >>> args = argparse.Namespace(data="digits", image_size=8, channels=1, val_fraction=0.3)
        >>> train, val = probe_loaders(args)
        >>> len(train.dataset), len(val.dataset)
        (1258, 539)
    """
    from torch.utils.data import DataLoader, Subset

    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    dataset, _ = labelled_dataset(args)
    order = fixed_order(len(dataset))
    cut = int(round(len(order) * (1 - args.val_fraction)))
    return (DataLoader(Subset(dataset, order[:cut]), batch_size=256),
            DataLoader(Subset(dataset, order[cut:]), batch_size=256))


def first_images(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """The first ``--max-images`` images of ``--data`` (a tensor), their labels, and the size of the set.

    The labels are None with fewer than two classes. The digits are taken in their own order (classes
    mixed); an ImageFolder, whose files come grouped by class, in the probe's fixed shuffled order, so
    that the first N images span the classes.

    Examples:
        >>> images, labels, total = first_images(argparse.Namespace(data="digits", image_size=8, channels=1,
        ...                                                         max_images=100))
        >>> tuple(images.shape), total
        ((100, 1, 8, 8), 1797)
    """
    import torch
    from torch.utils.data import DataLoader, Subset, TensorDataset

    dataset, mixed = labelled_dataset(args)
    total = len(dataset)
    n = min(args.max_images, total)
    if isinstance(dataset, TensorDataset):
        images, labels = (t[:n] for t in dataset.tensors)
    else:
        order = list(range(total)) if mixed else fixed_order(total)
        batches = list(DataLoader(Subset(dataset, order[:n]), batch_size=256))
        if not batches:
            raise ValueError(f"--data {args.data} holds no images")
        images = torch.cat([b[0] for b in batches])
        labels = torch.cat([torch.as_tensor(b[1]) for b in batches])
    if len(torch.unique(labels)) < 2:
        labels = None
    return images, labels, total
