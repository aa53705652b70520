"""Closed-form dynamics of a linear (or kernel) model trained with the simplified Barlow Twins loss.

The model is ``f(x) = W x`` with ``W`` of shape ``d × m``, trained by gradient descent on pairs of views
``(x_i, x'_i)``, ``i = 1..n`` (Simon et al., ICML 2023). Conventions:

- ``Γ = (1/2n) Σ_i (x_i x'_iᵀ + x'_i x_iᵀ) = Σ_k γ_k v_k v_kᵀ``, ``γ_1 ≥ γ_2 ≥ ...``: the symmetrised
  cross-correlation of the features. Only modes with ``γ_k > 0`` can be learned.
- Embedding cross-correlation ``C = W Γ Wᵀ``. Loss ``L = c ‖C − I‖²_F`` with a *loss scale* ``c``
  (1 by default), so the gradient is ``4c (C − I) W Γ``.
- Plain gradient descent with learning rate ``lr``: step ``s`` is at effective time ``t = c · lr · s``.
  Scaling the loss by ``c`` divides every step time by ``c``. Step counts use the growth per step of
  gradient *descent*, ``(1 + 4 c lr γ)²``, i.e. the rate ``2 ln(1 + 4 c lr γ)`` per step instead of
  gradient flow's ``8 c lr γ``: the two agree as ``lr → 0``, and at ``4 c lr γ = 0.1`` gradient flow
  would be 5 % early.
- From an aligned start ``W(0) = U S(0) V_dᵀ`` each eigenvalue of ``C`` follows (in gradient flow) a logistic curve
  ``λ_j(t) = 1 / (1 + (1/λ_j(0) − 1) e^{−8 γ_j t})`` with ``λ_j(0) = γ_j s_j(0)²``, and reaches ½ (its
  step) at ``t_j = ln(1/λ_j(0) − 1) / (8 γ_j)``.
- An init scale ``α`` means ``s_j(0) = α``. From an actual small random ``W(0)``, ``s_j(0) = |R_jj|`` of
  the QR decomposition of ``W(0) V_d``: mode ``j`` grows from the part of ``W(0) v_j`` not already
  taken by the modes learned before it.
- The loss is ``Σ_j (λ_j − 1)²``: a staircase with plateaus at ``d − k`` after ``k`` modes.
- At convergence ``W(∞) = U diag(γ_j^{−1/2}) V_dᵀ``: a whitened projection on the top-``d``
  eigenvectors of ``Γ``, up to the rotation ``U``.

Mode equaliser (strength ``α ∈ [0, 1]``, the ``equalize`` argument): the update ``W ← W − lr · G · P``
with ``G`` the gradient and ``P = Σ_j g_j v_j v_jᵀ``, ``g_j = min((γ_1/γ_j)^α, max_gain)``. Every formula
above holds with the rate ``γ_j`` replaced by ``g_j γ_j`` (growth per step ``(1 + 4 c lr g_j γ_j)²``);
the starts ``λ_j(0)`` are unchanged. See
[`equalizer_gains`][lightning_stepwise.theory.LinearSSLTheory.equalizer_gains] for the derivation and how
it relates to a gradient hook on the embeddings.

Kernel machines ``f(x) = W φ(x)`` follow the same dynamics with the ``γ`` of ``K^{1/2} Z K^{1/2}``,
``K`` the kernel over the ``2n`` stacked views and ``Z = (1/2n) [[0, I], [I, 0]]`` the pair swap.
[`empirical_ntk`][lightning_stepwise.theory.empirical_ntk] gives the kernel of a network at its current parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = [
    "DEFAULT_MAX_GAIN",
    "LinearSSLTheory",
    "TheoryPrediction",
    "empirical_ntk",
    "feature_cross_correlation",
    "simplified_barlow_twins_loss",
]


DEFAULT_MAX_GAIN = 100.0
"""Default cap on the equaliser's gains: modes with ``γ_j < γ_1 / 100`` are sped up by 100 at most.

