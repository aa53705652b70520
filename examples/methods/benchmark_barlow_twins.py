"""Barlow Twins written like Lightly's benchmark modules, with StepwiseMonitor and LinearProbe.

Lightly's ``benchmarks/`` modules differ from its examples: the backbone runs once on the concatenated
views, the projection head is called once, the loss gathers across GPUs, and an
``OnlineLinearClassifier`` trains inside the module on the detached features. The monitor still needs
no argument: it hooks the inputs of ``BarlowTwinsLoss`` (the two halves of one projection), and the
classifier's cross-entropy is not a Lightly loss, so it is not mistaken for the embedding.

    python examples/methods/benchmark_barlow_twins.py             # embedded digits, ResNet-18
    python examples/methods/benchmark_barlow_twins.py --data cifar10 --download --devices 4
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from common import backbone, byol_views, parse_args, probe_loaders, small_init, ssl_loader, summarize, trainer_options
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from lightly.utils.benchmarking import OnlineLinearClassifier
from torch import nn

from lightning_stepwise import LinearProbe, StepwiseMonitor


class BarlowTwins(pl.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int = 10) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BarlowTwinsProjectionHead(feature_dim, 2048, 2048)
        self.criterion = BarlowTwinsLoss(lambda_param=5e-3, gather_distributed=True)
        self.online_classifier = OnlineLinearClassifier(feature_dim=feature_dim, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch, batch_index):
        views, targets = batch[0], batch[1]
        features = self.forward(torch.cat(views)).flatten(start_dim=1)
        z = self.projection_head(features)
        z0, z1 = z.chunk(len(views))
        loss = self.criterion(z0, z1)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(targets))
        cls_loss, cls_log = self.online_classifier.training_step(
            (features.detach(), targets.repeat(len(views))), batch_index)
        self.log_dict(cls_log, batch_size=len(targets))
        return loss + cls_loss

    def configure_optimizers(self):
        return torch.optim.SGD([{"params": [*self.backbone.parameters(), *self.projection_head.parameters()]},
                                {"params": self.online_classifier.parameters(), "weight_decay": 0.0}],
                               lr=0.06, momentum=0.9, weight_decay=1e-6)


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    args = parse_args(__doc__, argv)
    pl.seed_everything(args.seed)
    model = small_init(BarlowTwins(*backbone(args.backbone, args.tiny_width)), args.small_init)
    transform = byol_views(args.input_size, args.min_scale)
    monitor, probe = StepwiseMonitor(every_n_steps=args.every_n_steps), LinearProbe(*probe_loaders(args))
    trainer = pl.Trainer(callbacks=[monitor, probe], **trainer_options(args))
    trainer.fit(model, ssl_loader(args, transform))
    summarize(trainer, monitor, probe)
    return trainer


if __name__ == "__main__":
    main()
