"""The one place that knows Lightning comes in two namespaces.

Lightly's examples import ``pytorch_lightning``; current Lightning is ``lightning.pytorch``. Each
Trainer accepts only callbacks derived from its own namespace's ``Callback``, so the package's callbacks
derive from [`Callback`][lightning_stepwise.lightning_compat.Callback], a class with both bases (the second only when
``pytorch_lightning`` is
importable): both Trainers accept it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch.callbacks import Callback as LightningCallback
from torch import Tensor

__all__ = [
    "Callback", "TrainerLike", "cuda_devices", "default_output_dir", "log_figure", "logging_step", "module_loss",
    "optimizer_lr",
    "print_line", "takes_images", "total_steps",
]

try:
    from pytorch_lightning.callbacks import Callback as PyTorchLightningCallback
except ImportError:  # pragma: no cover - pytorch_lightning comes with lightly

    class Callback(LightningCallback):
        """Base of the package's callbacks (only ``lightning.pytorch`` is installed)."""

else:

    class Callback(LightningCallback, PyTorchLightningCallback):  # type: ignore[no-redef]
        """Base of the package's callbacks: a ``Callback`` of both Lightning namespaces.

        Examples:
            >>> import lightning.pytorch, pytorch_lightning
            >>> issubclass(Callback, lightning.pytorch.Callback), issubclass(Callback, pytorch_lightning.Callback)
            (True, True)
        """


class TrainerLike(Protocol):
    """What the callbacks read from a Trainer of either namespace (a typing protocol, for annotations).

    Examples:
        >>> def steps_done(trainer: TrainerLike) -> int:
        ...     return trainer.global_step
    """

    global_step: int
    current_epoch: int
    world_size: int
    is_global_zero: bool
    loggers: list[Any]
    callbacks: list[Any]
    optimizers: list[Any]
    accumulate_grad_batches: int


