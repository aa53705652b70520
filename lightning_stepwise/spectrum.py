"""Covariance spectra of embeddings: pure functions on tensors, and the problem a window hands to a solver.

Every eigenvalue here is an eigenvalue of the *sample covariance* of the embedding rows,
``cov = (Z - mean)^T (Z - mean) / (N - 1)``, in float64, sorted in descending order.

Two ways to the same eigenvalues, chosen by cost:

- moments: float64 sums ``n``, ``sum(z - c)``, ``sum((z - c)(z - c)^T)`` around a shift ``c``
  (near the mean), then ``eigvalsh`` of the ``d x d`` covariance. The shift keeps the sums small when
  embeddings sit far from the origin (near-collapse), where raw sums lose the small eigenvalues to
  cancellation.
- Gram: when there are fewer samples ``N`` than dimensions ``d``, the nonzero eigenvalues of the
  covariance equal those of the ``N x N`` centred Gram matrix ``Zc Zc^T / (N - 1)``; the rest are 0.
  The Gram matrix is formed in float64, a block of columns at a time, so the only float64 copy of the
  rows is one block.

A [`SpectrumProblem`][lightning_stepwise.spectrum.SpectrumProblem] is a symmetric matrix and the scalars that turn its
eigenvalues into the
spectrum: what a measurement window ends in (see [`lightning_stepwise.accumulators`][lightning_stepwise.accumulators]).
It can travel
to the host as one flat vector ([`SpectrumProblem.flat`][lightning_stepwise.spectrum.SpectrumProblem.flat],
[`ProblemLayout`][lightning_stepwise.spectrum.ProblemLayout]) and be solved there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GRAM_BLOCK_COLUMNS",
    "ProblemLayout",
    "SpectrumProblem",
    "SpectrumSummary",
    "covariance_eigenvalues",
    "covariance_problem",
    "eigenvalues_from_gram",
    "eigenvalues_from_moments",
    "gram_problem",
    "moments_problem",
    "prepare_rows",
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
    until [`solve`][lightning_stepwise.spectrum.SpectrumProblem.solve], which may run anywhere (the monitor solves a
    host copy in a worker thread).

    With ``directions = k > 0``,
    [`solve_with_directions`][lightning_stepwise.spectrum.SpectrumProblem.solve_with_directions] also gives the top-k
    eigen-directions in
    embedding space. On the Gram route the matrix lives in sample space, so ``basis`` holds the centred
    rows (``N x d`` float32) and a Gram eigenvector ``u`` becomes the direction ``basisᵀ u`` (normalised).

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
    directions: int = 0
    basis: Tensor | None = None

    def flat(self) -> Tensor:
        """All tensors as one float64 vector, for a single device-to-host copy (see `from_flat`)."""
        device = self.matrix.device
        scalars = [self.divisor, self.samples,
                   self.skipped if self.skipped is not None else torch.zeros((), device=device),
                   self.rank_limit if self.rank_limit is not None else torch.full((), math.inf, device=device)]
        return torch.cat([self.matrix.reshape(-1).to(torch.float64),
                          *(s.reshape(1).to(device=device, dtype=torch.float64) for s in scalars)])

    def like(self, flat: Tensor) -> SpectrumProblem:
        """The same problem with its tensors taken from ``flat``, a copy of `flat` (e.g. on the host)."""
        return self.layout().from_flat(flat)

    def layout(self) -> ProblemLayout:
        """What it takes to rebuild this problem from `flat`, without holding its tensors."""
        return ProblemLayout(size=self.matrix.shape[0], dim=self.dim, min_samples=self.min_samples,
                             nonnegative=self.nonnegative, directions=self.directions,
                             basis_rows=0 if self.basis is None else self.basis.shape[0])

    def solve(self) -> Tensor:
        """All ``dim`` eigenvalues, float64, descending, on the matrix's device (NaN if too few samples)."""
        return self._eigenvalues(torch.linalg.eigvalsh(self.matrix).flip(0))

    def solve_with_directions(self) -> tuple[Tensor, Tensor | None]:
        """(`solve`'s eigenvalues, the top ``directions`` eigen-directions as ``d x k`` float32 columns).

        The directions are None when ``directions`` is 0 or there are too few samples; ``k`` is at most
        the rank (the samples minus one on the Gram route).

        Examples:
            >>> z = torch.randn(40, 3, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
            >>> values, vectors = covariance_problem(z, directions=2).solve_with_directions()
            >>> vectors.shape, bool(abs(vectors[0, 0]) > 0.9)
            (torch.Size([3, 2]), True)
        """
        if self.directions <= 0 or float(self.samples) < self.min_samples:
            return self.solve(), None
        values, vectors = torch.linalg.eigh(self.matrix)
        eigenvalues = self._eigenvalues(values.flip(0))
        k = min(self.directions, vectors.shape[1], self.dim)
        if self.rank_limit is not None:
            k = min(k, max(int(self.rank_limit), 0))
        top = vectors.flip(1)[:, :k]
        if self.basis is not None:  # Gram route: from sample space to embedding space
            top = self.basis.T.to(torch.float32) @ top.to(torch.float32)
        top = top.to(torch.float32)
        return eigenvalues, top / top.norm(dim=0).clamp_min(1e-30)

    def _eigenvalues(self, descending: Tensor) -> Tensor:
        out = torch.zeros(self.dim, dtype=torch.float64, device=self.matrix.device)
        if float(self.samples) < self.min_samples:
            return out.fill_(math.nan)
        eigenvalues = descending / self.divisor
        if self.nonnegative:  # a covariance is PSD: tiny negative round-off is not information
            eigenvalues = eigenvalues.clamp_min(0.0)
        if self.rank_limit is not None:
            eigenvalues[max(int(self.rank_limit), 0):] = 0.0
        k = min(len(eigenvalues), self.dim)
        out[:k] = eigenvalues[:k]
        return out


