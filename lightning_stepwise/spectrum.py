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

A third accumulator, :class:`CrossCorrelationSums`, measures another spectrum on request: the
eigenvalues of the symmetrised cross-correlation ``C = (Z0ᵀ Z1 + Z1ᵀ Z0) / 2n`` of two views' embeddings
(uncentred), the matrix of the linear theory and of the simplified Barlow Twins loss.

All accumulators are torchmetrics ``Metric`` objects, so under DDP their states are reduced across
ranks (sums for moments, concatenation for rows) and every rank computes the same spectrum, equal to
that of one process seeing the global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "SpectrumSummary",
    "CovarianceMoments",
    "CovarianceRows",
    "CrossCorrelationSums",
    "covariance_eigenvalues",
    "eigenvalues_from_gram",
    "eigenvalues_from_moments",
    "summarize_spectrum",
    "uses_gram_route",
]


def uses_gram_route(num_samples: int, dim: int) -> bool:
    """Whether the ``N x N`` Gram matrix is the cheaper way to the covariance eigenvalues.

    Example:
        >>> uses_gram_route(num_samples=1024, dim=8192)
        True
        >>> uses_gram_route(num_samples=1024, dim=64)
        False
    """
    return num_samples < dim


def eigenvalues_from_gram(rows: Tensor) -> Tensor:
    """All ``d`` covariance eigenvalues of ``rows`` (``N x d``) via the centred Gram matrix.

    Exact for any ``N``; cheaper than the covariance route when ``N < d``. Returns float64,
    descending, clamped at 0 (the covariance is positive semi-definite; tiny negative round-off
    is not information).

    Example:
        >>> z = torch.randn(8, 32, dtype=torch.float64)
        >>> eigenvalues_from_gram(z).shape
        torch.Size([32])
    """
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (samples x dim), got shape {tuple(rows.shape)}")
    n, d = rows.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    x = rows.to(torch.float64)
    centred = x - x.mean(dim=0, keepdim=True)
    gram = centred @ centred.T
    nonzero = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0) / (n - 1)
    eigenvalues = torch.zeros(d, dtype=torch.float64, device=rows.device)
    m = min(n - 1, d)  # centring removes one dimension: the N-th Gram eigenvalue is 0 up to round-off
    eigenvalues[:m] = nonzero[:m]
    return eigenvalues


def eigenvalues_from_moments(count: Tensor | float, total: Tensor, outer: Tensor) -> Tensor:
    """Covariance eigenvalues from shifted float64 sums.

    ``total = sum(z - c)`` and ``outer = sum((z - c)(z - c)^T)`` over ``count`` rows for any fixed
    shift ``c``; the shift cancels. Returns float64, descending, clamped at 0.

    Example:
        >>> z = torch.randn(100, 4, dtype=torch.float64)
        >>> c = z[:10].mean(0)
        >>> ev = eigenvalues_from_moments(100, (z - c).sum(0), (z - c).T @ (z - c))
        >>> torch.allclose(ev, torch.linalg.eigvalsh(torch.cov(z.T)).flip(0))
        True
    """
    n = float(count)
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n:g}")
    total = total.to(torch.float64)
    cov = (outer.to(torch.float64) - torch.outer(total, total) / n) / (n - 1)
    cov = 0.5 * (cov + cov.T)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0)


def covariance_eigenvalues(rows: Tensor) -> Tensor:
    """All covariance eigenvalues of ``rows`` (``N x d``), float64, descending, cheaper route.

    Example:
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

    Example:
        >>> s = summarize_spectrum(torch.tensor([1.0, 1.0, 0.0]))
        >>> round(s.effective_rank, 6), round(s.participation_ratio, 6), s.trace
        (2.0, 2.0, 2.0)
    """

    trace: float
    effective_rank: float
    participation_ratio: float


def summarize_spectrum(eigenvalues: Tensor) -> SpectrumSummary:
    """Trace, effective rank and participation ratio of a full set of eigenvalues.

    Example:
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


class _WindowMetric(Metric):
    """Shared parts of the two accumulators: non-finite batches are zeroed and counted, not synced."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, dim: int) -> None:
        super().__init__(sync_on_compute=True)
        if dim < 1:
            raise ValueError(f"embedding width must be >= 1, got {dim}")
        self.dim = dim
        self.add_state("skipped_batches", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _no_spectrum(self) -> Tensor:
        """NaN eigenvalues for a window with fewer than 2 usable samples."""
        return torch.full((self.dim,), math.nan, dtype=torch.float64, device=self.device)

    def _finite_or_zero(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(rows in float64 with a non-finite batch zeroed, 0-d 1.0/0.0 flag), without a host sync."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of shape (N, {self.dim}), got {tuple(rows.shape)}")
        x = rows.detach().to(torch.float64)
        finite = torch.isfinite(x).all()
        x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        ok = finite.to(torch.float64)
        self.skipped_batches += 1.0 - ok
        return x, ok


class CovarianceMoments(_WindowMetric):
    """Streaming covariance as shifted float64 sums; eigenvalues of the ``d x d`` matrix.

    Sum-reducible across DDP ranks provided every rank uses the same ``shift`` (the monitor sets it
    from the all-reduced mean of the window's first batch). Memory: ``d x d`` float64.

    Example:
        >>> acc = CovarianceMoments(dim=3, shift=torch.zeros(3, dtype=torch.float64))
        >>> acc.update(torch.randn(50, 3)); acc.update(torch.randn(50, 3))
        >>> eigenvalues, samples, skipped = acc.compute()
        >>> eigenvalues.shape, int(samples)
        (torch.Size([3]), 100)
    """

    def __init__(self, dim: int, shift: Tensor) -> None:
        super().__init__(dim)
        if shift.shape != (dim,):
            raise ValueError(f"shift must have shape ({dim},), got {tuple(shift.shape)}")
        self.shift: Tensor
        self.register_buffer("shift", shift.detach().to(torch.float64), persistent=False)
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rows: Tensor) -> None:
        """Add a batch of embedding rows (``N x d``, any float dtype)."""
        x, ok = self._finite_or_zero(rows)
        centred = (x - self.shift) * ok
        self.count += ok * x.shape[0]
        self.total += centred.sum(0)
        self.outer += centred.T @ centred

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """(all ``d`` eigenvalues descending, samples, skipped batches), float64, on the device."""
        if float(self.count) < 2:
            return self._no_spectrum(), self.count, self.skipped_batches
        return eigenvalues_from_moments(self.count, self.total, self.outer), self.count, self.skipped_batches