def logging_step(trainer: Any) -> int:
    """Training batches after which the optimizers stepped: the x axis of Lightning's own logging.

    ``LightningModule.log`` and ``LearningRateMonitor`` log at this count. It is the optimizer step under
    automatic optimization (with gradient accumulation too), and the training batch under manual
    optimization, however many optimizers step in it (where ``global_step`` counts every
    ``optimizer.step()``). Falls back to ``global_step`` on a Trainer without it.

    Examples:
        >>> from types import SimpleNamespace
        >>> logging_step(SimpleNamespace(global_step=6))  # no fit loop: global_step
        6
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return int(step) if isinstance(step, int) else int(trainer.global_step)


def total_steps(trainer: Any) -> int | None:
    """The run's length in logging steps: ``max_steps`` when set, else Lightning's estimate (None if unknown).

    Examples:
        >>> from types import SimpleNamespace
        >>> total_steps(SimpleNamespace(max_steps=300, estimated_stepping_batches=1000))
        300
    """
    max_steps = getattr(trainer, "max_steps", -1)
    if isinstance(max_steps, int) and max_steps > 0:
        return max_steps
    try:  # it runs the dataloader's len(); an iterable dataset has none
        estimate = trainer.estimated_stepping_batches
    except Exception:
        return None
    return int(estimate) if isinstance(estimate, (int, float)) and math.isfinite(estimate) and estimate > 0 else None


def module_loss(trainer: Any, pl_module: Any, outputs: Any) -> Tensor | None:
    """The loss the module's ``training_step`` computed, detached (None when it returned none).

    Under automatic optimization Lightning hands the callbacks the loss divided by
    ``accumulate_grad_batches``; this undoes the division. Under manual optimization ``outputs`` is what
    the step returned.

    Examples:
        >>> from types import SimpleNamespace
        >>> trainer = SimpleNamespace(accumulate_grad_batches=4)
        >>> module_loss(trainer, SimpleNamespace(automatic_optimization=True), {"loss": torch.tensor(0.25)})
        tensor(1.)
    """
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        return None
    if getattr(pl_module, "automatic_optimization", True):
        loss = loss * getattr(trainer, "accumulate_grad_batches", 1)
    return loss.detach()


def optimizer_lr(trainer: Any, index: int = 0) -> float:
    """The learning rate of the first parameter group of ``trainer.optimizers[index]`` (NaN if none).

    Examples:
        >>> from types import SimpleNamespace
        >>> sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> optimizer_lr(SimpleNamespace(optimizers=[sgd])), optimizer_lr(SimpleNamespace(optimizers=[]))
        (0.1, nan)
    """
    try:
        return float(trainer.optimizers[index].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError, TypeError, ValueError):
        return float("nan")


def default_output_dir(trainer: Any) -> Path:
    """``<trainer.log_dir>/stepwise`` (``default_root_dir`` without a logger); a collective under DDP.

    Examples:
        >>> from types import SimpleNamespace
        >>> default_output_dir(SimpleNamespace(log_dir=None, default_root_dir="runs")).as_posix()
        'runs/stepwise'
    """
    return Path(trainer.log_dir or trainer.default_root_dir) / "stepwise"


def cuda_devices(module: Any) -> list[torch.device]:
    """The module's device when it is a CUDA device (for ``torch.random.fork_rng``), else none.

    Examples:
        >>> cuda_devices(torch.nn.Linear(2, 2))  # a plain module on the CPU
        []
    """
    device = getattr(module, "device", torch.device("cpu"))
    return [device] if isinstance(device, torch.device) and device.type == "cuda" else []


def print_line(trainer: Any, line: str) -> None:
    """Print above the progress bar when one is shown (printing through it would break its line).

    Examples:
        >>> from types import SimpleNamespace
        >>> print_line(SimpleNamespace(progress_bar_callback=None), "3 modes learned")
        3 modes learned
    """
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is not None and hasattr(bar, "print") and getattr(bar, "is_enabled", False) and _bar_is_showing(bar):
        bar.print(line)
    else:
        print(line)


#: Where Lightning's TQDM bar keeps its bars; its ``print`` writes through an open one and drops the line
#: when none is open (at fit end they are all closed).
_TQDM_BARS = ("_train_progress_bar", "_val_progress_bar", "_test_progress_bar", "_predict_progress_bar")


def _bar_is_showing(bar: Any) -> bool:
    """Whether the progress bar's ``print`` will show a line now: a TQDM-style bar only while one is open."""
    if not any(hasattr(bar, name) for name in _TQDM_BARS):
        return True  # other bars (Rich, custom) print through their console, open or not
    return any(b is not None and not getattr(b, "disable", True) for b in (getattr(bar, n, None) for n in _TQDM_BARS))


def takes_images(logger: Any) -> bool:
    """Whether [`log_figure`][lightning_stepwise.lightning_compat.log_figure] sends this logger anything.

    Examples:
        >>> from types import SimpleNamespace
        >>> takes_images(SimpleNamespace(experiment=None)), takes_images(SimpleNamespace(log_image=print))
        (False, True)
    """
    return hasattr(getattr(logger, "experiment", None), "add_figure") or hasattr(logger, "log_image")


def log_figure(trainer: Any, tag: str, figure: Any, path: Path | None) -> list[str]:
    """Send a matplotlib figure to every logger that takes images; the errors, one line per logger.

    TensorBoard gets the figure (``add_figure``); loggers with ``log_image`` (W&B and others) get the
    saved file at ``path``; the others nothing.

    Examples:
        >>> from types import SimpleNamespace
        >>> log_figure(SimpleNamespace(loggers=[], global_step=0), "stepwise/stepwise", None, None)
        []
    """
    errors = []
    step = logging_step(trainer)
    for logger in trainer.loggers:
        try:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure(tag, figure, global_step=step, close=False)
            elif hasattr(logger, "log_image") and path is not None:
                logger.log_image(key=tag, images=[str(path)], step=step)
        except Exception as err:
            errors.append(f"could not send {tag} to {type(logger).__name__}: {err}")
    return errors
