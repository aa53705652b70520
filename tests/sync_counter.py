"""Count what would make the host wait for the GPU inside the monitor's own per-step code.

Two detectors behind one interface:

- on CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` while the monitor's code runs: each synchronising
  CUDA call warns ("called a synchronizing CUDA operation"), and those warnings are counted
  (``is_sync_warning``: not torch's own once-per-process notice that the debug mode is a prototype);
- on the CPU (the stand-in used in CI), a ``TorchDispatchMode`` counting the ATen ops that synchronise on
  a GPU (``_local_scalar_dense`` behind ``item()``/``float()``/``bool()``, ``nonzero``, ``masked_select``,
  ``unique``, boolean-mask indexing, and the LAPACK-style solvers that check their ``info`` on the host:
  ``eigh``/``eigvalsh``, ``svd``, ``eig``) plus the tensor
  methods that read device memory on the host (``tolist``, ``numpy``, ``cpu``).

Only the training thread is watched: the monitor's worker thread may wait as it likes.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_stepwise.embedding_tap import EmbeddingTap

SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
               "_linalg_check_errors", "equal", "repeat_interleave", "_linalg_eigh", "_linalg_svd", "linalg_eig"}
HOST_READS = ("tolist", "numpy", "cpu")
# torch warns this once per process when the sync debug mode is first set: a notice, not a synchronisation.
DEBUG_MODE_NOTICE = "synchronization debug mode is a prototype feature"


def is_sync_warning(message: object) -> bool:
    """Whether a warning raised under ``set_sync_debug_mode("warn")`` reports a synchronising CUDA call.

    Anything that mentions synchronising counts, except the debug mode's own prototype notice: a reworded
    notice in a later torch fails the GPU test loudly, where a reworded real warning missed by a narrower
    match would pass it silently.

    Examples:
        >>> is_sync_warning("called a synchronizing CUDA operation (Triggered internally at ...)")
        True
        >>> is_sync_warning("Synchronization debug mode is a prototype feature and does not yet detect all "
        ...                 "synchronizing operations (Triggered internally at ...)")
        False
    """
    text = str(message).strip().lower()
    return "synchroniz" in text and DEBUG_MODE_NOTICE not in text


class _SyncingOps(TorchDispatchMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS or (name == "index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []))):
            self.counter.record(name)
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """Host-device synchronisations per training step, attributed to the monitor's code."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.by_step: Counter[int] = Counter()
        self.what: list[tuple[int, str]] = []
        self.step = -1
        self._depth = 0
        self._main = threading.get_ident()

    def record(self, what: str) -> None:
        if self._depth and threading.get_ident() == self._main:
            self.by_step[self.step] += 1
            self.what.append((self.step, what))

    @contextmanager
    def watching(self) -> Iterator[None]:
        if self._depth:  # nested (a tap hook inside a watched hook): already counting
            yield
            return
        self._depth += 1
        try:
            if self.cuda:
                previous = torch.cuda.get_sync_debug_mode()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        yield
                    finally:
                        torch.cuda.set_sync_debug_mode(previous)
                for w in caught:
                    if is_sync_warning(w.message):
                        self.record(str(w.message).splitlines()[0][:80])
            else:
                with _SyncingOps(self):
                    yield
        finally:
            self._depth -= 1


@contextmanager
def count_monitor_syncs(monitor: Any, cuda: bool = False) -> Iterator[SyncCounter]:
    """Wrap ``monitor``'s per-step hooks and the embedding taps; yield the counter."""
    counter = SyncCounter(cuda)
    originals: dict[str, Any] = {}

    def wrap_hook(name: str) -> None:
        original = getattr(monitor, name)

        def hook(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            if name == "on_train_batch_start":
                counter.step = trainer.global_step
            with counter.watching():
                return original(trainer, *args, **kwargs)

        setattr(monitor, name, hook)

    for name in ("on_train_batch_start", "on_train_batch_end"):
        wrap_hook(name)
    for name in ("_on_loss_inputs", "_on_module_output", "_on_call_output", "_on_loss_call"):
        originals[name] = getattr(EmbeddingTap, name)

        def tap_hook(self: EmbeddingTap, *args: Any, _original: Any = originals[name]) -> Any:
            with counter.watching():
                return _original(self, *args)

        setattr(EmbeddingTap, name, tap_hook)
    saved_reads = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    if not cuda:
        for name, method in saved_reads.items():
            def read(self: torch.Tensor, *args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
                counter.record(_name)
                return _method(self, *args, **kwargs)

            setattr(torch.Tensor, name, read)
    try:
        yield counter
    finally:
        for name, original in originals.items():
            setattr(EmbeddingTap, name, original)
        for name, method in saved_reads.items():
            setattr(torch.Tensor, name, method)


__all__ = ["SyncCounter", "count_monitor_syncs", "is_sync_warning"]
