"""VICReg as Lightly's example writes it, with StepwiseMonitor and LinearProbe in the Trainer.

The monitor needs no argument: it hooks the inputs of ``VICRegLoss``.

    python examples/methods/vicreg.py                             # embedded digits, ResNet-18
    python examples/methods/vicreg.py --data cifar10 --download
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from common import backbone, parse_args, probe_loaders, small_init, ssl_loader, summarize, trainer_options
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead
from lightly.transforms import VICRegTransform
from torch import nn

from lightning_stepwise import LinearProbe, StepwiseMonitor


class VICReg(pl.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int, projector_dim: int = 2048, lr: float = 0.06) -> None:
        super().__init__()
        self.lr = lr
        self.backbone = backbone
        self.projection_head = VICRegProjectionHead(input_dim=feature_dim, hidden_dim=projector_dim,
                                                    output_dim=projector_dim, num_layers=2)
        self.criterion = VICRegLoss()

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
    args = parse_args(__doc__, argv, paper=True)
    pl.seed_everything(args.seed)
    model = small_init(VICReg(*backbone(args.backbone, args.tiny_width), args.projector_dim, args.lr), args.small_init)
    monitor, probe = StepwiseMonitor(every_n_steps=args.every_n_steps), LinearProbe(*probe_loaders(args))
    trainer = pl.Trainer(callbacks=[monitor, probe], **trainer_options(args))
    transform = VICRegTransform(input_size=args.input_size, gaussian_blur=0.0, min_scale=args.min_scale)
    trainer.fit(model, ssl_loader(args, transform))
    summarize(trainer, monitor, probe)
    return trainer


if __name__ == "__main__":
    main()
