"""Lightly's Barlow Twins example module, unchanged, with StepwiseMonitor in the Trainer's callbacks.

The module below is written as in Lightly's ``examples/pytorch_lightning/barlowtwins.py`` (ResNet-18
backbone without its classifier, ``BarlowTwinsProjectionHead``, ``BarlowTwinsLoss``, the
``pytorch_lightning`` namespace). Only the data differ: the embedded scikit-learn digits, so it runs
offline on a CPU.

    python examples/barlow_twins_lightly.py --max-steps 300
    python examples/barlow_twins_lightly.py --max-steps 3 --batch-size 16 --output /tmp/bt   # smoke run
"""

import argparse

import pytorch_lightning as pl
import torch
import torchvision
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn

from lightning_stepwise import StepwiseMonitor, format_onset_table
from lightning_stepwise.data import digits_dataloader


class BarlowTwins(pl.LightningModule):
    def __init__(self):
        super().__init__()
        resnet = torchvision.models.resnet18()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = BarlowTwinsProjectionHead(512, 2048, 2048)
        self.criterion = BarlowTwinsLoss()

    def forward(self, x):
        x = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(x)
        return z

    def training_step(self, batch, batch_index):
        (x0, x1) = batch[0]
        z0 = self.forward(x0)
        z1 = self.forward(x1)
        loss = self.criterion(z0, z1)
        return loss

    def configure_optimizers(self):
        optim = torch.optim.SGD(self.parameters(), lr=0.06)
        return optim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output", default="lightning_logs-barlow-twins")
    args = parser.parse_args()

    pl.seed_everything(0)
    model = BarlowTwins()
    loader = digits_dataloader(batch_size=args.batch_size, size=32, channels=3)  # ((x0, x1), labels)
    monitor = StepwiseMonitor()
    trainer = pl.Trainer(max_steps=args.max_steps, accelerator="auto", devices=1, callbacks=[monitor],
                         default_root_dir=args.output)
    trainer.fit(model=model, train_dataloaders=loader)
    print(f"spectrum history: {monitor.history['eigenvalues'].shape} -> {monitor.output_dir}")
    print(f"{monitor.modes_learned} modes learned:")
    print(format_onset_table(monitor.onsets))  # also in onsets.csv / onsets.json, drawn in stepwise.png


if __name__ == "__main__":
    main()
