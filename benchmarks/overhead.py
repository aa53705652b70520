"""Monitor overhead: a model trained with and without StepwiseMonitor, alternating, in one process.

    python benchmarks/overhead.py                                  # CPU, demo model, both data modes
    python benchmarks/overhead.py --steps 60 --rounds 3            # the same, quicker
    python benchmarks/overhead.py --device cuda                    # on a GPU, bf16 autocast
    python benchmarks/overhead.py --device cuda --arch resnet50 --dim 8192 --batch-size 256 --image-size 96
    python benchmarks/overhead.py --device cuda --arch resnet50 --dim 8192 --batch-size 256 --image-size 96 \\
        --data resident                                            # the GPU-bound mode only

Two ways of feeding the model, chosen with ``--data resident|host|both`` (default: both, resident first):

- ``resident`` (the GPU-bound mode: what the monitor costs the training step). A fixed set of view pairs
  is built once, before the timed runs, and kept on the training device: for ``--arch resnet*``,
  ``--resident-batches`` batches of random images and their horizontal flips; for the demo model, one
  epoch of augmented digit pairs. A map-style dataset returns those batches whole, and a
  ``DataLoader(batch_size=None)`` (no sampler batching, no collation, no workers, no pinning) hands them
  to the unchanged Lightning loop, whose move to the device is then a no-op. Why this design: the model,
  the ``training_step``, the Trainer and the monitor's capture of the loss inputs are exactly those of the
  host mode, the batch Lightning passes to the hooks is the one the model trains on, and the only host work
  left per step is a list lookup; this is what a real pipeline that augments on the GPU looks like to the
  Trainer. Indexing a device tensor inside the module instead would bypass Lightning's data path and pass
  the hooks a dummy batch. A handful of distinct batches, not one, so that consecutive steps do not see the
  same input.
- ``host`` (the host-bound mode). A ``DataLoader`` in the
  training process builds each batch on the host (random images: indexing and flipping 2 x batch images;
  the demo: Python augmentation of the digits), and Lightning copies it to the device in the step. On a
  GPU the step then waits for the host, so this mode measures the host and its noise more than the
  monitor.

On the CPU the device is host memory: the resident mode then only leaves out the per-step batch building.

Each run trains ``--steps`` optimizer steps; the first ``--skip`` steps are left out of the timing, which
starts and ends on a device synchronisation (CUDA) around the timed steps. The defaults (110 steps, 10
skipped, a spectrum every 50) time 100 steps holding two measurement windows, the monitor's own rate.
After one warm-up run per mode, ``--rounds`` pairs of runs (with / without the monitor) alternate, the
order within a pair swapping each round so that neither run is always first. Per mode the script prints
the median ms/step with and without the monitor, the ratio (with / without) of each pair, their median
and their spread (min-max), the ratio of the medians, and the host time spent inside the monitor's
per-step hooks and embedding taps (a steadier estimate of its cost on a shared CPU; on a GPU it is host
time, which overlaps the device's work while the GPU is the bottleneck). On a GPU the extra peak memory
of the run with the monitor is printed too. On a CPU shared with other jobs, ``--threads 1`` avoids the
thread contention that otherwise dominates the step time.

``--equalizer ALPHA`` measures what [`ModeEqualizer`] adds instead: both runs of a pair carry the monitor,
and the "with" run adds ``ModeEqualizer(alpha=ALPHA)``, which rescales the loss inputs' gradient along the
monitor's directions from its first spectrum on (``--every-n-steps`` apart, as the monitor measures). The
hooks column is then the equaliser's own host time: its per-step hooks and its gradient hook (on a shared
CPU a steadier estimate of its cost than the pair ratios).

``--arch resnet18|resnet50`` trains a Lightly-style Barlow Twins module (torchvision ResNet backbone,
``BarlowTwinsProjectionHead(features, dim, dim)``, ``BarlowTwinsLoss``).
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

from lightning_stepwise import ModeEqualizer, StepwiseMonitor, equalizer_callback
from lightning_stepwise.data import digits_dataloader
from lightning_stepwise.demo import DigitsBarlowTwins
from lightning_stepwise.embedding_tap import EmbeddingTap

MODES = {
    "resident": "resident (GPU-bound): views resident on the device, no host data path",
    "host": "host (host-bound): a DataLoader builds each batch on the host",
}


class RandomViews(Dataset):
    """Host mode: ``steps × batch`` pairs of random images, each flipped on the host when it is loaded."""

    def __init__(self, count: int, image_size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(min(count, 4096), 3, image_size, image_size, generator=generator)
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        image = self.images[i % len(self.images)]
        return (image, image.flip(-1)), 0


class ResidentBatches(Dataset):
    """Resident mode: whole batches already on the device, returned by index (``steps`` of them, cycling)."""

    def __init__(self, batches: list[Any], steps: int) -> None:
        self.batches = batches
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> Any:
        return self.batches[i % len(self.batches)]


def resident_batches(args: argparse.Namespace) -> list[Any]:
    """The fixed view pairs of the resident mode, built once and moved to the device."""
    device = torch.device(args.device)
    if args.arch == "demo":  # one epoch of augmented digit pairs, as the host loader makes them
        return [((x0.to(device), x1.to(device)), y.to(device))
                for (x0, x1), y in digits_dataloader(batch_size=args.batch_size, seed=args.seed)]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    batches = []
    for _ in range(args.resident_batches):
        x0 = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator, device=device)
        batches.append(((x0, x0.flip(-1)), torch.zeros(args.batch_size, dtype=torch.long, device=device)))
    return batches


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


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Wall time from the start of step ``skip`` to the end of the last step, read after a device sync.

    It must come first in the callbacks: it starts the clock before the monitor's batch-start hook of step
    ``skip`` and stops it in ``on_train_end`` before the monitor's, after the monitor's last batch-end hook.
    """

    def __init__(self, device: str, steps: int, skip: int) -> None:
        self.device, self.total, self.skip = device, steps, skip
        self.start = self.end = 0.0
        self.done = 0  # batches finished
        self.timing = False

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if self.done == self.skip:
            _sync(self.device)
            self.start = time.perf_counter()
            self.timing = True

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.done += 1

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        _sync(self.device)
        self.end = time.perf_counter()
        self.timing = False
        assert self.done == self.total, (self.done, self.total)

    @property
    def seconds_per_step(self) -> float:
        return (self.end - self.start) / (self.total - self.skip)