@dataclass(frozen=True)
class ProblemLayout:
    """What it takes to rebuild a `SpectrumProblem` from its `flat` vector.

    Examples:
        >>> problem = SpectrumProblem(torch.eye(2, dtype=torch.float64), divisor=torch.tensor(1.0),
        ...                           samples=torch.tensor(3.0), dim=2)
        >>> problem.layout().from_flat(problem.flat()).solve().tolist()
        [1.0, 1.0]
    """

    size: int
    dim: int
    min_samples: int
    nonnegative: bool
    directions: int = 0
    basis_rows: int = 0

    @property
    def flat_size(self) -> int:
        """Length of the flat vector."""
        return self.size * self.size + 4

    @property
    def basis_size(self) -> int:
        """Length of the flat float32 basis (0 without one)."""
        return self.basis_rows * self.dim

    def from_flat(self, flat: Tensor, basis: Tensor | None = None) -> SpectrumProblem:
        """The problem whose tensors are views of ``flat`` (and of ``basis``, the flat basis, if it has one)."""
        matrix = flat[: self.size * self.size].reshape(self.size, self.size)
        divisor, samples, skipped, rank_limit = flat[self.size * self.size: self.flat_size]
        return SpectrumProblem(matrix=matrix, divisor=divisor, samples=samples, dim=self.dim, skipped=skipped,
                               rank_limit=None if math.isinf(float(rank_limit)) else rank_limit,
                               min_samples=self.min_samples, nonnegative=self.nonnegative,
                               directions=self.directions,
                               basis=None if basis is None or not self.basis_rows
                               else basis[: self.basis_size].reshape(self.basis_rows, self.dim))