class CovarianceRows(_WindowMetric):
    """Keeps the rows of a window; eigenvalues through the ``N x N`` centred Gram matrix.

    For ``N < d`` (e.g. 1,024 samples of an 8,192-d projector) this holds ``N x d`` values instead
    of ``d x d`` and solves an ``N x N`` problem. Under DDP the rows are gathered from all ranks.

    Example:
        >>> acc = CovarianceRows(dim=64)
        >>> acc.update(torch.randn(10, 64)); acc.update(torch.randn(10, 64))
        >>> eigenvalues, samples, skipped = acc.compute()
        >>> int((eigenvalues > 0).sum()), int(samples)
        (19, 20)
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.add_state("rows", [], dist_reduce_fx="cat")
        self.add_state("row_weights", [], dist_reduce_fx="cat")

    def update(self, rows: Tensor) -> None:
        """Add a batch of embedding rows (``N x d``, any float dtype)."""
        x, ok = self._finite_or_zero(rows)
        self.rows.append(x)
        self.row_weights.append(ok.expand(x.shape[0]).clone())

    def _sync_dist(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # A rank without rows must still join the gather with a tensor of the right rank (N x d).
        if not self.rows:
            self.rows.append(torch.zeros(0, self.dim, dtype=torch.float64, device=self.device))
            self.row_weights.append(torch.zeros(0, dtype=torch.float64, device=self.device))
        super()._sync_dist(*args, **kwargs)

    def _kept_rows(self) -> Tensor:
        rows = self.rows if isinstance(self.rows, Tensor) else torch.cat(self.rows)
        weights = self.row_weights if isinstance(self.row_weights, Tensor) else torch.cat(self.row_weights)
        return rows[weights > 0]

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """(all ``d`` eigenvalues descending, samples, skipped batches), float64, on the device."""
        rows = self._kept_rows()
        count = torch.tensor(float(rows.shape[0]), dtype=torch.float64, device=rows.device)
        if rows.shape[0] < 2:
            return self._no_spectrum(), count, self.skipped_batches
        return eigenvalues_from_gram(rows), count, self.skipped_batches


class CrossCorrelationSums(_WindowMetric):
    """Streaming ``C = (Z0ᵀ Z1 + Z1ᵀ Z0) / 2n`` of two views; eigenvalues of the ``d x d`` matrix.

    ``update`` takes the stacked views ``[Z0; Z1]`` (``2n x d``: the first half one view, the second
    half the other, as captured from a two-view training step). Uncentred, like the linear theory's
    ``C`` and the simplified Barlow Twins loss. Eigenvalues may be negative (views anti-correlated along
    a direction). Sum-reducible across DDP ranks. Memory: ``d x d`` float64.

    Example:
        >>> z = torch.randn(100, 3, dtype=torch.float64)
        >>> acc = CrossCorrelationSums(dim=3); acc.update(torch.cat([z, z]))
        >>> eigenvalues, pairs, _ = acc.compute()
        >>> bool(torch.allclose(eigenvalues, torch.linalg.eigvalsh(z.T @ z / 100).flip(0))), int(pairs)
        (True, 100)
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("cross", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rows: Tensor) -> None:
        """Add the stacked views ``[Z0; Z1]`` of one step (``2n x d``; ``n`` pairs)."""
        if rows.shape[0] % 2:
            raise ValueError(f"expected the two views stacked, an even number of rows, got {rows.shape[0]}")
        x, ok = self._finite_or_zero(rows)
        z0, z1 = x.chunk(2)
        self.count += ok * z0.shape[0]
        self.cross += (z0.T @ z1) * ok

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """(all ``d`` eigenvalues descending, pairs, skipped batches), float64, on the device."""
        if float(self.count) < 1:
            return self._no_spectrum(), self.count, self.skipped_batches
        c = (self.cross + self.cross.T) / (2 * self.count)
        return torch.linalg.eigvalsh(c).flip(0), self.count, self.skipped_batches
