"""Barlow Twins as Lightly's example writes it, with StepwiseMonitor and LinearProbe in the Trainer.

The monitor needs no argument: it hooks the inputs of ``BarlowTwinsLoss``.

    python examples/methods/barlow_twins.py                       # embedded digits, ResNet-18
    python examples/methods/barlow_twins.py --small-init 0.1      # the paper's setting: sharper steps
    python examples/methods/barlow_twins.py --data cifar10 --download --devices 2 --precision bf16-mixed
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from common import backbone, byol_views, parse_args, probe_loaders, small_init, ssl_loader, summarize, trainer_options
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn

from lightning_stepwise import LinearProbe, StepwiseMonitor


class BarlowTwins(pl.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BarlowTwinsProjectionHead(feature_dim, 2048, 2048)
        self.criterion = BarlowTwinsLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x).flatten(start_dim=1)
        return self.projection_head(x)

    def training_step(self, batch, batch_index):
        (x0, x1) = batch[0]
        z0 = self.forward(x0)
        z1 = self.forward(x1)
        loss = self.criterion(z0, z1)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.06)


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    args = parse_args(__doc__, argv)
    pl.seed_everything(args.seed)
    model = small_init(BarlowTwins(*backbone(args.backbone)), args.small_init)
    monitor, probe = StepwiseMonitor(), LinearProbe(*probe_loaders(args))
    trainer = pl.Trainer(callbacks=[monitor, probe], **trainer_options(args))
    trainer.fit(model, ssl_loader(args, byol_views(args.input_size)))
    summarize(trainer, monitor, probe)
    return trainer


if __name__ == "__main__":
    main()
