"""lightning-stepwise: see the stepwise learning of self-supervised models in your Lightning runs.

What is exported here is the public API: the callbacks, their warnings and errors, and the functions
the documentation teaches (offline onset detection, the run's files and figures, spectra, the theory).
Everything else stays importable from its module (``lightning_stepwise.tracker``,
``lightning_stepwise.accumulators``, ...) for advanced use, but is not promised to keep its name.

The names are imported on first use (PEP 562): ``import lightning_stepwise`` alone does not import
torch or Lightning, so the ``lightning-stepwise`` command answers ``--help`` at once.

Examples:
    >>> from lightning_stepwise import StepwiseMonitor
    >>> monitor = StepwiseMonitor(every_n_steps=25)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and the API docs see; at run time, __getattr__ below imports on first use
    from lightning_stepwise.atlas_callback import ModeAtlas
    from lightning_stepwise.capture import NoEmbeddingFoundError
    from lightning_stepwise.equalizer_callback import ModeEqualizer
    from lightning_stepwise.linear_probe import LinearProbe
    from lightning_stepwise.loss_steps import detect_loss_steps, match_loss_drops
    from lightning_stepwise.mode_identity import ModeMatcher
    from lightning_stepwise.monitor import StepwiseMonitor
    from lightning_stepwise.onsets import OnsetTracker, detect_onsets
    from lightning_stepwise.plots import plot_stepwise
    from lightning_stepwise.problems import StepwiseWarning
    from lightning_stepwise.report import (
        format_onset_table,
        load_onsets,
        load_spectrum,
        report_run,
        save_spectrum,
    )
    from lightning_stepwise.spectrum import covariance_eigenvalues, summarize_spectrum
    from lightning_stepwise.theory import LinearSSLTheory, TheoryPrediction, empirical_ntk
    from lightning_stepwise.tracker import SpectrumTracker

#: The module each public name comes from.
_SOURCES: dict[str, str] = {
    "NoEmbeddingFoundError": "capture",
    "LinearProbe": "linear_probe",
    "ModeAtlas": "atlas_callback",
    "ModeEqualizer": "equalizer_callback",
    "detect_loss_steps": "loss_steps",
    "match_loss_drops": "loss_steps",
    "ModeMatcher": "mode_identity",
    "StepwiseMonitor": "monitor",
    "OnsetTracker": "onsets",
    "detect_onsets": "onsets",
    "plot_stepwise": "plots",
    "StepwiseWarning": "problems",
    "format_onset_table": "report",
    "load_onsets": "report",
    "load_spectrum": "report",
    "report_run": "report",
    "save_spectrum": "report",
    "covariance_eigenvalues": "spectrum",
    "summarize_spectrum": "spectrum",
    "LinearSSLTheory": "theory",
    "TheoryPrediction": "theory",
    "empirical_ntk": "theory",
    "SpectrumTracker": "tracker",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (and keep it: the next lookup is a plain attribute).

    Examples:
        >>> import lightning_stepwise
        >>> lightning_stepwise.detect_onsets.__module__
        'lightning_stepwise.onsets'
    """
    module = _SOURCES.get(name)
    if module is None and name.startswith("__"):  # doctest's __test__, inspect's probes: not ours
        raise AttributeError(f"module 'lightning_stepwise' has no attribute {name!r}")
    if module is None:  # a submodule, as the eager imports used to make lightning_stepwise.report & co. available
        try:
            return importlib.import_module(f"lightning_stepwise.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"lightning_stepwise.{name}":
                raise
            raise AttributeError(f"module 'lightning_stepwise' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"lightning_stepwise.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's attributes and the public names not imported yet.

    Examples:
        >>> "StepwiseMonitor" in dir(__import__("lightning_stepwise"))
        True
    """
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "LinearProbe",
    "ModeAtlas",
    "ModeEqualizer",
    "LinearSSLTheory",
    "ModeMatcher",
    "NoEmbeddingFoundError",
    "OnsetTracker",
    "SpectrumTracker",
    "StepwiseMonitor",
    "StepwiseWarning",
    "TheoryPrediction",
    "covariance_eigenvalues",
    "detect_loss_steps",
    "detect_onsets",
    "empirical_ntk",
    "format_onset_table",
    "load_onsets",
    "load_spectrum",
    "match_loss_drops",
    "plot_stepwise",
    "report_run",
    "save_spectrum",
    "summarize_spectrum",
]

__version__ = "0.1.0"