def _centred_gram(rows: Tensor, weights: Tensor, normalize: bool,
                  keep_rows: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """(``Zc Zc^T`` in float64 over the rows of weight 1, sample count, ``Zc`` in float32 if ``keep_rows``).

    Built a block of columns at a time. Rows of weight 0 (padding, skipped batches) come out as zero
    rows and only add zero eigenvalues. ``normalize`` L2-normalises each row (in float64) before centring.
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
    centred = torch.empty(n, d, dtype=torch.float32, device=rows.device) if keep_rows else None
    for b in blocks:
        x = rows[:, b].to(torch.float64) * scale[:, None]
        x -= w[:, None] * (x.sum(0) / samples.clamp_min(1.0))
        gram.addmm_(x, x.T)
        if centred is not None:
            centred[:, b] = x
    return gram, samples, centred


def gram_problem(rows: Tensor, weights: Tensor, normalize: bool, skipped: Tensor | None = None,
                 directions: int = 0) -> SpectrumProblem:
    """The covariance spectrum of the rows of weight 1 as an ``N x N`` centred Gram problem.

    With ``directions > 0`` the problem keeps the centred rows (float32) to turn Gram eigenvectors into
    embedding-space directions.

    Examples:
        >>> z = torch.randn(5, 8, dtype=torch.float64)
        >>> problem = gram_problem(z, torch.ones(5), normalize=False)
        >>> torch.allclose(problem.solve(), eigenvalues_from_gram(z))
        True
    """
    gram, samples, centred = _centred_gram(rows, weights, normalize, keep_rows=directions > 0)
    return SpectrumProblem(matrix=gram, divisor=(samples - 1).clamp_min(1.0), samples=samples, dim=rows.shape[1],
                           skipped=skipped, rank_limit=samples - 1, directions=directions, basis=centred)


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
    return gram_problem(rows, weights, normalize=False).solve()


def moments_problem(count: Tensor, total: Tensor, outer: Tensor, skipped: Tensor | None = None,
                    directions: int = 0) -> SpectrumProblem:
    """The covariance spectrum from shifted float64 sums as a ``d x d`` problem (see `eigenvalues_from_moments`).

    Examples:
        >>> z = torch.randn(10, 3, dtype=torch.float64)
        >>> problem = moments_problem(torch.tensor(10.0), z.sum(0), z.T @ z)
        >>> problem.matrix.shape
        torch.Size([3, 3])
    """
    count = count.to(torch.float64)
    total = total.to(torch.float64)
    scatter = outer.to(torch.float64) - torch.outer(total, total) / count.clamp_min(1.0)
    return SpectrumProblem(matrix=0.5 * (scatter + scatter.T), divisor=(count - 1).clamp_min(1.0), samples=count,
                           dim=total.shape[0], skipped=skipped, directions=directions)


def covariance_problem(rows: Tensor, directions: int = 0) -> SpectrumProblem:
    """The covariance problem of ``rows`` (``N x d``) on the cheaper route, keeping ``directions``.

    Examples:
        >>> covariance_problem(torch.randn(10, 64), directions=3).solve_with_directions()[1].shape
        torch.Size([64, 3])
    """
    n, d = rows.shape
    if uses_gram_route(n, d):
        return gram_problem(rows, torch.ones(n, dtype=torch.float64, device=rows.device), normalize=False,
                            directions=directions)
    x = rows.to(torch.float64)
    centred = x - x.mean(dim=0)
    return moments_problem(torch.tensor(float(n), dtype=torch.float64, device=rows.device), centred.sum(0),
                           centred.T @ centred, directions=directions)


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
    return moments_problem(count_tensor, total, outer).solve()


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


def prepare_rows(rows: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """(rows in float64, L2-normalised if asked, zeroed if any value is not finite; 0-d 1.0/0.0 flag).

    Decided on the device: no host synchronisation.

    Examples:
        >>> x, ok = prepare_rows(torch.tensor([[3.0, 4.0], [float("nan"), 1.0]]), normalize=False)
        >>> x.tolist(), float(ok)
        ([[0.0, 0.0], [0.0, 0.0]], 0.0)
    """
    x = rows.detach().to(torch.float64)
    finite = torch.isfinite(x).all()
    x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    return x, finite.to(torch.float64)
