"""The theory's own setting as a LightningModule: a linear map trained on fixed pairs of views.

``f(x) = W x`` (no bias) with plain full-batch gradient descent on the simplified Barlow Twins loss
``c ‖C − I‖²_F`` (or on Lightly's ``BarlowTwinsLoss``), so that a run with a Trainer and the monitor
can be held against [`LinearSSLTheory`][lightning_stepwise.theory.LinearSSLTheory].
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_stepwise.theory import simplified_barlow_twins_loss

__all__ = ["LinearSSL", "ViewPairs", "view_pair_loader"]


class ViewPairs(Dataset):
    """Fixed pairs of views as a dataset of ``((x0_i, x1_i), 0)``, the batch shape Lightly's modules expect.

    Examples:
        >>> pairs = ViewPairs(np.zeros((3, 2)), np.ones((3, 2)))
        >>> (a, b), _ = pairs[0]
        >>> a.tolist(), b.tolist()
        ([0.0, 0.0], [1.0, 1.0])
    """

    def __init__(self, x0: ArrayLike | Tensor, x1: ArrayLike | Tensor) -> None:
        self.x0 = torch.as_tensor(np.asarray(x0), dtype=torch.float32)
        self.x1 = torch.as_tensor(np.asarray(x1), dtype=torch.float32)
        if self.x0.ndim != 2 or self.x0.shape != self.x1.shape:
            raise ValueError(f"views must be n × m of the same shape, got {tuple(self.x0.shape)} and "
                             f"{tuple(self.x1.shape)}")

    def __len__(self) -> int:
        return self.x0.shape[0]

    def __getitem__(self, i: int) -> tuple[tuple[Tensor, Tensor], int]:
        return (self.x0[i], self.x1[i]), 0


def view_pair_loader(x0: ArrayLike | Tensor, x1: ArrayLike | Tensor) -> DataLoader:
    """All pairs in one batch, every step: full-batch gradient descent, as the theory assumes.

    Examples:
        >>> loader = view_pair_loader(np.zeros((5, 2)), np.zeros((5, 2)))
        >>> (x0, x1), _ = next(iter(loader))
        >>> tuple(x0.shape), len(loader)
        ((5, 2), 1)
    """
    pairs = ViewPairs(x0, x1)
    return DataLoader(pairs, batch_size=len(pairs), shuffle=False)


class LinearSSL(pl.LightningModule):
    """``f(x) = W x`` trained by plain gradient descent: the linear theory's model.

    Args:
        in_dim: features ``m``.
        out_dim: embedding dimensions ``d``.
        lr: learning rate of plain SGD (no momentum, no weight decay).
        init_scale: standard deviation of the i.i.d. normal initial weights.
        loss: ``"simplified"`` (``‖C − I‖²_F``, what the theory solves) or ``"barlow_twins"`` (Lightly's
            ``BarlowTwinsLoss``: per-dimension standardisation, off-diagonal weight ``lambda_param``).
        loss_scale: multiplies the loss (the theory's ``c``).
        seed: seed of the initial weights.

    The map is called ``projection_head``, so [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor] finds it,
    and ``initial_weight`` keeps ``W(0)`` for
    [`LinearSSLTheory.step_times(W0=...)`][lightning_stepwise.theory.LinearSSLTheory.step_times].

    Examples:
        >>> model = LinearSSL(in_dim=8, out_dim=3, init_scale=1e-3)
        >>> tuple(model.initial_weight.shape)
        (3, 8)
    """

    def __init__(self, in_dim: int, out_dim: int, *, lr: float = 0.01, init_scale: float = 1e-3,
                 loss: str = "simplified", loss_scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if loss not in {"simplified", "barlow_twins"}:
            raise ValueError(f"loss must be 'simplified' or 'barlow_twins', got {loss!r}")
        if out_dim > in_dim:
            raise ValueError(f"out_dim ({out_dim}) must not exceed in_dim ({in_dim}): W is d × m with d ≤ m")
        self.save_hyperparameters()
        self.projection_head = nn.Linear(in_dim, out_dim, bias=False)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.projection_head.weight.copy_(torch.randn(out_dim, in_dim, generator=generator) * init_scale)
        self.register_buffer("initial_weight", self.projection_head.weight.detach().clone())
        self.criterion: nn.Module | None = None
        if loss == "barlow_twins":
            from lightly.loss import BarlowTwinsLoss

            self.criterion = BarlowTwinsLoss()

    def forward(self, x: Tensor) -> Tensor:
        return self.projection_head(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x0, x1 = batch[0]
        z0, z1 = self(x0), self(x1)
        loss = simplified_barlow_twins_loss(z0, z1) if self.criterion is None else self.criterion(z0, z1)
        loss = self.hparams.loss_scale * loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def digits_view_pairs(n: int = 500, *, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` embedded digits, two random augmentations each, flattened, centred and scaled to ``γ_1 = 1``.

    The linear-theory experiment's data: the paper used 500 CIFAR-10 images with two random crops
    each; this uses scikit-learn's digits (``size × size`` pixels, augmented by
    [`random_view`][lightning_stepwise.data.random_view]).
    Centring removes the mean direction (which a covariance ignores but ``C`` would learn first);
    scaling makes the largest ``γ`` 1, so learning rates carry over between datasets.

    Examples:
        >>> x0, x1 = digits_view_pairs(n=100)
        >>> x0.shape, round(float(np.linalg.eigvalsh((x0.T @ x1 + x1.T @ x0) / 200).max()), 6)
        ((100, 64), 1.0)
    """
    from lightning_stepwise.data import load_digits_images, random_view

    images, _ = load_digits_images(size=size)
    if not 1 <= n <= len(images):
        raise ValueError(f"n must be between 1 and {len(images)} digits, got {n}")
    generator = torch.Generator().manual_seed(seed)
    x = images[:n]
    v0 = random_view(x, generator).reshape(n, -1).double().numpy()
    v1 = random_view(x, generator).reshape(n, -1).double().numpy()
    mean = np.concatenate([v0, v1]).mean(axis=0)
    v0, v1 = v0 - mean, v1 - mean
    top = float(np.linalg.eigvalsh((v0.T @ v1 + v1.T @ v0) / (2 * n)).max())
    return v0 / np.sqrt(top), v1 / np.sqrt(top)


def run_linear_theory_experiment(
    *,
    n: int = 500,
    d: int = 16,
    lr: float = 0.025,
    init_scale: float = 1e-6,
    max_steps: int = 4000,
    every_n_steps: int = 10,
    loss_scale: float = 1.0,
    seed: int = 0,
    output: str | None = None,
    progress: bool = False,
) -> tuple[Any, Any]:
    """Train `LinearSSL` on `digits_view_pairs` with a monitor holding it against the theory.

    The monitor measures the views' cross-correlation spectrum (the theory's ``C``) and is given the
    theory's prediction for this very initialisation (``W0``), so its onset table has
    ``predicted_onset_step`` and ``relative_error`` and its ``stepwise.png`` the dashed predictions.

    Returns:
        ``(monitor, prediction)``.

    Examples:
        >>> monitor, prediction = run_linear_theory_experiment(max_steps=300)  # doctest: +SKIP
        >>> round(monitor.onsets[0]["relative_error"], 4)                       # doctest: +SKIP
        -0.0044
    """
    import warnings

    from lightning_stepwise.monitor import StepwiseMonitor
    from lightning_stepwise.theory import LinearSSLTheory

    x0, x1 = digits_view_pairs(n, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # digits have constant border pixels: some γ are 0, by design
        theory = LinearSSLTheory.from_views(x0, x1)
    model = LinearSSL(x0.shape[1], d, lr=lr, init_scale=init_scale, loss_scale=loss_scale, seed=seed)
    prediction = theory.predict(lr, W0=model.initial_weight, loss_scale=loss_scale)
    monitor = StepwiseMonitor(every_n_steps=every_n_steps, window=2, spectrum="cross_correlation",
                              theory=prediction, log_top_k=0, verbose=progress,
                              dirpath=None if output is None else f"{output}/stepwise")
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, callbacks=[monitor],
                         logger=pl.loggers.CSVLogger(output, name="logs") if output is not None else False,
                         default_root_dir=output, enable_checkpointing=False, enable_progress_bar=progress,
                         enable_model_summary=False, log_every_n_steps=every_n_steps)
    trainer.fit(model, view_pair_loader(x0, x1))
    return monitor, prediction
