"""``ModeAtlas``: the mode atlas of a run, drawn by a callback at fit end and, optionally, at each new mode.

Thin glue around [`mode_atlas`][lightning_stepwise.atlas.mode_atlas]: a fixed set of images, one forward
pass, files next to the monitor's, the figure sent to the loggers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_stepwise.atlas import Atlas, mode_atlas, plot_atlas
from lightning_stepwise.lightning_compat import (
    Callback,
    cuda_devices,
    default_output_dir,
    log_figure,
    print_line,
    takes_images,
)
from lightning_stepwise.monitor import find_monitor, learned_since
from lightning_stepwise.probe import point_features
from lightning_stepwise.problems import StepwiseWarning

__all__ = ["ModeAtlas"]

FeatureFn = Callable[[Any, Tensor], Tensor]


class ModeAtlas(Callback):
    """Draw what each learned mode means, on a fixed image set, at fit end (and at each new mode).

    At fit end (rank zero) it runs one forward pass over ``images``, takes the leading eigen-directions
    of the features' covariance at the tracked point, and writes ``modes.csv`` and ``atlas.png`` (each
    mode's extreme images) into ``<the monitor's folder>/atlas`` (``<log_dir>/stepwise/atlas`` without a
    monitor), prints the table of each mode's strongest descriptor, and sends the figure to the loggers
    (TensorBoard's ``add_figure``, or ``log_image``). With ``on_new_mode=True`` and a
    [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor] in the Trainer, it also draws the atlas
    each time a mode is learned, into ``atlas/mode_<n>``.

    Args:
        images: ``(N, C, H, W)`` images, as the model takes them (e.g. the probe's validation images). They
            are moved to the module's device in batches.
        labels: ``(N,)`` class labels, for the one-vs-rest AUC of each mode; None leaves those columns out.
        point: dotted path of the submodule whose output is the feature (e.g. ``"projection_head"``, the
            point the monitor tracks for Lightly modules). None: the module's own ``forward`` output.
        modes: how many modes to describe. None: as many as the Trainer's monitor has learned (at least
            1), or 8 without a monitor.
        per_side: images drawn at each end of a mode.
        on_new_mode: also draw the atlas each time the monitor learns a new mode.
        dirpath: folder for the files (default: the monitor's folder, or ``<log_dir>/stepwise``, + ``atlas``).
        verbose: print the table each time the atlas is drawn (the files and loggers get it either way).

    Examples:
        >>> from lightning_stepwise.data import load_digits_images
        >>> images, labels = load_digits_images(size=16)
        >>> atlas = ModeAtlas(images[:500], labels[:500], point="projection_head")
        >>> atlas.modes is None, atlas.per_side
        (True, 8)
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        *,
        point: str | None = None,
        modes: int | None = None,
        per_side: int = 8,
        on_new_mode: bool = False,
        dirpath: str | os.PathLike[str] | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise TypeError(f"ModeAtlas(images=...) takes an (N, C, H, W) tensor of images; got "
                            f"{type(images).__name__}{tuple(images.shape) if isinstance(images, Tensor) else ''}. "
                            "E.g. torch.cat([x for x, _ in val_loader]) for a labelled loader")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"ModeAtlas: {len(labels)} labels for {len(images)} images; give one label per image "
                             "or labels=None")
        if modes is not None and (not isinstance(modes, int) or modes < 1):
            raise ValueError(f"ModeAtlas(modes=...) takes an int >= 1 or None (the monitor's count); got {modes!r}")
        if not isinstance(per_side, int) or per_side < 1:
            raise ValueError(f"ModeAtlas(per_side=...) takes an int >= 1; got {per_side!r}")
        if point is not None and not isinstance(point, str):
            raise TypeError(f"ModeAtlas(point=...) takes a dotted submodule path like 'projection_head' or None; "
                            f"got {type(point).__name__}")
        self.images = images
        self.labels = labels
        self.point = point
        self.modes = modes
        self.per_side = per_side
        self.on_new_mode = on_new_mode
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.verbose = verbose
        #: The atlas drawn last (None before the first).
        self.atlas: Atlas | None = None
        self._modes_seen = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.on_new_mode:
            return
        learned = learned_since(trainer, self._modes_seen)
        if learned is not None:
            self._modes_seen = learned
            self._draw(trainer, pl_module, f"mode_{self._modes_seen}")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._draw(trainer, pl_module, None)

    def _output_dir(self, trainer: Any) -> Path:
        if self.dirpath is not None:
            return self.dirpath
        monitor = find_monitor(trainer)
        base = monitor.output_dir if monitor is not None and monitor.output_dir is not None else None
        return Path(base) if base is not None else default_output_dir(trainer)

    def _count(self, trainer: Any) -> int:
        if self.modes is not None:
            return self.modes
        monitor = find_monitor(trainer)
        return max(monitor.modes_learned, 1) if monitor is not None else 8

    def _draw(self, trainer: Any, pl_module: Any, subfolder: str | None) -> None:
        if not trainer.is_global_zero:
            return
        k = min(self._count(trainer), len(self.images) - 1)
        folder = self._output_dir(trainer) / "atlas"
        folder = folder / subfolder if subfolder else folder
        feature_fn: FeatureFn | None = point_features(self.point) if self.point is not None else None
        try:
            with torch.random.fork_rng(devices=cuda_devices(pl_module)):  # training's randomness untouched
                atlas = mode_atlas(pl_module, self.images, k=k, labels=self.labels, per_side=self.per_side,
                                   output_dir=folder, feature_fn=feature_fn)
        except Exception as err:  # never kill a finished or running fit over a figure
            warnings.warn(f"ModeAtlas: the atlas could not be drawn ({type(err).__name__}: {err}); training goes on",
                          StepwiseWarning, stacklevel=2)
            return
        self.atlas = atlas
        where = f"`{self.point}`" if self.point else "the module's output"
        if self.verbose:
            print_line(trainer, f"ModeAtlas: {k} modes of {where} on {len(self.images)} images, in {folder}\n"
                                f"{atlas.table()}")
        if not any(takes_images(logger) for logger in trainer.loggers):
            return  # the figure is in atlas.png; drawing it again for no logger costs a second or more
        figure = plot_atlas(self.images, atlas.coordinates, self.per_side, None, rows=atlas.rows)
        for error in log_figure(trainer, "stepwise/atlas" + (f"_{subfolder}" if subfolder else ""), figure,
                                atlas.figure_path):
            print_line(trainer, f"ModeAtlas: {error}")

