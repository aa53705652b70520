"""Tiny Lightly-style SSL modules and fixed two-view data, for both Lightning namespaces."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


def pl_namespace(name: str) -> Any:
    return importlib.import_module(name)


def load_script(path: Path, name: str) -> ModuleType:
    """A script (an example, a benchmark) imported as module ``name``, registered so dataclasses resolve."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class PairDataset(Dataset):
    """Fixed pairs (x, x + noise) with labels: the same views every epoch (deterministic)."""

    def __init__(self, n: int = 64, dim: int = 12, seed: int = 0, scale: float = 1.0, offset: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        # Anisotropic inputs so the covariance has a spread of eigenvalues.
        base = torch.randn(n, dim, generator=g) * torch.logspace(0, -1.5, dim)
        self.x0 = base * scale + offset
        self.x1 = (base + 0.1 * torch.randn(n, dim, generator=g)) * scale + offset
        self.y = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return (self.x0[i], self.x1[i]), self.y[i]


def pair_loader(n: int = 64, dim: int = 12, batch_size: int = 16, **kwargs: Any) -> DataLoader:
    return DataLoader(PairDataset(n, dim, **kwargs), batch_size=batch_size, shuffle=False)


def make_ssl_module(namespace: str = "lightning.pytorch", *, in_dim: int = 12, hidden: int = 16, out_dim: int = 8,
                    loss: str = "barlow", concat_views: bool = False, lr: float = 0.05, batchnorm: bool = False,
                    head_output_ndim: int = 2) -> Any:
    """A LightningModule shaped like Lightly's examples: backbone, projection_head, criterion."""
    pl = pl_namespace(namespace)
    from lightly.loss import BarlowTwinsLoss, NTXentLoss

    class TinySSL(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            self.backbone = nn.Sequential(*layers)
            self.projection_head = nn.Linear(hidden, out_dim)
            self.criterion = BarlowTwinsLoss() if loss == "barlow" else NTXentLoss()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.projection_head(self.backbone(x))
            if head_output_ndim == 4:
                z = z.reshape(z.shape[0], -1, 2, 1)
            return z

        def _embed(self, x: torch.Tensor) -> torch.Tensor:
            return self(x).flatten(1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x0, x1 = batch[0]
            if concat_views:
                z0, z1 = self._embed(torch.cat([x0, x1])).chunk(2)
            else:
                z0, z1 = self._embed(x0), self._embed(x1)
            loss = self.criterion(z0, z1)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x0, x1 = batch[0]
            self.log("val_loss", self.criterion(self._embed(x0), self._embed(x1)))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

    return TinySSL()


def trainer(namespace: str = "lightning.pytorch", **kwargs: Any) -> Any:
    pl = pl_namespace(namespace)
    defaults: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False,
                                    num_sanity_val_steps=0, deterministic=True)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def reference_eigenvalues(rows: np.ndarray) -> np.ndarray:
    """Float64 NumPy reference: descending eigenvalues of the (N-1)-normalised covariance."""
    rows = np.asarray(rows, dtype=np.float64)
    cov = np.atleast_2d(np.cov(rows, rowvar=False))
    return np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
