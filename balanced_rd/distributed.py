"""The one collective the task balancing needs: a mean over ranks of small loss vectors."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of processes in the default group (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all ranks (a new tensor; identical on every rank); identity without DDP.

    Every rank must call it the same number of times, in the same order.
    """
    size = world_size()
    if size == 1:
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.div_(size)


@torch.no_grad()
def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """In-place variant of :func:`all_reduce_mean` (for large gradient buffers)."""
    size = world_size()
    if size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(size)
    return tensor
