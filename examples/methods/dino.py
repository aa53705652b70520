"""DINO as Lightly's example writes it, with StepwiseMonitor and LinearProbe in the Trainer.

One argument each: ``StepwiseMonitor(module="student_head")`` (the student's output over all crops;
DINO has no ``backbone`` / ``projection_head`` and its loss sees teacher and student together) and
``LinearProbe(..., point="student_backbone")`` (the features to probe).

    python examples/methods/dino.py                               # embedded digits, ResNet-18
    python examples/methods/dino.py --data stl10 --download --input-size 96
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from common import backbone, parse_args, probe_loaders, small_init, ssl_loader, summarize, trainer_options
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.dino_transform import DINOTransform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from lightning_stepwise import LinearProbe, StepwiseMonitor


class DINO(pl.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int, output_dim: int = 2048) -> None:
        super().__init__()
        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(feature_dim, 512, 64, output_dim, freeze_last_layer=1)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(feature_dim, 512, 64, output_dim)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

        self.criterion = DINOLoss(output_dim=output_dim, warmup_teacher_temp_epochs=5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.student_backbone(x).flatten(start_dim=1)
        return self.student_head(y)

    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        y = self.teacher_backbone(x).flatten(start_dim=1)
        return self.teacher_head(y)

    def training_step(self, batch, batch_idx):
        momentum = cosine_schedule(self.current_epoch, self.trainer.max_epochs or 10, 0.996, 1)
        update_momentum(self.student_backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)
        views = batch[0]
        views = [view.to(self.device) for view in views]
        global_views = views[:2]
        teacher_out = [self.forward_teacher(view) for view in global_views]
        student_out = [self.forward(view) for view in views]
        loss = self.criterion(teacher_out, student_out, epoch=self.current_epoch)
        self.log("train_loss", loss)
        return loss

    def on_after_backward(self):
        self.student_head.cancel_last_layer_gradients(current_epoch=self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.001)


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    args = parse_args(__doc__, argv)
    pl.seed_everything(args.seed)
    model = small_init(DINO(*backbone(args.backbone, args.tiny_width)), args.small_init)
    transform = DINOTransform(global_crop_size=args.input_size, local_crop_size=max(8, args.input_size // 2),
                              n_local_views=2, gaussian_blur=(0.0, 0.0, 0.0))
    monitor = StepwiseMonitor(module="student_head", every_n_steps=args.every_n_steps)
    probe = LinearProbe(*probe_loaders(args), point="student_backbone")
    trainer = pl.Trainer(callbacks=[monitor, probe], **trainer_options(args))
    trainer.fit(model, ssl_loader(args, transform))
    summarize(trainer, monitor, probe)
    return trainer


if __name__ == "__main__":
    main()
