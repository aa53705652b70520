"""Monitor overhead: a model trained with and without StepwiseMonitor, alternating, in one process.

    python benchmarks/overhead.py                 # CPU, the demo model at default monitor settings
    python benchmarks/overhead.py --device cuda   # on a GPU, bf16 autocast
    python benchmarks/overhead.py --device cuda --arch resnet50 --dim 8192 --batch-size 256 --image-size 96
    python benchmarks/overhead.py --device cuda --arch resnet18 --dim 2048 --batch-size 256 --image-size 32

``--arch resnet18|resnet50`` trains a Lightly-style Barlow Twins module (torchvision ResNet backbone,
``BarlowTwinsProjectionHead(features, dim, dim)``, ``BarlowTwinsLoss``) on random images kept in memory,
so the input pipeline does not hide the monitor's cost. On a GPU the extra peak memory of the run with
the monitor is printed too.

Prints the time per training step with and without the monitor (median over rounds), their ratio, and
the time spent inside the monitor's own hooks (a less noisy estimate of its cost on a shared machine).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_stepwise import StepwiseMonitor
from lightning_stepwise.data import digits_dataloader
from lightning_stepwise.demo import DigitsBarlowTwins


class RandomViews(Dataset):
    """``steps × batch`` pairs of random images, generated once: no augmentation cost per step."""

    def __init__(self, count: int, image_size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(min(count, 4096), 3, image_size, image_size, generator=generator)
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        image = self.images[i % len(self.images)]
        return (image, image.flip(-1)), 0


class ResNetBarlowTwins(pl.LightningModule):
    """Lightly's Barlow Twins example module with a torchvision ResNet backbone."""

    def __init__(self, arch: str, dim: int) -> None:
        super().__init__()
        import torchvision
        from lightly.loss import BarlowTwinsLoss
        from lightly.models.modules import BarlowTwinsProjectionHead

        resnet = getattr(torchvision.models, arch)()
        features = resnet.fc.in_features
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = BarlowTwinsProjectionHead(features, dim, dim)
        self.criterion = BarlowTwinsLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x0, x1) = batch[0]
        return self.criterion(self.forward(x0), self.forward(x1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.06)


class StepTimer(pl.Callback):
    """Wall time of the training loop, from the first batch start to the end of training."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if self.steps == 0:
            self._sync(trainer)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.steps += 1

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._sync(trainer)
        self.end = time.perf_counter()

    @staticmethod
    def _sync(trainer: Any) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    @property
    def seconds_per_step(self) -> float:
        return (self.end - self.start) / max(1, self.steps - 1)


def timed_monitor(monitor: StepwiseMonitor) -> list[float]:
    """Wrap the monitor's per-batch hooks to sum the time spent inside them."""
    spent = [0.0]
    for name in ("on_train_batch_start", "on_train_batch_end", "on_train_end"):
        original = getattr(monitor, name)

        def wrapped(*args: Any, _original: Any = original) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(monitor, name, wrapped)
    return spent


def run_once(args: argparse.Namespace, with_monitor: bool) -> tuple[float, float, int]:
    pl.seed_everything(args.seed, verbose=False)
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    spent = [0.0]
    if with_monitor:
        monitor = StepwiseMonitor(every_n_steps=args.every_n_steps, window=args.window, prog_bar=False)
        spent = timed_monitor(monitor)
        callbacks.append(monitor)
    trainer = pl.Trainer(
        max_steps=args.steps, max_epochs=-1, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if args.device == "cuda" else "32-true", callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir="/tmp/stepwise-overhead",
    )
    if args.arch == "demo":
        model: pl.LightningModule = DigitsBarlowTwins(width=args.width, embedding_dim=args.dim, hidden_dim=args.dim)
        loader = digits_dataloader(batch_size=args.batch_size, seed=args.seed)
    else:
        model = ResNetBarlowTwins(args.arch, args.dim)
        loader = DataLoader(RandomViews(args.steps * args.batch_size, args.image_size, args.seed),
                            batch_size=args.batch_size, drop_last=True, pin_memory=args.device == "cuda")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, loader)
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else 0
    return timer.seconds_per_step, spent[0] / max(1, timer.steps), peak


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--arch", choices=["demo", "resnet18", "resnet50"], default="demo",
                        help="the demo model on digits, or a ResNet Barlow Twins on random images")
    parser.add_argument("--image-size", type=int, default=32, help="image side for --arch resnet*")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=5, help="with/without pairs, alternating")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=32, help="backbone width (features: 4x)")
    parser.add_argument("--dim", type=int, default=64, help="projector hidden and output width")
    parser.add_argument("--every-n-steps", type=int, default=50)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    run_once(args, with_monitor=True)  # warm-up: imports, allocator, first-call costs
    with_times, without_times, hook_times, peaks_with, peaks_without = [], [], [], [], []
    for _ in range(args.rounds):
        t, hooks, peak = run_once(args, with_monitor=True)
        with_times.append(t)
        hook_times.append(hooks)
        peaks_with.append(peak)
        t, _, peak = run_once(args, with_monitor=False)
        without_times.append(t)
        peaks_without.append(peak)

    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    with_ms, without_ms = statistics.median(with_times) * 1e3, statistics.median(without_times) * 1e3
    hooks_ms = statistics.median(hook_times) * 1e3
    pair_ratio = statistics.median(a / b for a, b in zip(with_times, without_times, strict=True))
    best_ratio = min(with_times) / min(without_times)
    print(f"machine: {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    model = (f"demo Barlow Twins (width {args.width}, {args.dim}-d embeddings)" if args.arch == "demo"
             else f"{args.arch} Barlow Twins ({args.image_size} px random images, projector {args.dim})")
    print(f"model: {model}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds; monitor every "
          f"{args.every_n_steps} steps over {args.window} samples")
    if args.device == "cuda":
        extra = (max(peaks_with) - max(peaks_without)) / 2**20
        print(f"peak GPU memory: {max(peaks_without) / 2**20:.0f} MiB without, {max(peaks_with) / 2**20:.0f} MiB "
              f"with the monitor ({extra:+.0f} MiB)")
    print()
    print("| without (ms/step, median) | with (ms/step, median) | ratio of medians | median pair ratio "
          "| ratio of best runs | monitor hooks (ms/step) | hooks / step |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {without_ms:.2f} | {with_ms:.2f} | {with_ms / without_ms:.3f} | {pair_ratio:.3f} | {best_ratio:.3f} "
          f"| {hooks_ms:.3f} | {hooks_ms / without_ms:.2%} |")
    print()
    print("per round (with / without, ms):", ", ".join(
        f"{a * 1e3:.1f}/{b * 1e3:.1f}" for a, b in zip(with_times, without_times, strict=True)))


if __name__ == "__main__":
    main()
