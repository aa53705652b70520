"""BYOL as Lightly's example writes it, with StepwiseMonitor and LinearProbe in the Trainer.

One argument for the monitor: ``module="projection_head"``. BYOL's loss compares the online network's
predictions with the momentum network's projections, so the loss's inputs mix two networks; the online
projection head's output is the embedding to track.

    python examples/methods/byol.py                               # embedded digits, ResNet-18
    python examples/methods/byol.py --data cifar10 --download
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from common import backbone, byol_views, parse_args, probe_loaders, small_init, ssl_loader, summarize, trainer_options
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from lightning_stepwise import LinearProbe, StepwiseMonitor


class BYOL(pl.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)

        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

        self.criterion = NegativeCosineSimilarity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(y)
        return self.prediction_head(z)

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone_momentum(x).flatten(start_dim=1)
        z = self.projection_head_momentum(y)
        return z.detach()

    def training_step(self, batch, batch_idx):
        momentum = cosine_schedule(self.current_epoch, self.trainer.max_epochs or 10, 0.996, 1)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        (x0, x1) = batch[0]
        p0 = self.forward(x0)
        z0 = self.forward_momentum(x0)
        p1 = self.forward(x1)
        z1 = self.forward_momentum(x1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.06)


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    args = parse_args(__doc__, argv)
    pl.seed_everything(args.seed)
    model = small_init(BYOL(*backbone(args.backbone, args.tiny_width)), args.small_init)
    transform = byol_views(args.input_size, args.min_scale)
    monitor = StepwiseMonitor(module="projection_head", every_n_steps=args.every_n_steps)
    probe = LinearProbe(*probe_loaders(args))
    trainer = pl.Trainer(callbacks=[monitor, probe], **trainer_options(args))
    trainer.fit(model, ssl_loader(args, transform))
    summarize(trainer, monitor, probe)
    return trainer


if __name__ == "__main__":
    main()