class HookClock:
    """Host time inside a callback's per-step hooks and the given functions (timed steps only), and at train end.

    For the monitor, its embedding taps (``EmbeddingTap._on_loss_inputs`` and ``_on_module_output``); for the
    equaliser, its gradient hook (``equalizer_callback._rescale_hook``). On a CPU everything is synchronous,
    so this is the full cost of that code; on a GPU it is host time only.
    """

    def __init__(self, callback: pl.Callback, timer: StepTimer, patched: list[tuple[Any, str]]) -> None:
        self.timer = timer
        self.per_step = 0.0
        self.train_end = 0.0
        for name in ("on_train_batch_start", "on_train_batch_end", "on_train_end"):
            setattr(callback, name, self._wrap(getattr(callback, name), name == "on_train_end"))
        self._originals = {(owner, name): getattr(owner, name) for owner, name in patched}

    def _wrap(self, original: Any, at_end: bool) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            timing = self.timer.timing
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if at_end:
                    self.train_end += time.perf_counter() - start
                elif timing:
                    self.per_step += time.perf_counter() - start
        return wrapped

    def __enter__(self) -> HookClock:
        for (owner, name), original in self._originals.items():  # before fit: hooks bind them when attached
            setattr(owner, name, self._wrap(original, at_end=False))
        return self

    def __exit__(self, *exc: Any) -> None:
        for (owner, name), original in self._originals.items():
            setattr(owner, name, original)


