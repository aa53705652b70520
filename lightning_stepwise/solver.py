"""Eigensolves off the training loop: one pinned device-to-host copy, then ``eigvalsh`` in a worker thread.

The training step only queues the copy (``non_blocking`` into pinned memory, marked by a CUDA event);
the worker thread waits for the event and solves on the host. Nothing here makes the host wait for the
device on the training thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_stepwise.spectrum import ProblemLayout, SpectrumProblem, SpectrumSummary, summarize_spectrum

__all__ = ["HostSolver", "SolvedSpectrum"]


@dataclass(frozen=True)
class SolvedSpectrum:
    """One problem's result: all eigenvalues (descending), its counts, summaries, and top-k directions (``d x k``).

    Examples:
        >>> from lightning_stepwise.spectrum import summarize_spectrum
        >>> values = np.array([2.0, 1.0])
        >>> SolvedSpectrum(values, samples=8, skipped=0, summary=summarize_spectrum(torch.from_numpy(values))).samples
        8
    """

    eigenvalues: np.ndarray
    samples: float
    skipped: float
    summary: SpectrumSummary
    directions: np.ndarray | None = None


def _copy_to_host(flat: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
    if flat.device.type != "cuda":
        return flat, None
    host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
    host.copy_(flat, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _solve(layouts: Mapping[str, ProblemLayout], flat: Tensor, basis: Tensor | None, event: torch.cuda.Event | None,
           extra: int) -> tuple[dict[str, SolvedSpectrum], np.ndarray]:
    if event is not None:
        event.synchronize()  # this thread waits; the training loop does not
    solved: dict[str, SolvedSpectrum] = {}
    offset = basis_offset = 0
    for name, layout in layouts.items():
        problem = layout.from_flat(flat[offset: offset + layout.flat_size],
                                   None if basis is None else basis[basis_offset: basis_offset + layout.basis_size])
        offset += layout.flat_size
        basis_offset += layout.basis_size
        eigenvalues, directions = problem.solve_with_directions()
        solved[name] = SolvedSpectrum(eigenvalues=eigenvalues.numpy(), samples=float(problem.samples),
                                      skipped=float(problem.skipped if problem.skipped is not None else 0.0),
                                      summary=summarize_spectrum(eigenvalues),
                                      directions=None if directions is None else directions.numpy())
    return solved, flat[offset: offset + extra].numpy().copy()


class HostSolver:
    """Solve [`SpectrumProblem`][lightning_stepwise.spectrum.SpectrumProblem] objects in one worker thread.

    ``submit`` returns a future of ``({name: SolvedSpectrum}, extra values)``: the extra float64 values
    (e.g. the window's mean loss) travel in the same copy.

    Examples:
        >>> solver = HostSolver()
        >>> problem = SpectrumProblem(torch.eye(2, dtype=torch.float64), divisor=torch.tensor(1.0),
        ...                           samples=torch.tensor(4.0), dim=2)
        >>> solved, extra = solver.submit({"head": problem}, torch.tensor([0.5])).result()
        >>> solved["head"].eigenvalues.tolist(), extra.tolist()
        ([1.0, 1.0], [0.5])
        >>> solver.shutdown()
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, None]:
        return {"_pool": None}  # a worker thread does not travel; a new one starts on the next submit

    def submit(self, problems: Mapping[str, SpectrumProblem],
               extra: Tensor | None = None) -> Future[tuple[dict[str, SolvedSpectrum], np.ndarray]]:
        """Queue the copy of ``problems`` (and ``extra``) to the host and their solve; returns at once."""
        device = next(iter(problems.values())).matrix.device
        extra = torch.zeros(0, dtype=torch.float64, device=device) if extra is None else extra
        flat = torch.cat([*(p.flat().to(device) for p in problems.values()),
                          extra.reshape(-1).to(device=device, dtype=torch.float64)])
        # the Gram route's centred rows travel in float32, in a second copy queued after the first
        bases = [p.basis.reshape(-1).to(device) for p in problems.values() if p.basis is not None]
        host_basis = None
        if bases:
            host_basis, _ = _copy_to_host(torch.cat(bases))
        host, event = _copy_to_host(flat)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepwise-eigensolve")
        return self._pool.submit(_solve, {n: p.layout() for n, p in problems.items()}, host, host_basis, event,
                                 extra.numel())

    def shutdown(self) -> None:
        """Wait for the queued solves and end the worker thread (a new one starts on the next submit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
