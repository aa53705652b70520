"""What the monitor skipped instead of interrupting training: one warning per kind, and a count of every case.

A measuring instrument must not kill a training run through its own trouble, and must not hide it
either. Every skipped batch, cut window, failed eigensolve or failed probe is counted here by kind; the
first of each kind warns (with [`StepwiseWarning`][lightning_stepwise.problems.StepwiseWarning]), ``strict=True``
raises instead, the counts go
into the run's files (``problems.json``) and fit end prints one summary line when any is non-zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_stepwise.distributed import all_reduce_sum, distributed_world_size

__all__ = ["PROBLEM_KINDS", "ProblemCounter", "StepwiseWarning"]

PROBLEM_KINDS: dict[str, dict[str, Any]] = {
    "non_finite_batches": {"phrase": "batches with non-finite embeddings skipped", "rank_local": False},
    "malformed_batches": {"phrase": "batches skipped for their shape", "rank_local": True},
    "empty_batches": {"phrase": "window batches in which a process captured no embeddings", "rank_local": True},
    "dropped_rows": {"phrase": "embedding rows beyond a window's buffer dropped", "rank_local": True},
    "embedding_fn_errors": {"phrase": "embedding_fn calls that raised", "rank_local": True},
    "empty_windows": {"phrase": "windows without usable embeddings (no spectrum)", "rank_local": False},
    "partial_windows": {"phrase": "windows recorded before they were full", "rank_local": False},
    "failed_solves": {"phrase": "eigensolves that failed (no spectrum)", "rank_local": False},
    "failed_onset_updates": {"phrase": "onset detections that failed", "rank_local": False},
    "failed_probes": {"phrase": "linear probes that failed", "rank_local": False},
}
"""Every kind of skipped work counted (the keys of ``problems.json`` and ``monitor.problems``), with the
phrase the summary uses. ``rank_local`` kinds are counted by each process on its own and summed over
ranks at fit end; the others are the same on every rank."""


class StepwiseWarning(UserWarning):
    """Problems the monitor skipped over instead of interrupting training.

    Examples:
        >>> import warnings
        >>> warnings.simplefilter("error", StepwiseWarning)  # make them errors, e.g. in a test suite
        >>> warnings.resetwarnings()
    """


class ProblemCounter:
    """Counts of skipped work by kind (see `PROBLEM_KINDS`), warning once per warning key.

    Examples:
        >>> counter = ProblemCounter("StepwiseMonitor")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     counter.report("failed_solves", "the eigensolve failed")
        ...     counter.report("failed_solves", "the eigensolve failed again")
        >>> len(caught), counter.counts["failed_solves"]
        (1, 2)
        >>> counter.summary()
        'StepwiseMonitor: 2 eigensolves that failed (no spectrum)'
    """

    def __init__(self, owner: str, strict: bool = False, kinds: Sequence[str] | None = None) -> None:
        self.owner = owner
        self.strict = strict
        unknown = set(kinds or ()) - set(PROBLEM_KINDS)
        if unknown:
            raise KeyError(f"unknown problem kinds {sorted(unknown)}; known: {sorted(PROBLEM_KINDS)}")
        #: Count per kind (of this process for the ``rank_local`` kinds until
        #: [`totals`][lightning_stepwise.problems.ProblemCounter.totals] sums them).
        self.counts: dict[str, int] = dict.fromkeys(kinds if kinds is not None else PROBLEM_KINDS, 0)
        self._warned: set[str] = set()

    def report(self, kind: str, message: str, *, count: int = 1, key: str | None = None) -> None:
        """Count ``count`` cases of ``kind``; warn the first time ``key`` (default: the kind) is seen.

        Raises ``RuntimeError`` instead when strict.
        """
        if kind not in self.counts:
            raise KeyError(f"unknown problem kind {kind!r}; known: {sorted(self.counts)}")
        self.counts[kind] += count
        self.warn(key or kind, message)

    def warn(self, key: str, message: str) -> None:
        """Warn once per ``key`` without counting (``RuntimeError`` when strict)."""
        if self.strict:
            raise RuntimeError(f"{self.owner} (strict=True): {message}")
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"{self.owner}: {message} (warned once; counted in problems.json)", StepwiseWarning,
                          stacklevel=4)

    def totals(self, device: torch.device | str = "cpu") -> dict[str, int]:
        """The counts with the ``rank_local`` kinds summed over ranks (a collective under DDP)."""
        totals = dict(self.counts)
        if distributed_world_size() > 1:
            local = [kind for kind in self.counts if PROBLEM_KINDS[kind]["rank_local"]]
            summed = all_reduce_sum(torch.tensor([float(self.counts[k]) for k in local], dtype=torch.float64,
                                                 device=device))
            totals.update(zip(local, (int(v) for v in summed.tolist()), strict=True))
        return totals

    def summary(self, totals: Mapping[str, int] | None = None) -> str:
        """One line naming every non-zero count, or ``""`` when there is none."""
        totals = self.counts if totals is None else totals
        parts = [f"{totals[k]} {PROBLEM_KINDS[k]['phrase']}" for k in self.counts if totals.get(k)]
        return f"{self.owner}: " + "; ".join(parts) if parts else ""

    def state_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def load_state_dict(self, counts: Mapping[str, int], *, keep_rank_local: bool = True) -> None:
        """Restore counts.

        ``keep_rank_local=False`` (ranks other than zero) zeroes the per-process kinds, which the
        checkpoint holds as totals over ranks.
        """
        for kind in self.counts:
            local = PROBLEM_KINDS[kind]["rank_local"]
            self.counts[kind] = int(counts.get(kind, 0)) if keep_rank_local or not local else 0
