"""SimCLR as Lightly's example writes it, with StepwiseMonitor and LinearProbe in the Trainer.

The monitor needs no argument: it hooks the inputs of ``NTXentLoss`` and, because that loss compares
L2-normalised embeddings, measures the spectrum of the normalised embeddings.

    python examples/methods/simclr.py                             # embedded digits, ResNet-18
    python examples/methods/simclr.py --data stl10 --download --input-size 96
    python examples/methods/simclr.py --paper                     # the paper's experiment, embeddings start collapsed
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from common import (
    backbone,
    collapsed_start,
    parse_args,
    probe_loaders,
    small_init,
    ssl_loader,
    summarize,
    trainer_options,
)
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import nn

from lightning_stepwise import LinearProbe, StepwiseMonitor


class SimCLR(pl.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int, projector_dim: int = 2048, lr: float = 0.06) -> None:
        super().__init__()
        self.lr = lr
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, projector_dim, projector_dim)
        self.criterion = NTXentLoss()

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


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collapsed-start", type=float, default=1.0, metavar="FACTOR",
                        help="start the embeddings near one point: the projection head's last BatchNorm scale times "
                             "FACTOR and a fixed shift of norm 1 (the small initialisation of a normalising loss; "
                             "--paper: 0.03; 1: off)")


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    args = parse_args(__doc__, argv, paper=True, paper_overrides={"collapsed_start": 0.03}, extra=_flags)
    pl.seed_everything(args.seed)
    model = small_init(SimCLR(*backbone(args.backbone, args.tiny_width), args.projector_dim, args.lr), args.small_init)
    collapsed_start(model.projection_head, args.collapsed_start)
    monitor, probe = StepwiseMonitor(every_n_steps=args.every_n_steps), LinearProbe(*probe_loaders(args))
    trainer = pl.Trainer(callbacks=[monitor, probe], **trainer_options(args))
    transform = SimCLRTransform(input_size=args.input_size, gaussian_blur=0.0, min_scale=args.min_scale)
    trainer.fit(model, ssl_loader(args, transform))
    summarize(trainer, monitor, probe)
    return trainer


if __name__ == "__main__":
    main()
