"""lightning-stepwise: see the stepwise learning of self-supervised models in your Lightning runs.

Examples:
    >>> from lightning_stepwise import StepwiseMonitor
    >>> monitor = StepwiseMonitor(every_n_steps=25)
"""

from lightning_stepwise.callbacks import LinearProbe, StepwiseMonitor, StepwiseWarning
from lightning_stepwise.capture import NoEmbeddingFoundError
from lightning_stepwise.onsets import OnsetTracker, detect_loss_steps, detect_onsets
from lightning_stepwise.report import format_onset_table, load_onsets, load_spectrum, plot_stepwise, save_spectrum
from lightning_stepwise.spectrum import covariance_eigenvalues, summarize_spectrum
from lightning_stepwise.theory import LinearSSLTheory, TheoryPrediction, empirical_ntk

__all__ = [
    "LinearProbe",
    "LinearSSLTheory",
    "NoEmbeddingFoundError",
    "OnsetTracker",
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
    "plot_stepwise",
    "save_spectrum",
    "summarize_spectrum",
]

__version__ = "0.1.0"
