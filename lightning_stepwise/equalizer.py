"""The mode equaliser's numerics: gains from a spectrum, and the rescaling of a gradient along eigen-directions.

Pure functions and one small device-side counter, no Lightning: the
[`ModeEqualizer`][lightning_stepwise.equalizer_callback.ModeEqualizer] callback feeds them the monitor's
measured spectrum and calls them from a gradient hook.

With the leading eigen-directions ``u_r`` (orthonormal columns of ``U``, ``d x k``) and eigenvalues ``λ_r``
of the embedding covariance, the gradient ``g = ∂L/∂z`` of each embedding row becomes

    g' = g + Σ_r (gain_r − 1) (g · u_r) u_r,      gain_r = min((λ_1 / λ_r)^α, max_gain)

so its component along ``u_r`` is multiplied by ``gain_r`` and the components outside the top ``k``
directions are untouched. See "Equalising the modes" in the theory docs for what it does to the modes'
step times in the linear model.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

__all__ = [
    "GRADIENT_PROBLEMS",
    "DeviceCounts",
    "check_equalizer_options",
    "equalizer_gains",
    "guarded_rescale",
    "rescale_gradient",
]

#: The kinds of gradient that a guarded rescaling leaves untouched, in the order of its counter.
GRADIENT_PROBLEMS = ("non_finite_gradients", "non_finite_rescaled")

# Eigenvalues at or below this fraction of the largest are treated as empty directions (as the theory's
# equalizer_gains treats γ_j ≤ 0): their directions are arbitrary, and a gain would only amplify noise.
_EMPTY_FRACTION = 1e-10


def _is_real(value: object) -> bool:
    # bool is an int to Python, but never what a user means by a strength or a gain
    return isinstance(value, Real) and not isinstance(value, bool)


def check_equalizer_options(alpha: Any, max_gain: Any, update_every_n_measurements: Any = 1,
                            warmup_steps: Any = 0, point: Any = None, preserve_norm: Any = True) -> None:
    """Raise ``TypeError``/``ValueError`` naming the parameter and the fix when an option is wrong.

    Examples:
        >>> check_equalizer_options(0.5, 10.0)
        >>> try:
        ...     check_equalizer_options(1.5, 10.0)
        ... except ValueError as err:
        ...     print(str(err).split(":")[0])
        ModeEqualizer(alpha=1.5)
    """
    if not _is_real(alpha):
        raise TypeError(f"ModeEqualizer(alpha={alpha!r}): alpha is the equaliser's strength, a number in [0, 1]; "
                        f"got a {type(alpha).__name__}. Pass e.g. alpha=0.5")
    if not 0 <= alpha <= 1:  # NaN fails both comparisons, so it is refused too
        raise ValueError(f"ModeEqualizer(alpha={alpha!r}): alpha must be in [0, 1]: 0 leaves training unchanged, "
                         "1 gives every direction up to the cap the top direction's rate. Pass e.g. alpha=0.5")
    if not _is_real(max_gain):
        raise TypeError(f"ModeEqualizer(max_gain={max_gain!r}): max_gain caps every gain, a number >= 1; got a "
                        f"{type(max_gain).__name__}. Pass e.g. max_gain=10")
    if math.isnan(max_gain) or max_gain < 1:
        raise ValueError(f"ModeEqualizer(max_gain={max_gain!r}): max_gain must be >= 1 (a gain below 1 would slow "
                         "the slow directions down, the opposite of equalising). Pass e.g. max_gain=10, or "
                         "alpha=0 to switch the equaliser off")
    if not isinstance(update_every_n_measurements, int) or isinstance(update_every_n_measurements, bool):
        raise TypeError(f"ModeEqualizer(update_every_n_measurements={update_every_n_measurements!r}): an int >= 1 "
                        "(1: take every new spectrum of the monitor)")
    if update_every_n_measurements < 1:
        raise ValueError(f"ModeEqualizer(update_every_n_measurements={update_every_n_measurements!r}): must be >= 1 "
                         "(1: take every new spectrum of the monitor)")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool):
        raise TypeError(f"ModeEqualizer(warmup_steps={warmup_steps!r}): an int >= 0, the steps trained unchanged "
                        "before the rescaling starts")
    if warmup_steps < 0:
        raise ValueError(f"ModeEqualizer(warmup_steps={warmup_steps!r}): must be >= 0 (0: rescale from the first "
                         "spectrum on)")
    if point is not None and not isinstance(point, str):
        raise TypeError(f"ModeEqualizer(point=...) takes the name of one of the monitor's tracking points (e.g. "
                        f"'criterion') or None for its first; got a {type(point).__name__}")
    if not isinstance(preserve_norm, bool):
        raise TypeError(f"ModeEqualizer(preserve_norm={preserve_norm!r}): pass True (keep each gradient's norm) or "
                        "False (the linear theory's equaliser)")


def equalizer_gains(eigenvalues: ArrayLike, alpha: float, max_gain: float) -> np.ndarray:
    """Gains ``min((λ_1/λ_r)^α, max_gain)`` of measured eigenvalues ``λ_r`` (``λ_1`` the largest).

    Directions whose eigenvalue is not positive (or below ``1e-10 λ_1``) keep the gain 1: they hold no
    signal to speed up. ``alpha = 0`` gives all ones. Non-finite eigenvalues raise ``ValueError``.

    Examples:
        >>> equalizer_gains([4.0, 1.0, 0.01, 0.0], alpha=1.0, max_gain=100).tolist()
        [1.0, 4.0, 100.0, 1.0]
        >>> equalizer_gains([4.0, 1.0], alpha=0.5, max_gain=10).tolist()
        [1.0, 2.0]
    """
    values = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        raise ValueError(f"eigenvalues must be finite, got {values.tolist()[:8]}")
    gains = np.ones(len(values))
    if not len(values) or alpha == 0:
        return gains
    top = float(values.max())
    signal = values > _EMPTY_FRACTION * top if top > 0 else np.zeros(len(values), dtype=bool)
    gains[signal] = np.minimum((top / values[signal]) ** alpha, max_gain)
    return gains


def rescale_gradient(grad: Tensor, directions: Tensor, gain_offsets: Tensor) -> Tensor:
    """``g + Σ_r offset_r (g · u_r) u_r`` for every row ``g`` of ``grad`` (``offset_r = gain_r − 1``).

    ``grad`` is any shape whose trailing dimensions hold ``d = directions.shape[0]`` values per row: ``(N, d)``,
    ``(N, views, d)``, or ``(N, C, H, W)`` with ``C·H·W = d`` (rows as the monitor flattens them).
    ``directions`` is ``d x k`` with orthonormal columns. Computed in at least float32 (bf16 gradients too) and
    returned in ``grad``'s dtype and shape.

    Examples:
        >>> u = torch.eye(3)[:, :2]                          # directions e_1, e_2 of a 3-d embedding
        >>> rescale_gradient(torch.ones(2, 3), u, torch.tensor([0.0, 3.0]))
        tensor([[1., 4., 1.],
                [1., 4., 1.]])
    """
    work = torch.promote_types(grad.dtype, torch.float32)
    u = directions.to(work)
    rows = grad.reshape(-1, u.shape[0]).to(work)
    rescaled = rows + ((rows @ u) * gain_offsets.to(work)) @ u.T
    return rescaled.to(grad.dtype).reshape(grad.shape)


def guarded_rescale(grad: Tensor, directions: Tensor, gain_offsets: Tensor, counts: Tensor,
                    preserve_norm: bool = False) -> Tensor:
    """`rescale_gradient`, or ``grad`` untouched when either is not finite (counted in ``counts``, on the device).

    ``counts`` (int64, two entries, the order of ``GRADIENT_PROBLEMS``) is incremented in place: ``[0]`` when
    the incoming gradient is not finite, ``[1]`` when it is but the rescaled one is not. Only tensor
    operations: the host never waits for the device.

    With ``preserve_norm`` the rescaled gradient is scaled back to the incoming gradient's norm (over the whole
    tensor): the gains then only shift the gradient towards the small directions, and never lengthen the
    step. Since every gain is at least 1, that factor is at most 1.

    Examples:
        >>> counts = torch.zeros(2, dtype=torch.int64)
        >>> u, offsets = torch.eye(2)[:, :1], torch.tensor([1.0])
        >>> guarded_rescale(torch.tensor([[1.0, 1.0]]), u, offsets, counts)
        tensor([[2., 1.]])
        >>> guarded_rescale(torch.tensor([[float("nan"), 1.0]]), u, offsets, counts)
        tensor([[nan, 1.]])
        >>> counts.tolist()
        [1, 0]
        >>> guarded_rescale(torch.tensor([[3.0, 4.0]]), u, offsets, counts, preserve_norm=True)  # norm 5 kept
        tensor([[4.1603, 2.7735]])
    """
    rescaled = rescale_gradient(grad, directions, gain_offsets)
    if preserve_norm:
        rescaled_norm = torch.linalg.vector_norm(rescaled, dtype=torch.float32)
        shrink = torch.linalg.vector_norm(grad, dtype=torch.float32) / rescaled_norm.clamp_min(
            torch.finfo(torch.float32).tiny)
        rescaled = rescaled * shrink.clamp(max=1.0).to(rescaled.dtype)
    incoming_ok = torch.isfinite(grad).all()
    outgoing_ok = torch.isfinite(rescaled).all()
    counts.add_(torch.stack([~incoming_ok, incoming_ok & ~outgoing_ok]).to(counts.dtype))
    return torch.where(outgoing_ok, rescaled, grad)


class DeviceCounts:
    """Counters that live on the device and reach the host without the host ever waiting for them.

    `snapshot` queues a copy to (pinned) host memory; `ready` returns it once the device has made it
    (``None`` before), checked with a CUDA event's ``query``, which does not block. `read` waits (for fit end).

    Examples:
        >>> counts = DeviceCounts(2, "cpu")
        >>> counts.values.add_(torch.tensor([1, 0]))
        tensor([1, 0])
        >>> counts.snapshot()
        >>> counts.ready().tolist()
        [1, 0]
    """

    def __init__(self, size: int, device: torch.device | str) -> None:
        self.values = torch.zeros(size, dtype=torch.int64, device=device)
        self._host: Tensor | None = None
        self._event: Any = None

    def snapshot(self) -> None:
        """Queue a copy of the counters to the host (replacing one not yet taken)."""
        if self.values.device.type == "cuda":
            host = torch.empty(self.values.shape, dtype=self.values.dtype, pin_memory=True)
            host.copy_(self.values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            host, self._event = self.values.clone(), None
        self._host = host

    def ready(self) -> np.ndarray | None:
        """The last snapshot once it has arrived on the host (then forgotten), else None."""
        if self._host is None or (self._event is not None and not self._event.query()):
            return None
        values, self._host, self._event = self._host.numpy().copy(), None, None
        return values

    def read(self) -> np.ndarray:
        """The counters now (waits for the device: call outside the training step)."""
        return self.values.cpu().numpy().copy()