Without a cap the gain of a mode with ``γ_j → 0⁺`` would be unbounded; in a real network such directions
are mostly noise, and a hook that mistakes one mode for another (the gains are set per direction) must
not multiply the gradient of a large mode by an arbitrary factor. 100 keeps the gains within two orders
of magnitude, enough to bring a mode ``100×`` slower than the top one to the top one's pace.
"""


def _as_array(values: ArrayLike | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def feature_cross_correlation(x0: ArrayLike | torch.Tensor, x1: ArrayLike | torch.Tensor) -> np.ndarray:
    """``Γ = (x0ᵀ x1 + x1ᵀ x0) / 2n`` for two views given as ``n × m`` matrices (arrays or tensors).

    Examples:
        >>> x0 = np.array([[1.0, 0.0], [0.0, 2.0]]); x1 = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> feature_cross_correlation(x0, x1).tolist()
        [[0.5, 0.0], [0.0, 1.0]]
    """
    a, b = _as_array(x0, "x0"), _as_array(x1, "x1")
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"the two views must be n × m matrices of the same shape, got {a.shape} and {b.shape}")
    if a.shape[0] < 1:
        raise ValueError("the views hold no samples")
    return (a.T @ b + b.T @ a) / (2 * a.shape[0])


def simplified_barlow_twins_loss(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """``‖C − I‖²_F`` with ``C`` the symmetrised cross-correlation of two ``n × d`` embeddings.

    No centring, no per-dimension standardisation, off-diagonal weight 1: the loss the theory solves.

    Examples:
        >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> float(simplified_barlow_twins_loss(z, z))     # C = zᵀz / n = 2 I: (2 - 1)² twice
        2.0
    """
    n = z0.shape[0]
    c = (z0.T @ z1 + z1.T @ z0) / (2 * n)
    return ((c - torch.eye(c.shape[0], dtype=c.dtype, device=c.device)) ** 2).sum()


@dataclass(frozen=True)
class LinearSSLTheory:
    """Predictions of the linear (or kernel) SSL theory for one dataset of view pairs.

    Build it with [`from_views`][lightning_stepwise.theory.LinearSSLTheory.from_views] (features) or
    [`from_kernel`][lightning_stepwise.theory.LinearSSLTheory.from_kernel] (a kernel matrix).

    Attributes:
        gammas: eigenvalues of ``Γ``, descending.
        eigenvectors: ``m × m`` matrix whose columns are the matching eigenvectors (``None`` for a kernel).
        feature_covariance: covariance of the stacked views (``None`` for a kernel); used to predict
            what a covariance monitor sees
            ([`covariance_trajectories`][lightning_stepwise.theory.LinearSSLTheory.covariance_trajectories]).
        kernel_basis: for a kernel theory, ``K^{+1/2} u_j`` for the eigenvectors ``u_j`` of
            ``K^{1/2} Z K^{1/2}`` (``2n × r``): maps the initial outputs ``F0`` to the modes (QR route).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x0 = rng.standard_normal((200, 6)) * np.arange(6, 0, -1); x1 = x0 + 0.1 * rng.standard_normal((200, 6))
        >>> th = LinearSSLTheory.from_views(x0, x1)
        >>> times = th.step_times(lr=1e-3, d=3, init_scale=1e-3)
        >>> bool(np.all(np.diff(times) > 0))          # larger γ, learned earlier
        True
    """

    gammas: np.ndarray
    eigenvectors: np.ndarray | None = None
    feature_covariance: np.ndarray | None = None
    kernel_basis: np.ndarray | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_views(cls, x0: ArrayLike | torch.Tensor, x1: ArrayLike | torch.Tensor) -> LinearSSLTheory:
        """From two views, ``n × m`` each (row ``i`` of both is one positive pair)."""
        gamma = feature_cross_correlation(x0, x1)
        values, vectors = np.linalg.eigh(gamma)
        order = np.argsort(values)[::-1]
        stacked = np.concatenate([_as_array(x0, "x0"), _as_array(x1, "x1")])
        covariance = np.cov(stacked, rowvar=False).reshape(gamma.shape)
        theory = cls(values[order], vectors[:, order], covariance)
        theory._warn_unlearnable()
        return theory

    @classmethod
    def from_kernel(cls, kernel: ArrayLike | torch.Tensor) -> LinearSSLTheory:
        """From a ``2n × 2n`` kernel matrix over the stacked views ``[x0; x1]`` (first all ``x0``).

        The ``γ`` are the eigenvalues of ``K^{1/2} Z K^{1/2}``, ``Z = (1/2n) [[0, I], [I, 0]]``.
        """
        k = _as_array(kernel, "kernel")
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2:
            raise ValueError(f"the kernel must be a square 2n × 2n matrix over [x0; x1], got shape {k.shape}")
        if not np.allclose(k, k.T, rtol=1e-8, atol=1e-10 * np.abs(k).max()):
            raise ValueError("the kernel matrix is not symmetric")
        n = k.shape[0] // 2
        values, vectors = np.linalg.eigh((k + k.T) / 2)
        if values.min() < -1e-8 * max(values.max(), 0.0):
            raise ValueError(f"the kernel matrix is not positive semi-definite (eigenvalue {values.min():.3g})")
        kept = values > 1e-10 * max(values.max(), 0.0)
        root = (vectors[:, kept] * np.sqrt(values[kept])) @ vectors[:, kept].T
        root_pinv = (vectors[:, kept] / np.sqrt(values[kept])) @ vectors[:, kept].T
        swap = np.zeros_like(k)
        swap[:n, n:] = swap[n:, :n] = np.eye(n) / (2 * n)
        gammas, modes = np.linalg.eigh(root @ swap @ root)
        order = np.argsort(gammas)[::-1]
        theory = cls(gammas[order], kernel_basis=root_pinv @ modes[:, order])
        theory._warn_unlearnable()
        return theory

    def _warn_unlearnable(self) -> None:
        unlearnable = len(self.gammas) - self.learnable
        if unlearnable:
            warnings.warn(f"{unlearnable} of {len(self.gammas)} modes have γ ≤ 0 (to rounding) and cannot be "
                          f"learned; at most {self.learnable} modes will be", UserWarning, stacklevel=3)

    @property
    def learnable(self) -> int:
        """Number of modes with ``γ > 0`` (beyond rounding): the most a model can learn from these views."""
        scale = float(np.abs(self.gammas).max(initial=0.0))
        return int((self.gammas > 1e-10 * scale).sum())

    # ------------------------------------------------------------------ initial conditions

    def initial_singular_values(self, d: int | None = None, *, init_scale: float | None = None,
                                W0: ArrayLike | torch.Tensor | None = None,
                                F0: ArrayLike | torch.Tensor | None = None) -> np.ndarray:
        """``s_j(0)`` of the ``d`` modes: ``init_scale`` for each, or ``|R_jj|`` of a QR decomposition.

        With ``W0`` (features): the QR of ``W0 V_d``. With ``F0`` (a kernel theory): the model's initial
        outputs on the stacked views ``[x0; x1]`` (``2n × d``), and the QR of ``F0ᵀ K^{+1/2} U_d``,
        the same matrix written in function space (``W0 v_j = F0ᵀ K^{+1/2} u_j`` for ``K = ΦΦᵀ``).
        """
        if sum(x is not None for x in (init_scale, W0, F0)) != 1:
            raise ValueError("give exactly one of init_scale (the aligned start's singular value), W0 "
                             "(an actual initial weight matrix, d × m) and F0 (initial outputs on [x0; x1], "
                             "2n × d, for a kernel theory)")
        if F0 is not None:
            f = _as_array(F0, "F0")
            if self.kernel_basis is None:
                raise ValueError("F0 needs a kernel theory (from_kernel); with features give W0")
            if f.ndim != 2 or f.shape[0] != self.kernel_basis.shape[0]:
                raise ValueError(f"F0 must be 2n × d with 2n = {self.kernel_basis.shape[0]} points, got {f.shape}")
            if d is not None and d != f.shape[1]:
                raise ValueError(f"d = {d} but F0 has {f.shape[1]} columns")
            d = f.shape[1]
            self._check_d(d)
            r = np.linalg.qr(f.T @ self.kernel_basis[:, :d], mode="r")
            return np.abs(np.diag(r))
        if W0 is not None:
            w = _as_array(W0, "W0")
            if self.eigenvectors is None:
                raise ValueError("W0 needs the feature eigenvectors: build the theory with from_views, or use "
                                 "init_scale with a kernel theory")
            if w.ndim != 2 or w.shape[1] != self.eigenvectors.shape[0]:
                raise ValueError(f"W0 must be d × m with m = {self.eigenvectors.shape[0]} features, got {w.shape}")
            if d is not None and d != w.shape[0]:
                raise ValueError(f"d = {d} but W0 has {w.shape[0]} rows")
            d = w.shape[0]
            self._check_d(d)
            r = np.linalg.qr(w @ self.eigenvectors[:, :d], mode="r")
            return np.abs(np.diag(r))
        if d is None:
            raise ValueError("give d, the number of embedding dimensions, with init_scale")
        self._check_d(d)
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        return np.full(d, float(init_scale))

    def _check_d(self, d: int) -> None:
        if not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"d must be a positive integer, got {d!r}")
        if d > len(self.gammas):
            raise ValueError(f"d = {d} embedding dimensions, but the data has only {len(self.gammas)} modes")

    def initial_eigenvalues(self, d: int | None = None, *, init_scale: float | None = None,
                            W0: ArrayLike | torch.Tensor | None = None,
                            F0: ArrayLike | torch.Tensor | None = None) -> np.ndarray:
        """``λ_j(0) = γ_j s_j(0)²`` for the top ``d`` modes."""
        s0 = self.initial_singular_values(d, init_scale=init_scale, W0=W0, F0=F0)
        return self.gammas[: len(s0)] * s0**2

    # ------------------------------------------------------------------ predictions

    def step_times(self, lr: float, d: int | None = None, *, init_scale: float | None = None,
                   W0: ArrayLike | torch.Tensor | None = None, F0: ArrayLike | torch.Tensor | None = None,
                   loss_scale: float = 1.0, equalize: float = 0.0,
                   max_gain: float = DEFAULT_MAX_GAIN) -> np.ndarray:
        """Optimizer steps at which each of the ``d`` modes is half learned (``λ_j = ½``).

        ``inf`` for modes with ``γ ≤ 0`` (never learned); 0 for modes that start above ½. With ``equalize``
        (``α``) and ``max_gain``: the steps under the mode equaliser
        ([`equalizer_gains`][lightning_stepwise.theory.LinearSSLTheory.equalizer_gains]).

        Examples:
            >>> th = LinearSSLTheory(np.array([4.0, 1.0, 0.25]))
            >>> th.step_times(0.01, d=3, init_scale=1e-3).round().tolist()              # plain
            [42.0, 176.0, 764.0]
            >>> th.step_times(0.01, d=3, init_scale=1e-3, equalize=1.0).round().tolist()   # all at γ_1's pace
            [42.0, 47.0, 51.0]
        """
        lam0, growth = self._start_and_growth(lr, d, init_scale, W0, F0, loss_scale, equalize, max_gain)
        times = np.full(len(lam0), np.inf)
        rising = growth > 0
        with np.errstate(divide="ignore"):
            times[rising] = np.log(np.maximum(1 / lam0[rising] - 1, 1.0)) / growth[rising]
        return times

    def growth_per_step(self, lr: float, d: int, loss_scale: float = 1.0, *, equalize: float = 0.0,
                        max_gain: float = DEFAULT_MAX_GAIN) -> np.ndarray:
        """Log-growth per optimizer step of each mode's eigenvalue while small: ``2 ln(1 + 4 c lr g_j γ_j)``.

        ``g_j = 1`` without the equaliser (``equalize=0``), else the gains of
        [`equalizer_gains`][lightning_stepwise.theory.LinearSSLTheory.equalizer_gains].
        Negative for ``γ_j < 0`` (the mode decays); ``-inf`` beyond the stability limit ``4 c lr γ ≤ −1``.
        """
        self._check_d(d)
        step = 4 * self._rate(lr, loss_scale) * self._equalized_rates(d, equalize, max_gain)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 2 * np.log1p(np.maximum(step, -1.0))

    def eigenvalue_trajectories(self, steps: ArrayLike, lr: float, d: int | None = None, *,
                                init_scale: float | None = None, W0: ArrayLike | torch.Tensor | None = None,
                                F0: ArrayLike | torch.Tensor | None = None, loss_scale: float = 1.0,
                                equalize: float = 0.0, max_gain: float = DEFAULT_MAX_GAIN) -> np.ndarray:
        """``λ_j`` at each step, ``len(steps) × d`` (column ``j``: mode ``j``, in ``γ`` order; not sorted).

        ``equalize`` and ``max_gain``: under the mode equaliser (rates ``g_j γ_j``).
        """
        lam0, growth = self._start_and_growth(lr, d, init_scale, W0, F0, loss_scale, equalize, max_gain)
        exponent = np.clip(-growth * np.asarray(steps, dtype=np.float64)[:, None], -700, 700)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = 1 / (1 + (1 / lam0 - 1) * np.exp(exponent))
        return np.where(lam0 == 0, 0.0, lam)

    def loss_curve(self, steps: ArrayLike, lr: float, d: int | None = None, *, init_scale: float | None = None,
                   W0: ArrayLike | torch.Tensor | None = None, F0: ArrayLike | torch.Tensor | None = None,
                   loss_scale: float = 1.0, equalize: float = 0.0, max_gain: float = DEFAULT_MAX_GAIN) -> np.ndarray:
        """``c · Σ_j (λ_j − 1)²`` at each step: plateaus at ``c (d − k)`` after ``k`` modes are learned.

        ``equalize`` and ``max_gain``: under the mode equaliser (the loss is the same function of ``λ``).
        """
        lam = self.eigenvalue_trajectories(steps, lr, d, init_scale=init_scale, W0=W0, F0=F0, loss_scale=loss_scale,
                                           equalize=equalize, max_gain=max_gain)
        return loss_scale * ((lam - 1) ** 2).sum(axis=1)

    def covariance_trajectories(self, steps: ArrayLike, lr: float, d: int | None = None, *,
                                init_scale: float | None = None, W0: ArrayLike | torch.Tensor | None = None,
                                F0: ArrayLike | torch.Tensor | None = None, loss_scale: float = 1.0,
                                equalize: float = 0.0, max_gain: float = DEFAULT_MAX_GAIN) -> np.ndarray:
        """What a covariance monitor sees along each mode: ``s_j(t)² · v_jᵀ Σ v_j``.

        ``Σ`` is the covariance of the stacked views; [`StepwiseMonitor`][lightning_stepwise.monitor.StepwiseMonitor]
        measures the covariance of the embeddings, not ``C``. Each column is ``λ_j(t)`` times
        ``v_jᵀ Σ v_j / γ_j``, so it has the same step time; exact when ``Σ`` and ``Γ`` share eigenvectors.
        """
        if self.feature_covariance is None or self.eigenvectors is None:
            raise ValueError("covariance_trajectories needs the features: build the theory with from_views")
        lam = self.eigenvalue_trajectories(steps, lr, d, init_scale=init_scale, W0=W0, F0=F0, loss_scale=loss_scale,
                                           equalize=equalize, max_gain=max_gain)
        v = self.eigenvectors[:, : lam.shape[1]]
        variance = np.einsum("mj,mk,kj->j", v, self.feature_covariance, v)
        return lam * variance / self.gammas[: lam.shape[1]]

    def final_embedding(self, d: int) -> np.ndarray:
        """``W(∞) = diag(γ_j^{−1/2}) V_dᵀ`` (``d × m``), the whitened projection, up to a left rotation."""
        if self.eigenvectors is None:
            raise ValueError("final_embedding needs the feature eigenvectors: build the theory with from_views")
        self._check_d(d)
        if d > self.learnable:
            raise ValueError(f"only {self.learnable} modes have γ > 0: W(∞) exists for d ≤ {self.learnable}")
        return self.eigenvectors[:, :d].T / np.sqrt(self.gammas[:d])[:, None]

    # ------------------------------------------------------------------ mode equaliser

    def equalizer_gains(self, equalize: float, max_gain: float = DEFAULT_MAX_GAIN,
                        d: int | None = None) -> np.ndarray:
        """Gains ``g_j = min((γ_1/γ_j)^α, max_gain)`` of the mode equaliser of strength ``α = equalize``.

        ``α = 0`` is plain gradient descent (every ``g_j = 1``); ``α = 1`` brings every mode with
        ``γ_j ≥ γ_1 / max_gain`` to the rate of the top one, and the others to ``max_gain γ_j``. Modes
        with ``γ_j ≤ 0`` (unlearnable) keep ``g_j = 1``: a gain would only speed up their decay.

        **The update.** The gradient ``G = 4c (C − I) W Γ`` is preconditioned on the input side, along
        the eigenvectors ``v_j`` of ``Γ``: ``W ← W − lr · G · P`` with ``P = Σ_j g_j v_j v_jᵀ``.

        **Why it has a closed form.** ``P`` commutes with ``Γ``. Writing ``W = W̃ P^{1/2}`` gives
        ``C = W̃ Γ' W̃ᵀ`` and ``W̃ ← W̃ − lr · 4c (C − I) W̃ Γ'`` with ``Γ' = Σ_j g_j γ_j v_j v_jᵀ``:
        ``W̃`` follows plain gradient descent on a model whose rates are ``g_j γ_j``. So each eigenvalue of
        ``C`` is the plain logistic with ``8 c g_j γ_j`` in place of ``8 c γ_j`` (gradient flow), or the
        growth per step ``(1 + 4 c lr g_j γ_j)²`` in place of ``(1 + 4 c lr γ_j)²`` (gradient descent):
        ``t_j(α) = ln(1/λ_j(0) − 1) / (2 ln(1 + 4 c lr g_j γ_j))`` steps. The starts do not change:
        ``W̃(0) V = W(0) V diag(g)^{−1/2}`` scales column ``j`` of the QR's ``R`` by ``g_j^{−1/2}``, and
        ``λ_j(0) = g_j γ_j · R_jj² / g_j = γ_j R_jj²``. The rates ``g_j γ_j = min(γ_1^α γ_j^{1−α},
        max_gain · γ_j)`` never increase with ``j`` and never exceed ``γ_1``: the learning order is kept
        and the step size that is stable without the equaliser stays stable.

        **Tied rates.** At ``α = 1`` every mode below the cap has the rate ``γ_1``. Tied modes rise as one
        block, so from a random start (``W0``, ``F0``) each tied group ``j..k`` starts from the squared
        singular values of ``R[j:d, j:k] diag(γ_j..γ_k)^{1/2}`` (``R`` of the QR of ``W0 V``, all columns:
        tied modes beyond ``d`` compete too) instead of ``γ_j R_jj²``. An aligned start (``init_scale``)
        needs no change.

        **A gradient hook on the embeddings.** A hook on ``z = W x`` that replaces ``∂L/∂z`` by
        ``Q ∂L/∂z``, ``Q = Σ_j g_j u_j u_jᵀ`` in the embedding space, makes the update ``W ← W − lr · Q G``
        (output side). From an aligned start ``W = U S V_dᵀ``,
        ``G = U diag(4c (λ_j − 1) γ_j s_j) V_dᵀ``, so ``Q G = G P``: the two updates are identical and the
        prediction holds for the hook, provided that it gives direction ``u_j`` (the ``j``-th eigenvector of
        ``C``, by rank of ``λ_j``) the gain of mode ``j``. Where it differs: (1) from a random start the
        eigenvectors of ``C`` mix several modes while all are small, so gains by rank are not gains by mode
        (simulated: step times within about 6 % of this prediction instead of 1 %); (2) a hook that sets its
        gains from the measured eigenvalues, ``g_j = (λ_max(t)/λ_j(t))^α``, follows a different, state-dependent
        law ``dλ_j/dt = 8 c γ_j g_j(λ) λ_j (1 − λ_j)`` with no closed form here. Its gains equal these at an
        aligned start of one scale (``λ_1(0)/λ_j(0) = γ_1/γ_j``) and drift apart as the modes grow.

        Args:
            equalize: the strength ``α``, in ``[0, 1]``.
            max_gain: the cap on every gain, ``≥ 1`` (``float("inf")``: no cap). Default 100
                (``lightning_stepwise.theory.DEFAULT_MAX_GAIN``): without a cap the gain of a mode with
                ``γ_j → 0⁺`` would be unbounded, and in a real network such directions are mostly noise.
            d: return the gains of the top ``d`` modes only (default: all).

        Examples:
            >>> th = LinearSSLTheory(np.array([4.0, 1.0, 0.01]))
            >>> th.equalizer_gains(1.0).tolist()             # the third is capped at 100 (400 uncapped)
            [1.0, 4.0, 100.0]
            >>> th.equalizer_gains(0.5, d=2).tolist()
            [1.0, 2.0]
            >>> th.equalizer_gains(0.0).tolist()             # plain gradient descent
            [1.0, 1.0, 1.0]
        """
        alpha, cap = self._check_equalizer(equalize, max_gain)
        if d is not None:
            self._check_d(d)
        gammas = self.gammas if d is None else self.gammas[:d]
        gains = np.ones(len(gammas))
        learnable = gammas > 1e-10 * float(np.abs(self.gammas).max(initial=0.0))
        if alpha > 0 and learnable.any():
            gains[learnable] = np.minimum((self.gammas[0] / gammas[learnable]) ** alpha, cap)
        return gains

    def speedup(self, k: int, lr: float, equalize: float, d: int | None = None, *,
                max_gain: float = DEFAULT_MAX_GAIN, init_scale: float | None = None,
                W0: ArrayLike | torch.Tensor | None = None, F0: ArrayLike | torch.Tensor | None = None,
                loss_scale: float = 1.0) -> float:
        """Predicted ratio of the steps to learn ``k`` modes without and with the equaliser.

        The ``k``-th smallest step time of plain gradient descent over the ``k``-th smallest with the
        equaliser of strength ``equalize`` and cap ``max_gain``. From an aligned start of one scale the
        ``k``-th mode learned is mode ``k`` in both runs, so this is
        ``ln(1 + 4 c lr g_k γ_k) / ln(1 + 4 c lr γ_k)``: ``g_k`` in gradient flow (``lr → 0``), a little
        less in gradient descent. The first mode (``g_1 = 1``) is not sped up.

        Examples:
            >>> th = LinearSSLTheory(np.array([4.0, 1.0, 0.25]))
            >>> round(th.speedup(3, lr=0.001, equalize=1.0, d=3, init_scale=1e-3), 2)   # ≈ g_3 = 16
            15.88
            >>> th.speedup(1, lr=0.001, equalize=1.0, d=3, init_scale=1e-3)
            1.0
        """
        starts = {"init_scale": init_scale, "W0": W0, "F0": F0, "loss_scale": loss_scale}
        plain = np.sort(self.step_times(lr, d, **starts))
        equalized = np.sort(self.step_times(lr, d, **starts, equalize=equalize, max_gain=max_gain))
        learned = int(np.isfinite(plain).sum())
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= learned:
            raise ValueError(f"k must be a number of modes between 1 and {learned} (the modes with γ > 0 among "
                             f"the d = {len(plain)} predicted), got {k!r}")
        if plain[k - 1] == 0:
            raise ValueError(f"the first {k} modes start above ½ (λ_j(0) ≥ ½): there is no step to speed up; "
                             "use a smaller init_scale or W0")
        return float(plain[k - 1] / equalized[k - 1])

    @staticmethod
    def _check_equalizer(equalize: float, max_gain: float) -> tuple[float, float]:
        def real(value: object) -> bool:  # a plain number; bool is an int to Python, but never meant here
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)

        # NaN fails every comparison, so it is refused too
        if not real(equalize) or not 0 <= equalize <= 1:
            raise ValueError(f"equalize (the equaliser's strength α) must be a number in [0, 1], got {equalize!r}: "
                             "0 is plain gradient descent, 1 gives every mode up to the cap the top mode's rate")
        if not real(max_gain) or not max_gain >= 1:
            raise ValueError(f"max_gain (the cap on the equaliser's gains) must be ≥ 1, got {max_gain!r}: pass "
                             f"a cap such as the default {DEFAULT_MAX_GAIN:g}, 1 for no equalising, or "
                             "float('inf') for no cap")
        return float(equalize), float(max_gain)

    def _equalized_rates(self, d: int, equalize: float, max_gain: float) -> np.ndarray:
        """``g_j γ_j`` of the top ``d`` modes; exactly ``γ_j`` (the same array) when ``equalize`` is 0."""
        alpha, _ = self._check_equalizer(equalize, max_gain)
        if alpha == 0:
            return self.gammas[:d]  # untouched: α = 0 gives today's numbers bit for bit
        return self.gammas[:d] * self.equalizer_gains(alpha, max_gain, d)

    def _start_and_growth(self, lr: float, d: int | None, init_scale: float | None,
                          W0: ArrayLike | torch.Tensor | None, F0: ArrayLike | torch.Tensor | None,
                          loss_scale: float, equalize: float, max_gain: float) -> tuple[np.ndarray, np.ndarray]:
        """``λ_j(0)`` and the log-growth per step of the top ``d`` modes, with or without the equaliser."""
        lam0 = self.initial_eigenvalues(d, init_scale=init_scale, W0=W0, F0=F0)
        growth = self.growth_per_step(lr, len(lam0), loss_scale, equalize=equalize, max_gain=max_gain)
        if equalize > 0 and init_scale is None:
            lam0 = self._tied_starts(lam0, W0, F0, self.gammas * self.equalizer_gains(equalize, max_gain))
        return lam0, growth

    def _tied_starts(self, lam0: np.ndarray, W0: ArrayLike | torch.Tensor | None,
                     F0: ArrayLike | torch.Tensor | None, rates: np.ndarray) -> np.ndarray:
        """Starts of groups of modes with equal rates: the squared singular values of their block of ``R``.

        The QR route (``λ_j(0) = γ_j R_jj²``) assumes that mode ``j`` grows faster than the modes after it,
        so it only keeps the part of ``W0 v_j`` that the modes before it have not taken. Modes with one
        rate grow as one block; their eigenvalues start from the block's singular values.
        """
        d = len(lam0)
        threshold = 1e-10 * float(np.abs(self.gammas).max(initial=0.0))
        groups = []
        j = 0
        while j < d:
            k = j + 1
            # α = 1 makes rates equal up to rounding (γ_1/γ_j · γ_j); a relative 1e-9 is far below any real gap
            while rates[j] > threshold and k < len(rates) and abs(rates[k] - rates[j]) <= 1e-9 * rates[j]:
                k += 1
            if k - j > 1:
                groups.append((j, k))
            j = k
        if not groups:
            return lam0
        if F0 is not None and self.kernel_basis is not None:
            r = np.linalg.qr(_as_array(F0, "F0").T @ self.kernel_basis, mode="r")
        elif W0 is not None and self.eigenvectors is not None:
            r = np.linalg.qr(_as_array(W0, "W0") @ self.eigenvectors, mode="r")
        else:  # unreachable after initial_eigenvalues' checks; keep the QR route
            return lam0
        lam0 = lam0.copy()
        for j, k in groups:
            block = r[j:d, j:k] * np.sqrt(self.gammas[j:k])
            values = np.linalg.svd(block, compute_uv=False)  # descending: the first tied mode gets the largest
            lam0[j : min(k, d)] = values[: min(k, d) - j] ** 2
        return lam0

    def predict(self, lr: float, d: int | None = None, *, init_scale: float | None = None,
                W0: ArrayLike | torch.Tensor | None = None, F0: ArrayLike | torch.Tensor | None = None,
                loss_scale: float = 1.0, equalize: float = 0.0, max_gain: float = DEFAULT_MAX_GAIN) -> TheoryPrediction:
        """Fix the training set-up; the result answers for one run (e.g. ``StepwiseMonitor(theory=...)``).

        ``equalize`` and ``max_gain``: a run trained with the mode equaliser
        ([`equalizer_gains`][lightning_stepwise.theory.LinearSSLTheory.equalizer_gains]).
        """
        w = None if W0 is None else _as_array(W0, "W0")
        f = None if F0 is None else _as_array(F0, "F0")
        return TheoryPrediction(self, lr, d, init_scale=init_scale, W0=w, F0=f, loss_scale=loss_scale,
                                equalize=equalize, max_gain=max_gain)

    @staticmethod
    def _rate(lr: float, loss_scale: float) -> float:
        if not lr > 0 or not loss_scale > 0:
            raise ValueError(f"lr and loss_scale must be > 0, got {lr} and {loss_scale}")
        return float(lr) * float(loss_scale)


@dataclass(frozen=True)
class TheoryPrediction:
    """The theory for one training set-up (learning rate, width, initialisation, loss scale, equaliser).

    Made by [`LinearSSLTheory.predict`][lightning_stepwise.theory.LinearSSLTheory.predict]. Curves come sorted per row,
    as a monitor records
    eigenvalues, and [`onset_steps`][lightning_stepwise.theory.TheoryPrediction.onset_steps] in learning order, so that
    row ``j`` of an onset table
    (the ``j+1``-th mode learned) is compared with the ``j+1``-th predicted step.

    Examples:
        >>> th = LinearSSLTheory(np.array([2.0, 1.0, 0.5]))
        >>> prediction = th.predict(lr=0.01, d=2, init_scale=1e-3)
        >>> prediction.annotate([{"mode": 0, "onset_step": 110.0}])[0]["predicted_onset_step"] > 0
        True
        >>> equalized = th.predict(lr=0.01, d=2, init_scale=1e-3, equalize=1.0)   # the mode equaliser, α = 1
        >>> bool(equalized.onset_steps()[1] < prediction.onset_steps()[1])
        True
    """

    theory: LinearSSLTheory
    lr: float
    d: int | None = None
    init_scale: float | None = None
    W0: np.ndarray | None = None
    F0: np.ndarray | None = None
    loss_scale: float = 1.0
    equalize: float = 0.0
    max_gain: float = DEFAULT_MAX_GAIN

    def __post_init__(self) -> None:
        self.theory.initial_eigenvalues(self.d, init_scale=self.init_scale, W0=self.W0, F0=self.F0)  # errors now
        LinearSSLTheory._rate(self.lr, self.loss_scale)
        LinearSSLTheory._check_equalizer(self.equalize, self.max_gain)

    def _args(self) -> dict[str, Any]:
        return {"init_scale": self.init_scale, "W0": self.W0, "F0": self.F0, "loss_scale": self.loss_scale,
                "equalize": self.equalize, "max_gain": self.max_gain}

    def step_times(self) -> np.ndarray:
        """Steps at which each mode is half learned, in ``γ`` order (``inf``: never)."""
        return self.theory.step_times(self.lr, self.d, **self._args())

    def onset_steps(self) -> np.ndarray:
        """The finite step times in increasing order: the ``j``-th is the ``j+1``-th mode learned."""
        times = self.step_times()
        return np.sort(times[np.isfinite(times)])

    def eigenvalue_trajectories(self, steps: ArrayLike) -> np.ndarray:
        """Eigenvalues of ``C`` at each step, sorted descending per row (``len(steps) × d``)."""
        lam = self.theory.eigenvalue_trajectories(steps, self.lr, self.d, **self._args())
        return -np.sort(-lam, axis=1)

    def loss_curve(self, steps: ArrayLike) -> np.ndarray:
        """The predicted loss at each step."""
        return self.theory.loss_curve(steps, self.lr, self.d, **self._args())

    def annotate(self, onsets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copies of onset records with ``predicted_onset_step`` and ``relative_error`` (observed / predicted − 1).

        The record of ``mode`` ``j`` (rank ``j``: the ``j+1``-th mode learned) is compared with the
        ``j+1``-th predicted onset; NaN beyond the predicted modes.
        """
        predicted = self.onset_steps()
        out = []
        for record in onsets:
            j = int(record["mode"])
            step = float(predicted[j]) if j < len(predicted) else float("nan")
            error = float(record["onset_step"]) / step - 1 if step > 0 else float("nan")
            out.append({**record, "predicted_onset_step": step, "relative_error": error})
        return out


