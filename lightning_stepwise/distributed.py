"""Collectives for the monitor's states that never wait on the device from the host.

Lightning's ``strategy.reduce`` puts a barrier before every all-reduce and torchmetrics' ``Metric`` sync
gathers state sizes to the host; under NCCL both make the CPU wait for the GPU. These helpers issue the
collective on the current stream and return at once (same-shaped tensors on every rank), so a step that
reduces a window's statistics does not stall the training pipeline. Outside a process group they are
the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["all_gather_cat", "all_gather_floats", "all_reduce_sum", "distributed_rank", "distributed_world_size"]


def distributed_world_size() -> int:
    """Processes in the default process group (1 when none is initialised).

    Examples:
        >>> distributed_world_size()
        1
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def distributed_rank() -> int:
    """The rank of this process in the default process group (0 when none is initialised).

    Examples:
        >>> distributed_rank()
        0
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all ranks (a new tensor; no barrier, no host synchronisation).

    Examples:
        >>> all_reduce_sum(torch.ones(2))  # one process: the tensor itself
        tensor([1., 1.])
    """
    if distributed_world_size() == 1:
        return tensor
    out = tensor.detach().clone().contiguous()
    torch.distributed.all_reduce(out)
    return out


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (same shape on all ranks) concatenated along dim 0, in rank order.

    Examples:
        >>> all_gather_cat(torch.ones(2, 3)).shape  # one process: the tensor itself
        torch.Size([2, 3])
    """
    world = distributed_world_size()
    if world == 1:
        return tensor
    tensor = tensor.detach().contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(parts, tensor)
    return torch.cat(parts)


def all_gather_floats(values: Sequence[float], device: torch.device | str = "cpu") -> list[list[float]]:
    """Every rank's few host numbers, in rank order (one host read under DDP; none in one process).

    For small agreements (shapes, counters, a window's loss), not for statistics on the training path.

    Examples:
        >>> all_gather_floats([8.0, 4.0])  # one process: its own row
        [[8.0, 4.0]]
    """
    if distributed_world_size() == 1:
        return [list(values)]
    return all_gather_cat(torch.tensor([list(values)], dtype=torch.float64, device=device)).tolist()
