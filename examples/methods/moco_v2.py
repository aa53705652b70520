"""MoCo v2 as Lightly's example writes it, with StepwiseMonitor and LinearProbe in the Trainer.

One argument for the monitor: ``module="projection_head"``. The loss receives the queries of the
online encoder and the keys of the momentum encoder; the online projection head's output (the queries)
is the embedding to track. The memory bank inside ``NTXentLoss`` is not part of any step's batch and is
not measured.

    python examples/methods/moco_v2.py                            # embedded digits, ResNet-18
    python examples/methods/moco_v2.py --data cifar10 --download
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from common import backbone, parse_args, probe_loaders, small_init, ssl_loader, summarize, trainer_options
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import MoCoV2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from lightning_stepwise import LinearProbe, StepwiseMonitor


class MoCo(pl.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int, memory_bank_size: int = 4096) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(feature_dim, 512, 128)

        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

        self.criterion = NTXentLoss(memory_bank_size=(memory_bank_size, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.backbone(x).flatten(start_dim=1)
        return self.projection_head(query)

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        key = self.backbone_momentum(x).flatten(start_dim=1)
        return self.projection_head_momentum(key).detach()

    def training_step(self, batch, batch_idx):
        momentum = cosine_schedule(self.current_epoch, self.trainer.max_epochs or 10, 0.996, 1)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        x_query, x_key = batch[0]
        query = self.forward(x_query)
        key = self.forward_momentum(x_key)
        loss = self.criterion(query, key)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.06)


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    args = parse_args(__doc__, argv)
    pl.seed_everything(args.seed)
    model = small_init(MoCo(*backbone(args.backbone, args.tiny_width)), args.small_init)
    monitor = StepwiseMonitor(module="projection_head", every_n_steps=args.every_n_steps)
    probe = LinearProbe(*probe_loaders(args))
    trainer = pl.Trainer(callbacks=[monitor, probe], **trainer_options(args))
    transform = MoCoV2Transform(input_size=args.input_size, gaussian_blur=0.0, min_scale=args.min_scale)
    trainer.fit(model, ssl_loader(args, transform))
    summarize(trainer, monitor, probe)
    return trainer


if __name__ == "__main__":
    main()
