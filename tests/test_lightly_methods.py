"""Auto-detection measures one network's embeddings for the module shapes of Lightly's method examples.

Each module below has the shape of the Lightly example of its method (the same heads, losses, momentum or
teacher copies, stop-gradients, memory banks and prototypes), on a tiny MLP. With a learning rate of 0
the online network is fixed, so the first recorded spectrum must equal the covariance of the online
branch's tensors on the first batch, computed here directly, and not a mixture with the other branch.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from helpers import pair_loader, pl_namespace, reference_eigenvalues, trainer
from torch import nn

from lightning_stepwise import StepwiseMonitor, StepwiseWarning

pl = pl_namespace("pytorch_lightning")  # Lightly's examples use this namespace


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU())


def unit(rows: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(rows, dim=1)


class Method(pl.LightningModule):
    """Fixed online network (lr 0); ``online(x0, x1)`` says which rows a correct monitor measures."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class BYOL(Method):
    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = mlp()
        self.projection_head = BYOLProjectionHead(16, 32, 8)
        self.prediction_head = BYOLPredictionHead(8, 32, 8)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from lightly.models.utils import update_momentum

        update_momentum(self.backbone, self.backbone_momentum, m=0.9)
        update_momentum(self.projection_head, self.projection_head_momentum, m=0.9)
        x0, x1 = batch[0]
        p0, z0, p1, z1 = self(x0), self.forward_momentum(x0), self(x1), self.forward_momentum(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def online(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return unit(torch.cat([self(x0), self(x1)]))


class SimSiam(Method):
    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

        self.backbone = mlp()
        self.projection_head = SimSiamProjectionHead(16, 32, 8)
        self.prediction_head = SimSiamPredictionHead(8, 16, 8)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection_head(self.backbone(x))
        return z.detach(), self.prediction_head(z)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (z0, p0), (z1, p1) = (self(x) for x in batch[0])
        return 0.5 * (self.criterion(z0, p1) + self.criterion(z1, p0))

    def online(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return unit(torch.cat([self(x1)[1], self(x0)[1]]))


class MoCo(Method):
    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = mlp()
        self.projection_head = MoCoProjectionHead(16, 32, 8)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(memory_bank_size=(64, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x_query, x_key = batch[0]
        key = self.projection_head_momentum(self.backbone_momentum(x_key)).detach()
        return self.criterion(self(x_query), key)

    def online(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return unit(self(x0))


class NNCLR(Method):
    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import NNCLRPredictionHead, NNCLRProjectionHead, NNMemoryBankModule

        self.backbone = mlp()
        self.projection_head = NNCLRProjectionHead(16, 32, 8)
        self.prediction_head = NNCLRPredictionHead(8, 32, 8)
        self.memory_bank = NNMemoryBankModule(size=(64, 8))
        self.criterion = NTXentLoss()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection_head(self.backbone(x))
        return z.detach(), self.prediction_head(z)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (z0, p0), (z1, p1) = (self(x) for x in batch[0])
        z0 = self.memory_bank(z0, update=False)
        z1 = self.memory_bank(z1, update=True)
        return 0.5 * (self.criterion(z0, p1) + self.criterion(z1, p0))

    def online(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return unit(torch.cat([self(x1)[1], self(x0)[1]]))


class DINO(Method):
    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.student_backbone = mlp()
        self.student_head = DINOProjectionHead(16, 32, 8, 64)
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        self.teacher_head = DINOProjectionHead(16, 32, 8, 64)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=64, warmup_teacher_temp_epochs=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_head(self.student_backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        views = list(batch[0])
        teacher_out = [self.teacher_head(self.teacher_backbone(v)) for v in views]
        student_out = [self(v) for v in views]
        return self.criterion(teacher_out, student_out, epoch=self.current_epoch)

    def online(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        # the student's embeddings that the last layer scores against its prototypes, not the scores
        return torch.cat([unit(self.student_head.layers(self.student_backbone(x))) for x in (x0, x1)])


class IBOT(DINO):
    """iBOT's shape: the same student head scores the class embeddings (DINO loss) and patch tokens (a second loss)."""

    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity

        self.patch_criterion = NegativeCosineSimilarity()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0, x1 = batch[0]
        patches = torch.cat([x0, x1]).repeat(3, 1) + 0.5  # stand-in patch tokens: more rows, other values
        student_patches = self.student_head(self.student_backbone(patches))
        with torch.no_grad():
            teacher_patches = self.teacher_head(self.teacher_backbone(patches))
        return super().training_step(batch, batch_idx) + self.patch_criterion(student_patches, teacher_patches)


class MMCR(Method):
    """Several views stacked in one ``(batch, views, dim)`` tensor, and a momentum branch."""

    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import MMCRLoss
        from lightly.models.modules import MMCRProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = mlp()
        self.projection_head = MMCRProjectionHead(16, 32, 8)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = MMCRLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        views = batch[0]
        online = torch.stack([self(v) for v in views], dim=1)  # (batch, views, dim)
        with torch.no_grad():
            momentum = torch.stack([self.projection_head_momentum(self.backbone_momentum(v)) for v in views], dim=1)
        return self.criterion(online, momentum)

    def online(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return torch.stack([self(x0), self(x1)], dim=1).reshape(-1, 8)


class MSN(Method):
    """Lightly's naming: ``backbone``/``projection_head`` are the frozen target, ``anchor_*`` the online net."""

    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import MSNLoss
        from lightly.models.modules.heads import MSNProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = mlp()
        self.projection_head = MSNProjectionHead(16, 32, 8)
        self.anchor_backbone = copy.deepcopy(self.backbone)
        self.anchor_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone)
        deactivate_requires_grad(self.projection_head)
        self.prototypes = nn.Linear(8, 10, bias=False).weight
        self.criterion = MSNLoss()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from lightly.models.utils import update_momentum

        update_momentum(self.anchor_backbone, self.backbone, 0.996)
        update_momentum(self.anchor_projection_head, self.projection_head, 0.996)
        targets, anchors = batch[0]
        targets_out = self.projection_head(self.backbone(targets))
        anchors_out = self.anchor_projection_head(self.anchor_backbone(anchors))
        return self.criterion(anchors_out, targets_out, self.prototypes.data)

    def online(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return unit(self.anchor_projection_head(self.anchor_backbone(x1)))


class SwaV(Method):
    def __init__(self) -> None:
        super().__init__()
        from lightly.loss import SwaVLoss
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

        self.backbone = mlp()
        self.projection_head = SwaVProjectionHead(16, 32, 8)
        self.prototypes = SwaVPrototypes(8, n_prototypes=10)
        self.criterion = SwaVLoss(sinkhorn_iterations=3)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projection_head(self.backbone(x)), dim=1, p=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(self.embed(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.prototypes.normalize()
        outputs = [self(v) for v in batch[0]]
        return self.criterion(outputs[:2], outputs[2:])

    def online(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embed(x0), self.embed(x1)])


class SwaVQueue(SwaV):
    """SwaV with a queue: the queued features are scored by the same prototype layer under ``no_grad``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("queue", nn.functional.normalize(torch.randn(40, 8), dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.prototypes.normalize()
        outputs = [self(v) for v in batch[0]]
        with torch.no_grad():
            queue_outputs = [self.prototypes(self.queue)] * 2
        return self.criterion(outputs[:2], outputs[2:], queue_outputs)


METHODS = {cls.__name__: cls for cls in (BYOL, SimSiam, MoCo, NNCLR, DINO, IBOT, MMCR, MSN, SwaV, SwaVQueue)}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_online_branch_is_measured(name):
    pl.seed_everything(0, verbose=False)
    model = METHODS[name]()
    loader = pair_loader(n=64, batch_size=16)
    monitor = StepwiseMonitor(every_n_steps=1, window=8)  # one batch a window
    trainer("pytorch_lightning", max_steps=2, callbacks=[monitor]).fit(model, loader)
    x0, x1 = next(iter(loader))[0]
    with torch.no_grad():
        expected = reference_eigenvalues(model.online(x0, x1).double().numpy())
    recorded = monitor.history["eigenvalues"][0]
    assert int(monitor.history["samples"][0]) == len(model.online(x0, x1))
    np.testing.assert_allclose(recorded, expected, rtol=1e-5, atol=1e-9)


def test_what_was_left_out_is_told(caplog):
    import logging

    with caplog.at_level(logging.INFO):
        trainer("pytorch_lightning", max_steps=1, callbacks=[StepwiseMonitor(every_n_steps=1, window=8)]).fit(
            BYOL(), pair_loader(n=32, batch_size=16))
    assert "measuring 2 online input tensor(s) of `criterion`; left out 2 without gradient" in caplog.text


def test_swav_measures_what_the_prototypes_score_not_the_scores():
    monitor = StepwiseMonitor(every_n_steps=1, window=8)
    trainer("pytorch_lightning", max_steps=1, callbacks=[monitor]).fit(SwaV(), pair_loader(n=32, batch_size=16))
    (point,) = monitor.tracking_points
    assert point.describe() == "the online inputs of `prototypes` (SwaVPrototypes)"
    assert monitor.history["eigenvalues"].shape[1] == 8  # the projection's width, not the 10 prototypes


def test_dino_measures_the_students_embeddings_before_its_prototype_layer():
    monitor = StepwiseMonitor(every_n_steps=1, window=8)
    trainer("pytorch_lightning", max_steps=1, callbacks=[monitor]).fit(DINO(), pair_loader(n=32, batch_size=16))
    (point,) = monitor.tracking_points
    assert point.name == "student_head.last_layer"  # not the teacher's copy, not the 64 prototype scores
    assert monitor.history["eigenvalues"].shape[1] == 8


def test_several_lightly_losses_warn_naming_what_is_measured_and_module():
    from lightly.loss import KoLeoLoss

    model = DINO()
    model.koleo_criterion = KoLeoLoss()  # DINOv2's shape: a second Lightly loss beside DINOLoss
    with pytest.warns(StepwiseWarning, match=r"found 2 Lightly losses \(`criterion`, `koleo_criterion`\) and "
                      r"measures the online inputs of `student_head.last_layer`.*module="):
        trainer("pytorch_lightning", max_steps=1, callbacks=[StepwiseMonitor(every_n_steps=1, window=8)]).fit(
            model, pair_loader(n=32, batch_size=16))