def run_once(args: argparse.Namespace, mode: str, with_monitor: bool, resident: list[Any] | None,
             steps: int | None = None) -> tuple[float, float, float, int]:
    """One fit: (seconds per timed step, monitor seconds per timed step, monitor seconds at train end, peak).

    With ``--equalizer`` both runs carry the monitor and ``with_monitor`` adds the equaliser.
    """
    steps = steps or args.steps
    pl.seed_everything(args.seed, verbose=False)
    timer = StepTimer(args.device, steps, min(args.skip, steps - 1))
    callbacks: list[pl.Callback] = [timer]
    clock = None
    if with_monitor or args.equalizer is not None:
        monitor = StepwiseMonitor(every_n_steps=args.every_n_steps, window=args.window, prog_bar=False,
                                  verbose=False)
        callbacks.append(monitor)
        if args.equalizer is None:
            clock = HookClock(monitor, timer, [(EmbeddingTap, "_on_loss_inputs"), (EmbeddingTap, "_on_module_output")])
    if with_monitor and args.equalizer is not None:
        equalizer = ModeEqualizer(alpha=args.equalizer)
        clock = HookClock(equalizer, timer, [(equalizer_callback, "_rescale_hook")])
        callbacks.append(equalizer)
    trainer = pl.Trainer(
        max_steps=steps, max_epochs=-1, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if args.device == "cuda" else "32-true", callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir="/tmp/stepwise-overhead",
    )
    if args.arch == "demo":
        model: pl.LightningModule = DigitsBarlowTwins(width=args.width, embedding_dim=args.dim, hidden_dim=args.dim)
    else:
        model = ResNetBarlowTwins(args.arch, args.dim)
    if mode == "resident":
        assert resident is not None
        loader = DataLoader(ResidentBatches(resident, steps), batch_size=None)
    elif args.arch == "demo":
        loader = digits_dataloader(batch_size=args.batch_size, seed=args.seed)
    else:
        loader = DataLoader(RandomViews(steps * args.batch_size, args.image_size, args.seed),
                            batch_size=args.batch_size, drop_last=True, pin_memory=args.device == "cuda")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if clock is not None:
        with clock:
            trainer.fit(model, loader)
    else:
        trainer.fit(model, loader)
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else 0
    timed = steps - timer.skip
    hooks = clock.per_step / timed if clock else 0.0
    return timer.seconds_per_step, hooks, clock.train_end if clock else 0.0, peak


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def measure(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    resident = resident_batches(args) if mode == "resident" else None
    run_once(args, mode, True, resident, steps=args.warmup_steps)  # imports, allocator, kernels, first calls
    runs: dict[bool, list[tuple[float, float, float, int]]] = {True: [], False: []}
    for r in range(args.rounds):
        for with_monitor in ((True, False) if r % 2 == 0 else (False, True)):
            runs[with_monitor].append(run_once(args, mode, with_monitor, resident))
    with_s = [t for t, *_ in runs[True]]
    without_s = [t for t, *_ in runs[False]]
    pairs = [a / b for a, b in zip(with_s, without_s, strict=True)]
    return {
        "mode": mode, "with": with_s, "without": without_s, "pairs": pairs,
        "hooks": statistics.median(h for _, h, _, _ in runs[True]),
        "train_end": statistics.median(e for _, _, e, _ in runs[True]),
        "peak_with": max(p for *_, p in runs[True]), "peak_without": max(p for *_, p in runs[False]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--arch", choices=["demo", "resnet18", "resnet50"], default="demo",
                        help="the demo model on digits, or a ResNet Barlow Twins on random images")
    parser.add_argument("--data", choices=["resident", "host", "both"], default="both",
                        help="views resident on the device (GPU-bound), a host DataLoader (host-bound), or both")
    parser.add_argument("--image-size", type=int, default=32, help="image side for --arch resnet*")
    parser.add_argument("--steps", type=int, default=110, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=10, help="first steps of each run left out of the timing")
    parser.add_argument("--warmup-steps", type=int, default=30, help="steps of the warm-up run of each mode")
    parser.add_argument("--rounds", type=int, default=5, help="with/without pairs, alternating")
    parser.add_argument("--resident-batches", type=int, default=4,
                        help="distinct resident batches for --arch resnet* (the demo keeps one epoch)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=32, help="backbone width (features: 4x)")
    parser.add_argument("--dim", type=int, default=64, help="projector hidden and output width")
    parser.add_argument("--every-n-steps", type=int, default=50)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--equalizer", type=float, default=None, metavar="ALPHA",
                        help="time ModeEqualizer(alpha=ALPHA) on top of the monitor instead of the monitor itself")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is steadier on a CPU shared with other jobs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")

    modes = ["resident", "host"] if args.data == "both" else [args.data]
    results = [measure(args, mode) for mode in modes]

    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    n = torch.get_num_threads()
    threads = f", {n} torch thread{'s' if n > 1 else ''}" if args.device == "cpu" else ", bf16 autocast"
    print(f"machine: {device}{threads}, torch {torch.__version__}, lightning {pl.__version__}")
    model = (f"demo Barlow Twins (width {args.width}, {args.dim}-d embeddings, 16 px digits)" if args.arch == "demo"
             else f"{args.arch} Barlow Twins ({args.image_size} px random images, projector {args.dim})")
    print(f"model: {model}, batch {args.batch_size}, {args.steps} steps a run ({args.steps - args.skip} timed) x "
          f"{args.rounds} pairs; monitor every {args.every_n_steps} steps over {args.window} samples")
    if args.equalizer is not None:
        print(f"timed: ModeEqualizer(alpha={args.equalizer:g}); 'without' runs the monitor alone, 'with' adds the "
              "equaliser (the hooks column is the equaliser's own: its step hooks and its gradient hook)")
    print()
    memory = args.device == "cuda"
    print("| data | without (ms/step, median) | with (ms/step, median) | median pair ratio | pair ratios (min-max) "
          f"| ratio of medians | {'equaliser' if args.equalizer is not None else 'monitor'} hooks (ms/step) "
          "| hooks / step |" + (" extra peak memory |" if memory else ""))
    print("| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if memory else ""))
    for r in results:
        with_ms, without_ms = statistics.median(r["with"]) * 1e3, statistics.median(r["without"]) * 1e3
        hooks_ms = r["hooks"] * 1e3
        extra = f" {(r['peak_with'] - r['peak_without']) / 2**20:+.0f} MiB |" if memory else ""
        print(f"| {r['mode']} | {without_ms:.2f} | {with_ms:.2f} | {statistics.median(r['pairs']):.4f} "
              f"| {min(r['pairs']):.4f}-{max(r['pairs']):.4f} | {with_ms / without_ms:.4f} | {hooks_ms:.3f} "
              f"| {hooks_ms / without_ms:.2%} |{extra}")
    print()
    for r in results:
        print(f"{MODES[r['mode']]}")
        print("  pairs (with/without ms = ratio):", ", ".join(
            f"{a * 1e3:.1f}/{b * 1e3:.1f} = {a / b:.4f}" for a, b in zip(r["with"], r["without"], strict=True)))
        print(f"  monitor at train end (once a run, median): {r['train_end'] * 1e3:.1f} ms")
        if memory:
            print(f"  peak GPU memory: {r['peak_without'] / 2**20:.0f} MiB without, {r['peak_with'] / 2**20:.0f} "
                  f"MiB with the monitor")


if __name__ == "__main__":
    main()
