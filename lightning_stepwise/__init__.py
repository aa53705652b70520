"""lightning-stepwise: see the stepwise learning of self-supervised models in your Lightning runs.

What is exported here is the public API: the callbacks, their warnings and errors, and the functions
the documentation teaches (offline onset detection, the run's files and figures, spectra, the theory).
Everything else stays importable from its module (``lightning_stepwise.tracker``,
``lightning_stepwise.accumulators``, ...) for advanced use, but is not promised to keep its name.

Examples:
    >>> from lightning_stepwise import StepwiseMonitor
    >>> monitor = StepwiseMonitor(every_n_steps=25)
"""

from lightning_stepwise.capture import NoEmbeddingFoundError
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

__all__ = [
    "LinearProbe",
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