def empirical_ntk(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int = 64,
    parameters: Sequence[str] | None = None,
) -> torch.Tensor:
    """The empirical neural tangent kernel ``K(x, x') = (1/d) Σ_k ⟨∂f_k(x)/∂θ, ∂f_k(x')/∂θ⟩``.

    Averaged over the ``d`` outputs, at the model's current parameters, with ``torch.func``. For the
    kernel theory give it the stacked views ``[x0; x1]``: ``LinearSSLTheory.from_kernel(K)``, and the
    model's outputs on them as ``F0``. A wide network trained from a small output layer stays close to
    this kernel (the lazy regime), so the theory then predicts which modes it learns, in which order
    and when (``tests/test_theory.py`` checks a 1024-wide network).

    Args:
        model: maps ``N × ...`` inputs to ``N × d`` outputs (put BatchNorm in eval mode first).
        inputs: the points, ``N × ...``.
        batch_size: points per Jacobian batch (memory: ``batch_size × d × #parameters``).
        parameters: names of the parameters to differentiate (default: all that require grad).

    Returns:
        ``N × N`` float64 tensor on the inputs' device.

    Examples:
        >>> lin = torch.nn.Linear(3, 2, bias=False)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(empirical_ntk(lin, x), (x @ x.T).double(), atol=1e-5)   # linear: K = x·x'
        True
    """
    from torch.func import functional_call, jacrev, vmap

    named = dict(model.named_parameters())
    names = list(parameters) if parameters is not None else [k for k, p in named.items() if p.requires_grad]
    missing = set(names) - set(named)
    if missing:
        raise ValueError(f"no parameters {sorted(missing)} in the model; it has {sorted(named)}")
    params = {k: named[k].detach() for k in names}
    frozen = {k: v.detach() for k, v in named.items() if k not in params}
    buffers = dict(model.named_buffers())

    def output(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, ({**frozen, **p}, buffers), (x.unsqueeze(0),)).reshape(-1)

    jacobian: Callable[..., Any] = vmap(jacrev(output), in_dims=(None, 0))
    blocks = []
    for start in range(0, len(inputs), batch_size):
        jac = jacobian(params, inputs[start : start + batch_size])
        blocks.append(torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2))
    full = torch.cat(blocks).to(torch.float64)  # N × d × P
    d = full.shape[1]
    return torch.einsum("adp,bdp->ab", full, full) / d
