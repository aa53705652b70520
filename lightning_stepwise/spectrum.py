"""Covariance spectra of embeddings: pure functions and streaming, DDP-reducible accumulators.

Every eigenvalue here is an eigenvalue of the *sample covariance* of the embedding rows,
``cov = (Z - mean)^T (Z - mean) / (N - 1)``, in float64, sorted in descending order.

Two ways to the same eigenvalues, chosen by cost:

- moments: float64 sums ``n``, ``sum(z - c)``, ``sum((z - c)(z - c)^T)`` around a shift ``c``
  (the mean of the first batch), then ``eigvalsh`` of the ``d x d`` covariance. The shift keeps the
  sums small when embeddings sit far from the origin (near-collapse), where raw sums lose the
  small eigenvalues to cancellation.
- Gram: when there are fewer samples ``N`` than dimensions ``d``, the nonzero eigenvalues of the
  covariance equal those of the ``N x N`` centred Gram matrix ``Zc Zc^T / (N - 1)``; the rest are 0.
  The rows are kept as they come (float32 holds bf16/fp16/fp32 embeddings exactly) and the Gram
  matrix is formed in float64, a block of columns at a time, so the only float64 copy is one block.

A third accumulator, :class:`CrossCorrelationSums`, measures another spectrum on request: the
eigenvalues of the symmetrised cross-correlation ``C = (Z0ᵀ Z1 + Z1ᵀ Z0) / 2n`` of two views' embeddings
(uncentred), the matrix of the linear theory and of the simplified Barlow Twins loss.

An accumulator ends in a :class:`SpectrumProblem`: a symmetric matrix and the scalars that turn its
eigenvalues into the spectrum. The monitor copies the problem to the host without waiting and solves
it there in a worker thread, so the training step never waits on the eigensolver; ``compute()``
solves it in place for direct use. Under DDP, :meth:`~CovarianceMoments.reduce_across_ranks` sums the
moments or gathers the kept rows with collectives that do not synchronise the host, after which every
rank holds the statistics of the global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_stepwise.distributed import all_gather_cat, all_reduce_sum

__all__ = [
    "SpectrumProblem",
    "SpectrumSummary",
    "CovarianceMoments",
    "CovarianceRows",
    "CrossCorrelationSums",
    "accumulator_from_state",
    "covariance_eigenvalues",
    "eigenvalues_from_gram",
    "eigenvalues_from_moments",
    "summarize_spectrum",
    "uses_gram_route",
]

#: Columns of the Gram route turned into float64 at a time (8 MiB for 1,024 rows).
GRAM_BLOCK_COLUMNS = 1024


def uses_gram_route(num_samples: int, dim: int) -> bool:
    """Whether the ``N x N`` Gram matrix is the cheaper way to the covariance eigenvalues.

    Examples:
        >>> uses_gram_route(num_samples=1024, dim=8192)
        True
        >>> uses_gram_route(num_samples=1024, dim=64)
        False
    """
    return num_samples < dim


@dataclass
class SpectrumProblem:
    """A window's spectrum before its eigensolve: ``eigvalsh(matrix) / divisor``, padded to ``dim``.

    ``samples`` and ``skipped`` are the window's counts; eigenvalues past ``rank_limit`` are set to 0
    (the Gram route's centring removes one dimension: its last eigenvalue is round-off). With fewer
    than ``min_samples`` samples the spectrum is NaN. Tensors stay on the device they were made on
    until :meth:`solve`, which may run anywhere (the monitor solves a host copy in a worker thread).

    Examples:
        >>> z = torch.randn(50, 3, dtype=torch.float64)
        >>> zc = z - z.mean(0)
        >>> problem = SpectrumProblem(zc.T @ zc, divisor=torch.tensor(49.0, dtype=torch.float64),
        ...                           samples=torch.tensor(50.0, dtype=torch.float64), dim=3)
        >>> torch.allclose(problem.solve(), torch.linalg.eigvalsh(torch.cov(z.T)).flip(0))
        True
    """

    matrix: Tensor
    divisor: Tensor
    samples: Tensor
    dim: int
    skipped: Tensor | None = None
    rank_limit: Tensor | None = None
    min_samples: int = 2
    nonnegative: bool = True

    def flat(self) -> Tensor:
        """All tensors as one float64 vector, for a single device-to-host copy (see :meth:`from_flat`)."""
        device = self.matrix.device
        scalars = [self.divisor, self.samples,
                   self.skipped if self.skipped is not None else torch.zeros((), device=device),
                   self.rank_limit if self.rank_limit is not None else torch.full((), math.inf, device=device)]
        return torch.cat([self.matrix.reshape(-1).to(torch.float64),
                          *(s.reshape(1).to(device=device, dtype=torch.float64) for s in scalars)])

    def like(self, flat: Tensor) -> SpectrumProblem:
        """The same problem with its tensors taken from ``flat``, a copy of :meth:`flat` (e.g. on the host)."""
        return self.template().from_flat(flat)

    def template(self) -> _ProblemTemplate:
        """What it takes to rebuild this problem from :meth:`flat`, without holding its tensors."""
        return _ProblemTemplate(size=self.matrix.shape[0], dim=self.dim, min_samples=self.min_samples,
                                nonnegative=self.nonnegative)

    def solve(self) -> Tensor:
        """All ``dim`` eigenvalues, float64, descending, on the matrix's device (NaN if too few samples)."""
        out = torch.zeros(self.dim, dtype=torch.float64, device=self.matrix.device)
        if float(self.samples) < self.min_samples:
            return out.fill_(math.nan)
        eigenvalues = torch.linalg.eigvalsh(self.matrix).flip(0) / self.divisor
        if self.nonnegative:  # a covariance is PSD: tiny negative round-off is not information
            eigenvalues = eigenvalues.clamp_min(0.0)
        if self.rank_limit is not None:
            eigenvalues[max(int(self.rank_limit), 0):] = 0.0
        k = min(len(eigenvalues), self.dim)
        out[:k] = eigenvalues[:k]
        return out


@dataclass(frozen=True)
class _ProblemTemplate:
    size: int
    dim: int
    min_samples: int
    nonnegative: bool

    @property
    def flat_size(self) -> int:
        return self.size * self.size + 4

    def from_flat(self, flat: Tensor) -> SpectrumProblem:
        matrix = flat[: self.size * self.size].reshape(self.size, self.size)
        divisor, samples, skipped, rank_limit = flat[self.size * self.size: self.flat_size]
        return SpectrumProblem(matrix=matrix, divisor=divisor, samples=samples, dim=self.dim, skipped=skipped,
                               rank_limit=None if math.isinf(float(rank_limit)) else rank_limit,
                               min_samples=self.min_samples, nonnegative=self.nonnegative)


def _centred_gram(rows: Tensor, weights: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """(``Zc Zc^T`` in float64 over the rows of weight 1, sample count), a block of columns at a time.

    Rows of weight 0 (padding, skipped batches) come out as zero rows and only add zero eigenvalues.
    ``normalize`` L2-normalises each row (in float64) before centring.
    """
    n, d = rows.shape
    w = weights.to(torch.float64)
    samples = w.sum()
    blocks = [slice(start, min(start + GRAM_BLOCK_COLUMNS, d)) for start in range(0, d, GRAM_BLOCK_COLUMNS)]
    scale = w
    if normalize:
        squares = torch.zeros(n, dtype=torch.float64, device=rows.device)
        for b in blocks:
            squares += rows[:, b].to(torch.float64).square().sum(1)
        scale = w / squares.sqrt().clamp_min(1e-12)  # torch.nn.functional.normalize's eps
    gram = torch.zeros(n, n, dtype=torch.float64, device=rows.device)
    for b in blocks:
        x = rows[:, b].to(torch.float64) * scale[:, None]
        x -= w[:, None] * (x.sum(0) / samples.clamp_min(1.0))
        gram.addmm_(x, x.T)
    return gram, samples


def _gram_problem(rows: Tensor, weights: Tensor, normalize: bool, skipped: Tensor | None = None) -> SpectrumProblem:
    gram, samples = _centred_gram(rows, weights, normalize)
    return SpectrumProblem(matrix=gram, divisor=(samples - 1).clamp_min(1.0), samples=samples, dim=rows.shape[1],
                           skipped=skipped, rank_limit=samples - 1)


def eigenvalues_from_gram(rows: Tensor) -> Tensor:
    """All ``d`` covariance eigenvalues of ``rows`` (``N x d``) via the centred Gram matrix.

    Exact for any ``N``; cheaper than the covariance route when ``N < d``. Returns float64,
    descending, clamped at 0 (the covariance is positive semi-definite; tiny negative round-off
    is not information).

    Examples:
        >>> z = torch.randn(8, 32, dtype=torch.float64)
        >>> eigenvalues_from_gram(z).shape
        torch.Size([32])
    """
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (samples x dim), got shape {tuple(rows.shape)}")
    if rows.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {rows.shape[0]}")
    weights = torch.ones(rows.shape[0], dtype=torch.float64, device=rows.device)
    return _gram_problem(rows, weights, normalize=False).solve()


def _moments_problem(count: Tensor, total: Tensor, outer: Tensor, skipped: Tensor | None = None) -> SpectrumProblem:
    count = count.to(torch.float64)
    total = total.to(torch.float64)
    scatter = outer.to(torch.float64) - torch.outer(total, total) / count.clamp_min(1.0)
    return SpectrumProblem(matrix=0.5 * (scatter + scatter.T), divisor=(count - 1).clamp_min(1.0), samples=count,
                           dim=total.shape[0], skipped=skipped)


def eigenvalues_from_moments(count: Tensor | float, total: Tensor, outer: Tensor) -> Tensor:
    """Covariance eigenvalues from shifted float64 sums.

    ``total = sum(z - c)`` and ``outer = sum((z - c)(z - c)^T)`` over ``count`` rows for any fixed
    shift ``c``; the shift cancels. Returns float64, descending, clamped at 0.

    Examples:
        >>> z = torch.randn(100, 4, dtype=torch.float64)
        >>> c = z[:10].mean(0)
        >>> ev = eigenvalues_from_moments(100, (z - c).sum(0), (z - c).T @ (z - c))
        >>> torch.allclose(ev, torch.linalg.eigvalsh(torch.cov(z.T)).flip(0))
        True
    """
    n = float(count)
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n:g}")
    count_tensor = torch.tensor(n, dtype=torch.float64, device=total.device)
    return _moments_problem(count_tensor, total, outer).solve()


def covariance_eigenvalues(rows: Tensor) -> Tensor:
    """All covariance eigenvalues of ``rows`` (``N x d``), float64, descending, cheaper route.

    Examples:
        >>> covariance_eigenvalues(torch.randn(500, 3)).shape
        torch.Size([3])
    """
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (samples x dim), got shape {tuple(rows.shape)}")
    n, d = rows.shape
    if uses_gram_route(n, d):
        return eigenvalues_from_gram(rows)
    x = rows.to(torch.float64)
    shift = x.mean(dim=0)
    centred = x - shift
    return eigenvalues_from_moments(n, centred.sum(0), centred.T @ centred)


@dataclass(frozen=True)
class SpectrumSummary:
    """Scalar summaries of one covariance spectrum.

    ``effective_rank`` is ``exp`` of the Shannon entropy of ``p_i = lambda_i / sum(lambda)``:
    RankMe's formula (Garrido et al. 2023) applied to covariance *eigenvalues*, not to singular
    values of the embedding matrix. ``participation_ratio`` is ``(sum lambda)^2 / sum(lambda^2)``.
    Both are 0 for a spectrum with no variance.

    Examples:
        >>> s = summarize_spectrum(torch.tensor([1.0, 1.0, 0.0]))
        >>> round(s.effective_rank, 6), round(s.participation_ratio, 6), s.trace
        (2.0, 2.0, 2.0)
    """

    trace: float
    effective_rank: float
    participation_ratio: float


def summarize_spectrum(eigenvalues: Tensor) -> SpectrumSummary:
    """Trace, effective rank and participation ratio of a full set of eigenvalues.

    Examples:
        >>> summarize_spectrum(torch.ones(4)).effective_rank
        4.0
    """
    lam = eigenvalues.to(torch.float64).clamp_min(0.0)
    trace = float(lam.sum())
    if not math.isfinite(trace) or trace <= 0.0:
        return SpectrumSummary(trace=trace if math.isfinite(trace) else math.nan,
                               effective_rank=0.0 if trace == 0.0 else math.nan,
                               participation_ratio=0.0 if trace == 0.0 else math.nan)
    p = lam / trace
    entropy = -torch.special.xlogy(p, p).sum()
    participation = trace**2 / float((lam**2).sum())
    return SpectrumSummary(trace=trace, effective_rank=float(torch.exp(entropy)),
                           participation_ratio=participation)



def _prepared_rows(rows: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """(rows in float64, L2-normalised if asked, zeroed if any value is not finite; 0-d 1.0/0.0 flag).

    Decided on the device: no host synchronisation.
    """
    x = rows.detach().to(torch.float64)
    finite = torch.isfinite(x).all()
    x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    return x, finite.to(torch.float64)


class _WindowAccumulator:
    """Shared parts of the accumulators: states on one device, skipped batches, a sync-free DDP reduction.

    Deliberately not a torchmetrics ``Metric``: its sync gathers state sizes to the host (a host-device
    synchronisation per state under NCCL) and it keeps a default copy of every state, which for a
    ``d x d`` float64 state at ``d = 8192`` is another 512 MiB.
    """

    _summed: tuple[str, ...] = ("skipped_batches",)
    _gathered: tuple[str, ...] = ()

    def __init__(self, dim: int, *, normalize: bool = False, device: torch.device | str | None = None) -> None:
        if dim < 1:
            raise ValueError(f"embedding width must be >= 1, got {dim}")
        self.dim = dim
        self.normalize = normalize
        self.device = torch.device(device if device is not None else "cpu")
        self.skipped_batches = self._zeros()

    def _zeros(self, *shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def _check(self, rows: Tensor) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of shape (N, {self.dim}), got {tuple(rows.shape)}")

    def _prepared(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`_prepared_rows` on this accumulator's device, counting a non-finite batch as skipped."""
        self._check(rows)
        x, ok = _prepared_rows(rows.to(self.device), self.normalize)
        self.skipped_batches += 1.0 - ok
        return x, ok

    def to(self, device: torch.device | str) -> _WindowAccumulator:
        """Move every state to ``device`` (in place; returns self)."""
        self.device = torch.device(device)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, name, value.to(self.device))
        return self

    def reduce_across_ranks(self) -> None:
        """Turn this rank's statistics into the global batch's, in place (identity in one process).

        Every rank must call it at the same point. The collectives are queued on the current stream;
        the host does not wait for them.
        """
        for name in self._summed:
            setattr(self, name, all_reduce_sum(getattr(self, name)))
        for name in self._gathered:
            setattr(self, name, all_gather_cat(getattr(self, name)))

    def problem(self) -> SpectrumProblem:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """(all ``d`` eigenvalues descending, samples, skipped batches), float64, on the device."""
        problem = self.problem()
        return problem.solve(), problem.samples, self.skipped_batches

    def state_dict(self) -> dict[str, Any]:
        """The statistics on the CPU, for a checkpoint taken in the middle of a window."""
        names = {"skipped_batches", *self._summed, *self._gathered, *self._extra_state}
        return {"kind": type(self).__name__, "dim": self.dim, "normalize": self.normalize,
                **{k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in vars(self).items() if k in names}}

    _extra_state: tuple[str, ...] = ()


class CovarianceMoments(_WindowAccumulator):
    """Streaming covariance as shifted float64 sums; eigenvalues of the ``d x d`` matrix.

    Sum-reducible across DDP ranks provided every rank uses the same ``shift`` (the monitor sets it
    from the all-reduced mean of the window's first batch). Memory: ``d x d`` float64.

    Examples:
        >>> acc = CovarianceMoments(dim=3, shift=torch.zeros(3, dtype=torch.float64))
        >>> acc.update(torch.randn(50, 3)); acc.update(torch.randn(50, 3))
        >>> eigenvalues, samples, skipped = acc.compute()
        >>> eigenvalues.shape, int(samples)
        (torch.Size([3]), 100)
    """

    _summed = ("skipped_batches", "count", "total", "outer")
    _extra_state = ("shift",)

    def __init__(self, dim: int, shift: Tensor | None = None, *, normalize: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__(dim, normalize=normalize, device=device if device is not None else
                         (shift.device if shift is not None else None))
        if shift is not None and shift.shape != (dim,):
            raise ValueError(f"shift must have shape ({dim},), got {tuple(shift.shape)}")
        self.shift = self._zeros(dim) if shift is None else shift.detach().to(self.device, torch.float64)
        self.count = self._zeros()
        self.total = self._zeros(dim)
        self.outer = self._zeros(dim, dim)

    def update(self, rows: Tensor) -> None:
        """Add a batch of embedding rows (``N x d``, any float dtype)."""
        x, ok = self._prepared(rows)
        centred = (x - self.shift) * ok
        self.count += ok * x.shape[0]
        self.total += centred.sum(0)
        self.outer.addmm_(centred.T, centred)

    def merge(self, other: CovarianceMoments) -> None:
        """Add another accumulator's sums (same shift) to this one's."""
        if not torch.equal(self.shift, other.shift.to(self.device)):
            raise ValueError("cannot merge moments taken around different shifts")
        for name in self._summed:
            setattr(self, name, getattr(self, name) + getattr(other, name).to(self.device))

    def problem(self) -> SpectrumProblem:
        """The ``d x d`` scatter matrix of the window, divided by ``n - 1`` when solved."""
        return _moments_problem(self.count, self.total, self.outer, self.skipped_batches)


class CovarianceRows(_WindowAccumulator):
    """Keeps up to ``capacity`` rows of a window; eigenvalues through the ``N x N`` centred Gram matrix.

    For ``N < d`` (e.g. 1,024 samples of an 8,192-d projector) this holds ``N x d`` values instead
    of ``d x d`` and solves an ``N x N`` problem. The rows are stored as given in ``dtype`` (float32
    holds bf16, fp16 and fp32 embeddings exactly; pass float64 for float64 embeddings), in one buffer
    made at construction; rows past ``capacity`` are dropped. Normalisation, centring and the Gram
    products are float64. Under DDP every rank's buffer is gathered (rows it did not fill have weight 0).

    Examples:
        >>> acc = CovarianceRows(dim=64, capacity=32)
        >>> acc.update(torch.randn(10, 64)); acc.update(torch.randn(10, 64))
        >>> eigenvalues, samples, skipped = acc.compute()
        >>> int((eigenvalues > 0).sum()), int(samples)
        (19, 20)
    """

    _gathered = ("rows", "row_weights")

    def __init__(self, dim: int, capacity: int = 1024, *, normalize: bool = False, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__(dim, normalize=normalize, device=device)
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 row, got {capacity}")
        self.capacity = capacity
        self.rows = self._zeros(capacity, dim, dtype=dtype)
        self.row_weights = self._zeros(capacity)
        #: Rows written so far (host-side count: no device read needed to place the next batch).
        self.filled = 0
        #: Rows that arrived after the buffer was full.
        self.dropped_rows = 0

    def update(self, rows: Tensor) -> None:
        """Add a batch of embedding rows (``N x d``, any float dtype)."""
        self._check(rows)
        x = rows.detach().to(self.device)
        finite = torch.isfinite(x).all()
        self.skipped_batches += 1.0 - finite.to(torch.float64)
        n = min(x.shape[0], self.capacity - self.filled)
        self.dropped_rows += x.shape[0] - n
        end = self.filled + n
        self.rows[self.filled:end] = torch.where(finite, x[:n], torch.zeros((), dtype=x.dtype, device=x.device))
        self.row_weights[self.filled:end] = finite.to(torch.float64)
        self.filled = end

    def reduce_across_ranks(self) -> None:
        super().reduce_across_ranks()
        self.filled = self.rows.shape[0]  # every rank's buffer, unfilled rows at weight 0

    def state_dict(self) -> dict[str, Any]:
        """The filled rows only (a checkpoint mid-window holds what was seen, not the empty buffer)."""
        rows, weights = self.rows[: self.filled].cpu(), self.row_weights[: self.filled].cpu()
        return {"kind": type(self).__name__, "dim": self.dim, "normalize": self.normalize, "capacity": self.capacity,
                "filled": self.filled, "dropped_rows": self.dropped_rows, "rows": rows, "row_weights": weights,
                "skipped_batches": self.skipped_batches.cpu()}

    def problem(self) -> SpectrumProblem:
        """The ``N x N`` centred Gram matrix of the kept rows, divided by ``n - 1`` when solved."""
        return _gram_problem(self.rows[: self.filled], self.row_weights[: self.filled], self.normalize,
                             self.skipped_batches)


class CrossCorrelationSums(_WindowAccumulator):
    """Streaming ``C = (Z0ᵀ Z1 + Z1ᵀ Z0) / 2n`` of two views; eigenvalues of the ``d x d`` matrix.

    ``update`` takes the stacked views ``[Z0; Z1]`` (``2n x d``: the first half one view, the second
    half the other, as captured from a two-view training step). Uncentred, like the linear theory's
    ``C`` and the simplified Barlow Twins loss. Eigenvalues may be negative (views anti-correlated along
    a direction). Sum-reducible across DDP ranks. Memory: ``d x d`` float64.

    Examples:
        >>> z = torch.randn(100, 3, dtype=torch.float64)
        >>> acc = CrossCorrelationSums(dim=3); acc.update(torch.cat([z, z]))
        >>> eigenvalues, pairs, _ = acc.compute()
        >>> bool(torch.allclose(eigenvalues, torch.linalg.eigvalsh(z.T @ z / 100).flip(0))), int(pairs)
        (True, 100)
    """

    _summed = ("skipped_batches", "count", "cross")

    def __init__(self, dim: int, *, normalize: bool = False, device: torch.device | str | None = None) -> None:
        super().__init__(dim, normalize=normalize, device=device)
        self.count = self._zeros()
        self.cross = self._zeros(dim, dim)

    def update(self, rows: Tensor) -> None:
        """Add the stacked views ``[Z0; Z1]`` of one step (``2n x d``; ``n`` pairs)."""
        if rows.shape[0] % 2:
            raise ValueError(f"expected the two views stacked, an even number of rows, got {rows.shape[0]}")
        x, ok = self._prepared(rows)
        z0, z1 = x.chunk(2)
        self.count += ok * z0.shape[0]
        self.cross.addmm_(z0.T, z1)

    def problem(self) -> SpectrumProblem:
        """The symmetrised cross sums, divided by the number of pairs when solved."""
        return SpectrumProblem(matrix=0.5 * (self.cross + self.cross.T), divisor=self.count.clamp_min(1.0),
                               samples=self.count, dim=self.dim, skipped=self.skipped_batches, min_samples=1,
                               nonnegative=False)


_ACCUMULATORS = {cls.__name__: cls for cls in (CovarianceMoments, CovarianceRows, CrossCorrelationSums)}


def accumulator_from_state(
    state: dict[str, Any], device: torch.device | str | None = None
) -> CovarianceMoments | CovarianceRows | CrossCorrelationSums:
    """Rebuild an accumulator from its :meth:`state_dict` (e.g. from a checkpoint), on ``device``.

    Examples:
        >>> acc = CovarianceRows(dim=4, capacity=8); acc.update(torch.randn(3, 4))
        >>> again = accumulator_from_state(acc.state_dict())
        >>> torch.equal(again.compute()[0], acc.compute()[0])
        True
    """
    cls = _ACCUMULATORS.get(state["kind"])
    if cls is None:
        raise ValueError(f"unknown accumulator kind {state['kind']!r}; expected one of {sorted(_ACCUMULATORS)}")
    dim = int(state["dim"])
    normalize = bool(state.get("normalize", False))
    acc: CovarianceMoments | CovarianceRows | CrossCorrelationSums
    if cls is CovarianceRows:
        rows = state["rows"]
        acc = CovarianceRows(dim, capacity=int(state["capacity"]), normalize=normalize, dtype=rows.dtype, device=device)
        filled = int(state["filled"])
        acc.rows[:filled] = rows[:filled].to(acc.device)
        acc.row_weights[:filled] = state["row_weights"][:filled].to(acc.device)
        acc.filled, acc.dropped_rows = filled, int(state.get("dropped_rows", 0))
    elif cls is CovarianceMoments:
        acc = CovarianceMoments(dim, shift=state["shift"].to(device or "cpu"), normalize=normalize, device=device)
    else:
        acc = CrossCorrelationSums(dim, normalize=normalize, device=device)
    for name in cls._summed:
        setattr(acc, name, state[name].to(acc.device, torch.float64))
    return acc
