"""Streaming statistics of one measurement window, with their states declared once.

An accumulator takes the embedding rows of the window's batches on their device and ends in a
[`SpectrumProblem`][lightning_stepwise.spectrum.SpectrumProblem]. Every state is declared with
[`add_state`][lightning_stepwise.accumulators.WindowAccumulator.add_state]
and how it combines across DDP ranks (``"sum"``, ``"cat"``, or ``None`` for a value that is the same on
every rank), in the spirit of torchmetrics' ``add_state(..., dist_reduce_fx=...)``: moving
([`to`][lightning_stepwise.accumulators.WindowAccumulator.to]), the reduction across ranks, checkpoint state and restore
([`accumulator_from_state`][lightning_stepwise.accumulators.accumulator_from_state]) all come from that one registry.

Three accumulators, chosen by the monitor:

- [`CovarianceMoments`][lightning_stepwise.accumulators.CovarianceMoments]: shifted float64 sums; the ``d x d``
  covariance. Memory ``d x d`` float64.
- [`CovarianceRows`][lightning_stepwise.accumulators.CovarianceRows]: the rows themselves (float32 holds bf16/fp16/fp32
  exactly) in one buffer made
  when the window opens; the ``N x N`` centred Gram matrix. Cheaper when ``N < d``.
- [`CrossCorrelationSums`][lightning_stepwise.accumulators.CrossCorrelationSums]: ``C = (Z0ᵀ Z1 + Z1ᵀ Z0) / 2n`` of two
  views, uncentred: the matrix of the
  linear theory and the simplified Barlow Twins loss. Memory ``d x d`` float64.

They are deliberately not torchmetrics ``Metric`` objects: its sync gathers state sizes to the host (a
host-device synchronisation per state under NCCL) and it keeps a default copy of every state, another
512 MiB for a ``d x d`` float64 state at ``d = 8192``. The collectives used here are queued on the
current stream and the host does not wait for them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lightning_stepwise.distributed import all_gather_cat, all_gather_floats, all_reduce_sum, distributed_world_size
from lightning_stepwise.spectrum import SpectrumProblem, gram_problem, moments_problem, prepare_rows

__all__ = [
    "CovarianceMoments",
    "CovarianceRows",
    "CrossCorrelationSums",
    "WindowAccumulator",
    "accumulator_from_state",
]

Reduction = Literal["sum", "cat"] | None


class WindowAccumulator:
    """Shared parts: a registry of states on one device, skipped-batch counting, a sync-free reduction.

    Subclasses declare their states with [`add_state`][lightning_stepwise.accumulators.WindowAccumulator.add_state] in
    ``__init__`` and list the constructor
    arguments that rebuild them in `config`; ``host_counters`` names plain ``int`` attributes
    (counts kept on the host) that belong in the checkpoint too.

    Examples:
        >>> acc = CrossCorrelationSums(dim=2)
        >>> sorted(acc.states)
        ['count', 'cross', 'skipped_batches']
    """

    host_counters: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, *, normalize: bool = False, device: torch.device | str | None = None) -> None:
        if dim < 1:
            raise ValueError(f"embedding width must be >= 1, got {dim}")
        self.dim = dim
        self.normalize = normalize
        self.device = torch.device(device if device is not None else "cpu")
        #: Declared states and how each combines across ranks.
        self.states: dict[str, Reduction] = {}
        self.add_state("skipped_batches", self.zeros(), reduce="sum")

    # ------------------------------------------------------------------ the registry

    def add_state(self, name: str, value: Tensor, reduce: Reduction) -> None:
        """Declare a state tensor and how it combines across ranks (``"sum"``, ``"cat"`` or ``None``)."""
        if reduce not in ("sum", "cat", None):
            raise ValueError(f"reduce must be 'sum', 'cat' or None, got {reduce!r}")
        self.states[name] = reduce
        setattr(self, name, value.to(self.device))

    def zeros(self, *shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """A zero tensor on this accumulator's device."""
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild an empty accumulator of the same shape."""
        return {"dim": self.dim, "normalize": self.normalize}

    def to(self, device: torch.device | str) -> WindowAccumulator:
        """Move every state to ``device`` (in place; returns self)."""
        self.device = torch.device(device)
        for name in self.states:
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    def reduce_across_ranks(self) -> None:
        """Turn this rank's statistics into the global batch's, in place (identity in one process).

        Every rank must call it at the same point. The collectives are queued on the current stream;
        the host does not wait for them.
        """
        for name, how in self.states.items():
            if how == "sum":
                setattr(self, name, all_reduce_sum(getattr(self, name)))
            elif how == "cat":
                setattr(self, name, all_gather_cat(getattr(self, name)))
        self.after_reduce()

    def after_reduce(self) -> None:
        """Bring host-side counters in line after `reduce_across_ranks` (subclass hook)."""

    def saved(self, name: str) -> Tensor:
        """The part of a state that goes into a checkpoint (all of it unless a subclass trims it)."""
        return getattr(self, name)

    def load(self, name: str, value: Tensor) -> None:
        """Set a state from a checkpoint's copy (subclasses with trimmed states place it in their buffer)."""
        setattr(self, name, value.to(self.device, getattr(self, name).dtype))

    def state_dict(self) -> dict[str, Any]:
        """Kind, constructor arguments, host counters and states (on the CPU), for a checkpoint."""
        return {"kind": type(self).__name__, "config": self.config(),
                "counters": {name: int(getattr(self, name)) for name in self.host_counters},
                "states": {name: self.saved(name).detach().cpu() for name in self.states}}

    def rank_state_dicts(self) -> list[dict[str, Any]]:
        """Every rank's `state_dict`, in rank order, on every rank (a collective under DDP).

        Lightning saves only global rank zero's callback state: a checkpoint taken in the middle of a
        window must hold every rank's partial statistics, or a resumed run measures rank zero's twice.
        """
        world = distributed_world_size()
        if world == 1:
            return [self.state_dict()]
        # a checkpoint may wait on the device
        gathered_counters = all_gather_floats([float(getattr(self, name)) for name in self.host_counters], self.device)
        gathered = {name: all_gather_cat(getattr(self, name).unsqueeze(0)).cpu() for name in self.states}
        per_rank = []
        for rank in range(world):
            copy = accumulator_from_state({"kind": type(self).__name__, "config": self.config(), "counters": {},
                                           "states": {}})
            for i, name in enumerate(self.host_counters):
                setattr(copy, name, int(gathered_counters[rank][i]))
            for name in self.states:
                setattr(copy, name, gathered[name][rank])
            per_rank.append(copy.state_dict())
        return per_rank

    # ------------------------------------------------------------------ statistics

    def check(self, rows: Tensor) -> None:
        """``ValueError`` unless ``rows`` is ``N x dim``."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of shape (N, {self.dim}), got {tuple(rows.shape)}")

    def prepared(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """[`prepare_rows`][lightning_stepwise.spectrum.prepare_rows] on this device, counting a non-finite batch."""
        self.check(rows)
        x, ok = prepare_rows(rows.to(self.device), self.normalize)
        self.skipped_batches += 1.0 - ok
        return x, ok

    def begin(self, rows: Tensor | None) -> None:
        """Start a window: called on every rank with its first batch (``None`` where a rank has none).

        A collective for accumulators that must agree on something first (see
        [`CovarianceMoments`][lightning_stepwise.accumulators.CovarianceMoments]).
        """

    def update(self, rows: Tensor) -> None:  # pragma: no cover - abstract
        """Add a batch of embedding rows (``N x d``, any float dtype)."""
        raise NotImplementedError

    def problem(self, directions: int = 0) -> SpectrumProblem:  # pragma: no cover - abstract
        """The window's spectrum before its eigensolve."""
        raise NotImplementedError

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """(all ``d`` eigenvalues descending, samples, skipped batches), float64, on the device."""
        problem = self.problem()
        return problem.solve(), problem.samples, self.skipped_batches

    def merge(self, other: WindowAccumulator) -> None:
        """Add another accumulator's statistics of the same kind and shape to this one's."""
        if type(other) is not type(self) or other.config() != self.config():
            raise ValueError(f"cannot merge {type(other).__name__}{other.config()} into "
                             f"{type(self).__name__}{self.config()}")
        for name, how in self.states.items():
            if how == "sum":
                setattr(self, name, getattr(self, name) + getattr(other, name).to(self.device))
            elif how is None and not torch.equal(getattr(self, name), getattr(other, name).to(self.device)):
                raise ValueError(f"cannot merge accumulators whose `{name}` differs")
        if any(how == "cat" for how in self.states.values()):
            raise ValueError(f"{type(self).__name__} keeps rows: merge by updating with the other's rows")


