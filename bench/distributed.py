"""Data-parallel evaluation: shard samples by rank, gather results on every rank.

Under ``torchrun`` (or ``accelerate launch``) the environment holds ``RANK`` and
``WORLD_SIZE``; :func:`init_from_env` starts the process group (NCCL on GPUs, gloo on CPUs)
unless the caller already did. Without those variables everything runs in one process.
"""

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def init_from_env():
    """Start the default process group if the environment asks for several processes.

    Returns:
        ``(rank, world_size)``.
    """
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        logger.info("process group started: backend %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return rank_and_world()


def rank_and_world():
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather(obj):
    """Every rank's ``obj`` (any picklable value), in rank order; ``[obj]`` in one process."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensors):
    """Sum a dict of CPU tensors over the ranks (returned on the CPU; inputs unchanged)."""
    _, world = rank_and_world()
    if world == 1:
        return dict(tensors)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = {}
    for key in sorted(tensors):
        value = tensors[key].to(device=device, copy=True)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        out[key] = value.cpu()
    return out


def barrier():
    """Wait for every rank (no-op in one process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()
