"""Data-parallel training under torchrun: one process per GPU (or CPU rank), many nodes.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; we read them,
join the process group (NCCL on CUDA, gloo on CPU) and pin each process to
cuda:LOCAL_RANK. Without them we run as a single process with no process group.

Gradients are averaged by hand (one flattened all-reduce per optimiser step) instead of
wrapping the models in DistributedDataParallel, as StyleGAN2-ADA does: a GAN step runs
the discriminator three times with its parameters alternately frozen and trainable,
the DRE inside the generator is frozen, and gradient accumulation spans several
backward passes. DDP's reducer expects one forward and one backward per step with a
fixed set of parameters, so it would need no_sync and unused-parameter tricks; an
explicit all-reduce after the last micro-batch is simpler and provably the mean.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(pref: str, local_rank: int) -> torch.device:
    if pref not in ("auto", "cpu", "cuda") and not pref.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {pref!r}")
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but CUDA is not available")
    if pref.startswith("cuda:"):
        return torch.device(pref)
    return torch.device("cuda", local_rank)


def init(device_pref: str = "auto") -> DistInfo:
    """Join the torchrun process group if WORLD_SIZE > 1; return this process's place in it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set: start with torchrun")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device)


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (same start everywhere)."""
    if not info.distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params, info: DistInfo) -> None:
    """Mean of .grad over ranks, in one flattened all-reduce. Parameters without grads are
    skipped; every rank must have grads for the same parameters (true for our steps)."""
    if not info.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def mean_values(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a small vector (losses, flags) over ranks."""
    if info.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= info.world_size
    return values


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is True on any (so all ranks stop at the same step)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_cat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate a tensor from all ranks along dim 0 (no gradient), rank order."""
    if not info.distributed:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_tensor(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.broadcast(t, src=0)
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
