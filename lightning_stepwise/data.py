"""The embedded offline dataset: scikit-learn's handwritten digits, as two-view SSL batches.

No download: ``sklearn.datasets.load_digits`` ships 1,797 labelled 8x8 images inside the package.
Views are made per batch, on the batch's device, by a random affine warp, a per-image gain and
offset, and Gaussian noise (the recipe of ``tests/data/resnet18_digits_bt_smallinit.npz``).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "DigitsDataModule",
    "TwoViewCollate",
    "digits_dataloader",
    "digits_probe_loaders",
    "load_digits_images",
    "random_view",
]


def load_digits_images(size: int = 16, channels: int = 1) -> tuple[Tensor, Tensor]:
    """Digits as standardised ``(1797, channels, size, size)`` float32 images and int64 labels.

    ``channels=3`` repeats the grey channel, for backbones such as torchvision's ResNets.

    Examples:
        >>> images, labels = load_digits_images(size=16)
        >>> tuple(images.shape), int(labels.max())
        ((1797, 1, 16, 16), 9)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    return images.repeat(1, channels, 1, 1), torch.tensor(digits.target, dtype=torch.int64)


def random_view(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One random augmentation of a batch ``(B, C, H, W)``.

    Scale 0.75-1.15, rotation +-0.3 rad, shift +-15 %, gain 0.6-1.4, offset +-0.3, noise sigma 0.1.

    Examples:
        >>> x = torch.zeros(4, 1, 16, 16)
        >>> random_view(x).shape
        torch.Size([4, 1, 16, 16])
    """
    b = images.shape[0]
    dev = images.device

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(b, *shape, generator=generator, device=dev)

    scale = uniform(0.75, 1.15)
    angle = uniform(-0.3, 0.3)
    shift = uniform(-0.15, 0.15, 2) * 2  # affine_grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    gain = uniform(0.6, 1.4, 1, 1, 1)
    offset = uniform(-0.3, 0.3, 1, 1, 1)
    noise = 0.1 * torch.randn(warped.shape, generator=generator, device=dev)
    return warped * gain + offset + noise


class TwoViewCollate:
    """Collate ``(image, label)`` pairs into Lightly's batch layout ``((view0, view1), labels)``.

    Examples:
        >>> images, labels = load_digits_images(size=8)
        >>> (x0, x1), y = TwoViewCollate()([(images[i], labels[i]) for i in range(4)])
        >>> tuple(x0.shape), bool((x0 != x1).any())
        ((4, 1, 8, 8), True)
    """

    def __call__(self, samples: list[tuple[Tensor, Tensor]]) -> tuple[tuple[Tensor, Tensor], Tensor]:
        images = torch.stack([s[0] for s in samples])
        labels = torch.stack([s[1] for s in samples])
        return (random_view(images), random_view(images)), labels


def digits_dataloader(batch_size: int = 256, size: int = 16, channels: int = 1, shuffle: bool = True,
                      drop_last: bool = True, seed: int | None = None) -> DataLoader:
    """A two-view SSL dataloader over the embedded digits (no download, no worker processes).

    Examples:
        >>> loader = digits_dataloader(batch_size=64)
        >>> (x0, x1), labels = next(iter(loader))
        >>> tuple(x0.shape), len(loader) == 1797 // 64
        ((64, 1, 16, 16), True)
    """
    images, labels = load_digits_images(size, channels)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle,
                      drop_last=drop_last, collate_fn=TwoViewCollate(), generator=generator)


def digits_probe_loaders(size: int = 16, channels: int = 1, batch_size: int = 512, val_fraction: float = 0.3,
                         seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Labelled, un-augmented ``(image, label)`` loaders over a fixed train/validation split of the digits.

    For linear probes: the same images the SSL loaders augment, without augmentation.

    Examples:
        >>> train, val = digits_probe_loaders(size=8)
        >>> x, y = next(iter(train))
        >>> tuple(x.shape[1:]), len(train.dataset) + len(val.dataset)
        ((1, 8, 8), 1797)
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    images, labels = load_digits_images(size, channels)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    cut = int(round(len(images) * (1 - val_fraction)))
    train, val = order[:cut], order[cut:]
    return (DataLoader(TensorDataset(images[train], labels[train]), batch_size=batch_size, shuffle=False),
            DataLoader(TensorDataset(images[val], labels[val]), batch_size=batch_size, shuffle=False))


class DigitsDataModule(pl.LightningDataModule):
    """The embedded digits as a datamodule: two-view SSL batches to train on, labelled images to probe.

    ``train_dataloader()`` yields Lightly's layout ``((view0, view1), labels)`` (see
    [`digits_dataloader`][lightning_stepwise.data.digits_dataloader]); ``val_dataloader()`` the un-augmented validation
    split of
    [`digits_probe_loaders`][lightning_stepwise.data.digits_probe_loaders]. A
    [`LinearProbe`][lightning_stepwise.linear_probe.LinearProbe] without loaders of its own
    fits on the first training view and measures on the validation split. Made for ``LightningCLI``
    configs (``data: class_path: lightning_stepwise.data.DigitsDataModule``).

    Examples:
        >>> data = DigitsDataModule(batch_size=64)
        >>> (x0, x1), y = next(iter(data.train_dataloader()))
        >>> tuple(x0.shape), len(data.val_dataloader().dataset)
        ((64, 1, 16, 16), 539)
    """

    def __init__(self, batch_size: int = 256, size: int = 16, channels: int = 1, val_fraction: float = 0.3,
                 seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.size = size
        self.channels = channels
        self.val_fraction = val_fraction
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        """Two augmented views of every image, labels alongside."""
        return digits_dataloader(batch_size=self.batch_size, size=self.size, channels=self.channels, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        """The labelled validation split, un-augmented."""
        return digits_probe_loaders(self.size, self.channels, val_fraction=self.val_fraction, seed=self.seed)[1]
