"""The hook that copies a tracking point's embeddings while a measurement window is open.

[`EmbeddingTap`][lightning_stepwise.embedding_tap.EmbeddingTap] keeps detached copies of what the point's module
receives (a loss, a prototype
layer: only the online inputs, as rows of the embedding space) or returns. Per training step it leaves
out calls made under ``torch.no_grad`` beside calls with gradients (a queue or momentum pass), and, for a
prototype layer, calls whose output never reached the loss (patch tokens scored by the same head for
another loss). What it leaves out is counted by reason in ``EmbeddingTap.left_out``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_stepwise.capture import TrackingPoint, flatten_tensors, online_tensors

__all__ = ["EmbeddingTap", "embedding_rows_of_input"]

_LEFT_OUT_REASONS = {
    "no_gradient": "without gradient (a momentum or teacher branch, a stop-gradient copy, a memory-bank sample "
                   "or a parameter's `.data`)",
    "parameter": "parameter(s)",
    "no_grad_call": "from calls under torch.no_grad() (a queue or momentum pass)",
    "not_in_loss": "from calls whose output did not reach the loss (e.g. patch tokens beside the class token)",
    "other_shape": "of another number of dimensions than the first",
}


def embedding_rows_of_input(tensors: Sequence[Tensor], left_out: Counter[str] | None = None) -> list[Tensor]:
    """Loss inputs as rows of the embedding space: every vector along the last dimension is one embedding.

    ``(batch, dim)`` stays as it is; ``(batch, views, dim)`` or ``(views, batch, dim)`` become
    ``(batch * views, dim)`` rows. Tensors with another number of dimensions than the first (local
    feature maps beside global embeddings) are left out and counted as ``"other_shape"``.

    Examples:
        >>> rows = embedding_rows_of_input([torch.ones(4, 3, 8)])
        >>> [tuple(r.shape) for r in rows]
        [(12, 8)]
        >>> left_out = Counter()
        >>> [tuple(r.shape) for r in embedding_rows_of_input([torch.ones(4, 8), torch.ones(4, 2, 2, 8)], left_out)]
        [(4, 8)]
        >>> dict(left_out)
        {'other_shape': 1}
    """
    if not tensors:
        return []
    ndim = tensors[0].ndim
    rows = []
    for t in tensors:
        if t.ndim != ndim:
            if left_out is not None:
                left_out["other_shape"] += 1
            continue
        rows.append(t.reshape(-1, t.shape[-1]) if t.ndim > 2 else t)
    return rows


class EmbeddingTap:
    """A forward hook on one tracking point that copies embeddings while ``active``.

    Copies are detached clones (the model may modify its tensors in place later in the step).

    Examples:
        >>> head = torch.nn.Linear(4, 2)
        >>> tap = EmbeddingTap(TrackingPoint("head", "module_output", head)).attach()
        >>> _ = head(torch.ones(3, 4))        # inactive: nothing kept
        >>> tap.active = True
        >>> _ = head(torch.ones(5, 4))
        >>> [tuple(t.shape) for t in tap.take()]
        [(5, 2)]
        >>> tap.remove()
    """

    def __init__(self, point: TrackingPoint) -> None:
        self.point = point
        self.active = False
        #: Inputs left out as not online, by reason (see
        #: [`online_tensors`][lightning_stepwise.capture.online_tensors]), since attached.
        self.left_out: Counter[str] = Counter()
        #: Candidate tensors kept since attached.
        self.kept = 0
        # one record per call: the copies, whether gradients were on, the storages of the call's output
        self._calls: list[tuple[list[Tensor], bool, set[int]]] = []
        self._loss_origins: set[int] = set()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> EmbeddingTap:
        """Register the hook on the point's module (no-op for ``embedding_fn`` points)."""
        module = self.point.module
        if module is None or self._handles:
            return self
        if self.point.source in ("loss_inputs", "module_inputs"):
            self._handles.append(module.register_forward_pre_hook(self._on_loss_inputs, with_kwargs=True))
        else:
            self._handles.append(module.register_forward_hook(self._on_module_output))
        if self.point.loss is not None:  # which calls' outputs the loss receives
            self._handles.append(module.register_forward_hook(self._on_call_output))
            self._handles.append(self.point.loss.register_forward_pre_hook(self._on_loss_call, with_kwargs=True))
        return self

    def remove(self) -> None:
        """Remove the hook and drop anything captured."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._calls.clear()
        self._loss_origins.clear()

    def add(self, tensors: Iterable[Tensor], *, with_grad: bool = True) -> None:
        """Keep detached copies of ``tensors`` (used by hooks and for ``embedding_fn`` outputs).

        ``with_grad=False`` marks tensors from a call under ``torch.no_grad``:
        [`take`][lightning_stepwise.embedding_tap.EmbeddingTap.take] leaves them out
        when the same step also brought tensors from calls with gradients.
        """
        self._calls.append(([t.detach().clone() for t in tensors], with_grad, set()))

    def take(self) -> list[Tensor]:
        """Everything captured since the last call.

        Calls under ``no_grad`` are left out when calls with gradients came too; with a ``loss`` on the
        point, calls whose output never reached the loss are left out when some did.
        """
        calls, loss_origins = self._calls, self._loss_origins
        self._calls, self._loss_origins = [], set()
        calls = self._keep(calls, [with_grad for _, with_grad, _ in calls], "no_grad_call")
        if loss_origins:
            calls = self._keep(calls, [bool(out & loss_origins) for _, _, out in calls], "not_in_loss")
        return [t for tensors, _, _ in calls for t in tensors]

    def _keep(self, calls: list[Any], keep: list[bool], reason: str) -> list[Any]:
        """The calls marked ``keep`` when some are and some are not (then the others are counted as left out)."""
        if not any(keep) or all(keep):
            return calls
        dropped = sum(len(tensors) for (tensors, _, _), k in zip(calls, keep, strict=True) if not k)
        self.left_out[reason] += dropped
        self.kept -= dropped
        return [c for c, k in zip(calls, keep, strict=True) if k]

    def left_out_note(self) -> str | None:
        """One line saying which loss inputs were left out as not online, or None when none were."""
        if not self.left_out:
            return None
        reasons = ", ".join(f"{n} {_LEFT_OUT_REASONS[why]}" for why, n in sorted(self.left_out.items()))
        return f"measuring {self.kept} online input tensor(s) of `{self.point.name}`; left out {reasons}."

    def _on_loss_inputs(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.active:
            online = embedding_rows_of_input(online_tensors(flatten_tensors((args, kwargs)), self.left_out),
                                             self.left_out)
            self.kept += len(online)
            self.add(online, with_grad=torch.is_grad_enabled())

    def _on_call_output(self, _module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        if self.active and self._calls:
            self._calls[-1][2].update(_origins(flatten_tensors(output)))

    def _on_loss_call(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.active:
            self._loss_origins.update(_reaching_origins(flatten_tensors((args, kwargs))))

    def _on_module_output(self, _module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        if self.active:
            self.add(flatten_tensors(output)[:1], with_grad=torch.is_grad_enabled())


def _origins(tensors: Iterable[Tensor]) -> set[int]:
    """Marks of a call's outputs: their storages and the autograd nodes that made them."""
    marks = set()
    for t in tensors:
        marks.add(t.untyped_storage().data_ptr())
        if t.grad_fn is not None:
            marks.add(id(t.grad_fn))
    return marks


def _reaching_origins(tensors: Iterable[Tensor], depth: int = 4, limit: int = 256) -> set[int]:
    """Marks of what a loss received: its storages, and the autograd nodes a few operations upstream.

    Views and chunks share their output's storage; ``torch.cat`` of several outputs, then ``chunk``, still
    reaches each output's node.
    """
    marks: set[int] = set()
    frontier = []
    for t in tensors:
        marks.add(t.untyped_storage().data_ptr())
        if t.grad_fn is not None:
            frontier.append(t.grad_fn)
    seen: set[int] = set()
    for _ in range(depth):
        following = []
        for node in frontier:
            if id(node) in seen or len(seen) >= limit:
                continue
            seen.add(id(node))
            following.extend(n for n, _ in node.next_functions if n is not None)
        frontier = following
    return marks | seen
