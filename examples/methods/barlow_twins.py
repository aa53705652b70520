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
    def __init__(self, backbone: nn.Module, feature_dim: int, projector_dim: int = 2048, lr: float = 0.06) -> None:
        super().__init__()
        self.lr = lr
        self.backbone = backbone
        self.projection_head = BarlowTwinsProjectionHead(feature_dim, projector_dim, projector_dim)
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
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    # Barlow Twins learns a mode every 300 to 400 steps here: 4,000 steps for 8 or more
    args = parse_args(__doc__, argv, paper=True, paper_overrides={"max_steps": 4000})
    pl.seed_everything(args.seed)
    model = BarlowTwins(*backbone(args.backbone, args.tiny_width), args.projector_dim, args.lr)
    model = small_init(model, args.small_init)
    monitor, probe = StepwiseMonitor(every_n_steps=args.every_n_steps), LinearProbe(*probe_loaders(args))
    trainer = pl.Trainer(callbacks=[monitor, probe], **trainer_options(args))
    trainer.fit(model, ssl_loader(args, byol_views(args.input_size, args.min_scale)))
    summarize(trainer, monitor, probe)
    return trainer


if __name__ == "__main__":
    main()