class CovarianceMoments(WindowAccumulator):
    """Streaming covariance as shifted float64 sums; eigenvalues of the ``d x d`` matrix.

    Sum-reducible across DDP ranks provided every rank uses the same ``shift``: given, or set by
    `begin` to the mean of the window's first batch over all ranks. Memory: ``d x d`` float64.

    Examples:
        >>> acc = CovarianceMoments(dim=3, shift=torch.zeros(3, dtype=torch.float64))
        >>> acc.update(torch.randn(50, 3)); acc.update(torch.randn(50, 3))
        >>> eigenvalues, samples, skipped = acc.compute()
        >>> eigenvalues.shape, int(samples)
        (torch.Size([3]), 100)
    """

    def __init__(self, dim: int, shift: Tensor | None = None, *, normalize: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__(dim, normalize=normalize, device=device if device is not None else
                         (shift.device if shift is not None else None))
        if shift is not None and shift.shape != (dim,):
            raise ValueError(f"shift must have shape ({dim},), got {tuple(shift.shape)}")
        self.add_state("shift", self.zeros(dim) if shift is None else shift.detach().to(torch.float64), reduce=None)
        self.add_state("count", self.zeros(), reduce="sum")
        self.add_state("total", self.zeros(dim), reduce="sum")
        self.add_state("outer", self.zeros(dim, dim), reduce="sum")

    def begin(self, rows: Tensor | None) -> None:
        """Shift the sums to the mean of the first batch over all ranks (one all-reduce; no host wait)."""
        local = self.zeros(self.dim + 1)
        if rows is not None:
            x, ok = prepare_rows(rows.to(self.device), self.normalize)
            local = torch.cat([(ok * x.shape[0]).reshape(1), x.sum(0) * ok])
        sums = all_reduce_sum(local)
        self.shift = sums[1:] / sums[0].clamp_min(1.0)

    def update(self, rows: Tensor) -> None:
        """Add a batch of embedding rows (``N x d``, any float dtype)."""
        x, ok = self.prepared(rows)
        centred = (x - self.shift) * ok
        self.count += ok * x.shape[0]
        self.total += centred.sum(0)
        self.outer.addmm_(centred.T, centred)

    def problem(self, directions: int = 0) -> SpectrumProblem:
        """The ``d x d`` scatter matrix of the window, divided by ``n - 1`` when solved."""
        return moments_problem(self.count, self.total, self.outer, self.skipped_batches, directions=directions)


class CovarianceRows(WindowAccumulator):
    """Keeps up to ``capacity`` rows of a window; eigenvalues through the ``N x N`` centred Gram matrix.

    For ``N < d`` (e.g. 1,024 samples of an 8,192-d projector) this holds ``N x d`` values instead
    of ``d x d`` and solves an ``N x N`` problem. The rows are stored as given in ``dtype`` (float32
    holds bf16, fp16 and fp32 embeddings exactly; pass float64 for float64 embeddings), in one buffer
    made at construction; rows past ``capacity`` are dropped and counted in ``dropped_rows``.
    Normalisation, centring and the Gram products are float64. Under DDP every rank's buffer is
    gathered (rows it did not fill have weight 0).

    Examples:
        >>> acc = CovarianceRows(dim=64, capacity=32)
        >>> acc.update(torch.randn(10, 64)); acc.update(torch.randn(10, 64))
        >>> eigenvalues, samples, skipped = acc.compute()
        >>> int((eigenvalues > 0).sum()), int(samples)
        (19, 20)
    """

    host_counters = ("filled", "dropped_rows")

    def __init__(self, dim: int, capacity: int = 1024, *, normalize: bool = False, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__(dim, normalize=normalize, device=device)
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 row, got {capacity}")
        self.capacity = capacity
        self.dtype = dtype
        self.add_state("rows", self.zeros(capacity, dim, dtype=dtype), reduce="cat")
        self.add_state("row_weights", self.zeros(capacity), reduce="cat")
        #: Rows written so far (host-side count: no device read needed to place the next batch).
        self.filled = 0
        #: Rows that arrived after the buffer was full.
        self.dropped_rows = 0

    def config(self) -> dict[str, Any]:
        return {**super().config(), "capacity": self.capacity, "dtype": str(self.dtype).removeprefix("torch.")}

    def update(self, rows: Tensor) -> None:
        """Add a batch of embedding rows (``N x d``, any float dtype)."""
        self.check(rows)
        x = rows.detach().to(self.device)
        finite = torch.isfinite(x).all()
        self.skipped_batches += 1.0 - finite.to(torch.float64)
        n = min(x.shape[0], self.capacity - self.filled)
        self.dropped_rows += x.shape[0] - n
        end = self.filled + n
        self.rows[self.filled:end] = torch.where(finite, x[:n], torch.zeros((), dtype=x.dtype, device=x.device))
        self.row_weights[self.filled:end] = finite.to(torch.float64)
        self.filled = end

    def after_reduce(self) -> None:
        self.filled = self.rows.shape[0]  # every rank's buffer, unfilled rows at weight 0

    def saved(self, name: str) -> Tensor:
        """Only the filled rows: a checkpoint mid-window holds what was seen, not the empty buffer."""
        value = getattr(self, name)
        return value[: self.filled] if self.states[name] == "cat" else value

    def load(self, name: str, value: Tensor) -> None:
        if self.states[name] == "cat":
            getattr(self, name)[: len(value)] = value.to(self.device, getattr(self, name).dtype)
        else:
            super().load(name, value)

    def problem(self, directions: int = 0) -> SpectrumProblem:
        """The ``N x N`` centred Gram matrix of the kept rows, divided by ``n - 1`` when solved."""
        return gram_problem(self.rows[: self.filled], self.row_weights[: self.filled], self.normalize,
                            self.skipped_batches, directions=directions)


class CrossCorrelationSums(WindowAccumulator):
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

    def __init__(self, dim: int, *, normalize: bool = False, device: torch.device | str | None = None) -> None:
        super().__init__(dim, normalize=normalize, device=device)
        self.add_state("count", self.zeros(), reduce="sum")
        self.add_state("cross", self.zeros(dim, dim), reduce="sum")

    def update(self, rows: Tensor) -> None:
        """Add the stacked views ``[Z0; Z1]`` of one step (``2n x d``; ``n`` pairs)."""
        if rows.shape[0] % 2:
            raise ValueError(f"expected the two views stacked, an even number of rows, got {rows.shape[0]}")
        x, ok = self.prepared(rows)
        z0, z1 = x.chunk(2)
        self.count += ok * z0.shape[0]
        self.cross.addmm_(z0.T, z1)

    def problem(self, directions: int = 0) -> SpectrumProblem:
        """The symmetrised cross sums, divided by the number of pairs when solved."""
        return SpectrumProblem(matrix=0.5 * (self.cross + self.cross.T), divisor=self.count.clamp_min(1.0),
                               samples=self.count, dim=self.dim, skipped=self.skipped_batches, min_samples=1,
                               nonnegative=False, directions=directions)


ACCUMULATORS: dict[str, type[WindowAccumulator]] = {
    cls.__name__: cls for cls in (CovarianceMoments, CovarianceRows, CrossCorrelationSums)}


def accumulator_from_state(state: dict[str, Any], device: torch.device | str | None = None) -> WindowAccumulator:
    """Rebuild an accumulator from its `state_dict` (e.g. from a checkpoint), on ``device``.

    Examples:
        >>> acc = CovarianceRows(dim=4, capacity=8); acc.update(torch.randn(3, 4))
        >>> again = accumulator_from_state(acc.state_dict())
        >>> torch.equal(again.compute()[0], acc.compute()[0])
        True
    """
    cls = ACCUMULATORS.get(state.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown accumulator kind {state.get('kind')!r}; expected one of {sorted(ACCUMULATORS)}")
    config = dict(state["config"])
    if "dtype" in config:
        config["dtype"] = getattr(torch, config["dtype"])
    acc = cls(**config, device=device)
    for name, value in state.get("counters", {}).items():
        setattr(acc, name, int(value))
    for name, value in state["states"].items():
        acc.load(name, value)
    return acc

