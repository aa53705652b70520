"""The checks of [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor]'s constructor arguments.

Its one job: before any training, tell a user who passed a wrong argument which parameter it is, what was
given and what to write instead (the types and ranges of the numbers, the did-you-mean of a misspelled
choice, of a DataLoader passed as ``module``, of a path passed as ``embedding_fn``, ...).
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor, nn

from lightning_stepwise.onset_core import DEFAULT_ONSET_OPTIONS, check_onset_options
from lightning_stepwise.theory import TheoryPrediction
from lightning_stepwise.tracker import SPECTRA

if TYPE_CHECKING:
    from lightning_stepwise.monitor import StepwiseMonitor

__all__ = ["check_monitor_options"]


def _given(value: Any) -> str:
    """What a user passed, for an error message: a short repr and its type (only the type for long reprs)."""
    kind = type(value).__name__
    if isinstance(value, Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    text = repr(value)
    if text.startswith("<") or "\n" in text:
        return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


def _is_instance_named(value: Any, *names: str) -> bool:
    """Whether a class named one of ``names`` is among ``value``'s bases (no import of optional packages)."""
    return any(cls.__name__ in names for cls in type(value).__mro__)


def _integer(name: str, value: Any, low: int, meaning: str, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        whole = isinstance(value, float) and value.is_integer()
        raise TypeError(f"StepwiseMonitor({name}=...) takes an int >= {low} ({meaning}); got {_given(value)}. "
                        f"E.g. {name}={int(value) if whole and value >= low else example}")
    if value < low:
        raise ValueError(f"StepwiseMonitor({name}=...) takes an int >= {low} ({meaning}); got {_given(value)}. "
                         f"E.g. {name}={example}")
    return int(value)


def _boolean(name: str, value: Any, meaning: str, *, optional: bool = False) -> bool | None:
    if optional and value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        accepted = "True, False or None" if optional else "True or False"
        raise TypeError(f"StepwiseMonitor({name}=...) takes {accepted} ({meaning}); got {_given(value)}")
    return bool(value)


def _choice(name: str, value: Any, choices: Sequence[str], meaning: str) -> str:
    if isinstance(value, str) and value in choices:
        return value
    close = difflib.get_close_matches(value.lower().replace("-", "_").replace(" ", "_"), list(choices), n=1,
                                      cutoff=0.5) if isinstance(value, str) else []
    mean = f" Did you mean {name}={close[0]!r}?" if close else ""
    error = ValueError if isinstance(value, str) else TypeError
    raise error(f"StepwiseMonitor({name}=...) takes one of {', '.join(repr(c) for c in choices)} ({meaning}); got "
                f"{_given(value)}.{mean}")


def _check_module(module: Any) -> None:
    """``module=``: None, a dotted path, a submodule, or a non-empty list or tuple of paths and submodules."""
    usage = ("StepwiseMonitor(module=...) takes a module path like 'projection_head', a submodule of your model "
             "(an nn.Module), or a list of them")
    if module is None:
        return
    items = list(module) if isinstance(module, (list, tuple)) else [module]
    if not items:
        raise ValueError(f"{usage}; got an empty {type(module).__name__}. Leave module out (None) to let the "
                         "monitor find the embeddings itself")
    for item in items:
        within = "" if item is module else f" in the {type(module).__name__}"
        if isinstance(item, str):
            if not item.strip():
                raise ValueError(f"{usage}; got an empty path{within}. Leave module out (None) to let the monitor "
                                 "find the embeddings itself")
            continue
        if isinstance(item, nn.Module):
            if _is_instance_named(item, "LightningModule"):
                raise TypeError(f"{usage}; got the LightningModule itself ({type(item).__name__}){within}. The "
                                "monitor gets the model from trainer.fit(model, ...): pass one of its submodules, "
                                "e.g. module='projection_head', or nothing to let it find the embeddings")
            continue
        if _is_instance_named(item, "DataLoader", "LightningDataModule", "Dataset", "IterableDataset"):
            hint = (" Did you mean LinearProbe(train_loader, val_loader)? Data go to trainer.fit(model, train_loader) "
                    "and to the probe; StepwiseMonitor() finds the embeddings in the model itself")
        elif isinstance(item, Tensor):
            hint = (" Pass the module that makes these embeddings (its dotted path), or "
                    "embedding_fn=lambda pl_module, batch: ... returning them")
        elif callable(item):
            hint = (" Did you mean embedding_fn=...? It takes a function called as embedding_fn(pl_module, batch) "
                    "that returns the embeddings")
        else:
            hint = " Leave module out to let the monitor find the embeddings itself"
        raise TypeError(f"{usage}; got {_given(item)}{within}.{hint}")


def _check_embedding_fn(fn: Any) -> None:
    if fn is None:
        return
    usage = ("StepwiseMonitor(embedding_fn=...) takes a function called as embedding_fn(pl_module, batch) that "
             "returns the embeddings, a (batch, dim) tensor")
    example = "embedding_fn=lambda pl_module, batch: pl_module.backbone(batch[0][0]).flatten(1)"
    if isinstance(fn, str):
        raise TypeError(f"{usage}; got {_given(fn)}. Did you mean module={fn!r}?")
    if isinstance(fn, nn.Module):
        raise TypeError(f"{usage}; got {_given(fn)} (a module). To track a module's output, pass module=... (its "
                        f"dotted path or the submodule itself); or wrap it: {example}")
    if not callable(fn):
        raise TypeError(f"{usage}; got {_given(fn)}. E.g. {example}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: called and counted if it fails
        return
    try:
        signature.bind(None, None)
    except TypeError:
        name = getattr(fn, "__name__", type(fn).__name__)
        raise TypeError(f"{usage}; `{name}{signature}` cannot be called with those two arguments. E.g. "
                        f"{example}") from None


def _check_onset_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    known = ", ".join(DEFAULT_ONSET_OPTIONS)
    if not isinstance(options, Mapping):
        raise TypeError(f"StepwiseMonitor(onset_options=...) takes a dict of detection options ({known}), e.g. "
                        f"onset_options={{'min_rise': 10.0}}; got {_given(options)}")
    for key, value in options.items():
        if key not in DEFAULT_ONSET_OPTIONS:
            close = difflib.get_close_matches(str(key), list(DEFAULT_ONSET_OPTIONS), n=1)
            mean = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"StepwiseMonitor(onset_options=...): unknown onset options [{key!r}];{mean} known: "
                             f"{known}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"StepwiseMonitor(onset_options=...): {key} takes a number (default "
                            f"{DEFAULT_ONSET_OPTIONS[key]}); got {_given(value)}")
    try:
        check_onset_options(**options)
    except ValueError as err:
        raise ValueError(f"StepwiseMonitor(onset_options=...): {err}") from None
    return dict(options)


def check_monitor_options(monitor: StepwiseMonitor) -> None:
    """Check the monitor's constructor arguments (its attributes of the same names), normalising them in place.

    Every argument check in one place, each naming the argument, what was given and what it takes.
    ``TypeError`` for a wrong type, ``ValueError`` for a wrong value; numbers and paths are normalised.
    """
    _check_module(monitor.module)
    _check_embedding_fn(monitor.embedding_fn)
    if monitor.module is not None and monitor.embedding_fn is not None:
        raise ValueError("StepwiseMonitor: give either `module` or `embedding_fn`, not both (embedding_fn "
                         "replaces the hook on a module)")
    if not (isinstance(monitor.every_n_steps, str) and monitor.every_n_steps == "auto"):
        if isinstance(monitor.every_n_steps, str):
            raise ValueError(f"StepwiseMonitor(every_n_steps=...) takes an int >= 1 or 'auto'; got "
                             f"{_given(monitor.every_n_steps)}. E.g. every_n_steps=50, or every_n_steps='auto'")
        monitor.every_n_steps = _integer("every_n_steps", monitor.every_n_steps, 1,
                                         "steps between measurements, or 'auto'", 50)
    for arg, low, meaning, example in (
            ("window", 2, "embedding rows per measurement", 1024),
            ("top_k", 1, "eigenvalues kept per measurement", 256),
            ("mode_directions", 0, "eigen-directions followed by identity; 0 turns identity tracking off", 64),
            ("log_top_k", 0, "eigenvalues sent to the loggers", 16),
            ("max_history", 2, "measurements kept in memory", 10_000),
            ("lr_optimizer", 0, "index in trainer.optimizers of the optimizer that makes effective time", 0)):
        setattr(monitor, arg, _integer(arg, getattr(monitor, arg), low, meaning, example))
    monitor.normalize = _boolean("normalize", monitor.normalize, "L2-normalise the embeddings; None: as the hooked "
                                 "loss does", optional=True)
    for arg, meaning in (("prog_bar", "show the effective rank in the progress bar"),
                         ("strict", "raise instead of warning, counting and skipping"),
                         ("verbose", "print a line per learned mode"),
                         ("save_figure", "write stepwise.png at fit end")):
        setattr(monitor, arg, _boolean(arg, getattr(monitor, arg), meaning))
    dirpath: Any = monitor.dirpath
    if dirpath is not None and not isinstance(dirpath, (str, os.PathLike)):
        raise TypeError(f"StepwiseMonitor(dirpath=...) takes a folder (a str or pathlib.Path) or None for "
                        f"<trainer.log_dir>/stepwise; got {_given(dirpath)}")
    monitor.dirpath = Path(dirpath) if dirpath is not None else None
    if not isinstance(monitor.name, str) or not monitor.name:
        error = TypeError if not isinstance(monitor.name, str) else ValueError
        raise error(f"StepwiseMonitor(name=...) takes a non-empty str (the prefix of logged metric names); got "
                    f"{_given(monitor.name)}. E.g. name='stepwise'")
    monitor.plot_x = _choice("plot_x", monitor.plot_x, ("step", "time"), "the x axis of stepwise.png")
    monitor.spectrum = _choice("spectrum", monitor.spectrum, SPECTRA,
                               "what the eigenvalues are of: the embeddings' covariance, or the two views' "
                               "cross-correlation")
    monitor.onset_options = _check_onset_options(monitor.onset_options)
    if monitor.theory is not None and not isinstance(monitor.theory, TheoryPrediction):
        raise TypeError(f"StepwiseMonitor(theory=...) takes a TheoryPrediction or None; got "
                        f"{_given(monitor.theory)}. E.g. theory=LinearSSLTheory.from_views(x0, x1).predict(lr=..., "
                        "W0=...)")
